"""P(unseen | x) adapted to an unlabelled batch: the density-ratio estimate against a NumPy
reference, its calibration where the Bayes posterior is known, and the model around it."""
import copy

import numpy as np
import pytest

from fastzsl.adaptation import BatchAdaptation, row_keys
from fastzsl.calibration import ScoreCalibrator

SHIFT = 3.0  # the unseen classes' centre, against the seen ones' at 0 (unit variances)


def _log_normal(X, mean):
    return -((X - mean) ** 2).sum(-1) / 2


def _bayes(X, share):
    """P(unseen | x) when seen images are N(0, I) and unseen ones N((SHIFT, 0..), I)."""
    mean = np.zeros(X.shape[1])
    mean[0] = SHIFT
    log_odds = _log_normal(X, mean) - _log_normal(X, 0.0) + np.log(share / (1 - share))
    return 1.0 / (1.0 + np.exp(-log_odds))


def _mixture(n, share, rng, d=2):
    n_unseen = int(round(share * n))
    X = rng.normal(size=(n, d))
    X[:n_unseen, 0] += SHIFT
    return X, np.arange(n) < n_unseen


def _ece(p, is_unseen, bins=10):
    which = np.minimum((p * bins).astype(int), bins - 1)
    return sum(abs(is_unseen[which == b].sum() - p[which == b].sum())
               for b in range(bins)) / p.size


@pytest.mark.parametrize("share", [0.1, 0.5])
def test_p_unseen_is_calibrated_where_the_bayes_posterior_is_known(share):
    """Reference: 4000 seen images; batch: 3000 images at the stated share; scored on 3000
    fresh images of the same mixture, which took no part in the fit."""
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(4000, 2))
    batch, _ = _mixture(3000, share, rng)
    Q, is_unseen = _mixture(3000, share, rng)
    p = BatchAdaptation().fit(reference, batch).unseen_probability(Q, share)
    bayes = _bayes(Q, share)
    # Tolerances. Sampling: a calibrated predictor's expected ECE over 10 bins and N = 3000
    # is at most sqrt(10 / (4 N)) = 0.029 (Cauchy-Schwarz over the bins' binomial errors).
    # Estimation: the ratio is read from 100 neighbours, a count whose binomial error is
    # about 0.05 in c, i.e. a few hundredths in P; twice the sampling bound covers both.
    assert _ece(p, is_unseen) < 2 * np.sqrt(10 / (4 * Q.shape[0]))
    assert np.abs(p - bayes).mean() < 0.35 * np.abs(share - bayes).mean()

    def skill(q):
        return 1 - ((q - is_unseen) ** 2).mean() / ((share - is_unseen) ** 2).mean()

    assert skill(p) > 0.8 * skill(bayes) > 0


def _numpy_counts(pooled, is_batch, Q, k, leave_out):
    """Batch neighbours among the k nearest pooled points of each row of Q, by sorting
    all squared distances (``leave_out[i]``: the pooled index row i is, or -1)."""
    counts = []
    for q, me in zip(Q, leave_out):
        d2 = ((pooled - q) ** 2).sum(1)
        if me >= 0:
            d2[me] = np.inf
        counts.append(is_batch[np.argsort(d2, kind="stable")[:k]].sum())
    return np.array(counts)


def test_counts_and_leave_one_out_match_numpy():
    """The fit's counts leave each pooled point out; a batch row scored again (recognised
    by its key) gives the same count, also when its coordinates moved by a few ulps; a
    training row or a new point counts its k nearest: all equal the NumPy sort."""
    rng = np.random.default_rng(2)
    reference, batch = rng.normal(size=(300, 3)), rng.normal(0.7, 1.0, size=(200, 3))
    k = 15
    model = BatchAdaptation(k).fit(reference, batch)
    pooled = np.vstack([reference, batch]).astype(np.float32).astype(np.float64)
    is_batch = np.r_[np.zeros(300, bool), np.ones(200, bool)]
    fit_counts = _numpy_counts(pooled, is_batch, pooled, k, np.arange(500))
    expected = ScoreCalibrator("isotonic").fit(
        fit_counts, is_batch, sample_weight=np.where(is_batch, 0.5 / 200, 0.5 / 300))
    np.testing.assert_array_equal(model.calibrator_.points_, expected.points_)
    np.testing.assert_array_equal(model.batch_probability(pooled[300:]),
                                  expected.transform(fit_counts[300:]))
    moved = np.nextafter(pooled[300:].astype(np.float32), np.float32(np.inf))
    np.testing.assert_array_equal(
        model.batch_probability(moved, keys=row_keys(pooled[300:])),
        expected.transform(fit_counts[300:]))
    Q = np.vstack([pooled[:300], rng.normal(size=(50, 3))]).astype(np.float32)
    np.testing.assert_array_equal(
        model.batch_probability(Q),
        expected.transform(_numpy_counts(pooled, is_batch, Q.astype(np.float64), k,
                                         np.full(350, -1))))


