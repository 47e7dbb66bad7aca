"""What the command line prints: output folders with one slash, and a missing optional
library named with the extra that installs it."""
import re
import os
import sys
from pathlib import Path

import pytest

import fastzsl
from fastzsl import _optional
from fastzsl.cli import explain, main
from fastzsl.cli._args import shown_folder

ROOT = Path(fastzsl.__file__).resolve().parent.parent


@pytest.mark.parametrize("typed,shown", [("out", "out/"), ("out/", "out/"), ("out//", "out/"),
                                         ("a/b/", "a/b/"), ("/", "/"), (Path("run"), "run/")])
def test_an_output_folder_prints_with_one_slash(typed, shown):
    assert shown_folder(typed) == shown.replace("/", os.sep)


def test_train_and_score_print_their_output_folder_once(monkeypatch, capsys, tmp_path):
    import fastzsl.app.experiment as experiment
    import fastzsl.batch as batch

    results = {"wall_seconds": 1.0, "timings_s": {}}
    monkeypatch.setattr(experiment, "train_fashion_mnist", lambda **kw: (results, None, None))
    monkeypatch.setattr(experiment, "results_table", lambda results: "table")
    monkeypatch.setattr(batch, "score_file", lambda *a, **kw: dict(
        n_rows=3, n_chunks=1, chunks_scored_now=1))
    out = f"{tmp_path}/run/"
    assert main(["train", "--out", out, "--quiet"]) == 0
    assert main(["score", "model.fzsl", "in.npy", out, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.count(f"{tmp_path}/run/") == 2
    assert "//" not in printed


def test_a_missing_library_is_named_with_its_extra(monkeypatch, capsys):
    import fastzsl.app.experiment as experiment

    def needs_matplotlib(**kwargs):
        import matplotlib  # noqa: F401  (made missing below)

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(experiment, "train_fashion_mnist", needs_matplotlib)
    assert main(["train", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "matplotlib" in error
    assert error.strip().endswith("install it with: pip install 'fastzsl[plot]'")


def test_a_message_that_already_names_the_install_is_kept():
    exc = ImportError("faiss is needed for ...; install it with: pip install 'fastzsl[faiss]'",
                      name="faiss")
    assert explain(exc) == str(exc)
    assert explain(ImportError("No module named 'foo'", name="foo")) == "No module named 'foo'"


@pytest.mark.parametrize("importer,extra", [
    (_optional.import_faiss, "faiss"), (_optional.import_torch, "model"),
    (_optional.import_gensim_keyed_vectors, "model"), (_optional.import_pyarrow, "data"),
    (_optional.import_pyplot, "plot")])
def test_each_optional_import_names_its_extra(monkeypatch, importer, extra):
    for module in ("faiss", "torch", "gensim", "gensim.models", "pyarrow", "pyarrow.parquet",
                   "matplotlib"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=re.escape(f"pip install 'fastzsl[{extra}]'")):
        importer()


def test_every_extra_named_exists_and_brings_the_library():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python 3.11+")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for module, extra in _optional.EXTRAS.items():
        assert extra in extras, f"{module}: no extra {extra!r} in pyproject.toml"
        distribution = module.replace("_", "-")
        assert any(distribution in requirement for requirement in extras[extra]), \
            f"extra {extra!r} does not install {module}"
