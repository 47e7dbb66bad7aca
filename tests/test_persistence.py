"""Model files: one save protocol for every estimator, files of earlier releases still load,
and nothing that is not a sound fastzsl model file is accepted."""
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fastzsl
from fastzsl import persistence
from fastzsl._model_files import SaveMixin, pack_parts, unpack_part
from fastzsl.testing import TOL, assert_within_bound, coates_ng_features_with_bound

FIXTURES = Path(__file__).parent / "fixtures" / "models"
FIXTURE_NAMES = sorted(p.name[:-len(".fzsl")] for p in FIXTURES.glob("*.fzsl"))


def _outputs(name, model, probe):
    if name == "loop":
        return {"outlier_probability": model.outlier_probability(probe),
                "probabilities_": model.probabilities_}
    if name.startswith("gaussian"):
        return {"log_likelihood": model.log_likelihood(probe),
                "outlier_probability": model.outlier_probability(probe)}
    if name == "features":
        return {"transform": model.transform(probe)}
    return {"predict_proba": model.predict_proba(probe), "classes_": model.classes_.astype(str)}


def test_every_fixture_is_checked():
    assert FIXTURE_NAMES == ["features", "gaussian-mixture", "gaussian-paper", "loop",
                             "zeroshot-gaussian", "zeroshot-loop", "zeroshot-loop-per-class"]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_files_of_release_0_1_0_load_and_give_the_same_outputs(name):
    if name.startswith("zeroshot"):
        pytest.importorskip("torch")
    model = fastzsl.load(FIXTURES / f"{name}.fzsl")
    expected = np.load(FIXTURES / f"{name}.expected.npz")
    probe = expected["probe"]
    got = _outputs(name, model, probe)
    for key, value in got.items():
        if value.dtype.kind in "US":
            np.testing.assert_array_equal(value, expected[key], err_msg=f"{name}: {key}")
        elif name == "features":
            # float32 through the BLAS on both machines: each within the running error
            # bound of the exact features, so within twice that of each other
            exact = coates_ng_features_with_bound(model, probe, np.float32)
            own = coates_ng_features_with_bound(model, probe, np.float64)
            assert_within_bound(value, expected[key], 2 * (exact.err + own.err),
                                f"{name}: {key}")
        else:
            # Detectors compute in float64 (TOL's derivation, fastzsl.testing). The
            # zero-shot models map the probe in float32 first: the mapped points move by
            # their rounding bound (testing.affine_with_bound, ~1e-6 relative), which moves
            # the outputs by that times their slope, and the fixtures' probes sit away from
            # routing thresholds and neighbour ties (outputs are bit-identical under
            # OpenBLAS's Haswell and SkylakeX kernels); 1e-6 covers slopes up to ~1.
            tol = dict(rtol=1e-6, atol=1e-7) if name.startswith("zeroshot") \
                else TOL[np.dtype(np.float64)]
            np.testing.assert_allclose(value, expected[key], **tol, err_msg=f"{name}: {key}")


def test_the_saved_file_format_is_unchanged(tmp_path):
    """Saving a loaded 0.1.0 file again writes the same metadata and arrays."""
    for name in ("loop", "gaussian-paper", "features"):
        old_meta, old_arrays = persistence.load_archive(FIXTURES / f"{name}.fzsl")
        fastzsl.load(FIXTURES / f"{name}.fzsl").save(tmp_path / "again.fzsl")
        meta, arrays = persistence.load_archive(tmp_path / "again.fzsl")
        old_meta.setdefault("fastzsl_version", meta["fastzsl_version"])  # 0.1.0 features lacked it
        assert meta == old_meta, name
        assert sorted(arrays) == sorted(old_arrays), name
        for key in arrays:
            np.testing.assert_array_equal(arrays[key], old_arrays[key], err_msg=f"{name}: {key}")


