"""nox sessions: `nox` runs what CI runs (tests, lint).

    nox -s tests        CPU tests, offline (pytest-socket), tiny models built locally
    nox -s lint         ruff
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
# torch: the CPU build (on these machines `pip install torch==2.13.0` takes it from local disk).
TORCH = "torch==2.13.0"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the CPU test suite offline (no network: pytest-socket; HF_HUB_OFFLINE=1)."""
    session.install(TORCH)
    session.install("-e", ".[test]")
    session.run(
        "pytest", *(session.posargs or ["-q"]),
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff over the package, tests and noxfile."""
    session.install("ruff")
    session.run("ruff", "check", "reviewgpt", "tests", "noxfile.py")
