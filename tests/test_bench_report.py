"""benchmarks/report.py: the ratio table and its derived columns, on a hand-made JSON."""
import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "report.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("bench_report", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(name, median, **info):
    stats = dict(median=median, min=median, max=median, mean=median, rounds=5)
    return dict(name=name, group="knn g", stats=stats, extra_info=dict(label=name, **info))


def _table_row(text, label):
    return next(line for line in text.splitlines() if line.startswith(f"| {label}")
                or line.startswith(f"| **{label}"))


def test_ratios_gflops_and_fraction_of_square_sgemm(report):
    data = dict(benchmarks=[
        _row("peer", 2.0, baseline=True, flop=100e9),
        _row("kernel", 0.5, flop=100e9),
        _row("sgemm", 1.0, flop=400e9, peak_reference=True),
    ])
    text = report.render(data)
    header = next(line for line in text.splitlines() if line.startswith("| name"))
    assert header.rstrip().endswith("| GFLOP/s | of square sgemm |")
    kernel = _table_row(text, "kernel").split("|")
    assert kernel[6].strip() == "0.25" and kernel[7].strip() == "4.00x faster"
    assert kernel[-3].strip() == "200" and kernel[-2].strip() == "50%"
    assert _table_row(text, "peer").split("|")[-2].strip() == "12%"


def test_no_fraction_column_without_a_peak_reference(report):
    text = report.render(dict(benchmarks=[_row("peer", 2.0, baseline=True, flop=1e9)]))
    assert "GFLOP/s" in text and "of square sgemm" not in text
