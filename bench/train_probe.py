"""Run `reviewgpt train` in-process and report its tokens/s and peak GPU memory (device script).

    python bench/train_probe.py OUT.json -- train --recipe gemma-7b-it --model DIR --data F --output D ...

Tokens/s = tokens per optimizer step (mean example length x micro-batch x grad accumulation, from
the same tokenization `train` does) / median optimizer-step seconds from train_log.jsonl.
"""

import json
import statistics
import sys
from pathlib import Path

import torch

from reviewgpt.cli import main

out_file, argv = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
rc = main(argv)
flag = {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--")}
output = Path(flag["--output"])
rows = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
times = [r["time"] for r in rows if "loss" in r]
steps = [b - a for a, b in zip(times, times[1:])]
from reviewgpt.data.prompt import get_template  # noqa: E402
from reviewgpt.data.records import load_records  # noqa: E402
from reviewgpt.data.tokenization import PromptEncoder  # noqa: E402
from reviewgpt.models import load_tokenizer  # noqa: E402
from reviewgpt.recipe import load_recipe  # noqa: E402
from reviewgpt.run import RECIPE_FILE  # noqa: E402
from reviewgpt.train.dataset import tokenize_records  # noqa: E402

recipe = load_recipe(str(output / RECIPE_FILE))
encoder = PromptEncoder(load_tokenizer(recipe.model, recipe.family), get_template(recipe.template))
split = tokenize_records(load_records(flag["--data"]).records, encoder, recipe)
mean_len = statistics.mean(len(e["input_ids"]) for e in split.examples)
per_step = mean_len * recipe.effective_batch_size
result = {"rc": rc, "gpu": torch.cuda.get_device_name(0), "mean_example_tokens": round(mean_len, 1),
          "tokens_per_optimizer_step": round(per_step), "step_seconds": [round(s, 2) for s in steps],
          "tokens_per_s": round(per_step / statistics.median(steps), 1) if steps else None,
          "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
          "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
          "summary": json.loads((output / "train_summary.json").read_text())}
Path(out_file).write_text(json.dumps(result) + "\n")
print(json.dumps(result))
