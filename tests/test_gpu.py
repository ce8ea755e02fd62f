"""GPU-only: 4-bit load + QLoRA train + 16-bit merge on a small model (skipped without CUDA)."""

import json

import pytest
import torch

from reviewgpt.merge import merge
from reviewgpt.models.tiny import build_tiny_model
from reviewgpt.recipe import load_recipe
from reviewgpt.train.loop import train
from tests.util import assert_merged_like_adapter

pytestmark = pytest.mark.gpu


def test_qlora_4bit_train_then_merge_into_16bit(tmp_path, sample_file):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = build_tiny_model("gemma", tmp_path / "base", hidden=256, layers=4)
    recipe = load_recipe("gemma-7b-it", {"model": str(base_dir), "max_seq_length": 512, "max_steps": 3,
                                         "save_steps": 3, "logging_steps": 1, "template": "gemma-it",
                                         "gradient_accumulation_steps": 2,
                                         # 1e-3 moved the logits by only 0.042 (CPU replica), under the
                                         # merge check's 0.05 tolerance; 1e-2 moves them by ~4.
                                         "learning_rate": 1e-2})
    summary = train(recipe, sample_file, tmp_path / "run")
    assert summary["global_step"] == 3
    config = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert config["r"] == 64 and config["lora_alpha"] == 16

    merged = merge(tmp_path / "run", tmp_path / "merged", dtype="bfloat16", base_weights="16bit")
    ids = torch.tensor([[2, 10, 50, 99, 120]], device="cuda")
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.bfloat16).cuda().eval()
        base_logits = base(ids).logits.float()  # before PeftModel wraps the base in place
        expected = PeftModel.from_pretrained(base, str(tmp_path / "run")).eval()(ids).logits.float()
        got = AutoModelForCausalLM.from_pretrained(merged, torch_dtype=torch.bfloat16).cuda().eval()(ids).logits
    assert_merged_like_adapter(base_logits, expected, got, atol=0.05, rtol=0.05)
