"""Fused LoRA, fused RMSNorm and partial checkpointing change speed, not results (tiny models, CPU)."""

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from reviewgpt.torch_support import dataloader_prefetch_factor
from reviewgpt.train.speed.checkpointing import checkpoint_layers, recompute_all_layers
from reviewgpt.train.speed.lora import patch_fused_lora, unpatch_fused_lora
from reviewgpt.train.speed.norm import patch_fused_rmsnorm, unpatch_fused_rmsnorm
from tests.test_speed import assert_close, batch, load, loss_and_grads
from tests.util import needs_rms_norm

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def lora_model(path, dropout=0.1, dtype=torch.float32):
    model = get_peft_model(load(path, dtype=dtype), LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout,
                                                               target_modules=TARGETS))
    with torch.no_grad():  # lora_B starts at zero; make the adapter matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model.train()


def seeded(model, ids, labels, seed=3, **kw):
    torch.manual_seed(seed)  # the same dropout masks in both runs
    return loss_and_grads(model, ids, labels, **kw)


@pytest.mark.parametrize("family", ["gemma", "mistral"])
def test_fused_lora_equals_peft_with_dropout(family, tiny_models):
    model = lora_model(tiny_models[family])
    ids, labels = batch(model.config.vocab_size)
    ref_loss, ref_grads = seeded(model, ids, labels)
    assert patch_fused_lora(model) == len(TARGETS) * model.config.num_hidden_layers
    loss, grads = seeded(model, ids, labels)
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item())
    assert set(grads) == set(ref_grads) and any("lora_A" in n for n in grads)
    for name in ref_grads:
        assert_close(grads[name], ref_grads[name], 1e-5)
    unpatch_fused_lora(model)
    assert "forward" not in vars(model.base_model.model.model.layers[0].self_attn.q_proj)


def test_fused_lora_under_bf16_autocast_and_its_fallbacks(tiny_mistral):
    model = lora_model(tiny_mistral)
    ids, labels = batch(model.config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss, ref_grads = seeded(model, ids, labels)
        patch_fused_lora(model)
        loss, grads = seeded(model, ids, labels)
    assert abs(loss.item() - ref_loss.item()) <= 1e-2 * abs(ref_loss.item())
    for name in ref_grads:
        assert_close(grads[name], ref_grads[name], 5e-2)
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(2, 5, q.in_features)
    with model.disable_adapter():  # peft's own path: the base layer alone
        assert torch.equal(q(x), q.base_layer(x))
    q.merge()  # merged weights: peft's path again, same output as unmerged
    merged = q(x)
    q.unmerge()
    model.eval()
    assert torch.allclose(merged, q(x), atol=1e-5)


@needs_rms_norm
def test_fused_rmsnorm_equals_mistral_rmsnorm(tiny_mistral):
    model = load(tiny_mistral).train()
    ids, labels = batch(model.config.vocab_size)
    ref_loss, ref_grads = loss_and_grads(model, ids, labels)
    n = patch_fused_rmsnorm(model)
    assert n == 2 * model.config.num_hidden_layers + 1
    loss, grads = loss_and_grads(model, ids, labels)
    unpatch_fused_rmsnorm(model)
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item())
    for name in ref_grads:
        assert_close(grads[name], ref_grads[name], 1e-4)
    # bf16 activations with an fp32 weight (peft's upcast): the original's dtype promotion is kept
    norm = model.model.norm
    x = torch.randn(2, 7, norm.weight.shape[0], dtype=torch.bfloat16)
    ref = norm(x)
    patch_fused_rmsnorm(model)
    assert norm(x).dtype == ref.dtype == torch.float32
    assert_close(norm(x), ref, 1e-2)
    norm.weight.data = norm.weight.data.bfloat16()
    assert norm(x).dtype == torch.bfloat16


def test_fused_rmsnorm_leaves_gemma_alone(tiny_gemma):
    assert patch_fused_rmsnorm(load(tiny_gemma)) == 0


