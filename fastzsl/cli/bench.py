"""``fastzsl bench``: the benchmark suite (kernels against their peers), as a ratio table."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def add_parser(subparsers):
    p = subparsers.add_parser("bench", help="run the benchmark suite and print the ratio table",
                              description="Run benchmarks/ with pytest-benchmark and print the "
                                          "ratio table.")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--benchmarks", default="benchmarks", help="the suite's folder")
    p.add_argument("--json", default=None, help="keep pytest-benchmark's JSON here")
    p.add_argument("--markdown", default=None, help="also write the ratio tables here")
    p.set_defaults(handler=run)


def run(args) -> int:
    root = Path(args.benchmarks)
    if not (root / "report.py").exists():
        raise FileNotFoundError(f"no benchmark suite at {root} (pass --benchmarks DIR of a "
                                "source checkout)")
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
