"""Small helpers shared by tests."""

import json

import pytest

from reviewgpt import torch_support

# The images' torch lacks what newer torch has (reviewgpt.torch_support): tests of such a feature skip
# there, and the code's fallback is tested with the torch version injected.
needs_sdpa = pytest.mark.skipif(not torch_support.has("sdpa"),
                                reason="transformers 4.38.2 runs no SDPA on torch < 2.1.1 (eager instead)")
needs_rms_norm = pytest.mark.skipif(not torch_support.has("rms_norm"), reason="torch < 2.4 has no rms_norm")


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(row if isinstance(row, str) else json.dumps(row))
            f.write("\n")
    return path


def train_losses(run):
    """{step: loss} from a `reviewgpt train` run folder's train_log.jsonl."""
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}
