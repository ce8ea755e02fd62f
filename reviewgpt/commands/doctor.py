"""`reviewgpt doctor`: check this machine against every known conflict of the pinned stack."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="check versions, torch/CUDA/driver, bitsandbytes, flash-attn, deepspeed and GPU memory",
        description="Run this first, and paste its output into a bug report. Each check prints OK, WARN\n"
                    "or FAIL with the fix; the exit status is 1 when any check FAILs.",
        epilog="example:\n  reviewgpt doctor\n  reviewgpt doctor --recipe gemma-7b-it --json > doctor.json",
    )
    p.add_argument("--recipe", metavar="RECIPE",
                   help="also compare free GPU memory with what this recipe needs (a rough estimate)")
    p.add_argument("--json", action="store_true", help="print one JSON object (environment + checks)")
    p.set_defaults(func=run)


def run(args) -> int:
    from dataclasses import asdict

    from reviewgpt.env.doctor import exit_code, format_report, run_checks
    from reviewgpt.env.probe import probe_environment
    from reviewgpt.recipe import load_recipe

    recipe = load_recipe(args.recipe) if args.recipe else None  # UserError on an unknown name
    env = probe_environment()
    checks = run_checks(env, recipe)
    if args.json:
        print(json.dumps({"environment": env.to_dict(), "checks": [asdict(c) for c in checks],
                          "exit_code": exit_code(checks)}, indent=2))
    else:
        print(format_report(env, checks))
    return exit_code(checks)
