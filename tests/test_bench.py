"""`reviewgpt bench` on a tiny model (CPU: plain LoRA) and, on a GPU, in 4-bit."""

import json

import pytest

from reviewgpt.cli import main


def test_bench_cpu_reference_and_ours_one_json_line_each(tiny_mistral, tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    assert main(["bench", "--recipe", "tiny", "--model", str(tiny_mistral), "--seq", "32", "--batch", "2",
                 "--steps", "1", "--warmup", "1", "--reference", "--no-quantize", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{\"path")]
    assert [r["path"] for r in rows] == ["reference", "reviewgpt"]
    for row in rows:
        assert row["tokens_per_s"] > 0 and row["seq"] == 32 and row["batch"] == 2
        assert set(row["versions"]) >= {"torch", "transformers", "trl", "peft"}
    assert rows[1]["options"]["chunked_loss"] and not any(rows[0]["options"].values())
    assert len(out.read_text().splitlines()) == 2


@pytest.mark.gpu
def test_bench_gpu_4bit_tiny(tiny_gemma, capsys):
    assert main(["bench", "--recipe", "gemma-7b-it", "--model", str(tiny_gemma), "--seq", "256",
                 "--steps", "1", "--warmup", "1", "--reference"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{\"path")]
    assert rows[1]["peak_allocated_gib"] <= rows[0]["peak_allocated_gib"]
