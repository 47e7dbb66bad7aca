"""The zero-shot model end to end, on synthetic data where the right answer is known."""
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastzsl  # noqa: E402
from fastzsl import SemanticMapper, SoftmaxClassifier, ZeroShotClassifier  # noqa: E402
from fastzsl.gaussian import GaussianNovelty  # noqa: E402
from fastzsl.loop import LoOP  # noqa: E402
from fastzsl.novelty_gate import NoveltyGate, PerClass, paper_gate, shorthand_detector  # noqa: E402
from fastzsl.testing import (  # noqa: E402
    Bounded, affine_with_bound, assert_within_bound, matmul_error_bound, unit_roundoff,
)
from fastzsl.zeroshot import UnknownClassError  # noqa: E402

SEEN = [f"seen{i}" for i in range(10)]
UNSEEN = ["novel_a", "novel_b"]


def _world(seed=0, n_per_class=120, d=4, n_features=24, noise=0.15):
    """Word vectors, and image features that are a fixed smooth function of them.

    Ten seen classes spread over the word space so the mapping can be learnt; the two
    unseen classes lie far out, in opposite directions, so they are obviously novel and
    easy to tell apart.
    """
    rng = np.random.default_rng(seed)
    vectors = {c: rng.normal(size=d).astype(np.float32) for c in SEEN}
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    vectors["novel_a"] = (4.0 * direction).astype(np.float32)
    vectors["novel_b"] = (-4.0 * direction).astype(np.float32)
    A = rng.normal(size=(d, n_features)) / np.sqrt(d)

    def images(names, n):
        labels = np.repeat(names, n)
        W = np.stack([vectors[c] for c in labels])
        X = np.tanh(W @ A) + W @ A * 0.5 + rng.normal(scale=noise, size=(len(labels), n_features))
        return X.astype(np.float32), labels

    X_train, y_train = images(SEEN, n_per_class)
    X_test, y_test = images(SEEN + UNSEEN, 40)
    return vectors, X_train, y_train, X_test, y_test


@pytest.fixture(scope="module")
def world():
    return _world()


FAST = dict(mapper=SemanticMapper(hidden=32, max_iter=300),
            seen_classifier=SoftmaxClassifier(max_iter=200))


def default_gate(rounds=2, **params):
    """The default gate (LoOP in a PCA, Gaussian in the semantic space) with k = 10 and,
    to keep the tests short, 2 pseudo-unseen rounds (each trains a mapping and a softmax)."""
    return NoveltyGate([shorthand_detector("loop", n_neighbors=10),
                        shorthand_detector("gaussian")], rounds=rounds, **params)


@pytest.fixture(scope="module")
def fitted(world):
    vectors, X, y, _, _ = world
    return ZeroShotClassifier(vectors, UNSEEN, novelty=default_gate(), **FAST).fit(X, y)


def test_mapped_training_points_land_near_their_word_vectors(world, fitted):
    vectors, X, y, _, _ = world
    F = fitted.transform(X)
    W = np.stack([vectors[c] for c in y])
    spread = np.mean([np.linalg.norm(vectors[a] - vectors[b]) for a in SEEN for b in SEEN if a < b])
    assert np.linalg.norm(F - W, axis=1).mean() < 0.2 * spread


def test_novel_images_are_detected_and_labelled(world, fitted):
    _, _, _, X_test, y_test = world
    is_unseen = np.isin(y_test, UNSEEN)
    p = fitted.outlier_probability(X_test)
    assert np.median(p[is_unseen]) > 0.9
    assert np.median(p[~is_unseen]) < 0.2
    report = fitted.evaluate(X_test, y_test)
    assert report["zero_shot_accuracy"] > 0.9
    assert report["soft"]["seen_accuracy"] > 0.8
    assert report["soft"]["unseen_accuracy"] > 0.8
    assert report["soft"]["harmonic_mean"] > 0.8


def test_probabilities_are_a_distribution_over_classes(world, fitted):
    X_test = world[3]
    P = fitted.predict_proba(X_test)
    assert P.shape == (len(X_test), 12)
    assert fitted.classes_.tolist() == sorted(SEEN) + UNSEEN
    assert P.dtype == np.float64
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert (P >= 0).all()
    np.testing.assert_array_equal(fitted.predict(X_test), fitted.classes_[P.argmax(axis=1)])


