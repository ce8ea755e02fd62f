"""Tokens/s, peak memory per GPU and first losses of `reviewgpt train` runs (device script).

    python scripts/device/scaling.py TOKENS_PER_STEP RUN_DIR [RUN_DIR ...]
Step time = median difference between consecutive log timestamps, leaving out the first step
(warm-up); tokens/s = tokens per optimizer step / step time.
"""

import json
import statistics
import sys
from pathlib import Path

tokens_per_step = int(sys.argv[1])
for run in map(Path, sys.argv[2:]):
    log = run / "train_log.jsonl"
    summary = run / "train_summary.json"
    if not log.is_file() or not summary.is_file():
        print(json.dumps({"run": str(run), "error": "no train_log.jsonl / train_summary.json"}))
        continue
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    times = [b["time"] - a["time"] for a, b in zip(steps, steps[1:])]
    step_s = statistics.median(times) if times else None
    info = json.loads(summary.read_text())
    gpus = info.get("world_size", 1)
    total = tokens_per_step / step_s if step_s else None
    print(json.dumps({
        "run": run.name, "gpus": gpus, "step_seconds": step_s and round(step_s, 3),
        "tokens_per_s_total": total and round(total), "tokens_per_s_per_gpu": total and round(total / gpus),
        "peak_allocated_gib_per_gpu": info.get("peak_allocated_gib_per_gpu"),
        "losses": [round(r["loss"], 4) for r in steps], "grad_norms": [round(r.get("grad_norm", 0), 4) for r in steps],
    }))
