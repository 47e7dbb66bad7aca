// Two-pass exact kNN: a float GEMM screen, then an exact double re-rank (the GPU mirror of
// csrc/cpu/knn_twopass.pxi; fastzsl/backends/cupy/knn_twopass.py drives it and states the
// error bound).
//
// Pass 1 (twopass_filter): the host computes a tile G = R_tile . Q_tile^T of float32 dot
// products with cuBLAS (gemmEx, FP32 pinned), reference rows x queries, so that the threads
// of a warp (consecutive queries) read consecutive addresses. Each (query, segment of the
// tile's rows) pair keeps, in global memory between tiles and in shared memory within
// one, its L = k + margin smallest lower bounds lo = s - W(q, r), sorted ascending, where
// s = |q|^2 + |r|^2 - 2 q.r is the screened distance (norms in double) and W = SAFETY
// B(q, r) = w (|q|^2 + |r|^2) + a_q its widened error bound (the host proves B); the L-th
// entry is the running cut-off. Reference tiles come in ascending order; the lists persist
// across them.
//
// Pass 2 (twopass_rerank_*): per query, limit = the largest upper bound s + W among the k
// candidates of smallest lo (k rows at most that far, so the true k-th distance is too).
// Every candidate with lo <= limit is recomputed exactly -- the direct kernel's sum,
// fma(diff, diff, s) in ascending dimension, in double -- and the k lexicographically smallest (distance, index)
// are written. If a list is full and its largest entry is itself <= limit, it may have
// dropped a candidate that belongs to the answer: overflow[q] = 1 and the host recomputes
// that query with the direct kernel (knn_cuda.cu), which stays the oracle.
#include "common.cuh"

#ifndef FASTZSL_TWOPASS_THREADS
#error "FASTZSL_TWOPASS_THREADS must be defined by the loader"
#endif
#ifndef FASTZSL_TWOPASS_MAX_SEGMENTS
#error "FASTZSL_TWOPASS_MAX_SEGMENTS must be defined by the loader"
#endif
#ifndef FASTZSL_TWOPASS_FILTER_THREADS
#error "FASTZSL_TWOPASS_FILTER_THREADS must be defined by the loader"
#endif
#ifndef FASTZSL_TWOPASS_ROWS_PER_LANE
#error "FASTZSL_TWOPASS_ROWS_PER_LANE must be defined by the loader"
#endif