def _fitted_estimators():
    rng = np.random.default_rng(0)
    F = rng.normal(size=(60, 3))
    y = np.repeat([0, 1, 2], 20)
    models = [fastzsl.LoOP(n_neighbors=5).fit(F), fastzsl.GaussianNovelty().fit(F, y)]
    if _has_torch():
        models.append(fastzsl.SemanticMapper(hidden=4, max_iter=5).fit(
            F.astype(np.float32), y, rng.normal(size=(3, 2)).astype(np.float32)))
        models.append(fastzsl.SoftmaxClassifier(max_iter=5).fit(F.astype(np.float32), y))
    return F, models


def _has_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def test_every_estimator_saves_through_the_one_protocol(tmp_path):
    F, models = _fitted_estimators()
    for model in models:
        assert isinstance(model, SaveMixin)
        path = tmp_path / f"{type(model).__name__}.fzsl"
        model.save(path)
        meta, _ = persistence.load_archive(path)
        assert meta["estimator"] == type(model).__name__
        assert meta["fastzsl_version"] == fastzsl.__version__
        assert persistence.RESTORERS[meta["estimator"]].endswith(":" + type(model).__name__)
        loaded = fastzsl.load(path)
        assert type(loaded) is type(model)
        assert loaded.get_params() == model.get_params()
        method = next(m for m in ("outlier_probability", "transform", "predict_proba")
                      if hasattr(model, m))
        X = F.astype(np.float32) if method != "outlier_probability" else F
        np.testing.assert_array_equal(getattr(loaded, method)(X), getattr(model, method)(X))


def test_an_unfitted_estimator_is_not_saved(tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        fastzsl.LoOP().save(tmp_path / "x.fzsl")
    assert not (tmp_path / "x.fzsl").exists()


def test_parts_pack_and_unpack():
    parts = {"a": ({"k": 1}, {"x": np.arange(3)}), "ab": ({"k": 2}, {"x": np.ones(2)})}
    meta, arrays = pack_parts(parts)
    assert sorted(arrays) == ["a.x", "ab.x"]
    for name, (part_meta, part_arrays) in parts.items():
        got_meta, got_arrays = unpack_part(meta, arrays, name)
        assert got_meta == part_meta
        assert list(got_arrays) == ["x"]
        np.testing.assert_array_equal(got_arrays["x"], part_arrays["x"])


def _rewrite(src, dst, edit_header):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            if item == "metadata.json":
                header = json.loads(data)
                edit_header(header)
                data = json.dumps(header)
            zout.writestr(item, data)


def test_unknown_estimator_wrong_format_and_version_are_named(tmp_path):
    src = FIXTURES / "loop.fzsl"
    cases = [
        (lambda h: h["metadata"].update(estimator="Pickle"), "unknown estimator 'Pickle'"),
        (lambda h: h.update(format="other"), "not a fastzsl model file"),
        (lambda h: h.update(format_version=99), "model format version 99"),
        (lambda h: h["metadata"].pop("nplof"), "missing or has malformed model parts"),
    ]
    for i, (edit, message) in enumerate(cases):
        path = tmp_path / f"bad{i}.fzsl"
        _rewrite(src, path, edit)
        with pytest.raises(ValueError, match=message):
            fastzsl.load(path)


def test_not_a_zip_and_truncated_files_are_refused(tmp_path):
    text = tmp_path / "notes.fzsl"
    for content in (b"hello", b"", b"PK"):  # text, empty, too short to be a zip
        text.write_bytes(content)
        with pytest.raises(ValueError) as info:
            fastzsl.load(text)
        assert str(info.value) == f"{text} is not a fastzsl model file (not a zip archive)"
    data = (FIXTURES / "loop.fzsl").read_bytes()
    assert data.startswith(b"PK\x03\x04")
    cut = tmp_path / "cut.fzsl"
    for size in (len(data) // 2, len(data) - 10, 30):  # a real model file cut short
        cut.write_bytes(data[:size])
        with pytest.raises(ValueError, match=f"^{cut} is corrupt or truncated"):
            fastzsl.load(cut)
    with pytest.raises(FileNotFoundError, match="no model file"):
        fastzsl.load(tmp_path / "missing.fzsl")