def _count_layer_forwards(model):
    """Calls per decoder layer (pre-hooks: a recompute may stop early, before forward hooks run)."""
    counts = {}
    for i, layer in enumerate(model.model.layers):
        layer.register_forward_pre_hook(lambda m, a, i=i: counts.__setitem__(i, counts.get(i, 0) + 1))
    return counts


def test_skipping_checkpoints_keeps_grads_and_runs_kept_layers_once(tiny_mistral):
    model = load(tiny_mistral).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids, labels = batch(model.config.vocab_size)
    layers = model.config.num_hidden_layers
    counts = _count_layer_forwards(model)
    ref_loss, ref_grads = loss_and_grads(model, ids, labels)
    assert counts == dict.fromkeys(range(layers), 2)  # every layer recomputed in backward
    assert checkpoint_layers(model, keep_last=1) == 1
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # as Trainer does
    counts.clear()
    loss, grads = loss_and_grads(model, ids, labels)
    assert counts == {**dict.fromkeys(range(layers - 1), 2), layers - 1: 1}
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    for name in ref_grads:
        assert_close(grads[name], ref_grads[name], 1e-5)
    recompute_all_layers(model)
    counts.clear()
    loss_and_grads(model, ids, labels)
    assert counts == dict.fromkeys(range(layers), 2)
    assert checkpoint_layers(model, keep_last=99) == layers  # more than there are: all of them


def test_speedups_skip_layers_through_the_trainer(tiny_mistral, tmp_path):
    from transformers import Trainer, TrainingArguments

    from reviewgpt.recipe import load_recipe
    from reviewgpt.train.dataset import ListDataset, PadCollator
    from reviewgpt.train.speed import speedups

    model = get_peft_model(load(tiny_mistral), LoraConfig(r=4, target_modules=TARGETS))
    args = TrainingArguments(str(tmp_path), report_to=[], use_cpu=True, gradient_checkpointing=True,
                             gradient_checkpointing_kwargs={"use_reentrant": False}, max_steps=1,
                             per_device_train_batch_size=1, save_strategy="no")
    args.dataloader_prefetch_factor = dataloader_prefetch_factor()  # as reviewgpt.train does (torch 1.x)
    ids = list(range(3, 35))
    trainer = Trainer(model=model, args=args, train_dataset=ListDataset([{"input_ids": ids, "labels": ids}]),
                      data_collator=PadCollator(0))
    recipe = load_recipe("tiny", {"model": str(tiny_mistral), "checkpoint_skip_layers": 1})
    with speedups(trainer.model, recipe.speed, bf16=False, args=trainer.args) as done:
        assert done.checkpoint_skip_layers == 1 and done.fused_lora
        assert done.fused_rmsnorm == hasattr(F, "rms_norm")  # off, with one log line, on torch < 2.4
        counts = _count_layer_forwards(model.base_model.model)
        trainer.train()  # re-enables gradient checkpointing itself; the kept layer must stay kept
    layers = model.config.num_hidden_layers
    assert counts == {**dict.fromkeys(range(layers - 1), 2), layers - 1: 1}
    assert "gradient_checkpointing_enable" not in vars(model.base_model.model)


def test_skip_layers_must_not_be_negative():
    from reviewgpt.errors import UserError
    from reviewgpt.recipe import load_recipe

    with pytest.raises(UserError, match="checkpoint_skip_layers must be >= 0"):
        load_recipe("tiny").with_speed(checkpoint_skip_layers=-1)


def test_fused_rmsnorm_is_a_no_op_on_a_torch_without_rms_norm(tiny_mistral, monkeypatch, caplog):
    # torch < 2.4, as in the CUDA 11.x images (where there is nothing to delete)
    monkeypatch.delattr(F, "rms_norm", raising=False)
    model = load(tiny_mistral)
    with caplog.at_level("INFO", logger="reviewgpt.train.speed.norm"):
        assert patch_fused_rmsnorm(model) == 0
    assert not any("forward" in vars(m) for m in model.modules())
    assert "has no rms_norm (torch >= 2.4): fused_rmsnorm stays off" in caplog.text