@pytest.mark.parametrize("unseen_variance", [1.0, 4.0])
def test_rows_sum_to_one_when_unseen_classes_compete(world, fitted, unseen_variance):
    """A wide unseen softmax puts weight on several classes: its float64 normalisation
    must come from the rounded log-likelihoods themselves (float32 ones were off by 1e-6)."""
    import copy

    model = copy.deepcopy(fitted)
    model.unseen_variance_ = unseen_variance
    P = model.predict_proba(world[3])
    p_unseen_class = model._unseen_class_probability(model.transform(world[3]))
    assert p_unseen_class.min(axis=1).max() > 0.1  # both unseen classes get weight
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=0, atol=1e-12)


def test_predict_proba_is_the_calibrated_eq_2_mixture(world, fitted):
    """Eq. 2 computed here from the public parts: the seen softmax, Gaussians around the
    unseen word vectors, and the calibrated P(unseen | x)."""
    X_test = world[3]
    p_u = fitted.outlier_probability(X_test)
    assert 0.0 < p_u.min() and p_u.max() < 1.0  # a probability, not a routing
    p_seen = fitted.seen_classifier_.predict_proba(X_test)
    F = fitted.transform(X_test).astype(np.float64)
    W = fitted.class_vectors_[len(SEEN):].astype(np.float64)
    L = -((F[:, None] - W[None]) ** 2).sum(2) / (2 * fitted.unseen_variance_)
    p_unseen_class = np.exp(L - L.max(1, keepdims=True))
    p_unseen_class /= p_unseen_class.sum(1, keepdims=True)
    expected = np.hstack([p_seen * (1 - p_u)[:, None], p_unseen_class * p_u[:, None]])
    # The model's unseen log-likelihoods come from gaussian_loglik on float32 F: within
    # 2^-15 |L| (its certified accuracy) plus a float32 rounding, L including the normaliser
    # d/2 log(2 pi v). A softmax probability moves by at most half the largest change of
    # its inputs (the Jacobian's rows sum to 2 p (1 - p) <= 1/2 in absolute value).
    full = L - 0.5 * F.shape[1] * np.log(2 * np.pi * fitted.unseen_variance_)
    moved = (2.0 ** -15 + 2.0 ** -23) * np.abs(full).max(axis=1)
    assert_within_bound(fitted.predict_proba(X_test), expected,
                        (0.5 * moved + 8 * unit_roundoff(np.float64))[:, None], "Eq. 2 mixture")


def test_threshold_curve_runs_from_all_unseen_to_all_seen(world, fitted):
    _, _, _, X_test, y_test = world
    curve = fitted.evaluate(X_test, y_test, thresholds=[-1.0, 0.5, 1.0])["curve"]
    assert curve["seen_accuracy"][0] == 0.0          # everything routed to unseen
    assert curve["unseen_accuracy"][-1] == 0.0       # nothing routed to unseen
    assert curve["seen_accuracy"][-1] > 0.8


@pytest.mark.parametrize("options", [
    dict(novelty=paper_gate("gaussian")),
    dict(novelty=paper_gate("gaussian", rule="mixture")),
    dict(novelty=NoveltyGate([("loop", PerClass(LoOP(n_neighbors=10)), "semantic")],
                             calibration=None), combine="hard"),
])
def test_other_detectors_work_and_survive_save_load(world, options, tmp_path):
    vectors, X, y, X_test, y_test = world
    model = ZeroShotClassifier(vectors, UNSEEN, **FAST, **options).fit(X, y)
    assert model.combine_ == "hard"
    report = model.evaluate(X_test, y_test)
    assert report["hard"]["seen_accuracy"] > 0.8 and report["hard"]["unseen_accuracy"] > 0.8
    assert report["zero_shot_accuracy"] > 0.9
    model.save(tmp_path / "m.fzsl")
    again = fastzsl.load(tmp_path / "m.fzsl")
    np.testing.assert_array_equal(again.predict_proba(X_test), model.predict_proba(X_test))