def test_row_keys_tell_rows_apart():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(5000, 7)).astype(np.float32)
    keys = row_keys(X)
    assert len(np.unique(keys)) == 5000
    np.testing.assert_array_equal(row_keys(X[::-1]), keys[::-1])
    bumped = X.copy()
    bumped[:, 3] = np.nextafter(bumped[:, 3], np.float32(np.inf))  # one ulp of one column
    assert not np.isin(row_keys(bumped), keys).any()


def test_the_share_enters_only_by_the_mixture_formula():
    rng = np.random.default_rng(3)
    model = BatchAdaptation(20).fit(rng.normal(size=(400, 2)), _mixture(300, 0.3, rng)[0])
    Q = _mixture(100, 0.3, rng)[0]
    c = model.batch_probability(Q)
    for share in (0.05, 0.3, 0.9):
        np.testing.assert_allclose(model.unseen_probability(Q, share),
                                   np.clip(1 - (1 - share) * (1 - c) / c, 0, 1), rtol=0,
                                   atol=0)


def test_a_batch_apart_from_the_training_images_is_unseen():
    """Two clusters 100 apart: every batch-cluster point has only batch neighbours, every
    training-cluster point only training ones."""
    rng = np.random.default_rng(4)
    reference, batch = rng.normal(size=(200, 2)), rng.normal(100.0, 1.0, size=(200, 2))
    model = BatchAdaptation(10).fit(reference, batch)
    p_new = model.unseen_probability(rng.normal(100.0, 1.0, size=(20, 2)), 0.5)
    p_seen = model.unseen_probability(rng.normal(size=(20, 2)), 0.5)
    eps = 0.5 / 200  # the isotonic map's margin off 0 and 1 (ScoreCalibrator)
    np.testing.assert_allclose(p_new, 1 - 0.5 * eps / (1 - eps), rtol=1e-12)
    assert (p_seen == 0).all()


def test_max_rows_cuts_each_set_with_a_seed():
    rng = np.random.default_rng(5)
    reference, batch = rng.normal(size=(500, 2)), rng.normal(size=(300, 2))
    model = BatchAdaptation(10, max_rows=100).fit(reference, batch)
    assert model.is_batch_.sum() == 100 and (~model.is_batch_).sum() == 100
    kept = model.index_.reference[model.key_rows_]  # the keys follow the rows kept
    np.testing.assert_array_equal(row_keys(kept), model.keys_)
    again = BatchAdaptation(10, max_rows=100).fit(reference, batch)
    np.testing.assert_array_equal(model.index_.reference, again.index_.reference)


@pytest.mark.parametrize("change, message", [
    (lambda r, b: (r, np.where(b > 1, np.nan, b)), "NaN"),
    (lambda r, b: (r, b[:, :1]), "features"),
    (lambda r, b: (r, b[:0]), "empty|0 rows|at least"),
    (lambda r, b: (r[:5], b[:5]), "n_neighbors=20 is larger than the data"),
])
def test_bad_input_is_named(change, message):
    rng = np.random.default_rng(6)
    reference, batch = change(rng.normal(size=(100, 2)), rng.normal(size=(50, 2)))
    with pytest.raises(ValueError, match=message):
        BatchAdaptation(20).fit(reference, batch)


