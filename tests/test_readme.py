"""The README is the front door; each figure lives in one file of docs/ (issue: README drifted from
the docs it copied). Every figure the README's prose states (a decimal, a percentage, a ratio, a
number with a thousands separator) must be stated in docs/ too, so a figure changed in docs/ and
not in the README fails here."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
FIGURE = re.compile(r"(?<![\w./])(\d+(?:\.\d+)?(?:%|x\b)|\d{1,3}(?:,\d{3})+|\d+\.\d+(?:\.\d+)*)")


def prose(markdown: str) -> str:
    """The README less its code: fenced blocks and `inline code` (commands, not figures)."""
    markdown = re.sub(r"```.*?```", " ", markdown, flags=re.DOTALL)
    return re.sub(r"`[^`]*`", " ", markdown)


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    first_screen = "\n".join(readme.splitlines()[:12])
    assert "reviewgpt quickstart" in first_screen and "nox -s lint tests" in first_screen


def test_every_figure_in_the_readme_is_stated_in_docs():
    docs = "\n".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))
    figures = FIGURE.findall(prose((ROOT / "README.md").read_text()))
    assert figures, "the pattern finds the README's figures (it has versions at least)"
    missing = sorted({f for f in figures if f not in docs})
    assert not missing, f"figures in README.md that no file of docs/ states: {missing}"


def test_the_figure_pattern_finds_figures_and_leaves_words():
    text = prose("NLL 3.291 (-10.9%), 2.47x faster, 69,000 tokens/s, torch 2.2.1; r64 and `--seq 8192` and 12K")
    assert FIGURE.findall(text) == ["3.291", "10.9%", "2.47x", "69,000", "2.2.1"]
