// Shared helpers of fastzsl's CUDA kernels.
//
// These files are compiled at run time by NVRTC (cupy.RawModule), which has no host
// standard library: no <cmath>, <cstdio>, <limits> or INFINITY/NAN macros here. Only CUDA
// device built-ins (sqrt, erf, exp, log, fma, __int_as_float, ...) are used.
// fastzsl/backends/cupy/_loader.py inlines this header into each kernel source before compiling, so the
// CuPy kernel cache sees its text; nvcc finds it next to the .cu file.
#ifndef FASTZSL_COMMON_CUH
#define FASTZSL_COMMON_CUH

// Constants shared with the Python launchers are defined only in
// fastzsl/backends/cupy/_loader.py, which prepends them to the source as #define lines (nvcc
// builds take them as -D flags from the same place).
#ifndef FASTZSL_TILE_ROWS
#error "FASTZSL_TILE_ROWS must be defined by the loader"
#endif
#ifndef FASTZSL_TILE_DIMS_F32
#error "FASTZSL_TILE_DIMS_F32 must be defined by the loader"
#endif
#ifndef FASTZSL_TILE_DIMS_F64
#error "FASTZSL_TILE_DIMS_F64 must be defined by the loader"
#endif
#ifndef FASTZSL_MAX_BLOCK_THREADS
#error "FASTZSL_MAX_BLOCK_THREADS must be defined by the loader"
#endif

namespace fastzsl {

__device__ __forceinline__ float inf_f32() { return __int_as_float(0x7f800000); }
__device__ __forceinline__ double inf_f64() { return __longlong_as_double(0x7ff0000000000000LL); }

// +inf of T, and the fused multiply-add of T (exactly rounded once).
template <typename T> struct Num;
template <> struct Num<float> {
    __device__ __forceinline__ static float inf() { return inf_f32(); }
    __device__ __forceinline__ static float fma_(float a, float b, float c) {
        return fmaf(a, b, c);
    }
};
template <> struct Num<double> {
    __device__ __forceinline__ static double inf() { return inf_f64(); }
    __device__ __forceinline__ static double fma_(double a, double b, double c) {
        return fma(a, b, c);
    }
};

// Finite (not +-inf, not NaN) without the host isfinite macro.
__device__ __forceinline__ bool is_finite(double x) { return fabs(x) < inf_f64(); }

constexpr double SQRT2 = 1.4142135623730951;       // == numpy.sqrt(2.0)
constexpr double TWO_PI = 6.283185307179586;       // == 2.0 * numpy.pi

}  // namespace fastzsl

#endif  // FASTZSL_COMMON_CUH
