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
#ifndef FASTZSL_TILE_DIMS
#error "FASTZSL_TILE_DIMS must be defined by the loader"
#endif
#ifndef FASTZSL_MAX_BLOCK_THREADS
#error "FASTZSL_MAX_BLOCK_THREADS must be defined by the loader"
#endif

// Declares `name` as the launch's dynamic shared memory (extern __shared__, sized by the
// launch's shared_mem bytes). A macro so that the CPU test harness (tests/cuda_host/) can
// give each block its own buffer; on the GPU it is the plain declaration.
#ifndef FASTZSL_DYNAMIC_SHARED
#define FASTZSL_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

// Tensor cores (sm_80+): the round-to-nearest TF32 conversion (cvt.rna.tf32.f32: the
// float with 10 mantissa bits, as a .b32) and one warp-wide mma.sync.m16n8k8 TF32 x TF32 +
// FP32 (D = A B + C; A 16 x 8 row-major, B 8 x 8 column-major, fragments per the PTX ISA:
// with g = lane / 4, t = lane % 4, a = {A[g][t], A[g+8][t], A[g][t+4], A[g+8][t+4]},
// b = {B[t][g], B[t+4][g]}, c/d = {C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]}).
// Every thread of the block must call it together (the CPU harness, which defines
// FASTZSL_HOST_MMA and supplies both, emulates it with block barriers).
#ifndef FASTZSL_HOST_MMA
__device__ __forceinline__ unsigned to_tf32(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    return __float_as_uint(x);  // never used: the host runs the tensor-core kernel on sm_80+
#else
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
#endif
}
__device__ __forceinline__ void mma_tf32_m16n8k8(float (&d)[4], const unsigned (&a)[4],
                                                 const unsigned (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    asm volatile("trap;");  // the host runs this only on sm_80 or newer
#else
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
#endif

namespace fastzsl {

__device__ __forceinline__ double inf_f64() { return __longlong_as_double(0x7ff0000000000000LL); }

// Finite (not +-inf, not NaN) without the host isfinite macro.
__device__ __forceinline__ bool is_finite(double x) { return fabs(x) < inf_f64(); }

constexpr double SQRT2 = 1.4142135623730951;       // == numpy.sqrt(2.0)
constexpr double TWO_PI = 6.283185307179586;       // == 2.0 * numpy.pi

// --- squared distances of a block's rows to a tile of other rows (kNN, Gaussian) ---------
//
// A block owns bq = blockDim.x rows of its own (queries, features; one per thread). The
// other side (reference rows, class means) streams through shared memory in sub-tiles of
// RS rows x DC dimensions; each thread accumulates its row's RS squared distances in
// registers, one fused multiply-add per dimension in ascending order.
//
// Distances are defined as double sums, for float32 input too: e = sum_t (double(q_t) -
// double(r_t))^2, the NumPy reference's and the CPU kernels' definition. Distances and
// log-likelihoods stay double through every decision (top-k order and ties, argmax,
// logsumexp, thresholds) and are rounded to float32 only on output, so the float32
// decisions equal the reference's: a float sum differs from it by about d ulps (near-ties
// flip) and overflows to inf once a difference exceeds ~1.8e19.
// The helpers below take the staging type V: Acc (double, the exact sums; the Gaussian
// kernel and float64 kNN) or float (the float32 kNN's screen, whose sums are only bounds:
// knn_cuda.cu recomputes every pair that may matter in double, exact_sqdist).
using Acc = double;

__device__ __forceinline__ float fma_v(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fma_v(double a, double b, double c) { return fma(a, b, c); }

// The sub-tile shape (rows x dims of Acc).
struct Tile {
    static constexpr int RS = FASTZSL_TILE_ROWS;
    static constexpr int DC = FASTZSL_TILE_DIMS;
};

// Rows [row0, row0 + RS), dims [c0, c0 + DC) of src (row-major, d columns, element type S)
// into tile[RS][DC] as V; zero past row_end or d. Every thread of the block takes part.
template <int RS, int DC, typename S, typename V>
__device__ __forceinline__ void stage_tile(V* tile, const S* __restrict__ src, long long row0,
                                           long long row_end, int c0, int d) {
    for (int e = threadIdx.x; e < RS * DC; e += blockDim.x) {
        const int r = e / DC, t = e % DC;
        const long long j = row0 + r;
        const int c = c0 + t;
        tile[e] = (j < row_end && c < d) ? static_cast<V>(src[j * d + c]) : V(0);
    }
}

// The block's own rows in shared memory (as V), element (row, dim) at
// data[row * rs + dim * ds]; either layout puts the threads' reads of one dim in distinct
// banks:
//   resident: all d_pad dims, dim-major [d_pad][bq] (loaded once by load_all);
//   otherwise: one DC-chunk, row-major [bq][DC + 1] (padded; load_chunk per chunk).
// Padding dimensions are 0, as in the tile, and add exactly 0.
template <typename V>
struct BlockRowsOf {
    static constexpr int DC = Tile::DC;
    V* data;
    int d, d_pad, rs, ds, size;
    bool resident;

    __device__ __forceinline__ BlockRowsOf(V* data_, int d_, int bq, bool resident_)
        : data(data_), d(d_), d_pad((d_ + DC - 1) / DC * DC), rs(resident_ ? 1 : DC + 1),
          ds(resident_ ? bq : 1), size(resident_ ? bq * d_pad : bq * (DC + 1)),
          resident(resident_) {}

    // Rows [i0, i0 + blockDim.x) of src (n rows, d columns), dims [c0, c0 + width).
    template <typename S>
    __device__ __forceinline__ void load(const S* __restrict__ src, long long i0, long long n,
                                         int c0, int width) {
        const int bq = blockDim.x;
        for (int e = threadIdx.x; e < bq * width; e += bq) {
            const int row = e / width, t = e % width;
            const long long i = i0 + row;
            const int c = c0 + t;
            data[row * rs + t * ds] = (i < n && c < d) ? static_cast<V>(src[i * d + c]) : V(0);
        }
    }
    template <typename S>
    __device__ __forceinline__ void load_all(const S* __restrict__ src, long long i0,
                                             long long n) {
        load(src, i0, n, 0, d_pad);
    }
    template <typename S>
    __device__ __forceinline__ void load_chunk(const S* __restrict__ src, long long i0,
                                               long long n, int c0) {
        load(src, i0, n, c0, DC);
    }
    // Thread row's dims from c0 on (the staged chunk when not resident).
    __device__ __forceinline__ const V* row(int thread_row, int c0) const {
        return data + thread_row * rs + (resident ? c0 : 0) * ds;
    }
};
using BlockRows = BlockRowsOf<Acc>;

// acc[r] += sum over t < DC of (row[t * ds] - tile[r * DC + t])^2: one DC-chunk of the RS
// distances of a thread's row, one fused multiply-add per term in ascending t.
template <int RS, int DC, typename V>
__device__ __forceinline__ void accumulate_sqdist(V (&acc)[RS], const V* row, int ds,
                                                  const V* tile) {
    V v[DC];
#pragma unroll
    for (int t = 0; t < DC; ++t) v[t] = row[t * ds];
#pragma unroll
    for (int r = 0; r < RS; ++r) {
        V s = acc[r];
#pragma unroll
        for (int t = 0; t < DC; ++t) {
            const V diff = v[t] - tile[r * DC + t];
            s = fma_v(diff, diff, s);
        }
        acc[r] = s;
    }
}

// The exact distance of rows q and r (d elements each, global memory): the double sum of
// accumulate_sqdist<Acc> in the same order, so the same value bit for bit (its zero
// padding adds fma(0, 0, s) = s).
template <typename T>
__device__ __forceinline__ Acc exact_sqdist(const T* __restrict__ q, const T* __restrict__ r,
                                            int d) {
    Acc s = 0.0;
    for (int t = 0; t < d; ++t) {
        const Acc diff = static_cast<Acc>(q[t]) - static_cast<Acc>(r[t]);
        s = fma(diff, diff, s);
    }
    return s;
}

// --- block reductions ---------------------------------------------------------------------

// Sums of (s, c) over the THREADS (== blockDim.x) threads of a block, a fixed pairwise
// tree, so the result does not depend on timing; every thread calls it and gets the sums.
template <int THREADS>
__device__ __forceinline__ void block_reduce_sum_count(double& s, long long& c) {
    __shared__ double s_sum[THREADS];
    __shared__ long long s_cnt[THREADS];
    const int tid = threadIdx.x;
    s_sum[tid] = s;
    s_cnt[tid] = c;
    __syncthreads();
    for (int half = THREADS / 2; half > 0; half >>= 1) {
        if (tid < half) {
            s_sum[tid] += s_sum[tid + half];
            s_cnt[tid] += s_cnt[tid + half];
        }
        __syncthreads();
    }
    s = s_sum[0];
    c = s_cnt[0];
}

}  // namespace fastzsl

#endif  // FASTZSL_COMMON_CUH
