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


def smollm2_recipe_on_cpu(model, **overrides):
    """The smollm2-135m recipe (ChatML, its layout and generation block) sized for a tiny Llama on the CPU:
    LoRA, fp32, 384 tokens, no checkpointing or dropout; `overrides` set the rest (steps, max_new_tokens)."""
    from reviewgpt.recipe import load_recipe

    return load_recipe("smollm2-135m", {
        "model": str(model), "finetune": "lora", "max_seq_length": 384, "gradient_accumulation_steps": 1,
        "per_device_train_batch_size": 2, "learning_rate": 1e-2, "bf16": False, "gradient_checkpointing": False,
        "lora_dropout": 0.0, "optim": "adamw_torch", **overrides})


def train_losses(run):
    """{step: loss} from a `reviewgpt train` run folder's train_log.jsonl."""
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def assert_merged_like_adapter(base_logits, adapter_logits, merged_logits, atol, rtol=0.0):
    """The merged model gives base + adapter's logits, and the adapter moved the logits by far more
    than that tolerance: otherwise a merge that dropped the adapter would pass the same check."""
    import torch

    moved = (adapter_logits.float() - base_logits.float()).abs().max().item()
    assert moved > 10 * atol, (f"the adapter moved the logits by only {moved:.3g}: with atol={atol} the check "
                               "could not tell a merge that dropped it")
    torch.testing.assert_close(merged_logits.float(), adapter_logits.float(), atol=atol, rtol=rtol)


def skip_unless_bitsandbytes_quantizes_on_cpu():
    """bitsandbytes < 0.44 (the CUDA images' 0.43.1, torch 2.2's env) has no CPU 4-bit kernels."""
    functional = pytest.importorskip("bitsandbytes.functional")
    import torch

    try:
        functional.quantize_4bit(torch.ones(64, 64, dtype=torch.bfloat16), quant_type="nf4")
    except Exception:  # noqa: BLE001 - what such a bitsandbytes raises differs by version
        pytest.skip("this bitsandbytes cannot quantize on the CPU")
