// Isotropic Gaussian log-likelihoods L[i, c] = -||F_i - mu_c||^2 / (2 var_c)
// - d/2 log(2 pi var_c), fused with the row reductions of fastzsl's novelty rules:
// max, first argmax, logsumexp_c(L + log_weights) (online, skipping -inf terms) and
// all_below = all_c L < thresholds_c. The (n, C) matrix is written only when `full`.
//
// Layout as in knn_cuda.cu: a block owns BQ = blockDim.x rows (one per thread); classes
// stream through shared memory in sub-tiles of RS classes x DC dimensions, with the rows'
// matching dimensions staged beside them. Squared distances accumulate in double for
// float32 and float64 input alike (common.cuh says why); L and every reduction (max,
// argmax, logsumexp, all_below) are computed and decided in double, classes in ascending
// order, as the NumPy reference and the CPU backends do, and rounded to T only on output. With `full`, each RS-class slab of L is
// staged in shared memory and written with coalesced stores. With f_resident (the host
// checks that it fits) all d dimensions of the block's rows are loaded once.
#include "common.cuh"

namespace fastzsl {
namespace gaussian {

FASTZSL_DYNAMIC_SHARED(smem_raw);

template <typename T>
__device__ __forceinline__ void gaussian_block(
    const T* __restrict__ F, const T* __restrict__ M, const double* __restrict__ var,
    const double* __restrict__ log_weights, const double* __restrict__ thresholds,
    long long n, int C, int d, int full, int f_resident, T* __restrict__ L,
    T* __restrict__ row_max, long long* __restrict__ row_argmax, T* __restrict__ row_lse,
    bool* __restrict__ all_below) {
    constexpr int RS = Tile::RS, DC = Tile::DC;  // classes x dims per sub-tile
    const double NEG_INF = -inf_f64();
    const int bq = blockDim.x;
    const int tid = threadIdx.x;
    const long long i0 = (long long)blockIdx.x * bq;
    const long long i = i0 + tid;
    // No early return: every thread takes part in the tile loads and barriers.
    const bool active = i < n;

    double* p_twovar = reinterpret_cast<double*>(smem_raw);  // RS each
    double* p_lnorm = p_twovar + RS;
    double* p_lw = p_lnorm + RS;
    double* p_thr = p_lw + RS;
    Acc* m_tile = p_thr + RS;                                  // RS x DC
    BlockRows f_tile(m_tile + RS * DC, d, bq, f_resident != 0);  // the block's rows
    T* stage = reinterpret_cast<T*>(f_tile.data + f_tile.size);  // bq x (RS + 1), if full

    double best = NEG_INF;
    long long best_c = 0;
    double lse_max = NEG_INF;
    double lse_sum = 0.0;
    bool below = true;

    if (f_resident) f_tile.load_all(F, i0, n);  // the main loop's first barrier publishes it

    for (int cb = 0; cb < C; cb += RS) {  // uniform across the block
        Acc acc[RS];
#pragma unroll
        for (int r = 0; r < RS; ++r) acc[r] = Acc(0);
        for (int c0 = 0; c0 < d; c0 += DC) {
            __syncthreads();  // readers of the tiles (and of the class parameters) are done
            if (c0 == 0 && tid < RS && cb + tid < C) {
                const int c = cb + tid;
                const double v = var[c];
                p_twovar[tid] = 2.0 * v;
                p_lnorm[tid] = -0.5 * d * log(TWO_PI * v);
                p_lw[tid] = log_weights[c];
                p_thr[tid] = thresholds[c];
            }
            stage_tile<RS, DC>(m_tile, M, cb, C, c0, d);
            if (!f_resident) f_tile.load_chunk(F, i0, n, c0);
            __syncthreads();
            accumulate_sqdist<RS, DC>(acc, f_tile.row(tid, c0), f_tile.ds, m_tile);
        }
#pragma unroll
        for (int r = 0; r < RS; ++r) {
            const int c = cb + r;
            if (c < C) {
                const double value = -acc[r] / p_twovar[r] + p_lnorm[r];
                if (full) stage[tid * (RS + 1) + r] = (T)value;
                // NumPy's max and argmax: the first NaN wins (then nothing beats it).
                if (value > best || (value != value && best == best)) {
                    best = value;
                    best_c = c;
                }
                if (!(value < p_thr[r])) below = false;
                // Online logsumexp; a zero-weight class adds nothing (-inf - -inf is NaN).
                const double weighted = value + p_lw[r];
                if (weighted != NEG_INF) {
                    if (weighted > lse_max) {
                        lse_sum = lse_sum * exp(lse_max - weighted) + 1.0;
                        lse_max = weighted;
                    } else {
                        lse_sum += exp(weighted - lse_max);
                    }
                }
            }
        }
        if (full) {  // uniform: every thread reaches this barrier
            __syncthreads();
            const int cols = (C - cb < RS) ? C - cb : RS;
            for (int e = tid; e < bq * RS; e += bq) {
                const int row = e / RS, col = e % RS;
                const long long ii = i0 + row;
                if (ii < n && col < cols) L[ii * C + cb + col] = stage[row * (RS + 1) + col];
            }
            // The next write of `stage` comes after the next sub-tile's barriers.
        }
    }

    if (active) {
        row_max[i] = (T)best;
        row_argmax[i] = best_c;
        row_lse[i] = (T)(lse_max + log(lse_sum));
        all_below[i] = below;
    }
}

}  // namespace gaussian
}  // namespace fastzsl

#define FASTZSL_GAUSSIAN_ENTRY(NAME, T, MIN_BLOCKS)                                         \
    extern "C" __global__ void __launch_bounds__(FASTZSL_MAX_BLOCK_THREADS, MIN_BLOCKS) NAME( \
        const T* F, const T* M, const double* var, const double* log_weights,               \
        const double* thresholds, long long n, int C, int d, int full, int f_resident,      \
        T* L, T* row_max, long long* row_argmax, T* row_lse, bool* all_below) {             \
        fastzsl::gaussian::gaussian_block<T>(F, M, var, log_weights, thresholds, n, C, d,   \
                                             full, f_resident, L, row_max, row_argmax,       \
                                             row_lse, all_below);                            \
    }

// Both accumulate in double: the same registers and occupancy bound.
FASTZSL_GAUSSIAN_ENTRY(gaussian_f32, float, 2)
FASTZSL_GAUSSIAN_ENTRY(gaussian_f64, double, 2)
