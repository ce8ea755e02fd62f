"""`reviewgpt quickstart DIR`: the whole pipeline on the CPU in minutes.

sample data -> tiny Gemma -> data check -> train (recipe `tiny`, with eval) -> merge -> review.
Each step runs the same CLI command a user would type, printed before it runs.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "quickstart", help="run data check -> train -> merge -> review on a tiny local model (CPU, minutes)",
        epilog="example:\n  reviewgpt quickstart runs/quickstart",
    )
    p.add_argument("dir", help="folder for everything the quickstart writes")
    p.add_argument("--family", choices=["gemma", "mistral"], default="gemma", help="tiny model architecture")
    p.set_defaults(func=run)


def run(args) -> int:
    from reviewgpt.data.sample import write_sample
    from reviewgpt.errors import UserError
    from reviewgpt.models.tiny import TEMPLATE_OF_FAMILY

    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    data = write_sample(root / "sample.jsonl")
    print(f"wrote {data} (synthetic paper-review records)")
    model = root / f"tiny-{args.family}"
    run_dir = root / "run"
    # 512 tokens, not the tiny recipe's 2048 (which holds real papers' reviews): the tour stays a
    # minute on 2 cores and shows papers trimmed to fit with their reviews whole.
    # The tiny recipe's template is Gemma's: each family trains with its own chat format.
    template = TEMPLATE_OF_FAMILY[args.family]
    steps = [
        ["tiny-model", "--family", args.family, "--output", str(model)],
        ["data", "check", str(data), "--recipe", "tiny", "--template", template, "--tokenizer", str(model),
         "--max-length", "512"],
        ["train", "--recipe", "tiny", "--family", args.family, "--template", template, "--model", str(model),
         "--data", str(data), "--output", str(run_dir), "--eval", "--max-seq-length", "512"],
        ["merge", str(run_dir), "--output", str(root / "merged"), "--dtype", "float32"],
        ["review", "--model", str(root / "merged"), "--papers", str(data), "--output", str(root / "reviews.jsonl"),
         "--limit", "4"],
    ]
    started = time.time()
    for step in steps:
        print(f"\n$ reviewgpt {shlex.join(step)}", flush=True)
        code = args.run_command(step)
        if code != 0:
            raise UserError(f"quickstart step `reviewgpt {step[0]}` failed (exit {code}); see the message above.")
    print(f"\nquickstart done in {time.time() - started:.0f} s: adapter in {run_dir}, loss curve "
          f"{run_dir / 'loss_curve.png'}, merged model in {root / 'merged'}, reviews in {root / 'reviews.jsonl'}")
    return 0
