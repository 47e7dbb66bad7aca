"""How long a BF16 screen's candidate lists must be, by data and by hi/lo split.

The certificate of fastzsl/backends/_knn_bf16.py keeps every row whose screened value is
within a margin of the k-th; the margin grows with eps = ||q - q'|| + max_j ||r_j - r'_j||
(the rounding errors of the rows the screen multiplies) times the k-th distance's square
root. A hi/lo split (x ~ hi + lo, both bfloat16) shrinks one side's error to ~2^-16
relative at the price of more products: on AVX512_BF16 (2x the FP32 FMA rate) one product
costs 0.5 of the float32 kernel's GEMM, a split side 1.0, both sides (hi hi + hi lo + lo hi)
1.5; on AMX-BF16 (8x and more) an eighth of that or less.

For each data set and scheme this prints, over the queries, how many rows the certificate's
window holds (the list length the screen needs so that the query certifies), from exact
float64 arithmetic on the rounded rows (the float32 sums' own error, ~d 2^-24, is left out:
it is 10^4 times smaller). Run: .venv/bin/python benchmarks/bf16_window.py [--out FILE.md]
"""
import argparse

import numpy as np

from fastzsl.testing import bfloat16_round, make_blobs

K = 20
N_REF, N_Q = 20_000, 500
SCHEMES = {  # name: (queries split, references split, cost vs the FP32 GEMM on AVX512_BF16)
    "one product": (False, False, 0.5),
    "queries hi/lo": (True, False, 1.0),
    "references hi/lo": (False, True, 1.0),
    "both hi/lo (3 products)": (True, True, 1.5),
}


def rounded(X, split):
    """(the rows the screen multiplies, in float64; the per-row norm of what they miss,
    and of the lo parts for the lo x lo product a 3-product scheme leaves out)."""
    hi = bfloat16_round(X)
    if not split:
        return hi.astype(np.float64), np.zeros(len(X))
    lo = bfloat16_round(X - hi)
    return hi.astype(np.float64) + lo, np.linalg.norm(lo.astype(np.float64), axis=1)


def window(Q, R, split_q, split_r):
    """Rows within the certificate's limit, per query (module docstring)."""
    Qr, q_lo = rounded(Q, split_q)
    Rr, r_lo = rounded(R, split_r)
    Q64, R64 = Q.astype(np.float64), R.astype(np.float64)
    eps = 2 * (np.linalg.norm(Q64 - Qr, axis=1)[:, None]
               + np.linalg.norm(R64 - Rr, axis=1).max())  # SAFETY 2, as the screen
    qn = (Qr**2).sum(1)[:, None]
    v = (Rr**2).sum(1)[None] - 2 * Qr @ Rr.T
    if split_q and split_r:  # the lo x lo product left out: |2 q_lo . r_lo| per pair
        v += 2 * np.abs(q_lo[:, None] * r_lo[None])
    T = np.sort(v, axis=1)[:, K - 1:K]
    listed = np.maximum(T + qn, 0)
    upper = listed + 2 * eps * np.sqrt(listed) + eps**2
    limit = (np.sqrt(upper) + eps) ** 2 - qn
    return (v <= limit).sum(1)


def datasets():
    rng = np.random.default_rng(0)
    for d in (50, 128, 512):
        yield f"standard normal d={d}", rng.standard_normal((N_REF + N_Q, d)).astype(np.float32)
    for d in (50, 128, 512):
        X, _ = make_blobs(N_REF + N_Q, d, seed=d)
        yield f"blobs (bench data) d={d}", X


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the table as Markdown here too")
    args = parser.parse_args(argv)
    lines = [f"# BF16 screen: candidates the certificate's window holds (k = {K})", "",
             f"{N_Q} queries against {N_REF:,} rows per data set (seeded); "
             "`python benchmarks/bf16_window.py`. The counts are float64 arithmetic on the "
             "rounded rows, the same on every CPU. "
             "Numbers are rows within the limit per query (median / 99th percentile / max); "
             "a query certifies when its list is longer. Cost: the screen's products against "
             "the float32 kernel's GEMM on AVX512_BF16 (AMX-BF16: a quarter of it or less).",
             "", "| data | median ‖q‖²/T | " + " | ".join(
                 f"{name} (cost {cost})" for name, (_, _, cost) in SCHEMES.items()) + " |",
             "|---|---:|" + "---:|" * len(SCHEMES)]
    for name, X in datasets():
        R, Q = X[:N_REF], X[N_REF:]
        D = (Q.astype(np.float64)**2).sum(1)[:, None] + (R.astype(np.float64)**2).sum(1) \
            - 2 * Q.astype(np.float64) @ R.astype(np.float64).T
        ratio = np.median((Q.astype(np.float64)**2).sum(1) / np.sort(D, 1)[:, K - 1])
        cells = []
        for split_q, split_r, _ in SCHEMES.values():
            n = window(Q, R, split_q, split_r)
            cells.append(f"{np.median(n):.0f} / {np.percentile(n, 99):.0f} / {n.max()}")
        lines.append(f"| {name} | {ratio:.1f} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
