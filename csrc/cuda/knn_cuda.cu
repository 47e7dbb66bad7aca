// Exact k nearest neighbours (squared Euclidean) fused with per-query top-k selection.
//
// The n_queries x n_reference distance matrix is never written to global memory:
//
// * A thread block owns BQ = blockDim.x queries (one per thread; BQ in {32, 64, 128}) and
//   one split [r_begin, r_end) of the reference rows (blockIdx.y; the host adds splits
//   when there are too few query blocks to fill the GPU).
// * Reference rows stream through shared memory in sub-tiles of RS rows x DC dimensions;
//   the matching DC dimensions of the block's queries are staged in shared memory too
//   (coalesced loads), then each thread accumulates the RS distances of its query in
//   registers, sums of squared differences. When q_resident is set (the host checks that
//   it fits), all d dimensions of the block's queries are loaded into shared memory once
//   instead. The staging and accumulation are common.cuh's stage_tile, BlockRowsOf and
//   accumulate_sqdist, shared with gaussian_cuda.cu (one summation order for all).
// * float64 input: the sums are double, the exact distances (a duplicate is exactly 0).
//   float32 input: the tiles and sums are float (FP32 runs at twice the FP64 rate), a
//   screen: s = the float sum of the float differences, whose every rounding is relative
//   to e itself (all terms are >= 0, no cancellation): with u = 2^-24 and
//   gamma_n = n u / (1 - n u), |s - e| <= gamma_{d+2} e + A, A = 2 (d + 2) FLT_MIN (each
//   difference rounded once, its square and the running sum once per fma; A covers
//   subnormal results, flushed to zero or not). A pair can enter a full list only if its
//   double distance is below the k-th, which needs s <= kth (1 + gamma) + A; the kernel
//   tests s <= kth (1 + 2 gamma) + 2 A (the factor 2 absorbs the double rounding of e and
//   of the test itself) and recomputes every pair that passes, or whose s is not finite,
//   with exact_sqdist (the double sum of the float64 path, bit for bit). The lists hold
//   only those exact doubles, so the answer is the double kernel's; on typical data a
//   query recomputes about k (1 + ln(n / k)) pairs of n, the insertions themselves.
// * Each thread keeps its k best (distance, index) pairs sorted in a list in shared memory
//   (layout [slot][thread], conflict-free) -- or, when k is too large for shared memory,
//   in a global scratch buffer of the same layout -- and inserts a candidate only when it
//   is strictly better than the current k-th. Candidates are visited in ascending
//   reference index, so among equal distances the lower index stays first, as in the
//   NumPy reference's stable sort.
// * self_on: local reference row (self_base + query row) is skipped (query i is reference
//   row self_offset + i; the host rebases the offset to each launch's reference chunk).
// * The lists, the blocks' output and the merge inputs hold double distances for either
//   input type, so ties and order are decided on the double sums; only knn_merge_f32
//   rounds to float32, when it writes the final answer (the host rounds a single list).
//
// Each block writes its sorted list to out[split][query][0..k) (+inf / -1 where fewer
// than k candidates were seen); knn_merge_* merges the lists of several splits (and the
// state carried over from earlier reference chunks, all lower indices) into one.
#include "common.cuh"

#ifndef FASTZSL_KNN_MAX_SPLITS
#error "FASTZSL_KNN_MAX_SPLITS must be defined by the loader"
#endif