namespace fastzsl {
namespace twopass {

// Element (seg, slot) of query q's lists: layout [seg][slot][query], coalesced over queries.
__device__ __forceinline__ long long at(int seg, int slot, int L, long long n_q, long long q) {
    return ((long long)seg * L + slot) * n_q + q;
}

// One block: qb queries of the tile (blockIdx.x) x the rows of one segment (blockIdx.y),
// blockDim.x = FASTZSL_TWOPASS_FILTER_THREADS threads, lanes = blockDim.x / qb per query
// (a warp reads 32 consecutive queries of one G row: coalesced). The (query, segment)
// lists come into shared memory at the start and go back at the end; in between, rows go
// by in phases of B = lanes x ROWS_PER_LANE per query: each thread loads its
// ROWS_PER_LANE G entries at once (that many loads in flight), computes their lower
// bounds and keeps those below the query's cut-off in its own slots of a shared buffer;
// after a barrier one thread per query inserts the buffer's entries into its sorted list
// and updates the cut-off (the L-th entry, +inf until the list is full).
FASTZSL_DYNAMIC_SHARED(filter_smem);

// Merge a column of n_cand candidates (bounds s_bs, indices s_bi; -1: none) into the sorted
// list of L (s_ls, s_li) of column col, all in shared memory with a column stride; returns
// the list's new last bound. Ties keep the earlier entry: only strictly larger ones move up.
__device__ __forceinline__ double merge_candidates(double* s_ls, int* s_li, const double* s_bs,
                                                   const int* s_bi, int n_cand, int L,
                                                   int stride, int col) {
    double worst = s_ls[(L - 1) * stride + col];
    for (int b = 0; b < n_cand; ++b) {
        const int idx = s_bi[b * stride + col];
        const double lo = s_bs[b * stride + col];
        if (idx < 0 || !(lo < worst)) continue;
        int pos = L - 1;  // shift strictly larger entries up; the last one drops out
        while (pos > 0 && lo < s_ls[(pos - 1) * stride + col]) {
            s_ls[pos * stride + col] = s_ls[(pos - 1) * stride + col];
            s_li[pos * stride + col] = s_li[(pos - 1) * stride + col];
            --pos;
        }
        s_ls[pos * stride + col] = lo;
        s_li[pos * stride + col] = idx;
        worst = s_ls[(L - 1) * stride + col];
    }
    return worst;
}

__device__ void filter(const float* __restrict__ G, long long tq, long long tr, long long q0,
                       long long r0, const double* __restrict__ qn,
                       const double* __restrict__ rn, double w, const double* __restrict__ a,
                       long long self_offset, int self_on, int L, long long n_q,
                       double* __restrict__ list_s, int* __restrict__ list_i, int qb) {
    constexpr int RPL = FASTZSL_TWOPASS_ROWS_PER_LANE;
    const double INF = inf_f64();
    const int tid = threadIdx.x;
    const int lanes = blockDim.x / qb, B = lanes * RPL;
    const int ql = tid % qb, lane = tid / qb;
    const long long c0 = (long long)blockIdx.x * qb;  // the block's first query in the tile
    const long long c = c0 + ql;
    const bool active = c < tq;  // no early return: every thread takes part in the barriers
    const int seg = blockIdx.y, n_seg = gridDim.y;
    const long long per = (tr + n_seg - 1) / n_seg;
    const long long j0 = seg * per;
    const long long j1 = (j0 + per < tr) ? j0 + per : tr;

    double* s_ls = reinterpret_cast<double*>(filter_smem);  // [L][qb], sorted ascending
    double* s_bs = s_ls + (long long)L * qb;                 // [B][qb], this phase's bounds
    double* s_cut = s_bs + (long long)B * qb;                // [qb], the lists' L-th entries
    int* s_li = reinterpret_cast<int*>(s_cut + qb);          // [L][qb]
    int* s_bi = s_li + (long long)L * qb;                    // [B][qb], -1: not kept

    for (int e = tid; e < L * qb; e += blockDim.x) {
        const int slot = e / qb;
        const long long cq = c0 + e % qb;
        const bool in = cq < tq;
        s_ls[e] = in ? list_s[at(seg, slot, L, n_q, q0 + cq)] : INF;
        s_li[e] = in ? list_i[at(seg, slot, L, n_q, q0 + cq)] : -1;
    }
    __syncthreads();
    if (lane == 0) s_cut[ql] = s_ls[(L - 1) * qb + ql];
    __syncthreads();

    const long long q = q0 + c;
    const double qq = active ? qn[q] : 0.0, aq = active ? a[q] : 0.0;
    const long long self_j = (self_on && active) ? self_offset + q : -1;
    for (long long base = j0; base < j1; base += B) {  // uniform across the block
        const double cut = s_cut[ql];
#pragma unroll
        for (int i = 0; i < RPL; ++i) {
            const long long j = base + lane + (long long)lanes * i;
            double lo = INF;
            if (active && j < j1) {
                const long long r = r0 + j;
                const double norms = qq + rn[r];
                const double s = norms - 2.0 * (double)G[j * tq + c];
                lo = (r == self_j) ? INF : s - (w * norms + aq);
            }
            const int slot = (lane * RPL + i) * qb + ql;
            s_bs[slot] = lo;
            s_bi[slot] = (lo < cut) ? (int)(r0 + j) : -1;
        }
        __syncthreads();
        if (lane == 0 && active) {
            s_cut[ql] = merge_candidates(s_ls, s_li, s_bs, s_bi, B, L, qb, ql);
        }
        __syncthreads();
    }

    for (int e = tid; e < L * qb; e += blockDim.x) {
        const int slot = e / qb;
        const long long cq = c0 + e % qb;
        if (cq < tq) {
            list_s[at(seg, slot, L, n_q, q0 + cq)] = s_ls[e];
            list_i[at(seg, slot, L, n_q, q0 + cq)] = s_li[e];
        }
    }
}

// The 3xTF32 screen fused with the filter (compute type "3xtf32"): pass 1 in one launch,
// G never written. A block owns FUSED_QB queries (blockIdx.x) and one segment of all the
// reference rows (blockIdx.y); the queries' centred float32 rows sit in shared memory
// split into TF32 hi + lo (x = hi + lo + e, |e| <= 2^-22 |x|), and the segment's rows
// come by in phases of FUSED_RB, split the same way. Each warp computes a 16-row x 16-query
// part of the phase's dot products with mma.sync.m16n8k8: lo.hi + hi.lo + hi.hi per 8
// dimensions (lo.lo, ~2^-22, is left out: the bound covers it), and its epilogue writes
// the lower bounds of its pairs into the phase buffer, kept when below the query's
// cut-off; the merge into the lists is the filter's.
constexpr int FUSED_QB = 32, FUSED_RB = 64;

__device__ __forceinline__ void split_tf32(float x, unsigned& hi, unsigned& lo) {
    hi = to_tf32(x);
    lo = to_tf32(x - __uint_as_float(hi));  // x - hi is exact in float
}

__device__ void fused(const float* __restrict__ Q32, const float* __restrict__ R32,
                      long long n_q, long long n_r, int d, const double* __restrict__ qn,
                      const double* __restrict__ rn, double w, const double* __restrict__ a,
                      long long self_offset, int self_on, int L, double* __restrict__ list_s,
                      int* __restrict__ list_i) {
    constexpr int QB = FUSED_QB, RB = FUSED_RB;
    const double INF = inf_f64();
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const long long c0 = (long long)blockIdx.x * QB;  // the block's first query
    const int seg = blockIdx.y, n_seg = gridDim.y;
    const long long per = (n_r + n_seg - 1) / n_seg;
    const long long j0 = seg * per;
    const long long j1 = (j0 + per < n_r) ? j0 + per : n_r;
    const int d_pad = (d + 7) / 8 * 8, ld = d_pad + 4;  // +4: fragment reads hit 32 banks

    double* s_ls = reinterpret_cast<double*>(filter_smem);  // [L][QB], sorted ascending
    double* s_bs = s_ls + (long long)L * QB;                 // [RB][QB], this phase's bounds
    double* s_cut = s_bs + RB * QB;                          // [QB]
    unsigned* s_qh = reinterpret_cast<unsigned*>(s_cut + QB);  // [QB][ld] TF32 hi, lo
    unsigned* s_ql = s_qh + QB * ld;
    unsigned* s_rh = s_ql + QB * ld;                         // [RB][ld]
    unsigned* s_rl = s_rh + RB * ld;
    int* s_li = reinterpret_cast<int*>(s_rl + RB * ld);      // [L][QB]
    int* s_bi = s_li + (long long)L * QB;                    // [RB][QB], -1: not kept

    for (int e = tid; e < QB * d_pad; e += blockDim.x) {
        const int row = e / d_pad, k = e % d_pad;
        const long long q = c0 + row;
        const float x = (q < n_q && k < d) ? Q32[q * d + k] : 0.0f;
        split_tf32(x, s_qh[row * ld + k], s_ql[row * ld + k]);
    }
    for (int e = tid; e < L * QB; e += blockDim.x) {
        const int slot = e / QB;
        const long long q = c0 + e % QB;
        s_ls[e] = q < n_q ? list_s[at(seg, slot, L, n_q, q)] : INF;
        s_li[e] = q < n_q ? list_i[at(seg, slot, L, n_q, q)] : -1;
    }
    __syncthreads();
    if (tid < QB) s_cut[tid] = s_ls[(L - 1) * QB + tid];

    const int mt = warp % (RB / 16);           // the warp's 16 rows of the phase
    const int nt0 = (warp / (RB / 16)) * 2;    // and its two 8-query column tiles
    for (long long base = j0; base < j1; base += RB) {  // uniform across the block
        __syncthreads();  // the last merge is done with the buffer, the cut-offs are set
        for (int e = tid; e < RB * d_pad; e += blockDim.x) {
            const int row = e / d_pad, k = e % d_pad;
            const long long j = base + row;
            const float x = (j < j1 && k < d) ? R32[j * d + k] : 0.0f;
            split_tf32(x, s_rh[row * ld + k], s_rl[row * ld + k]);
        }
        __syncthreads();
        float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
        const int m0 = mt * 16 + g;
        for (int k0 = 0; k0 < d_pad; k0 += 8) {
            const unsigned ah[4] = {s_rh[m0 * ld + k0 + t], s_rh[(m0 + 8) * ld + k0 + t],
                                    s_rh[m0 * ld + k0 + t + 4], s_rh[(m0 + 8) * ld + k0 + t + 4]};
            const unsigned al[4] = {s_rl[m0 * ld + k0 + t], s_rl[(m0 + 8) * ld + k0 + t],
                                    s_rl[m0 * ld + k0 + t + 4], s_rl[(m0 + 8) * ld + k0 + t + 4]};
            for (int nn = 0; nn < 2; ++nn) {
                const int n = (nt0 + nn) * 8 + g;
                const unsigned bh[2] = {s_qh[n * ld + k0 + t], s_qh[n * ld + k0 + t + 4]};
                const unsigned bl[2] = {s_ql[n * ld + k0 + t], s_ql[n * ld + k0 + t + 4]};
                mma_tf32_m16n8k8(acc[nn], al, bh);  // the small terms first
                mma_tf32_m16n8k8(acc[nn], ah, bl);
                mma_tf32_m16n8k8(acc[nn], ah, bh);
            }
        }
        for (int nn = 0; nn < 2; ++nn) {
            for (int i = 0; i < 4; ++i) {
                const int m = m0 + (i >= 2 ? 8 : 0), col = (nt0 + nn) * 8 + 2 * t + (i & 1);
                const long long j = base + m, q = c0 + col;
                double lo = INF;
                if (j < j1 && q < n_q) {
                    const double norms = qn[q] + rn[j];
                    const double s = norms - 2.0 * (double)acc[nn][i];
                    lo = (self_on && j == self_offset + q) ? INF : s - (w * norms + a[q]);
                }
                s_bs[m * QB + col] = lo;
                s_bi[m * QB + col] = (lo < s_cut[col]) ? (int)j : -1;
            }
        }
        __syncthreads();
        if (tid < QB && c0 + tid < n_q) {
            s_cut[tid] = merge_candidates(s_ls, s_li, s_bs, s_bi, RB, L, QB, tid);
        }
    }
    __syncthreads();
    for (int e = tid; e < L * QB; e += blockDim.x) {
        const int slot = e / QB;
        const long long q = c0 + e % QB;
        if (q < n_q) {
            list_s[at(seg, slot, L, n_q, q)] = s_ls[e];
            list_i[at(seg, slot, L, n_q, q)] = s_li[e];
        }
    }
}

template <typename T>
__device__ void rerank(const T* __restrict__ Q, const T* __restrict__ R, int d, long long n_q,
                       int k, int L, int n_seg, const double* __restrict__ list_s,
                       const int* __restrict__ list_i, const double* __restrict__ qn,
                       const double* __restrict__ rn, double w, const double* __restrict__ a,
                       double* __restrict__ out_d,
                       long long* __restrict__ out_i, int* __restrict__ overflow) {
    const long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= n_q) return;
    const double INF = inf_f64();
    // kth: the largest upper bound lo + 2 W over the k smallest lo of the sorted segment
    // lists (a k-step merge of their heads).
    int head[FASTZSL_TWOPASS_MAX_SEGMENTS];
    for (int g = 0; g < n_seg; ++g) head[g] = 0;
    const double qq = qn[q], aq = a[q];
    double kth = -INF;
    for (int p = 0; p < k; ++p) {
        int best = -1;
        double best_s = INF;
        for (int g = 0; g < n_seg; ++g) {
            if (head[g] >= L) continue;
            const long long e = at(g, head[g], L, n_q, q);
            if (list_i[e] < 0) continue;
            if (best < 0 || list_s[e] < best_s) {
                best = g;
                best_s = list_s[e];
            }
        }
        if (best < 0) {  // fewer than k candidates: every one is re-ranked
            kth = INF;
            break;
        }
        const double rj = rn[list_i[at(best, head[best], L, n_q, q)]];
        const double hi = best_s + 2.0 * (w * (qq + rj) + aq);
        kth = hi > kth ? hi : kth;
        ++head[best];
    }
    // 2 u |kth|: slack for the rounding of lo and hi themselves (SAFETY covers the rest).
    const double limit = kth + 2.2204460492503131e-16 * fabs(kth);
    for (int g = 0; g < n_seg; ++g) {
        const long long e = at(g, L - 1, L, n_q, q);
        if (list_i[e] >= 0 && list_s[e] <= limit) {
            overflow[q] = 1;
            return;
        }
    }
    double* od = out_d + q * k;
    long long* oi = out_i + q * k;
    for (int s = 0; s < k; ++s) {
        od[s] = INF;
        oi[s] = -1;
    }
    const T* qrow = Q + q * d;
    for (int g = 0; g < n_seg; ++g) {
        for (int slot = 0; slot < L; ++slot) {
            const long long e = at(g, slot, L, n_q, q);
            const long long j = list_i[e];
            if (j < 0 || !(list_s[e] <= limit)) break;  // sorted: the rest are above too
            // The direct kernel's exact sum: same value, bit for bit.
            const double dist = exact_sqdist(qrow, R + j * d, d);
            // Keep the k smallest (distance, index): ties go to the lower index whatever
            // order the segments visit them in.
            int pos = k - 1;
            if (!(dist < od[pos] || (dist == od[pos] && (oi[pos] < 0 || j < oi[pos])))) continue;
            while (pos > 0 && (od[pos - 1] > dist ||
                               (od[pos - 1] == dist && (oi[pos - 1] < 0 || oi[pos - 1] > j)))) {
                od[pos] = od[pos - 1];
                oi[pos] = oi[pos - 1];
                --pos;
            }
            od[pos] = dist;
            oi[pos] = j;
        }
    }
    overflow[q] = 0;
}

}  // namespace twopass
}  // namespace fastzsl

