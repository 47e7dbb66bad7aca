"""Low-dimensional data, single queries and other batch shapes: fastzsl against its peers, in interleaved rounds (A B C, A B C).

1. ``loop fit d=4``: in-sample LoOP, N = 100k and 1M points, d = 4, k = 10:
   ``fastzsl.LoOP(n_neighbors=10).fit`` (knn="auto": the k-d tree) vs scikit-learn
   ``LocalOutlierFactor(n_neighbors=10).fit`` (its default algorithm, a kd-tree here) and,
   for reference, bare scipy ``cKDTree`` build + ``query(k=11, workers=-1)``.
2. ``single query``: N_ref = 100k, d = 50, k = 20, one query at a time, 200 queries (each
   round = the 200 queries for each candidate in turn; per-query medians too): faiss ``IndexFlatL2.search`` vs
   ``ExactIndex.search`` on a prepared index and ``LoOP.outlier_probability`` of one row
   (a LoOP fitted on the same reference).
3. ``large batch``: 10k queries x 100k references, d = 50, k = 20: ``fastzsl.knn`` vs faiss;
   ``variants``: the same at d = 512, at k = 100, and with float64 input.
4. ``loop score``: LoOP of 10k new points against 100k references vs scikit-learn LOF
   ``score_samples``.

Every candidate's result is checked against the exact answer before it is timed. Ratios
are baseline time / candidate time (above 1: faster than the baseline), of the minima and
of the medians over the rounds. The 1-minute load average is recorded before and after
each group: other engineers' jobs share these 2 cores.

    PYTHONPATH=. python benchmarks/shapes.py [--quick] [--groups fit,single,batch,variants,score]

writes benchmarks/results/shapes-cpu-2core.{md,json} (``--quick``: smaller sizes, to
/tmp), replacing the groups it ran and keeping the others.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

import fastzsl
from _harness import interleaved, interleaved_ratios, load_1m
from fastzsl._platform import cpu_count, cpu_name
from fastzsl.testing import TOL, make_blobs


def _group(name, baseline, candidates, rounds, warmup=1, **sizes):
    before = load_1m()
    times = interleaved(candidates, rounds=rounds, warmup=warmup)
    after = load_1m()
    ratios = interleaved_ratios(times, baseline)
    row = dict(group=name, measured=time.strftime("%Y-%m-%d %H:%M UTC"), baseline=baseline,
               rounds=rounds, loadavg_1m_before=before,
               loadavg_1m_after=after, sizes=sizes, results=ratios)
    print(json.dumps(row), flush=True)
    return row


def loop_fit_group(n, rounds, warmup):
    from scipy.spatial import cKDTree
    from sklearn.neighbors import LocalOutlierFactor

    X, _ = make_blobs(n, 4, seed=0, dtype=np.float64)
    k = 10
    loop = fastzsl.LoOP(n_neighbors=k).fit(X)
    assert loop.knn_method_ == "kdtree"
    lof = LocalOutlierFactor(n_neighbors=k).fit(X)
    D, _ = loop.index_.search(X, k, exclude_self=True)  # the graph LoOP was fitted on
    # float64 both ways: scikit-learn's tree distances squared (4u) against a double sum
    np.testing.assert_allclose(lof._distances_fit_X_ ** 2, D, **TOL[np.dtype(np.float64)])
    candidates = {
        "sklearn LocalOutlierFactor(n_neighbors=10).fit": lambda: LocalOutlierFactor(
            n_neighbors=k).fit(X),
        "fastzsl LoOP(n_neighbors=10).fit (knn=auto: kdtree)": lambda: fastzsl.LoOP(
            n_neighbors=k).fit(X),
        "scipy cKDTree(X).query(X, k=11, workers=-1) (kNN only)": lambda: cKDTree(X).query(
            X, k=k + 1, workers=-1),
    }
    return _group(f"loop fit N={n} d=4 k={k}", next(iter(candidates)), candidates,
                  rounds=rounds, warmup=warmup, N=n, d=4, k=k, dtype="float64")


def _d50(n_ref, n_q, d=50):
    """Reference and query rows (blobs, float32) and a faiss IndexFlatL2 of the reference."""
    import faiss

    X, _ = make_blobs(n_ref + n_q, d, seed=0, dtype=np.float32)
    R, Q = np.ascontiguousarray(X[:n_ref]), np.ascontiguousarray(X[n_ref:])
    flat = faiss.IndexFlatL2(d)
    flat.add(R)
    return R, Q, flat


def single_query_group(n_ref, n_queries, rounds):
    R, Q, flat = _d50(n_ref, n_queries)
    k = 20
    index = fastzsl.ExactIndex(R)
    loop = fastzsl.LoOP(n_neighbors=k).fit(R)
    D_ref, I_ref = fastzsl.knn(Q[:20], R, k, backend="numpy")
    for i in range(20):
        D, I = index.search(Q[i:i + 1], k)
        np.testing.assert_array_equal(I[0], I_ref[i])
        np.testing.assert_allclose(D[0], D_ref[i], **TOL[np.dtype(np.float32)])
    np.testing.assert_allclose(loop.outlier_probability(Q[:20]),
                               fastzsl.loop_score(D_ref, I_ref, loop.fit_),
                               **TOL[np.dtype(np.float64)])
    rows = [Q[i:i + 1] for i in range(n_queries)]
    per_query = {}

    def each_query(name, fn):
        # One round = every query once, one at a time (a round of one library after another:
        # a library's idle OpenMP threads spin for a while after each call and would slow
        # whichever library ran next, were the libraries interleaved query by query).
        per_query[name] = times = []

        def run():
            for q in rows:
                start = time.perf_counter()
                fn(q)
                times.append(time.perf_counter() - start)
        return run

    candidates = {
        name: each_query(name, fn) for name, fn in [
            ("faiss IndexFlatL2.search (1 query)", lambda q: flat.search(q, k)),
            ("fastzsl ExactIndex.search (1 query, prepared index)",
             lambda q: index.search(q, k)),
            ("fastzsl LoOP.outlier_probability (1 row)", loop.outlier_probability)]}
    row = _group(f"single query N_ref={n_ref} d=50 k={k}", next(iter(candidates)),
                 candidates, rounds=rounds, warmup=1, N_ref=n_ref, d=50, k=k,
                 queries=n_queries, dtype="float32")
    # Per query, over the timed rounds (the warm-up round dropped).
    base = np.array(per_query[row["baseline"]][n_queries:])
    row["per_query"] = {
        name: dict(median=float(np.median(t[n_queries:])), min=float(np.min(t[n_queries:])),
                   ratio_of_medians=float(np.median(base) / np.median(t[n_queries:])),
                   ratio_of_minima=float(base.min() / np.min(t[n_queries:])))
        for name, t in per_query.items()}
    print(json.dumps(row["per_query"]), flush=True)
    return row


def large_batch_group(n_ref, n_q, rounds, d=50, k=20, dtype=np.float32):
    """fastzsl.knn against faiss IndexFlatL2 (float32 always: faiss has no float64; with
    float64 input fastzsl searches the float64 rows, faiss their float32 copy)."""
    R, Q, flat = _d50(n_ref, n_q, d)
    R, Q = R.astype(dtype), Q.astype(dtype)
    Q32 = Q.astype(np.float32)
    D_ref, I_ref = fastzsl.knn(Q[:100], R, k, backend="numpy")
    D, I = fastzsl.knn(Q[:100], R, k)
    np.testing.assert_array_equal(I, I_ref)
    candidates = {
        "faiss IndexFlatL2.search (index built outside the timer)": lambda: flat.search(Q32, k),
        "fastzsl.knn (method=auto: exact)": lambda: fastzsl.knn(Q, R, k),
    }
    name = np.dtype(dtype).name
    return _group(f"large batch N_ref={n_ref} N_q={n_q} d={d} k={k}"
                  + ("" if dtype == np.float32 else f" {name}"), next(iter(candidates)),
                  candidates, rounds=rounds, N_ref=n_ref, N_q=n_q, d=d, k=k, dtype=name)


def loop_score_group(n_ref, n_q, rounds):
    """Novelty scores of new points: fastzsl LoOP.outlier_probability against scikit-learn
    LocalOutlierFactor(novelty=True).score_samples (LOF, not LoOP: the same neighbourhood
    work); both fitted outside the timer."""
    from sklearn.neighbors import LocalOutlierFactor

    R, Q, _ = _d50(n_ref, n_q)
    k = 20
    loop = fastzsl.LoOP(n_neighbors=k).fit(R)
    lof = LocalOutlierFactor(n_neighbors=k, novelty=True).fit(R)
    D_ref, I_ref = fastzsl.knn(Q[:100], R, k, backend="numpy")
    np.testing.assert_allclose(loop.outlier_probability(Q[:100]),
                               fastzsl.loop_score(D_ref, I_ref, loop.fit_),
                               **TOL[np.dtype(np.float64)])
    candidates = {
        "sklearn LocalOutlierFactor(novelty=True).score_samples": lambda: lof.score_samples(Q),
        "fastzsl LoOP.outlier_probability": lambda: loop.outlier_probability(Q),
    }
    return _group(f"loop score N_ref={n_ref} N_q={n_q} d=50 k={k}", next(iter(candidates)),
                  candidates, rounds=rounds, N_ref=n_ref, N_q=n_q, d=50, k=k,
                  dtype="float32")


def write(rows, out, notes=()):
    """The groups' tables, then ``notes`` (markdown lines, kept in the JSON's meta)."""
    meta = dict(cpu=cpu_name(), cores=cpu_count(), date=time.strftime("%Y-%m-%d %H:%M UTC"),
                note="other engineers' jobs shared these 2 cores: see the load averages",
                notes=list(notes))
    out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, groups=rows), indent=1))
    lines = [f"# Shapes ({meta['cpu']}, {meta['cores']} cores, {meta['date']})", "",
             "Interleaved rounds (A B C, A B C: benchmarks/_harness.py `interleaved`). Ratio = "
             "baseline time / this time (above 1: faster than the baseline), of the minima "
             "and of the medians. Other engineers' jobs shared the 2 cores: the 1-minute "
             "load average before and after each group is given; at a load near 2 and above, "
             "a second thread often finds no free core.", ""]
    for row in rows:
        lines += [f"## {row['group']}", "",
                  f"{row.get('measured', 'run of 2026-11-28 14:24-14:44 UTC')}; {row['rounds']} rounds"
                  + (f" of {row['sizes']['queries']} queries" if "per_query" in row else "")
                  + f"; load average (1 min) {row['loadavg_1m_before']} "
                  f"before, {row['loadavg_1m_after']} after; baseline: {row['baseline']}", "",
                  "| candidate | min | median | ratio of minima | ratio of medians |",
                  "|---|---|---|---|---|"]
        for name, r in row["results"].items():
            unit, scale = ("ms", 1e3) if r["median"] < 1 else ("s", 1)
            lines.append(f"| {name} | {r['min'] * scale:.3g} {unit} | "
                         f"{r['median'] * scale:.3g} {unit} | {r['ratio_of_minima']:.2f} | "
                         f"{r['ratio_of_medians']:.2f} |")
        lines.append("")
        if "per_query" in row:
            lines += ["Per query (each round: every query once, one at a time; "
                      f"{row['sizes']['queries']} queries x {row['rounds']} rounds):", "",
                      "| candidate | min | median | ratio of minima | ratio of medians |",
                      "|---|---|---|---|---|"]
            for name, r in row["per_query"].items():
                lines.append(f"| {name} | {r['min'] * 1e3:.3g} ms | {r['median'] * 1e3:.3g} ms"
                             f" | {r['ratio_of_minima']:.2f} | {r['ratio_of_medians']:.2f} |")
            lines.append("")
    lines += list(notes)
    out.with_suffix(".md").write_text("\n".join(lines) + ("\n" if notes else ""))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--groups", default="fit,single,batch,variants,score")
    args = parser.parse_args()
    groups = args.groups.split(",")
    rows = []
    if "fit" in groups:
        if args.quick:
            rows.append(loop_fit_group(20_000, rounds=2, warmup=1))
        else:
            rows.append(loop_fit_group(100_000, rounds=5, warmup=1))
            rows.append(loop_fit_group(1_000_000, rounds=2, warmup=0))
    if "single" in groups:
        rows.append(single_query_group(10_000 if args.quick else 100_000, 200, rounds=5))
    n_ref, n_q = (10_000, 1_000) if args.quick else (100_000, 10_000)
    if "batch" in groups:
        rows.append(large_batch_group(n_ref, n_q, rounds=3))
    if "variants" in groups:  # the other large-batch shapes: d = 512, k = 100, float64
        rows.append(large_batch_group(n_ref, n_q, rounds=2, d=512))
        rows.append(large_batch_group(n_ref, n_q, rounds=3, k=100))
        rows.append(large_batch_group(n_ref, n_q, rounds=3, dtype=np.float64))
    if "score" in groups:
        rows.append(loop_score_group(n_ref, n_q, rounds=3))
    out = (Path("/tmp") if args.quick else Path(__file__).parent / "results")
    out = out / "shapes-cpu-2core"
    notes = []
    if out.with_suffix(".json").exists():  # keep the groups not run this time, and the notes
        ran = {row["group"] for row in rows}
        doc = json.loads(out.with_suffix(".json").read_text())
        earlier, notes = doc["groups"], doc["meta"].get("notes", [])
        rows = [row for row in earlier if row["group"] not in ran] + rows
        rows.sort(key=lambda row: ("loop fit" not in row["group"], "batch" in row["group"],
                                   "score" in row["group"]))
    write(rows, out, notes)


if __name__ == "__main__":
    main()