def test_save_load_is_bit_identical(world, fitted, tmp_path):
    X_test = world[3]
    path = tmp_path / "model.fzsl"
    fitted.save(path)
    again = fastzsl.load(path)
    np.testing.assert_array_equal(again.predict_proba(X_test), fitted.predict_proba(X_test))
    np.testing.assert_array_equal(again.classes_, fitted.classes_)
    assert not list(tmp_path.glob("*.tmp")), "no temporary file left behind"


def test_corrupt_truncated_and_tampered_files_are_refused(fitted, tmp_path):
    import zipfile
    path = tmp_path / "model.fzsl"
    fitted.save(path)
    raw = path.read_bytes()
    (tmp_path / "cut.fzsl").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        fastzsl.load(tmp_path / "cut.fzsl")
    (tmp_path / "junk.fzsl").write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match=r"not a fastzsl model file \(not a zip archive\)"):
        fastzsl.load(tmp_path / "junk.fzsl")
    import io
    with zipfile.ZipFile(path) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    name = "arrays/softmax.coef.npy"

    def with_coef(array, out, **save_kw):
        """A copy of the model file whose softmax.coef entry holds ``array``."""
        buffer = io.BytesIO()
        np.save(buffer, array, **save_kw)
        with zipfile.ZipFile(out, "w") as zf:
            for n, data in entries.items():
                zf.writestr(n, buffer.getvalue() if n == name else data)
        return out

    # Tamper: rewrite one array with different values but keep the metadata.
    coef = np.load(io.BytesIO(entries[name]))
    with pytest.raises(ValueError, match="'softmax.coef' does not match its checksum"):
        fastzsl.load(with_coef(coef + 1, tmp_path / "tampered.fzsl"))
    # A pickled object array is never loaded.
    pickled = with_coef(np.array([object()], dtype=object), tmp_path / "pickle.fzsl",
                        allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        fastzsl.load(pickled)
    with pytest.raises(FileNotFoundError, match="no model file"):
        fastzsl.load(tmp_path / "missing.fzsl")


def test_bad_input_is_named(world, fitted):
    vectors, X, y, X_test, _ = world
    with pytest.raises(UnknownClassError, match="class name 'ghost' has no word vector"):
        ZeroShotClassifier(vectors, ["ghost"], **FAST).fit(X, y)
    with pytest.raises(ValueError, match=r"y contains unseen classes \['novel_a'\]"):
        ZeroShotClassifier(vectors, UNSEEN, **FAST).fit(X, np.r_[y[:-1], ["novel_a"]])
    with pytest.raises(ValueError, match="X has 23 features, but ZeroShotClassifier is expecting 24"):
        fitted.predict(X_test[:, :23])
    bad = X_test.copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match="X contains NaN or infinity: nan at row 3, column 5"):
        fitted.predict(bad)
    with pytest.raises(ValueError, match="X contains NaN or infinity"):
        ZeroShotClassifier(vectors, UNSEEN, **FAST).fit(np.where(X > 2, np.inf, X), y)
    with pytest.raises(UnknownClassError, match=r"class names the model does not know: \['zebra'\]"):
        fitted.evaluate(X_test[:2], ["zebra", "seen1"])
    with pytest.raises(ValueError, match="unseen_classes is empty"):
        ZeroShotClassifier(vectors, [], **FAST).fit(X, y)
    with pytest.raises(ValueError, match="novelty must be one of"):
        ZeroShotClassifier(vectors, UNSEEN, novelty="knn").fit(X, y)


def test_a_scoring_call_checks_its_images_once(world, fitted, monkeypatch):
    """predict_with_proba validates X once and hands the checked array to the mapping and
    the seen softmax (each full pass over a batch of images costs as much as the softmax
    itself); their public methods still check what they are given."""
    from fastzsl import _validation

    X_test = world[3]
    checked = []
    real = _validation.check_finite

    def spy(X, name):
        checked.append(np.shares_memory(X, X_test))  # the images, not what they map to
        return real(X, name)

    monkeypatch.setattr(_validation, "check_finite", spy)
    assert X_test.dtype == np.float32 and X_test.flags.c_contiguous  # checked in place
    expected = fitted.predict_proba(X_test)
    assert checked.count(True) == 1
    checked.clear()
    np.testing.assert_array_equal(fitted.mapper_.transform(X_test), fitted.transform(X_test))
    np.testing.assert_array_equal(fitted.seen_classifier_.predict_proba(X_test),
                                  fitted.seen_classifier_._proba(X_test))
    assert checked.count(True) == 3  # transform twice, predict_proba once
    bad = X_test.copy()
    bad[1, 2] = np.inf
    for method in (fitted.mapper_.transform, fitted.seen_classifier_.predict_proba):
        with pytest.raises(ValueError, match="X contains NaN or infinity: inf at row 1"):
            method(bad)
    assert expected.shape == (len(X_test), len(fitted.classes_))