extern "C" __global__ void __launch_bounds__(FASTZSL_TWOPASS_FILTER_THREADS) twopass_filter(
    const float* G, long long tq, long long tr, long long q0, long long r0, const double* qn,
    const double* rn, double w, const double* a, long long self_offset, int self_on, int L,
    long long n_q, double* list_s, int* list_i, int qb) {
    fastzsl::twopass::filter(G, tq, tr, q0, r0, qn, rn, w, a, self_offset, self_on, L, n_q,
                             list_s, list_i, qb);
}

// FASTZSL_TWOPASS_FILTER_THREADS = 256: 8 warps = (FUSED_RB / 16) x (FUSED_QB / 16).
extern "C" __global__ void __launch_bounds__(FASTZSL_TWOPASS_FILTER_THREADS) twopass_fused_3xtf32(
    const float* Q32, const float* R32, long long n_q, long long n_r, int d, const double* qn,
    const double* rn, double w, const double* a, long long self_offset, int self_on, int L,
    double* list_s, int* list_i) {
    fastzsl::twopass::fused(Q32, R32, n_q, n_r, d, qn, rn, w, a, self_offset, self_on, L,
                            list_s, list_i);
}

#define FASTZSL_RERANK_ENTRY(NAME, T)                                                       \
    extern "C" __global__ void __launch_bounds__(FASTZSL_TWOPASS_THREADS) NAME(             \
        const T* Q, const T* R, int d, long long n_q, int k, int L, int n_seg,              \
        const double* list_s, const int* list_i, const double* qn, const double* rn,        \
        double w, const double* a, double* out_d, long long* out_i, int* overflow) {        \
        fastzsl::twopass::rerank<T>(Q, R, d, n_q, k, L, n_seg, list_s, list_i, qn, rn, w,   \
                                    a, out_d, out_i, overflow);                             \
    }

FASTZSL_RERANK_ENTRY(twopass_rerank_f32, float)
FASTZSL_RERANK_ENTRY(twopass_rerank_f64, double)