namespace fastzsl {
namespace knn {

constexpr int MAX_LISTS = FASTZSL_KNN_MAX_SPLITS + 1;  // merge: the splits + the carried state

// a comes before b in the order of NumPy's sort: NaN after every number (and +inf), so a
// NaN distance (from NaN input, through direct backend calls) sorts last, not in the middle.
template <typename T>
__device__ __forceinline__ bool before(T a, T b) {
    return a < b || (b != b && a == a);
}

// Insert (dist, idx) into the sorted list bd/bi (entries stride apart) if it belongs there.
__device__ __forceinline__ void consider(Acc* bd, int* bi, int stride, int k, int& n_filled,
                                         Acc& worst, Acc dist, int idx) {
    int pos;
    if (n_filled < k) {
        pos = n_filled;
        ++n_filled;
    } else if (before(dist, worst)) {
        pos = k - 1;
    } else {
        return;
    }
    // Shift strictly worse entries right: an equal distance keeps its (lower) index first.
    while (pos > 0) {
        const Acc prev = bd[(pos - 1) * stride];
        if (!before(dist, prev)) break;
        bd[pos * stride] = prev;
        bi[pos * stride] = bi[(pos - 1) * stride];
        --pos;
    }
    bd[pos * stride] = dist;
    bi[pos * stride] = idx;
    if (n_filled == k) worst = bd[(k - 1) * stride];
}

FASTZSL_DYNAMIC_SHARED(smem_raw);

// The smallest float sum s that can no longer belong to a list whose k-th exact distance
// is worst: beyond kth (1 + 2 gamma) + 2 A (see the top of the file); +inf while the k-th
// is +inf or NaN (any pair may still enter).
__device__ __forceinline__ Acc screen_limit(Acc worst, Acc gamma, Acc abs_err) {
    return is_finite(worst) ? worst * (1.0 + 2.0 * gamma) + 2.0 * abs_err : inf_f64();
}

template <typename T> struct Staged { using type = Acc; };    // float64: exact sums
template <> struct Staged<float> { using type = float; };     // float32: the FP32 screen

// T: the input's element type (float or double); list distances are Acc (double).
template <typename T>
__device__ __forceinline__ void knn_block(
    const T* __restrict__ Q, const T* __restrict__ R, long long n_q, long long n_r, int d,
    int k, long long self_base, int self_on, long long span, long long idx_base,
    int q_resident, Acc* __restrict__ out_d, long long* __restrict__ out_i, Acc* scratch_d,
    int* scratch_i) {
    constexpr int RS = Tile::RS, DC = Tile::DC;  // reference rows x dims per sub-tile
    using V = typename Staged<T>::type;
    constexpr bool SCREEN = sizeof(V) < sizeof(Acc);
    const Acc INF = inf_f64();
    const int bq = blockDim.x;
    const int tid = threadIdx.x;
    const long long q0 = (long long)blockIdx.x * bq;
    const long long qi = q0 + tid;
    // No early return: every thread of the block takes part in the tile loads and barriers.
    const bool active = qi < n_q;
    const long long split = blockIdx.y;

    // Tiles and query rows of V (the host sizes them so, knn.py _knn_layout); each region
    // is a multiple of 8 bytes (RS * DC and the query rows are even counts), so the double
    // lists after them stay aligned.
    V* ref_tile = reinterpret_cast<V*>(smem_raw);  // RS x DC
    BlockRowsOf<V> q_tile(ref_tile + RS * DC, d, bq, q_resident != 0);  // the block's queries
    Acc* bd;
    int* bi;
    if (scratch_d == nullptr) {                      // lists in shared memory
        Acc* lists_d = reinterpret_cast<Acc*>(q_tile.data + q_tile.size);
        int* lists_i = reinterpret_cast<int*>(lists_d + bq * k);
        bd = lists_d + tid;
        bi = lists_i + tid;
    } else {                                         // lists in global scratch, same layout
        const long long block_id = split * gridDim.x + blockIdx.x;
        bd = scratch_d + block_id * bq * k + tid;
        bi = scratch_i + block_id * bq * k + tid;
    }
    for (int s = 0; s < k; ++s) {                    // each thread only touches its column
        bd[s * bq] = INF;
        bi[s * bq] = -1;
    }
    int n_filled = 0;
    Acc worst = INF;
    // The float32 screen's error bound (top of the file) and its current limit.
    const Acc u = 5.9604644775390625e-08;  // 2^-24
    const Acc gamma = (d + 2) * u / (1.0 - (d + 2) * u);
    const Acc abs_err = 2.0 * (d + 2) * 1.1754943508222875e-38;  // 2 (d + 2) FLT_MIN
    Acc limit = INF;

    const long long r_begin = split * span;
    const long long r_end = (r_begin + span < n_r) ? r_begin + span : n_r;
    const long long self_j = (self_on && active) ? self_base + qi : -1;  // -1 matches no row

    if (q_resident) q_tile.load_all(Q, q0, n_q);  // the main loop's first barrier publishes it

    for (long long rb = r_begin; rb < r_end; rb += RS) {  // uniform across the block
        V acc[RS];
#pragma unroll
        for (int r = 0; r < RS; ++r) acc[r] = V(0);
        for (int c0 = 0; c0 < d; c0 += DC) {
            __syncthreads();  // the previous chunk's readers are done with both tiles
            stage_tile<RS, DC>(ref_tile, R, rb, r_end, c0, d);
            if (!q_resident) q_tile.load_chunk(Q, q0, n_q, c0);
            __syncthreads();
            accumulate_sqdist<RS, DC>(acc, q_tile.row(tid, c0), q_tile.ds, ref_tile);
        }
        if (active) {
#pragma unroll
            for (int r = 0; r < RS; ++r) {
                const long long j = rb + r;
                if (j >= r_end || j == self_j) continue;
                if constexpr (SCREEN) {
                    const Acc s = static_cast<Acc>(acc[r]);
                    // Skipped only when full and s is finite and beyond the limit (a
                    // float overflow or NaN says nothing about e: recomputed).
                    if (n_filled == k && is_finite(s) && s > limit) continue;
                    const Acc e = exact_sqdist(Q + qi * d, R + j * d, d);
                    if (n_filled < k || before(e, worst)) {
                        consider(bd, bi, bq, k, n_filled, worst, e, (int)j);
                        limit = screen_limit(worst, gamma, abs_err);
                    }
                } else if (n_filled < k || before(acc[r], worst)) {
                    consider(bd, bi, bq, k, n_filled, worst, acc[r], (int)j);
                }
            }
        }
    }

    if (active) {
        Acc* od = out_d + (split * n_q + qi) * k;
        long long* oi = out_i + (split * n_q + qi) * k;
        for (int s = 0; s < k; ++s) {
            const int j = bi[s * bq];
            od[s] = bd[s * bq];
            oi[s] = j < 0 ? -1LL : idx_base + j;
        }
    }
}

// Merge sorted lists of one query: the carried state (lower reference indices) first, then
// the splits in ascending reference order; among equal distances the earlier list wins,
// which is the lower index. Entries with index -1 are "no candidate" and sort last. The
// lists are double; O is the output type (float rounds each chosen double distance once).
template <typename O>
__device__ __forceinline__ void merge_row(
    const Acc* __restrict__ prev_d, const long long* __restrict__ prev_i, int has_prev,
    const Acc* __restrict__ part_d, const long long* __restrict__ part_i, int n_parts,
    long long n_q, int k, O* __restrict__ out_d, long long* __restrict__ out_i) {
    const long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= n_q) return;
    const int n_lists = n_parts + (has_prev ? 1 : 0);
    int head[MAX_LISTS];
    for (int l = 0; l < n_lists; ++l) head[l] = 0;
    for (int p = 0; p < k; ++p) {
        int best = -1;
        Acc best_d = inf_f64();
        long long best_i = -1;
        for (int l = 0; l < n_lists; ++l) {
            const int h = head[l];
            if (h >= k) continue;
            const long long row = (has_prev && l == 0)
                ? q * k
                : ((long long)(l - (has_prev ? 1 : 0)) * n_q + q) * k;
            const long long idx = (has_prev && l == 0) ? prev_i[row + h] : part_i[row + h];
            if (idx < 0) continue;  // this list is exhausted
            const Acc dist = (has_prev && l == 0) ? prev_d[row + h] : part_d[row + h];
            if (best < 0 || before(dist, best_d)) {
                best = l;
                best_d = dist;
                best_i = idx;
            }
        }
        out_d[q * k + p] = static_cast<O>(best_d);
        out_i[q * k + p] = best_i;
        if (best >= 0) ++head[best];
    }
}

}  // namespace knn
}  // namespace fastzsl

