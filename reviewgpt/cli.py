"""The `reviewgpt` command line: one subcommand per step of the data flow.

    recipes -> data check / data prepare -> train -> merge -> review -> eval / score / judge
    (+ quickstart, tiny-model)

Each subcommand lives in a module that exposes `register(subparsers)`; the module's own heavy
imports (torch, transformers) happen inside its command function, so `--help` is instant.
Library code logs; only this module (and the command functions) print. A `UserError` is
printed as one line and exits with status 2; no traceback for a user's mistake.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from typing import List, Optional

from reviewgpt import __version__
from reviewgpt.errors import UserError
from reviewgpt.offline import offline_by_default

# Modules that add subcommands, in the order `--help` lists them.
COMMAND_MODULES = [
    "reviewgpt.commands.recipes",
    "reviewgpt.commands.data",
    "reviewgpt.commands.train",
    "reviewgpt.commands.merge",
    "reviewgpt.commands.review",
    "reviewgpt.commands.eval",
    "reviewgpt.commands.score",
    "reviewgpt.commands.quickstart",
    "reviewgpt.commands.tiny_model",
    "reviewgpt.commands.doctor",
    "reviewgpt.commands.judge",
    "reviewgpt.commands.needle",
    "reviewgpt.commands.report",
    "reviewgpt.commands.bench",
    "reviewgpt.commands.plan",
]


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):
        # No "(default: None)" for a flag that is simply not given (a recipe field then comes from
        # the YAML), and none after a help text that already says what the default is.
        text = action.help or ""
        if action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser with the project's help format; `add_subparsers` makes more of its kind,
    so every command and sub-command gets the format without asking for it."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message):
        """A usage mistake is one line naming the flag (argparse would print the whole usage first)."""
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`.\n")

    def parse_args(self, args=None, namespace=None):
        # argparse reports a flag no subcommand knows from the top-level parser, which would point to
        # `reviewgpt --help`; the subcommand that was given is the one whose help lists its flags.
        namespace, unknown = self.parse_known_args(args, namespace)
        if unknown:
            chosen_subcommand(self, namespace).error(f"unrecognized arguments: {' '.join(unknown)}")
        return namespace


def chosen_subcommand(parser: argparse.ArgumentParser, namespace) -> argparse.ArgumentParser:
    """The innermost (sub-)sub-command parser that `namespace` was parsed with (`data check`'s for
    `reviewgpt data check ...`), or `parser` itself when no subcommand was given."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub = action.choices.get(getattr(namespace, action.dest, None) or "")
            if sub is not None:
                return chosen_subcommand(sub, namespace)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="reviewgpt",
        description="Fine-tune open LLMs into reviewers of ML papers.",
        epilog="example:\n  reviewgpt quickstart runs/quickstart",
    )
    parser.add_argument("--version", action="version", version=f"reviewgpt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def _offline_by_default() -> None:
    # Offline unless HF_HUB_OFFLINE=0 (reviewgpt.offline), before any command imports huggingface_hub.
    offline_by_default()
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # Offline, peft 0.9.0 cannot ask the hub whether the base's config exists and warns on every
    # save that it "will assume that the vocabulary was not modified": true here (LoRA on
    # projections only), and local base folders do have their config.
    warnings.filterwarnings("ignore", message="Could not find a config file in", category=UserWarning)
    # deepspeed 0.13.1 (in the GPU images; trl imports it) warns at import that pynvml is deprecated:
    # not the user's to fix, and it would be a second line beside a one-line error.
    warnings.filterwarnings("ignore", message="The pynvml package is deprecated", category=FutureWarning)


def main(argv: Optional[List[str]] = None) -> int:
    _offline_by_default()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --gpus N` relaunches itself with these
    args.run_command = main  # quickstart runs other commands through it (commands never import cli)
    # reviewgpt's own progress at INFO; other libraries only when they warn (datasets' "PyTorch
    # version ... available" would otherwise come before every one-line error).
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("reviewgpt").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    output = getattr(args, "output", None)
    created = output is not None and not os.path.exists(output)
    code = 1
    try:
        code = int(args.func(args) or 0)
        return code
    except UserError as exc:
        _close_progress_bars()
        print(f"reviewgpt {args.command}: error: {exc}", file=sys.stderr)
        code = exc.exit_code
        return code
    except Exception as exc:  # a read-only disk, a full one, a file where a folder goes: one line, exit 2
        message = _file_system_problem(exc, output)
        if message is None:
            raise
        _close_progress_bars()
        print(f"reviewgpt {args.command}: error: {message}", file=sys.stderr)
        code = UserError.exit_code
        return code
    except KeyboardInterrupt:
        print(f"reviewgpt {args.command}: interrupted", file=sys.stderr)
        code = 130
        return code
    finally:
        if code and created:
            _remove_if_empty(output)


def _close_progress_bars() -> None:
    """End the progress bars an error cut short, so the error starts a line of its own."""
    tqdm = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def _file_system_problem(exc: Exception, output) -> Optional[str]:
    """One sentence for a file-system failure (files.os_error_message), or None for anything else."""
    from reviewgpt.files import is_disk_full, os_error_message

    if isinstance(exc, OSError) and exc.filename is not None:
        return os_error_message(exc)
    if is_disk_full(exc):  # torch.save and safetensors report a full disk without an OSError
        import errno

        return os_error_message(OSError(errno.ENOSPC, "No space left on device", output))
    return None


def _remove_if_empty(path) -> None:
    """A failed command leaves no empty --output behind (a folder with no file in it, or an empty
    file); anything it did write stays."""
    import shutil
    from pathlib import Path

    path = Path(path)
    if path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
        shutil.rmtree(path, ignore_errors=True)
    elif path.is_file() and path.stat().st_size == 0:
        path.unlink()


def train_gemma(argv: Optional[List[str]] = None) -> int:
    """`train-gemma ...` = `reviewgpt train --recipe gemma-7b-it ...` (commands/train.py ALIASES)."""
    return main(["train-gemma", *(sys.argv[1:] if argv is None else argv)])


def train_mistral(argv: Optional[List[str]] = None) -> int:
    """`train-mistral ...` = `reviewgpt train --recipe mistral-7b-instruct-v0.2 ...` (commands/train.py ALIASES)."""
    return main(["train-mistral", *(sys.argv[1:] if argv is None else argv)])