def test_gensim_keyed_vectors_work_as_class_vectors(world):
    from gensim.models import KeyedVectors
    vectors, X, y, X_test, _ = world
    kv = KeyedVectors(4)
    kv.add_vectors(list(vectors), np.stack(list(vectors.values())))
    a = ZeroShotClassifier(kv, UNSEEN, novelty=paper_gate(n_neighbors=10), **FAST).fit(X, y)
    b = ZeroShotClassifier(vectors, UNSEEN, novelty=paper_gate(n_neighbors=10), **FAST).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X_test), b.predict_proba(X_test))


# --------------------------------------------------------------------- the parts
def test_mapper_is_deterministic_and_both_optimizers_learn(world):
    vectors, X, y, _, _ = world
    codes = np.searchsorted(SEEN, y)
    W = np.stack([vectors[c] for c in SEEN])
    a = SemanticMapper(hidden=16, max_iter=50).fit(X, codes, W)
    b = SemanticMapper(hidden=16, max_iter=50).fit(X, codes, W)
    np.testing.assert_array_equal(a.transform(X), b.transform(X))
    assert isinstance(a.module_, torch.nn.Module)
    assert a.loss_curve_[-1] < 0.2 * a.loss_curve_[0]
    adam = SemanticMapper(hidden=16, optimizer="adam", epochs=15, lr=1e-2).fit(X, codes, W)
    assert adam.optimizer_ == "adam" and adam.loss_curve_[-1] < 0.3 * adam.loss_curve_[0]


def test_mapper_objective_matches_its_formula(world):
    vectors, X, y, _, _ = world
    codes = np.searchsorted(SEEN, y)
    W = np.stack([vectors[c] for c in SEEN])
    for options in (dict(), dict(bias_l2=True), dict(sparsity_weight=5.0)):
        m = SemanticMapper(hidden=8, max_iter=1, **options).fit(X, codes, W)
        W1, b1 = m.module_.hidden.weight.detach().numpy(), m.module_.hidden.bias.detach().numpy()
        W2, b2 = m.module_.output.weight.detach().numpy(), m.module_.output.bias.detach().numpy()
        H = np.tanh(X.astype(np.float64) @ W1.T + b1)
        out = H @ W2.T + b2
        J = 0.5 * ((out - W[codes]) ** 2).sum(axis=1).mean()
        penalised = [W1, W2] + ([b1, b2] if options.get("bias_l2") else [])
        J += 0.5 * 1e-4 * sum((p.astype(np.float64) ** 2).sum() for p in penalised)
        if options.get("sparsity_weight"):
            rho, rho_hat = 0.035, (H.mean(axis=0) + 1) / 2
            J += 5.0 * (rho * np.log(rho / rho_hat)
                        + (1 - rho) * np.log((1 - rho) / (1 - rho_hat))).sum()
        # The last recorded loss is at the final parameters only when L-BFGS stopped after
        # an evaluation at them; compare against a fresh evaluation through the module.
        X_t = torch.from_numpy(X)
        with torch.no_grad():
            out_t = m.module_(X_t).double().numpy()
        # float32 layers: each product's gamma_(K+1) bound, tanh 1-Lipschitz (testing.py)
        exact = {dt: affine_with_bound(affine_with_bound(Bounded.exact(X, u=unit_roundoff(dt)),
                                                         W1, b1).tanh(), W2, b2)
                 for dt in (np.float32, np.float64)}
        assert_within_bound(out_t, exact[np.float32].value,
                            exact[np.float32].err + exact[np.float64].err, "mapping output")
        assert np.isfinite(J)


