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


def test_ablation_rows_chain_the_techniques_then_add_memory_for_speed_rows():
    from reviewgpt.recipe import load_recipe
    from reviewgpt.train.bench import chain_steps, on_top_steps

    mistral = chain_steps("mistral") + on_top_steps(load_recipe("mistral-7b-instruct-v0.2"), skip_layers=(4, "auto"))
    labels = [label for label, _ in mistral]
    assert labels == ["+chunked_loss", "+bf16_frozen_weights", "+sdpa_cudnn", "+fused_lora", "+fused_rmsnorm",
                      "+triton_rmsnorm", "+triton_rope", "+triton_mlp",
                      "defaults+checkpoint_keep_attention", "defaults+checkpoint_offload", "defaults+lean_mlp",
                      "defaults+checkpoint_skip_layers=4", "defaults+checkpoint_skip_layers=auto"]
    assert mistral[0][1].chunked_loss and not mistral[0][1].fused_lora
    assert mistral[5][1].fused_rmsnorm and mistral[5][1].triton_rmsnorm and not mistral[5][1].triton_rope
    assert all(getattr(mistral[7][1], name) for name in ("fused_lora", "triton_rmsnorm", "triton_rope", "triton_mlp"))
    assert mistral[-1][1].checkpoint_skip_layers == "auto" and mistral[-1][1].fused_lora
    assert mistral[-1][1].triton_mlp  # the recipe's own: on by default
    assert mistral[9][1].checkpoint_offload and not mistral[9][1].lean_mlp
    gemma = [label for label, _ in chain_steps("gemma")]
    assert "+causal_sdpa" in gemma and "+fused_rmsnorm" not in gemma
    assert gemma[-3:] == ["+triton_rmsnorm", "+triton_rope", "+triton_mlp"]  # Gemma's RMSNorm has a kernel too


def test_bench_cpu_skip_layer_rows(tiny_mistral, tmp_path, capsys):
    from reviewgpt.recipe import RECIPE_DIR

    recipe = tmp_path / "tiny-checkpointed.yaml"  # nothing to skip without gradient checkpointing
    recipe.write_text((RECIPE_DIR / "tiny.yaml").read_text().replace("gradient_checkpointing: false",
                                                                     "gradient_checkpointing: true"))
    assert main(["bench", "--recipe", str(recipe), "--model", str(tiny_mistral), "--seq", "32", "--steps", "1",
                 "--warmup", "1", "--no-quantize", "--skip-layers", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{\"path")]
    assert [r["label"] for r in rows] == ["recipe defaults", "defaults+checkpoint_skip_layers=1"]
    assert rows[1]["options"]["checkpoint_skip_layers"] == 1 and rows[0]["options"]["checkpoint_skip_layers"] == 0


def test_bench_cpu_reference_rows_each_in_a_fresh_process_and_auto_layers(tiny_mistral, tmp_path, capsys):
    """Two grid points: the second reference row comes from a child process, the first is this
    process's first row; `--skip-layers auto` plans for --gpu-mem (here: every layer fits)."""
    from reviewgpt.recipe import RECIPE_DIR

    recipe = tmp_path / "tiny-checkpointed.yaml"
    recipe.write_text((RECIPE_DIR / "tiny.yaml").read_text().replace("gradient_checkpointing: false",
                                                                     "gradient_checkpointing: true"))
    assert main(["bench", "--recipe", str(recipe), "--model", str(tiny_mistral), "--seq", "32,40", "--steps", "1",
                 "--warmup", "1", "--no-quantize", "--reference", "--skip-layers", "auto", "--gpu-mem", "80"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{\"path")]
    assert [(r["label"], r["seq"]) for r in rows] == [
        ("reference", 40), ("reference", 32), ("recipe defaults", 32), ("recipe defaults", 40),
        ("defaults+checkpoint_skip_layers=auto(2)", 32)]
    assert [r["fresh_process"] for r in rows] == [True, True, False, False, False]
    assert rows[0]["tokens_per_s"] > 0 and not any(rows[0]["options"].values())
    assert rows[-1]["options"]["checkpoint_skip_layers"] == 2  # tiny: both layers kept


@pytest.mark.parametrize("flags", [["--seq", "32", "--skip-layers", "x"], ["--seq", "0"], ["--seq", ","],
                                   ["--seq", "32", "--batch", "2,a"]])
def test_bad_numbers_are_one_clear_line(flags, capsys):
    with pytest.raises(SystemExit) as exit_:
        code = main(["bench", "--recipe", "tiny", *flags])
        raise SystemExit(code)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("positive integers" in err or "at least one number" in err
                                       or "numbers of layers or 'auto'" in err)
