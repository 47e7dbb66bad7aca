// LoOP (Kriegel et al. 2009) arithmetic, in double, with the conventions of
// fastzsl/backends/numpy_.py:
//   pdist  = extent * sqrt(mean_k D)
//   PLOF   = pdist / ev - 1, ev = mean pdist of the neighbours (or ev_override);
//            0/0 -> 0 and x/0 -> +inf
//   nPLOF  = extent * sqrt(mean PLOF^2) over the finite PLOFs (0 when there are none)
//   LoOP   = max(0, erf(PLOF / (nPLOF sqrt 2))); nPLOF = 0: PLOF > 0 -> 1, else 0
// The nPLOF sums are a deterministic two-pass reduction (per-block partials, then one
// block), so repeated runs give bit-identical results.
#include "common.cuh"

#ifndef FASTZSL_REDUCE_THREADS
#error "FASTZSL_REDUCE_THREADS must be defined by the loader"
#endif

namespace fastzsl {
namespace loop {

constexpr int REDUCE_THREADS = FASTZSL_REDUCE_THREADS;  // blockDim.x of both reduction kernels

template <typename T>
__device__ __forceinline__ void pdist_row(const T* __restrict__ D, long long n, int k,
                                          double extent, double* __restrict__ pdist) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const T* row = D + i * k;
    double s = 0.0;
    for (int c = 0; c < k; ++c) s += (double)row[c];
    pdist[i] = extent * sqrt(s / k);
}

__device__ __forceinline__ double plof_of(double pdist, double ev) {
    if (ev == 0.0) return pdist > 0.0 ? inf_f64() : 0.0;
    return pdist / ev - 1.0;
}

__device__ __forceinline__ double probability_of(double plof, double nplof) {
    double ratio;
    if (nplof > 0.0) {
        ratio = plof / (nplof * SQRT2);
    } else {
        ratio = plof > 0.0 ? inf_f64() : 0.0;
    }
    const double p = erf(ratio);
    return p > 0.0 ? p : 0.0;
}

}  // namespace loop
}  // namespace fastzsl

using fastzsl::loop::REDUCE_THREADS;

extern "C" __global__ void loop_pdist_f32(const float* D, long long n, int k, double extent,
                                          double* pdist) {
    fastzsl::loop::pdist_row<float>(D, n, k, extent, pdist);
}

extern "C" __global__ void loop_pdist_f64(const double* D, long long n, int k, double extent,
                                          double* pdist) {
    fastzsl::loop::pdist_row<double>(D, n, k, extent, pdist);
}

// PLOF of each row; ev = mean ref_pdist over the row's neighbours I, unless use_override.
extern "C" __global__ void loop_plof(const double* pdist, const long long* I,
                                     const double* ref_pdist, long long n, int k,
                                     double ev_override, int use_override, double* plof) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double ev;
    if (use_override) {
        ev = ev_override;
    } else {
        const long long* row = I + i * k;
        double s = 0.0;
        for (int c = 0; c < k; ++c) s += ref_pdist[row[c]];
        ev = s / k;
    }
    plof[i] = fastzsl::loop::plof_of(pdist[i], ev);
}

// Pass 1: block b writes the sum of squares and the count of the finite PLOFs it saw
// (grid-stride, so any grid size works). blockDim.x must be REDUCE_THREADS.
extern "C" __global__ void __launch_bounds__(FASTZSL_REDUCE_THREADS) loop_nplof_partial(
    const double* plof, long long n, double* part_sum, long long* part_count) {
    const int tid = threadIdx.x;
    double s = 0.0;
    long long c = 0;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + tid; i < n; i += stride) {
        const double v = plof[i];
        if (fastzsl::is_finite(v)) {
            s += v * v;
            ++c;
        }
    }
    fastzsl::block_reduce_sum_count<REDUCE_THREADS>(s, c);
    if (tid == 0) {
        part_sum[blockIdx.x] = s;
        part_count[blockIdx.x] = c;
    }
}

// Pass 2 (one block of REDUCE_THREADS): totals of the n_parts partials into out[0], count[0].
extern "C" __global__ void __launch_bounds__(FASTZSL_REDUCE_THREADS) loop_nplof_final(
    const double* part_sum, const long long* part_count, int n_parts, double* out_sum,
    long long* out_count) {
    const int tid = threadIdx.x;
    double s = 0.0;
    long long c = 0;
    for (int i = tid; i < n_parts; i += REDUCE_THREADS) {
        s += part_sum[i];
        c += part_count[i];
    }
    fastzsl::block_reduce_sum_count<REDUCE_THREADS>(s, c);
    if (tid == 0) {
        out_sum[0] = s;
        out_count[0] = c;
    }
}

extern "C" __global__ void loop_probability(const double* plof, long long n, double nplof,
                                            double* prob) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    prob[i] = fastzsl::loop::probability_of(plof[i], nplof);
}