def test_softmax_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    y = np.array(["a", "b", "c"])[(X[:, 0] + 0.5 * X[:, 1] > 0).astype(int) + (X[:, 2] > 1)]
    ours = SoftmaxClassifier(l2=1e-2, max_iter=500).fit(X, y)
    # J = mean CE + (l2/2)||W||^2  <=>  sklearn's C * sum CE + ||W||^2 / 2 with C = 1/(l2 N)
    ref = LogisticRegression(C=1 / (1e-2 * 300), fit_intercept=False, tol=1e-10,
                             max_iter=5000).fit(X, y)
    # Both minimise J, which is l2-strongly convex: |W - W*| <= |grad J(W)| / l2 for either
    # solution. A score x.w_j moves by at most |x| |dW|, and a softmax probability by at
    # most half the largest score change (its Jacobian's rows sum to 2 p (1 - p) <= 1/2 in
    # absolute value). Our float32 scores add gamma_6 |x| |W| (testing.matmul_error_bound).
    codes = np.searchsorted(ours.classes_, y)
    X64 = X.astype(np.float64)

    def grad(W):
        S = X64 @ W
        P = np.exp(S - S.max(axis=1, keepdims=True))
        P /= P.sum(axis=1, keepdims=True)
        P[np.arange(len(X)), codes] -= 1
        return X64.T @ P / len(X) + 1e-2 * W

    distance = sum(np.linalg.norm(grad(W)) for W in (ours.coef_.astype(np.float64),
                                                     ref.coef_.T)) / 1e-2
    rounding = matmul_error_bound(X, ours.coef_, np.float32).max(axis=1)
    bound = 0.5 * (np.linalg.norm(X64, axis=1) * distance + 2 * rounding)
    assert_within_bound(ours.predict_proba(X), ref.predict_proba(X), bound[:, None],
                        "probabilities against scikit-learn's")
    # what "matches" claims: both optimisers got close enough to agree to 5e-3
    assert bound.max() < 5e-3
    assert list(ours.classes_) == ["a", "b", "c"]


def test_refit_novelty_keeps_the_mapping(world, fitted):
    import copy
    _, X, y, X_test, _ = world
    gaussian = copy.deepcopy(fitted).refit_novelty(X, y, novelty=paper_gate("gaussian"))
    np.testing.assert_array_equal(gaussian.transform(X_test), fitted.transform(X_test))
    fresh = ZeroShotClassifier(world[0], UNSEEN, novelty=paper_gate("gaussian"), **FAST).fit(X, y)
    np.testing.assert_array_equal(gaussian.predict_proba(X_test), fresh.predict_proba(X_test))
    assert len(fitted.gate_.channels_) == 2
    with pytest.raises(ValueError, match=r"cannot change \['mapper'\]"):
        gaussian.refit_novelty(X, y, mapper=SemanticMapper())


def _drop_n_jobs(path, out):
    """A copy of a model file as a fastzsl without ``n_jobs`` wrote it (no such params)."""
    import json
    import zipfile
    with zipfile.ZipFile(path) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    header = json.loads(entries["metadata.json"])

    def strip(node):
        if isinstance(node, dict):
            node.pop("n_jobs", None)
            for value in node.values():
                strip(value)
    strip(header["metadata"])
    entries["metadata.json"] = json.dumps(header).encode()
    with zipfile.ZipFile(out, "w") as zf:
        for n, data in entries.items():
            zf.writestr(n, data)
    return out


@pytest.mark.parametrize("novelty", ["loop", "gaussian"])
def test_n_jobs_is_a_parameter_that_survives_save_load(world, tmp_path, novelty):
    vectors, X, y, X_test, _ = world
    model = ZeroShotClassifier(vectors, UNSEEN, novelty=paper_gate(novelty), n_jobs=1,
                               **FAST).fit(X, y)
    two = fastzsl.load(_save(model, tmp_path / "m.fzsl")).set_params(n_jobs=2)
    np.testing.assert_array_equal(two.predict_proba(X_test), model.predict_proba(X_test))
    again = fastzsl.load(tmp_path / "m.fzsl")
    assert again.n_jobs == 1 and again.gate_.detectors_()[0].get_params()["n_jobs"] is None
    # files written before n_jobs existed load with the default
    old = fastzsl.load(_drop_n_jobs(tmp_path / "m.fzsl", tmp_path / "old.fzsl"))
    assert old.n_jobs is None
    np.testing.assert_array_equal(old.predict_proba(X_test), model.predict_proba(X_test))
    with pytest.raises(ValueError, match="n_jobs=0 runs nothing"):
        old.set_params(n_jobs=0).predict(X_test)


