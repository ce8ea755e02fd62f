"""bench/speed2.py (issue 13's device measurement) runs its whole plan on a tiny model on the CPU."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import speed2  # noqa: E402


def test_the_plan_covers_every_target_and_each_option_has_its_own_row():
    gemma = speed2.PLANS["gemma"][2]
    core = {(r.seq, tuple(sorted(r.options.items()))) for r in gemma if not r.optional}
    assert (32768, (("checkpoint_offload", True), ("checkpoint_skip_layers", 0))) in core
    assert (32768, (("checkpoint_skip_layers", 0), ("lean_mlp", True))) in core
    assert any(seq == 65536 for seq, _ in core) and any(seq == 8192 for seq, _ in core)
    assert {(recipe, seq) for recipe, seq in speed2.TARGETS} == {
        ("gemma-7b-it", 8192), ("mistral-7b-instruct-v0.2", 12288), ("gemma-7b-it", 32768), ("gemma-7b-it", 65536)}
    assert sum(r.seconds for r in gemma if not r.optional) < 300  # the core rows fit the call with the loads


def test_run_and_table_on_a_tiny_model(tiny_mistral, tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    assert speed2.main(["run", "mistral", "--tiny", str(tiny_mistral), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["label"] for r in rows] == ["reference", "defaults+checkpoint_skip_layers=auto(0)",  # no GPU: none
                                          "defaults+checkpoint_skip_layers=0"]
    assert rows[0]["fresh_process"] and not any(rows[0]["options"].values())
    assert all(r["seq"] == 12288 // 256 and r["tokens_per_s"] > 0 for r in rows)
    capsys.readouterr()
    assert speed2.main(["table", str(out), "--scale", "256"]) == 0
    text = capsys.readouterr().out
    assert "| tiny-mistral0 | 48 | defaults+checkpoint_skip_layers=auto(0) |" in text.replace(tiny_mistral.name,
                                                                                               "tiny-mistral0")
    assert ">= 1.6x reference" in text and "planner within 10%" in text


def test_device_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "device_speed2.sh")]).returncode == 0
