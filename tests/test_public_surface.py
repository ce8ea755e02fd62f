"""What users and scripts see does not change when the code moves: every command's `--help`, the
top-level API (`reviewgpt.formatting_func`, `reviewgpt.qlora_config`, ...) and its output.

The fixtures under tests/fixtures/ were captured before the package was split into data/, train/
and eval/ (issue 14). A deliberate change to a help text or the API regenerates them:

    python -m tests.test_public_surface --write

and the diff shows in review what users will see change.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
HELP_FILE = FIXTURES / "cli_help.txt"
API_FILE = FIXTURES / "public_api.json"
COLUMNS = "100"  # argparse wraps at the terminal width: fixed here and when the fixture is written
SEPARATOR = "=" * 20


def _subcommands(parser, prefix=()):
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommands(sub, (*prefix, name))


def help_texts() -> dict:
    """{"reviewgpt train": its --help text, ...} for the top command and every (sub-)sub-command."""
    from reviewgpt.cli import build_parser, main

    texts = {}
    for path in _subcommands(build_parser()):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main([*path, "--help"])
        # Python 3.9's argparse heads the flags "optional arguments:", 3.10+ "options:".
        texts[" ".join(("reviewgpt", *path))] = out.getvalue().replace("optional arguments:", "options:")
    return texts


def _format_help(texts: dict) -> str:
    return "".join(f"{SEPARATOR} {name} --help\n{text}" for name, text in texts.items())


def _parse_help(content: str) -> dict:
    texts = {}
    for block in content.split(SEPARATOR + " ")[1:]:
        header, _, text = block.partition("\n")
        texts[header[: -len(" --help")]] = text
    return texts


def public_api() -> dict:
    """The names `import reviewgpt` offers, the signatures of its functions and what they return."""
    import reviewgpt

    bnb, lora = reviewgpt.qlora_config("gemma")
    _, mistral = reviewgpt.qlora_config("mistral", r=8, alpha=32, dropout=0.05, quantize=False)
    return {
        "__all__": sorted(reviewgpt.__all__),
        "signatures": {name: str(inspect.signature(getattr(reviewgpt, name)))
                       for name in ("formatting_func", "make_formatting_func", "qlora_config", "load_recipe",
                                    "offline_by_default")},
        "formatting_func(batch)": reviewgpt.formatting_func({"input": ["PAPER"], "output": ["REVIEW"]}),
        "formatting_func(example)": reviewgpt.formatting_func({"paper": "PAPER", "review": "REVIEW"}),
        "make_formatting_func(t)": {name: reviewgpt.make_formatting_func(name)({"paper": ["P"], "review": ["R"]})
                                    for name in sorted(reviewgpt.TEMPLATES)},
        "INSTRUCTION": reviewgpt.INSTRUCTION,
        "qlora_config(gemma)": {
            "bnb": {k: str(v) for k, v in sorted(bnb.to_dict().items())},
            "lora": {"r": lora.r, "lora_alpha": lora.lora_alpha, "lora_dropout": lora.lora_dropout,
                     "target_modules": sorted(lora.target_modules), "bias": lora.bias,
                     "task_type": str(lora.task_type)},
        },
        "qlora_config(mistral, r=8, alpha=32, dropout=0.05, quantize=False)": {
            "r": mistral.r, "lora_alpha": mistral.lora_alpha, "lora_dropout": mistral.lora_dropout,
            "target_modules": sorted(mistral.target_modules)},
    }


@pytest.fixture
def fixed_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", COLUMNS)


def test_every_help_text_is_unchanged(fixed_width):
    expected = _parse_help(HELP_FILE.read_text(encoding="utf-8"))
    got = help_texts()
    assert sorted(got) == sorted(expected), "commands were added or removed"
    for name in expected:
        assert got[name] == expected[name], f"`{name} --help` changed"


def test_the_help_fixture_covers_every_command_and_sub_command():
    names = set(_parse_help(HELP_FILE.read_text(encoding="utf-8")))
    assert {"reviewgpt", "reviewgpt train", "reviewgpt data check", "reviewgpt data prepare", "reviewgpt judge",
            "reviewgpt needle", "reviewgpt bench", "reviewgpt plan"} <= names
    assert len(names) >= 18


def test_the_public_api_is_unchanged():
    expected = json.loads(API_FILE.read_text(encoding="utf-8"))
    assert json.loads(json.dumps(public_api())) == expected


IMPORT_EVERYTHING = """
import importlib, os, pkgutil, sys
before_env, before_finders = dict(os.environ), list(sys.meta_path)
import reviewgpt
for module in pkgutil.walk_packages(reviewgpt.__path__, "reviewgpt."):
    if not module.name.endswith("__main__"):
        try:
            importlib.import_module(module.name)
        except ModuleNotFoundError as missing:  # an optional library this stack lacks (cu117: no triton)
            if missing.name.startswith("reviewgpt"):
                raise
changed = sorted(k for k in set(os.environ) | set(before_env) if os.environ.get(k) != before_env.get(k))
assert changed == [], changed
assert sys.meta_path == before_finders, sys.meta_path
import huggingface_hub.constants as hub
assert not hub.HF_HUB_OFFLINE
assert reviewgpt.offline_by_default() and hub.HF_HUB_OFFLINE
assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == "1"
"""


def test_importing_reviewgpt_changes_nothing_in_the_process():
    """Every module imports without setting an environment variable or installing an import hook;
    offline mode is the CLI's, and `reviewgpt.offline_by_default()` is the one call a script makes."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], env=env, check=True, cwd=Path(__file__).parent.parent)


def test_the_cli_runs_offline_unless_the_environment_says_otherwise(monkeypatch):
    from reviewgpt.cli import main

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    assert main(["recipes"]) == 0
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    assert main(["recipes"]) == 0
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == "0"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python -m tests.test_public_surface --write")
    os.environ["COLUMNS"] = COLUMNS
    FIXTURES.mkdir(exist_ok=True)
    HELP_FILE.write_text(_format_help(help_texts()), encoding="utf-8")
    API_FILE.write_text(json.dumps(public_api(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {HELP_FILE} and {API_FILE}")