def _save(model, path):
    model.save(path)
    return path


def test_linear_mapping_is_affine_learns_and_survives_save_load(world, tmp_path):
    """hidden=0: f(x) = W x + b, the paper's one-layer baseline."""
    vectors, X, y, X_test, y_test = world
    codes = np.searchsorted(SEEN, y)
    W = np.stack([vectors[c] for c in SEEN])
    linear = SemanticMapper(hidden=0, max_iter=100).fit(X, codes, W)
    assert linear.module_.hidden is None
    assert linear.module_.output.weight.shape == (W.shape[1], X.shape[1])
    assert linear.loss_curve_[-1] < 0.5 * linear.loss_curve_[0]
    a, b = X[:5].astype(np.float64), X[5:10].astype(np.float64)
    mid = linear.transform((0.3 * a + 0.7 * b).astype(np.float32))
    # f is affine, so f(0.3 a + 0.7 b) = 0.3 f(a) + 0.7 f(b) exactly; the computed sides
    # differ by the float32 cast of the combination and each product's rounding bound
    weight = linear.module_.output.weight.detach().numpy()
    bias = linear.module_.output.bias.detach().numpy()
    u = unit_roundoff(np.float32)
    bound_mid = affine_with_bound(Bounded.rounded(0.3 * a + 0.7 * b, u=u), weight, bias).err
    bound_a, bound_b = (affine_with_bound(Bounded.exact(part, u=u), weight, bias).err
                        for part in (a, b))
    combined = 0.3 * linear.transform(X[:5]) + 0.7 * linear.transform(X[5:10])
    assert_within_bound(mid, combined, bound_mid + 0.3 * bound_a + 0.7 * bound_b
                        + 4 * unit_roundoff(np.float64) * np.abs(combined), "affine mapping")
    model = ZeroShotClassifier(vectors, UNSEEN, novelty=paper_gate(n_neighbors=10),
                               mapper=SemanticMapper(hidden=0, max_iter=100),
                               seen_classifier=FAST["seen_classifier"]).fit(X, y)
    model.save(tmp_path / "linear.fzsl")
    again = fastzsl.load(tmp_path / "linear.fzsl")
    np.testing.assert_array_equal(again.predict_proba(X_test), model.predict_proba(X_test))


@pytest.mark.parametrize("options, message", [
    (dict(hidden=-1), r"hidden must be an int >= 0 \(0: linear mapping\), got -1"),
    (dict(hidden=2.5), r"hidden must be an int >= 0 \(0: linear mapping\), got 2.5"),
    (dict(hidden=0, sparsity_weight=5.0), "sparsity_weight penalises hidden units"),
])
def test_mapper_rejects_bad_hidden(world, options, message):
    vectors, X, y, _, _ = world
    W = np.stack([vectors[c] for c in SEEN])
    with pytest.raises(ValueError, match=message):
        SemanticMapper(max_iter=1, **options).fit(X, np.searchsorted(SEEN, y), W)


def test_evaluate_with_another_detectors_probability(world, fitted):
    """unseen_probability replaces the fitted detector's P(unseen|x) in every number."""
    _, _, _, X_test, y_test = world
    is_unseen = np.isin(y_test, UNSEEN)
    own = fitted.evaluate(X_test, y_test, unseen_probability=fitted.outlier_probability(X_test))
    np.testing.assert_equal(own, fitted.evaluate(X_test, y_test))
    oracle = fitted.evaluate(X_test, y_test, unseen_probability=is_unseen.astype(float))
    # A perfect detector: the soft and hard rows route every image to its own branch.
    for row in ("soft", "hard"):
        assert oracle[row]["unseen_accuracy"] == oracle["zero_shot_accuracy"]
        assert oracle[row]["seen_accuracy"] >= own[row]["seen_accuracy"]
    with pytest.raises(ValueError, match=r"unseen_probability must have shape \(\d+,\)"):
        fitted.evaluate(X_test, y_test, unseen_probability=np.zeros(3))