def test_bad_max_rows_and_share_are_named():
    rng = np.random.default_rng(7)
    with pytest.raises(ValueError, match="max_rows"):
        BatchAdaptation(5, max_rows=0).fit(rng.normal(size=(50, 2)), rng.normal(size=(50, 2)))
    model = BatchAdaptation(5).fit(rng.normal(size=(50, 2)), rng.normal(size=(50, 2)))
    with pytest.raises(ValueError, match="prior|share"):
        model.unseen_probability(rng.normal(size=(3, 2)), 1.5)


# ---------------------------------------------------------------------- the model around it
torch = pytest.importorskip("torch")

from fastzsl import ZeroShotClassifier, load  # noqa: E402
from fastzsl.novelty_gate import NoveltyGate, shorthand_detector  # noqa: E402

from test_zeroshot import FAST, UNSEEN, _world, default_gate  # noqa: E402


@pytest.fixture(scope="module")
def world_and_model():
    vectors, X, y, X_test, y_test = _world()
    model = ZeroShotClassifier(vectors, UNSEEN, novelty=default_gate(), **FAST).fit(X, y)
    return X_test, y_test, model


def test_adapted_model_saves_loads_and_unadapts(world_and_model, tmp_path):
    X_test, y_test, fitted = world_and_model
    model = copy.deepcopy(fitted)
    inductive = model.outlier_probability(X_test)
    model.set_params(unseen_prior=0.2).adapt(X_test, n_neighbors=10)
    adapted = model.outlier_probability(X_test)
    assert model.gate_.adapted_ and not np.array_equal(adapted, inductive)
    proba = model.predict_proba(X_test)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    model.save(tmp_path / "adapted.fzsl")
    loaded = load(tmp_path / "adapted.fzsl")
    np.testing.assert_array_equal(loaded.outlier_probability(X_test), adapted)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), proba)
    # the share is read at scoring time: no refit
    c = model.gate_.adaptation_.batch_probability(
        model.gate_.channels_[model.gate_.adaptation_channel_][2].transform(X_test),
        keys=row_keys(X_test))
    np.testing.assert_array_equal(model.set_params(unseen_prior=0.4).outlier_probability(X_test),
                                  np.clip(1 - 0.6 * (1 - c) / c, 0, 1))
    model.set_params(unseen_prior=None).adapt(None)
    np.testing.assert_array_equal(model.outlier_probability(X_test), inductive)
    assert not model.gate_.adapted_


def test_adapting_finds_the_unseen_images_of_the_batch(world_and_model):
    """The batch is the test set (2 unseen classes of 12: share 1/6); every unseen image
    is more likely unseen than every seen one is, and the seen ones keep P low."""
    X_test, y_test, fitted = world_and_model
    is_unseen = np.isin(y_test, UNSEEN)
    model = copy.deepcopy(fitted).set_params(unseen_prior=is_unseen.mean())
    p = model.adapt(X_test, n_neighbors=10).outlier_probability(X_test)
    assert p[is_unseen].min() > p[~is_unseen].max()
    assert p[~is_unseen].mean() < is_unseen.mean()


def test_refit_drops_the_adaptation_and_a_gate_without_loop_is_refused(world_and_model):
    X_test, _, fitted = world_and_model
    vectors, X, y, _, _ = _world()
    model = copy.deepcopy(fitted).adapt(X_test, n_neighbors=10)
    model.refit_novelty(X, y)
    assert not model.gate_.adapted_
    gaussian_only = ZeroShotClassifier(
        vectors, UNSEEN, novelty=NoveltyGate([shorthand_detector("gaussian")], rounds=2),
        **FAST).fit(X, y)
    with pytest.raises(ValueError, match="LoOP channel"):
        gaussian_only.adapt(X_test)
    with pytest.raises(ValueError, match="features"):
        model.adapt(X_test[:, :3])


def test_sample_rows_draws_across_shards_in_input_order(tmp_path):
    from fastzsl.batch import open_input, sample_rows
    from fastzsl.batch import _shards

    X = np.random.default_rng(8).normal(size=(700, 3))
    np.save(tmp_path / "a.npy", X[:300])
    np.save(tmp_path / "b.npy", X[300:].astype(np.float32))
    shards = open_input(tmp_path)
    chosen = np.sort(np.random.default_rng(3).choice(700, 250, replace=False))
    for block in (_shards.SAMPLE_BLOCK, 64):  # one block a shard, and many
        _shards.SAMPLE_BLOCK = block
        try:
            got = sample_rows(shards, 250, random_state=3)
        finally:
            _shards.SAMPLE_BLOCK = 65_536
        np.testing.assert_array_equal(got, X[chosen].astype(np.float32))
    np.testing.assert_array_equal(sample_rows(shards, 10_000), X.astype(np.float32))


