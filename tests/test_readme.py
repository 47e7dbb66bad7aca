"""The README is a front page that stays true: short, every command in its table real and
every real command in it, its example command lines accepted by the CLI, its links live.

(That CI runs the README's two setup commands word for word is checked in test_cli.py.)
"""
import re
import shlex
from pathlib import Path

import pytest

from fastzsl.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_LINES = 300


def _text() -> str:
    return README.read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", _text(), re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def _subcommands() -> set:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return set(action.choices)


def test_readme_is_at_most_300_lines():
    n = len(_text().splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines; the front page keeps to {MAX_LINES}"


def test_cli_table_names_every_command_and_only_real_ones():
    rows = re.findall(r"^\| `fastzsl ([a-z-]+)` \|", _section("Command line"), re.M)
    assert len(rows) == len(set(rows)), f"a command appears twice: {rows}"
    assert set(rows) == _subcommands() == set(COMMANDS)


def _command_lines():
    """Every ``fastzsl ...`` line of the README's bash blocks (comments dropped)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", _text(), re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "fastzsl":
                lines.append(words[1:])
    return lines


def test_readme_has_command_examples():
    assert {words[0] for words in _command_lines()} >= {"score", "fit"}


@pytest.mark.parametrize("words", _command_lines(), ids=" ".join)
def test_every_example_command_line_parses(words):
    # argparse exits (SystemExit) on an unknown command, option or choice.
    args = build_parser().parse_args(words)
    assert args.command == words[0]


def _local_links(path: Path):
    text = path.read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("doc", ["README.md", *sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))])
def test_links_point_at_files_that_exist(doc):
    path = ROOT / doc
    missing = []
    for target in _local_links(path):
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            missing.append(target)
        elif anchor and resolved.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", resolved.read_text(), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
            if anchor not in slugs:
                missing.append(target)
    assert not missing, f"{doc} links to what does not exist: {missing}"


def test_readme_links_the_docs_and_the_full_results():
    targets = {t.partition("#")[0] for t in _local_links(README)}
    for needed in ("docs/method.md", "docs/guide.md", "docs/architecture.md", "docs/gpu.md",
                   "docs/results.md", "docs/benchmarks.md",
                   "benchmarks/results/cpu-2core.md",
                   "benchmarks/results/reproduce/README.md"):
        assert needed in targets, f"README does not link {needed}"


def test_readme_narrates_no_history():
    words = re.findall(r"\b(now|used to|since removed|previous run|no longer|earlier run)\b",
                       _text(), re.I)
    assert not words, f"README narrates history: {words}"