#define FASTZSL_KNN_ENTRY(NAME, T, MIN_BLOCKS)                                              \
    extern "C" __global__ void __launch_bounds__(FASTZSL_MAX_BLOCK_THREADS, MIN_BLOCKS) NAME( \
        const T* Q, const T* R, long long n_q, long long n_r, int d, int k,                 \
        long long self_base, int self_on, long long span, long long idx_base,               \
        int q_resident, double* out_d, long long* out_i, double* scratch_d,                 \
        int* scratch_i) {                                                                   \
        fastzsl::knn::knn_block<T>(Q, R, n_q, n_r, d, k, self_base, self_on, span,          \
                                   idx_base, q_resident, out_d, out_i, scratch_d,           \
                                   scratch_i);                                               \
    }

FASTZSL_KNN_ENTRY(knn_f32, float, 2)
FASTZSL_KNN_ENTRY(knn_f64, double, 2)

// Double lists in; out_d of type O (knn_merge_f32: the float32 answer).
#define FASTZSL_MERGE_ENTRY(NAME, O)                                                        \
    extern "C" __global__ void NAME(const double* prev_d, const long long* prev_i,          \
                                    int has_prev, const double* part_d,                     \
                                    const long long* part_i, int n_parts, long long n_q,    \
                                    int k, O* out_d, long long* out_i) {                    \
        fastzsl::knn::merge_row<O>(prev_d, prev_i, has_prev, part_d, part_i, n_parts, n_q,  \
                                   k, out_d, out_i);                                         \
    }

FASTZSL_MERGE_ENTRY(knn_merge_f32, float)
FASTZSL_MERGE_ENTRY(knn_merge_f64, double)