def test_adapt_command_writes_the_adapted_model(world_and_model, tmp_path, capsys):
    from fastzsl.cli import main
    from fastzsl.loop import LoOP

    X_test, _, fitted = world_and_model
    fitted.save(tmp_path / "model.fzsl")
    (tmp_path / "shards").mkdir()
    np.save(tmp_path / "shards" / "0.npy", X_test[:200])
    np.save(tmp_path / "shards" / "1.npy", X_test[200:])
    assert main(["adapt", str(tmp_path / "model.fzsl"), str(tmp_path / "shards"),
                 str(tmp_path / "adapted.fzsl"), "--unseen-share", "0.2",
                 "--neighbors", "10"]) == 0
    assert "adapted on 480 rows" in capsys.readouterr().out
    expected = copy.deepcopy(fitted).set_params(unseen_prior=0.2).adapt(X_test, n_neighbors=10)
    np.testing.assert_array_equal(load(tmp_path / "adapted.fzsl").outlier_probability(X_test),
                                  expected.outlier_probability(X_test))
    LoOP(n_neighbors=5).fit(X_test).save(tmp_path / "loop.fzsl")
    assert main(["adapt", str(tmp_path / "loop.fzsl"), str(tmp_path / "shards"),
                 str(tmp_path / "x.fzsl"), "--unseen-share", "0.2"]) == 2
    assert "needs a ZeroShotClassifier" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["adapt", "m", "i", "o", "--unseen-share", "1.5"])


def test_an_adapted_model_routes_by_the_adapted_probability(world_and_model):
    """predict_proba is the soft Eq. 2 mixture of the adapted P(unseen | x), also for the
    paper's uncalibrated gate (LoOP in the semantic space, which needs the mapped batch);
    hard routing takes the Bayes decision, P > 1/2."""
    from fastzsl.novelty_gate import ADAPTED_ROUTING, paper_gate

    X_test, y_test, fitted = world_and_model
    vectors, X, y, _, _ = _world()
    paper = ZeroShotClassifier(vectors, UNSEEN, novelty=paper_gate(n_neighbors=10),
                               **FAST).fit(X, y)
    assert paper.proba_combine_ == "soft" and paper.combine_ == "soft"  # LoOP: the paper's
    for model in (copy.deepcopy(fitted), paper):
        model.set_params(unseen_prior=1 / 6).adapt(X_test, n_neighbors=10)
        assert (model.proba_combine_, model.combine_, model.threshold_) == \
            ("soft", ADAPTED_ROUTING, 0.5)
        p_seen, p_unseen_class, p_unseen = model._branches(X_test)
        proba = np.hstack([p_seen * (1 - p_unseen)[:, None], p_unseen_class * p_unseen[:, None]])
        np.testing.assert_array_equal(model.predict_proba(X_test), proba)
        hard = model.set_params(combine="hard").predict(X_test)
        assert np.isin(hard[model.outlier_probability(X_test) > 0.5], UNSEEN).all()
        model.set_params(combine=None)


def test_score_file_of_an_adapted_model_equals_the_in_memory_model(world_and_model, tmp_path):
    from fastzsl.batch import read_scores, score_file

    X_test, _, fitted = world_and_model
    model = copy.deepcopy(fitted).set_params(unseen_prior=0.2).adapt(X_test, n_neighbors=10)
    model.save(tmp_path / "adapted.fzsl")
    np.save(tmp_path / "x.npy", X_test)
    score_file(tmp_path / "adapted.fzsl", tmp_path / "x.npy", tmp_path / "scores",
               chunk_size=100, progress=False)
    scores = read_scores(tmp_path / "scores")
    np.testing.assert_array_equal(scores["p_unseen"], model.outlier_probability(X_test))
    np.testing.assert_array_equal(scores["predicted_class"].astype(str), model.predict(X_test))
