"""Zero-shot scoring of small batches: ``ZeroShotClassifier.predict_proba`` on a stream.

Model: the trained run (``FASTZSL_BENCH_RUN``, default ``fastzsl-run/model.fzsl`` from
``fastzsl train``: 3200-d Fashion-MNIST features, a novelty gate with LoOP in a 50-d PCA of
the features and Gaussians in the semantic space) when it exists; else a small seeded fit
(6 seen and 2 unseen classes, 3000 images of 60-d features made from 25-d word vectors).
The table says which. Queries: seeded standard normal rows of the model's width (the work
is exact kNN and dense products: its cost does not depend on the values).

Group ``predict_proba n=..`` (n = 10, 1000, 10000 rows; --quick: 10 and 1000): one timed
call is 5 consecutive ``predict_proba`` calls on the same rows, as a stream of batches
(the first after the harness's idle pause, the others back to back):

- baseline: every NumPy product of the scoring call (the gate's PCA projection, ...) on all
  the BLAS threads (``fastzsl._threads.BLAS_WORK_PER_THREAD = 1``: the behaviour before
  ``sized_matmul``);
- fastzsl: those products on BLAS threads sized to their work (the default: one thread
  per 2^30 multiply-adds);
- ``n_jobs=1``: the whole call on one thread.

OpenBLAS's threads busy-wait for a while after a multi-threaded call; on the same cores
they slow the OpenMP kernels that follow (kNN, LoOP, Gaussians), which is what the first
two rows compare.

Rounds are interleaved within each group (conftest ``bench``: A B C, A B C, ...). Before
timing, the three give the same predictions, and probabilities within 1e-6 (the mapping's
float32 products may be summed in another order on another number of torch threads).
"""
import os

import numpy as np
import pytest

from _harness import RUN_MODEL, Candidate

STREAM = 5  # predict_proba calls per timed call


def _small_model():
    """A seeded zero-shot model of synthetic data (when no trained run exists)."""
    from fastzsl import ZeroShotClassifier

    rng = np.random.default_rng(0)
    names = [f"class{i}" for i in range(8)]
    vectors = {name: rng.standard_normal(25) for name in names}
    y = rng.integers(0, 6, 3000)
    W = rng.standard_normal((25, 60))
    X = np.stack([vectors[names[i]] for i in y]) @ W + 0.5 * rng.standard_normal((3000, 60))
    return ZeroShotClassifier(vectors, names[6:], random_state=0).fit(
        X.astype(np.float32), np.array(names)[y])


@pytest.fixture(scope="module")
def zero_shot_model():
    import fastzsl

    if os.path.isfile(RUN_MODEL):
        model, source = fastzsl.load(RUN_MODEL), f"the trained run ({RUN_MODEL})"
    else:
        model, source = _small_model(), "a small seeded fit (no trained run)"
    for channel in getattr(model.gate_, "channels_", []):
        if hasattr(channel[3], "progress"):  # no progress bars inside the timer
            channel[3].progress = False
    return model, source


def _sizes(cfg):
    return (10, 1000) if cfg.quick else (10, 1000, 10_000)


@pytest.mark.parametrize("n", [10, 1000, 10_000])
@pytest.mark.parametrize("case", ["all_blas_threads", "sized", "one_thread"])
def test_predict_proba_stream(case, n, bench, cfg, zero_shot_model):
    """One row of the scoring-latency table."""
    if n not in _sizes(cfg):
        pytest.skip("--quick: 10 and 1000 rows")
    from fastzsl import _threads

    model, source = zero_shot_model
    group = f"predict_proba n={n}"

    def build(stack):
        X = np.random.default_rng(1).standard_normal((n, model.n_features_in_)).astype(
            np.float32)
        work_per_thread = _threads.BLAS_WORK_PER_THREAD
        stack.callback(setattr, _threads, "BLAS_WORK_PER_THREAD", work_per_thread)
        stack.callback(model.set_params, n_jobs=model.n_jobs)

        def stream(blas_work_per_thread, n_jobs):
            def run():
                _threads.BLAS_WORK_PER_THREAD = blas_work_per_thread
                model.set_params(n_jobs=n_jobs)
                for _ in range(STREAM):
                    proba = model.predict_proba(X)
                return proba
            return run

        runs = {"all_blas_threads": stream(1, None), "sized": stream(work_per_thread, None),
                "one_thread": stream(work_per_thread, 1)}
        probas = {case: run() for case, run in runs.items()}
        for case, proba in probas.items():
            np.testing.assert_array_equal(proba.argmax(1), probas["sized"].argmax(1))
            np.testing.assert_allclose(proba, probas["sized"], rtol=0, atol=1e-6)
        extra = dict(n=n, stream=STREAM, model=source)
        return {
            "all_blas_threads": Candidate(
                f"baseline: {STREAM} predict_proba calls, products on all BLAS threads",
                runs["all_blas_threads"], True, dict(extra, peer="fastzsl-before")),
            "sized": Candidate(
                f"fastzsl: {STREAM} predict_proba calls, products on sized BLAS threads",
                runs["sized"], extra=dict(extra, peer="fastzsl")),
            "one_thread": Candidate(f"fastzsl: {STREAM} predict_proba calls, n_jobs=1",
                                    runs["one_thread"], extra=dict(extra, peer="fastzsl")),
        }

    bench(group, case, build)
