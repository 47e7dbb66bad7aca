"""The command line: commands, help, exit codes and error messages (fastzsl.cli)."""
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastzsl.backends import BackendUnavailableError
from fastzsl.batch import BatchError
from fastzsl.cli import COMMANDS, main
from fastzsl.zeroshot import UnknownClassError

ROOT = Path(__file__).resolve().parents[1]


def test_help_runs():
    out = subprocess.run([sys.executable, "-m", "fastzsl", "--help"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "novelty" in out.stdout and "bench" in out.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: fastzsl {command}" in capsys.readouterr().out


def test_importing_the_cli_loads_no_heavy_library():
    code = ("import sys, fastzsl.cli; heavy = {'torch', 'numba', 'cupy', 'faiss', 'dask', "
            "'sklearn', 'matplotlib'} & set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("error", [
    ValueError("bad value"), FileNotFoundError("no such file"), ImportError("pip install x"),
    BatchError("bad batch"), BackendUnavailableError("backend 'cupy' is not available"),
    UnknownClassError("unknown class 'cat'"),
], ids=lambda e: type(e).__name__)
def test_user_errors_print_error_and_exit_2(error, monkeypatch, capsys):
    def fail(args):
        raise error

    monkeypatch.setattr(importlib.import_module("fastzsl.cli.backends"), "run", fail)
    assert main(["backends"]) == 2
    assert capsys.readouterr().err == f"error: {error}\n"


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    def fail(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(importlib.import_module("fastzsl.cli.backends"), "run", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["backends"])


@pytest.mark.parametrize("argv", [
    ["train", "--centroids", "0"], ["reproduce", "--centroids", "-1"],
    ["train", "--backend", "fortran"],
])
def test_bad_arguments_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert re.search(r"expected a whole number >= 1|invalid choice", capsys.readouterr().err)


def test_bench_without_a_suite_is_a_user_error(tmp_path, capsys):
    assert main(["bench", "--benchmarks", str(tmp_path)]) == 2
    assert f"error: no benchmark suite at {tmp_path}" in capsys.readouterr().err


def test_library_never_imports_the_cli():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "fastzsl").rglob("*.py")
                 if "cli" not in p.relative_to(ROOT / "fastzsl").parts[:1]
                 and p.name != "__main__.py"
                 and re.search(r"^\s*(from fastzsl\.cli|import fastzsl\.cli|from \.+cli\b|"
                               r"from fastzsl import cli)", p.read_text(), re.M)]
    assert not offenders


def test_readme_commands_are_the_ci_commands():
    """CI runs the README's two commands word for word."""
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(bash \.ci/install && .+?)(?: \|\| exit \$\?)?$", ci, re.M)
    assert len(commands) == 2, commands
    for command in commands:
        assert f"\n{command}\n" in readme, f"README lacks the CI command: {command}"