# ---------------------------------------------------------------- calibrated P(unseen | x)
def test_default_gate_makes_its_choices_on_the_rounds(world, fitted):
    """Calibration, routing and threshold are what the rounds' measurements say."""
    _, _, _, X_test, y_test = world
    gate = fitted.gate_
    worst = gate.choice_["worst_round_log_loss"]
    assert set(worst) == set(gate.choice_["log_loss"]) == {
        "isotonic loop", "isotonic gaussian", "stack", "mean"}
    losses, constant = gate.choice_["log_loss"], gate.choice_["constant_log_loss"]
    competing = {k: v for k, v in worst.items() if losses[k] < constant}
    assert gate.calibration_ == min(competing, key=competing.get)
    h = gate.choice_["harmonic_mean"]
    assert fitted.combine_ == gate.routing_ == max(h, key=h.get)
    assert fitted.proba_combine_ == "soft"
    assert fitted.unseen_prior_ == pytest.approx(2 / 12)
    assert 0.0 < fitted.threshold_ < 1.0
    p = fitted.outlier_probability(X_test)
    is_unseen = np.isin(y_test, UNSEEN)
    assert p.dtype == np.float64 and ((p >= 0) & (p <= 1)).all()
    assert p[is_unseen].min() > p[~is_unseen].mean()


def test_the_unseen_prior_takes_effect_without_refit_by_bayes_rule(world, fitted):
    import copy

    X_test = world[3]
    model = copy.deepcopy(fitted)
    p_default = model.outlier_probability(X_test)
    routed = model.predict(X_test)
    p_half = model.set_params(unseen_prior=0.5).outlier_probability(X_test)
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    shift = logit(0.5) - logit(2 / 12)

    def logit_rounding(*ps):
        # each p carries at most 16 float64 roundings from the calibrated score (interpolation,
        # odds, prior ratio, back to a probability): relative 16 u, so its logit moves by
        # 16 u / (1 - p); the logit itself adds 4 u |logit| (two logs and a subtraction)
        u = unit_roundoff(np.float64)
        return sum(16 * u / (1 - q) + 4 * u * np.abs(logit(q)) for q in ps) + 4 * u * abs(shift)

    assert_within_bound(logit(p_half) - logit(p_default), shift,
                        logit_rounding(p_half, p_default), "logit shift")
    # the routing threshold moves with the probabilities: hard routing is unchanged
    if model.combine_ == "hard":
        np.testing.assert_array_equal(model.predict(X_test), routed)
    assert_within_bound(logit(model.threshold_) - logit(fitted.threshold_), shift,
                        logit_rounding(model.threshold_, fitted.threshold_), "threshold shift")


@pytest.mark.parametrize("options", [
    dict(novelty=NoveltyGate("gaussian", class_agnostic=False, rounds=2)),
    dict(novelty=NoveltyGate([("loop", LoOP(n_neighbors=10), "features")],
                             calibration="platt", rounds=2, routing="hard")),
    dict(novelty=NoveltyGate([("gaussian", GaussianNovelty(), "semantic")], calibration=None,
                             fit_mode="crossfit", cv=3)),
    dict(novelty=NoveltyGate([("loop", PerClass(LoOP(n_neighbors=10)), "pca")], rounds=2,
                             routing="soft")),
    dict(novelty=default_gate(calibration="stack", rounds=2)),
])
def test_detection_spaces_fits_and_calibrations_work_and_survive_save_load(world, options,
                                                                           tmp_path):
    vectors, X, y, X_test, y_test = world
    model = ZeroShotClassifier(vectors, UNSEEN, **FAST, **options).fit(X, y)
    gate = model.gate_
    assert (gate.calibrator_ is None) == (options["novelty"].calibration is None)
    report = model.evaluate(X_test, y_test)
    assert report["hard"]["seen_accuracy"] > 0.7 and report["hard"]["unseen_accuracy"] > 0.7
    model.save(tmp_path / "m.fzsl")
    again = fastzsl.load(tmp_path / "m.fzsl")
    np.testing.assert_array_equal(again.predict_proba(X_test), model.predict_proba(X_test))
    np.testing.assert_array_equal(again.predict(X_test), model.predict(X_test))
    assert again.threshold_ == model.threshold_ and again.combine_ == model.combine_


