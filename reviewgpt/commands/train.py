"""`reviewgpt train`: QLoRA SFT of a recipe on a data file; re-run to resume."""

from __future__ import annotations

import contextlib
import json
import sys

from reviewgpt.commands import int_flag

# The console scripts `train-gemma` and `train-mistral` (cli.train_gemma / train_mistral): `train` with
# the recipe preset, so their --help shows --recipe as optional with that default.
ALIASES = {"train-gemma": "gemma-7b-it", "train-mistral": "mistral-7b-instruct-v0.2"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune a model on paper-review records (re-run the same command to resume)",
        epilog=(
            "examples:\n"
            "  reviewgpt train --recipe gemma-7b-it --model /models/gemma-7b-it --data papers.jsonl \\\n"
            "      --output runs/g\n"
            "  reviewgpt train --recipe tiny --model runs/tiny-gemma --data sample.jsonl --output runs/tiny\n"
            "  train-mistral --model /models/mistral --data papers.jsonl --output runs/m --max-seq-length 8192\n"
            "  reviewgpt train --recipe mistral-7b-instruct-v0.2 --gpus 2 --deepspeed zero2 \\\n"
            "      --model /models/mistral --data papers.jsonl --output runs/m"
        ),
    )
    _add_train_flags(p)
    for alias, recipe in ALIASES.items():
        # No help=: argparse then leaves it out of `reviewgpt --help`'s list of commands.
        a = subparsers.add_parser(
            alias, prog=alias, description=f"`reviewgpt train --recipe {recipe}`, the recipe preset.",
            epilog=f"example:\n  {alias} --model /models/{recipe} --data papers.jsonl --output runs/{alias[6:]}")
        _add_train_flags(a, recipe)


def _deepspeed_stage(text: str) -> str:
    """argparse type of --deepspeed: ZeRO-3 is not among the choices, but passing it says why."""
    import argparse

    from reviewgpt.train.distributed import ZERO3_REFUSED

    if text == "zero3":
        raise argparse.ArgumentTypeError(ZERO3_REFUSED)
    return text


def _add_train_flags(p, recipe=None) -> None:
    from reviewgpt.commands.recipe_flags import add_recipe_flags
    from reviewgpt.train.distributed import DEEPSPEED_CHOICES

    p.add_argument("--recipe", required=recipe is None, default=recipe,
                   help="built-in recipe name (see `reviewgpt recipes`) or a YAML file")
    p.add_argument("--data", required=True,
                   help="records: .jsonl, .jsonl.gz or .json with paper/review (or input/output)")
    p.add_argument("--output", required=True, help="run folder: checkpoints, adapter, logs, loss curve")
    p.add_argument("--resume-from", metavar="CHECKPOINT", help="resume from this checkpoint folder "
                   "(default: the newest complete checkpoint in --output, if any)")
    p.add_argument("--eval", action="store_true", help="hold out eval_fraction of the papers and evaluate")
    p.add_argument("--skip-invalid", action="store_true",
                   help="set invalid records aside in OUTPUT/rejects.jsonl instead of stopping")
    launch = p.add_argument_group("several GPUs / nodes (one process per GPU through `accelerate launch`)")
    launch.add_argument("--gpus", type=int_flag(1),
                        help="GPUs per node; > 1 relaunches this command with accelerate (DDP)")
    launch.add_argument("--nodes", type=int_flag(1), default=1, help="machines taking part")
    launch.add_argument("--node-rank", type=int_flag(0), default=0, help="this machine's rank (0 = the main one)")
    launch.add_argument("--main-addr", help="address of the rank-0 machine (needed with --nodes > 1)")
    launch.add_argument("--main-port", type=int_flag(1, 65535), default=29500, help="port on the rank-0 machine")
    launch.add_argument("--deepspeed", choices=DEEPSPEED_CHOICES, type=_deepspeed_stage,
                        help="DeepSpeed ZeRO stage 2 with the shipped config (ZeRO-3 needs transformers >= 4.39)")
    launch.add_argument("--deepspeed-config", help="your own DeepSpeed JSON instead of the shipped one")
    add_recipe_flags(p)
    p.set_defaults(func=run)


def _relaunch_if_asked(args, recipe) -> int | None:
    """Run this same command under `accelerate launch` when --gpus/--nodes ask for several processes."""
    from reviewgpt.errors import UserError
    from reviewgpt.train import distributed

    distributed.refuse_zero3(args.deepspeed)  # also with one process, where nothing is launched
    processes = (args.gpus or 1) * args.nodes
    if processes <= 1 or distributed.world_size() > 1:
        return None  # one process, or already launched (accelerate/torchrun set WORLD_SIZE)
    import torch

    if torch.cuda.device_count() < (args.gpus or 1):
        raise UserError(f"--gpus {args.gpus}: this machine has {torch.cuda.device_count()} CUDA GPU(s).")
    distributed.accumulation_per_process(recipe.per_device_train_batch_size, recipe.gradient_accumulation_steps,
                                         processes)  # fail here, not in every child
    start = next(i for i, arg in enumerate(args.argv) if arg in ("train", *ALIASES))
    argv = args.argv[start + 1:]
    if args.argv[start] in ALIASES:  # the children run `reviewgpt train`: name the alias's recipe
        argv = ["--recipe", args.recipe, *argv]
    cmd = distributed.launch_command(distributed.strip_launch_flags(argv), args.gpus or 1, args.nodes,
                                     args.node_rank, args.main_addr, args.main_port, args.deepspeed,
                                     args.deepspeed_config, bf16=recipe.bf16)
    return distributed.relaunch(cmd)


def run(args) -> int:
    # stdout is the command's result: one JSON line. Whatever the libraries print meanwhile goes to
    # stderr (deepspeed's logger, made at its import, writes "Setting ds_accelerator ..." to stdout).
    with contextlib.redirect_stdout(sys.stderr):
        result = _train(args)
    if isinstance(result, int):  # the exit code of the processes `--gpus N` launched
        return result
    print(json.dumps(result))
    return 0


def _train(args):
    from reviewgpt.commands.recipe_flags import recipe_overrides
    from reviewgpt.recipe import load_recipe
    from reviewgpt.train.distributed import world_size
    from reviewgpt.train.loop import train

    recipe = load_recipe(args.recipe, recipe_overrides(args))
    code = _relaunch_if_asked(args, recipe)
    if code is not None:
        return code
    # --deepspeed-config counts in the processes `accelerate launch` started (the launcher passes it to them)
    deepspeed_config = args.deepspeed_config if world_size() > 1 else None
    return train(recipe, args.data, args.output, resume_from=args.resume_from, do_eval=args.eval,
                 skip_invalid=args.skip_invalid, deepspeed_config=deepspeed_config)