def test_cross_fitting_maps_each_training_point_without_it(world):
    vectors, X, y, _, _ = world
    gate = NoveltyGate([("gaussian", GaussianNovelty(), "semantic")], calibration=None,
                       fit_mode="crossfit", cv=2)
    model = ZeroShotClassifier(vectors, UNSEEN, novelty=gate, **FAST).fit(X, y)
    W = model.class_vectors_[np.searchsorted(model.seen_classes_, y)]
    in_sample = ((model.transform(X) - W) ** 2).sum(1).mean() / W.shape[1]
    # points a mapping did not train on lie farther from their word vectors (1.14 times
    # here; the in-sample points would give the ratio 1 to rounding)
    assert model.gate_.channels_[0][3].variances_.mean() > 1.05 * in_sample


def test_paper_gate_gives_the_uncalibrated_pipeline(world):
    vectors, X, y, X_test, _ = world
    model = ZeroShotClassifier(vectors, UNSEEN, novelty=paper_gate(n_neighbors=10),
                               **FAST).fit(X, y)
    name, space, projection, detector = model.gate_.channels_[0]
    assert model.gate_.calibrator_ is None and projection is None and space == "semantic"
    assert model.combine_ == model.proba_combine_ == "soft" and model.threshold_ == 0.5
    np.testing.assert_array_equal(model.outlier_probability(X_test),
                                  detector.outlier_probability(model.transform(X_test)))


def test_bad_novelty_settings_are_named(world):
    vectors, X, y, _, _ = world
    for novelty, message in [
            ("pixels", "novelty must be one of"),
            (NoveltyGate([("a", LoOP(), "pixels")]), "space must be one of"),
            (NoveltyGate(fit_mode="bootstrap"), "fit_mode must be one of"),
            (NoveltyGate(fit_mode="crossfit", cv=1), "cv must be an int >= 2"),
            (NoveltyGate(calibration="beta"), "calibration must be one of"),
            (NoveltyGate(unseen_prior=1.5), "unseen_prior must be a number in"),
            (NoveltyGate(rounds=0), "rounds must be an int >= 1"),
            (NoveltyGate([]), "detectors is empty")]:
        with pytest.raises(ValueError, match=message):
            ZeroShotClassifier(vectors, UNSEEN, novelty=novelty, **FAST).fit(X, y)
    with pytest.raises(TypeError, match="does not follow the protocol"):
        ZeroShotClassifier(vectors, UNSEEN, novelty=NoveltyGate([("a", object(), "pca")]),
                           **FAST).fit(X, y)
    with pytest.raises(ValueError, match="unseen_prior must be a number in"):
        ZeroShotClassifier(vectors, UNSEEN, unseen_prior=0.0, **FAST).fit(X, y)
    one_class = y == SEEN[0]
    with pytest.raises(ValueError, match="at least 2 seen classes"):
        ZeroShotClassifier(vectors, UNSEEN, novelty=default_gate(), **FAST).fit(
            X[one_class], y[one_class])


CALIBRATED_FIXTURES = Path(__file__).parent / "fixtures" / "models" / "main-0c8b155"


@pytest.mark.parametrize("name", ["zeroshot-loop", "zeroshot-loop-per-class",
                                  "zeroshot-gaussian"])
def test_calibrated_model_files_written_before_the_gate_give_the_same_outputs(name, tmp_path):
    """Written by make_fixtures.py at commit 0c8b155 (calibrated, hard-routed defaults);
    the files of release 0.1.0 (uncalibrated) are checked in test_persistence.py."""
    model = fastzsl.load(CALIBRATED_FIXTURES / f"{name}.fzsl")
    expected = np.load(CALIBRATED_FIXTURES / f"{name}.expected.npz")
    np.testing.assert_array_equal(model.classes_.astype(str), expected["classes_"])
    # the zero-shot fixtures' tolerance and its reason: test_persistence.py
    np.testing.assert_allclose(model.predict_proba(expected["probe"]), expected["predict_proba"],
                               rtol=1e-6, atol=1e-7)
    # and a loaded file saves again in the gate's format, with the same outputs
    model.save(tmp_path / "again.fzsl")
    again = fastzsl.load(tmp_path / "again.fzsl")
    np.testing.assert_array_equal(again.predict_proba(expected["probe"]),
                                  model.predict_proba(expected["probe"]))
