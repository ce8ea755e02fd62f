"""Chunked loss, bf16 precision and Gemma's causal SDPA path equal the reference on tiny models."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from reviewgpt import torch_support
from reviewgpt.models import resolve_attention
from reviewgpt.train.speed import speedups
from reviewgpt.train.speed.attention import patch_gemma_causal_sdpa, unpatch_gemma_causal_sdpa
from reviewgpt.train.speed.loss import IGNORE_INDEX, causal_lm_loss, patch_chunked_loss, unpatch_chunked_loss
from reviewgpt.train.speed.precision import float_parameter_bytes, keep_frozen_weights_in
from tests.util import needs_sdpa

REL = 1e-3


def load(path, attn="sdpa", dtype=torch.float32):
    # sdpa is eager on a torch that has none for transformers 4.38.2 (torch < 2.1.1, the cu117 image)
    model = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation=resolve_attention(attn),
                                                 torch_dtype=dtype)
    model.config.use_cache = False
    return model


def batch(vocab, b=2, t=48, seed=0, prompt=20):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (b, t), generator=g)
    labels = ids.clone()
    labels[:, :prompt] = IGNORE_INDEX  # loss on the "review" only, as the recipes do
    return ids, labels


def loss_and_grads(model, ids, labels, **kw):
    model.zero_grad()
    out = model(input_ids=ids, labels=labels, **kw)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), grads


def assert_close(a, b, rel=REL):
    assert torch.linalg.vector_norm(a.float() - b.float()) <= rel * torch.linalg.vector_norm(b.float()) + 1e-12


@pytest.mark.parametrize("family", ["gemma", "mistral"])
def test_chunked_loss_and_grads_match_the_reference_forward(family, tiny_models):
    model = load(tiny_models[family])
    ids, labels = batch(model.config.vocab_size)
    ref_loss, ref_grads = loss_and_grads(model, ids, labels)
    assert patch_chunked_loss(model, rows=7)  # several chunks, one ragged
    loss, grads = loss_and_grads(model, ids, labels)
    out = model(input_ids=ids, labels=labels)
    assert out.logits is None  # the point: no T x vocab logits
    unpatch_chunked_loss(model)
    assert abs(loss.item() - ref_loss.item()) <= REL * abs(ref_loss.item())
    assert set(grads) == set(ref_grads)
    for name in ref_grads:
        assert_close(grads[name], ref_grads[name])
    assert model(input_ids=ids, labels=labels).logits is not None  # unpatched again


def test_chunked_loss_grad_of_the_weight_and_ignored_positions():
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    labels = torch.randint(0, 50, (2, 9))
    labels[0, :4] = IGNORE_INDEX
    loss = causal_lm_loss(hidden, weight, labels, rows=3)
    loss.backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    logits = (hidden @ weight.t())[:, :-1].reshape(-1, 50)
    ref = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1))
    ref.backward()
    assert torch.allclose(loss, ref, rtol=1e-5)
    assert_close(gh, hidden.grad, 1e-5)
    assert_close(gw, weight.grad, 1e-5)
    assert torch.isnan(causal_lm_loss(hidden, weight, torch.full_like(labels, IGNORE_INDEX)))


@needs_sdpa
def test_gemma_causal_sdpa_equals_the_masked_path(tiny_gemma):
    model = load(tiny_gemma).train()
    ids, labels = batch(model.config.vocab_size)
    mask = torch.ones_like(ids)
    ref_loss, ref_grads = loss_and_grads(model, ids, labels, attention_mask=mask)
    assert patch_gemma_causal_sdpa(model)
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append((kwargs.get("attn_mask"), kwargs.get("is_causal")))
        return original(*args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        loss, grads = loss_and_grads(model, ids, labels, attention_mask=mask)
        padded = mask.clone()
        padded[1, -5:] = 0
        model(input_ids=ids, labels=labels, attention_mask=padded)
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
    n = model.config.num_hidden_layers
    assert calls[:n] == [(None, True)] * n  # no padding: the flash-eligible call
    assert all(m is not None for m, _ in calls[n:])  # padding: the original masked path
    unpatch_gemma_causal_sdpa(model)
    assert abs(loss.item() - ref_loss.item()) <= REL * abs(ref_loss.item())
    for name in ref_grads:
        assert_close(grads[name], ref_grads[name])


@pytest.mark.parametrize("family", ["gemma", "mistral"])
def test_frozen_weights_back_in_bf16_keep_the_loss(family, tiny_models):
    model = load(tiny_models[family], dtype=torch.bfloat16)
    ids, labels = batch(model.config.vocab_size)
    with torch.no_grad():
        native = model(input_ids=ids, labels=labels).loss
    for p in model.parameters():  # what peft's prepare_model_for_kbit_training does
        p.requires_grad_(False)
        p.data = p.data.float()
    with torch.no_grad():
        upcast = model(input_ids=ids, labels=labels).loss
    cast = keep_frozen_weights_in(model, torch.bfloat16)
    assert cast == sum(p.numel() for p in model.parameters())
    assert set(float_parameter_bytes(model)) == {"bfloat16"}
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
        restored = model(input_ids=ids, labels=labels).loss
    assert hidden.dtype == torch.bfloat16  # the residual stream stays bf16
    assert abs(restored.item() - upcast.item()) <= 2e-2 * abs(upcast.item())
    assert abs(restored.item() - native.item()) <= 2e-2 * abs(native.item())


def test_speedups_on_a_peft_trainer_change_nothing_but_speed(tiny_gemma, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from reviewgpt.recipe import load_recipe

    model = get_peft_model(load(tiny_gemma), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    args = TrainingArguments(str(tmp_path), report_to=[], use_cpu=True, gradient_checkpointing=True,
                             gradient_checkpointing_kwargs={"use_reentrant": False})
    trainer = Trainer(model=model, args=args)
    ids, labels = batch(model.config.vocab_size)
    model.train()
    ref_loss, ref_grads = loss_and_grads(model, ids, labels)
    recipe = load_recipe("tiny", {"model": str(tiny_gemma)})
    with speedups(trainer.model, recipe.speed, bf16=False, args=trainer.args) as done:
        assert done.chunked_loss and not done.bf16_frozen_weights
        assert done.causal_sdpa == torch_support.has("sdpa")  # an eager model (torch < 2.1.1) is left alone
        loss, grads = loss_and_grads(model, ids, labels)
    assert abs(loss.item() - ref_loss.item()) <= REL * abs(ref_loss.item())
    for name in ref_grads:
        assert_close(grads[name], ref_grads[name])


def _patched(model) -> list:
    """Modules that carry an instance-level attribute a speed option sets (a patched forward, what a
    patch stored for it, ...)."""
    return [f"{name}.{attr}" for name, module in model.named_modules() for attr in vars(module)
            if attr in ("forward", "_update_causal_mask", "loss_function") or attr.startswith("_reviewgpt")]


def test_speedups_undoes_every_patch_and_the_sdpa_order_after_the_block(tiny_gemma, tmp_path):
    """Gemma's RMSNorm forward (bf16_frozen_weights) and the process-wide SDPA order included."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from reviewgpt.recipe import load_recipe
    from reviewgpt.train.speed.attention import sdpa_order, set_sdpa_order

    model = get_peft_model(load(tiny_gemma), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainer = Trainer(model=model, args=TrainingArguments(str(tmp_path), report_to=[], use_cpu=True))
    before = sdpa_order()
    custom = list(reversed(before)) if before else None
    set_sdpa_order(custom)  # an order someone else chose: put back as it was, not as torch's default
    recipe = load_recipe("tiny", {"model": str(tiny_gemma), "bf16_frozen_weights": True, "sdpa_cudnn": True,
                                  "chunked_loss": True, "causal_sdpa": True})
    try:
        with speedups(trainer.model, recipe.speed, bf16=True, args=trainer.args) as done:
            assert done.bf16_frozen_weights and done.chunked_loss
            assert any(type(m).__name__ == "GemmaRMSNorm" and "forward" in vars(m) for m in model.modules())
            if custom is not None:
                assert done.sdpa_cudnn and sdpa_order() != custom
        assert _patched(model) == []
        assert sdpa_order() == custom
    finally:
        set_sdpa_order(before)


def test_speedups_put_back_the_trainers_checkpointing_arguments(tiny_gemma, tmp_path):
    """checkpoint_keep_attention changes the arguments the Trainer re-enables checkpointing with: only
    for the block, which ends the same way when it fails."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from reviewgpt.recipe.speed_options import SpeedOptions

    model = get_peft_model(load(tiny_gemma), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    asked = {"use_reentrant": False}
    args = TrainingArguments(str(tmp_path), report_to=[], use_cpu=True, gradient_checkpointing=True,
                             gradient_checkpointing_kwargs=dict(asked))
    trainer = Trainer(model=model, args=args)
    speed = SpeedOptions.off().replace(checkpoint_keep_attention=True, chunked_loss=True)
    import torch.utils.checkpoint

    selective = hasattr(torch.utils.checkpoint, "create_selective_checkpoint_contexts")  # torch >= 2.4
    with speedups(trainer.model, speed, bf16=False, args=trainer.args) as done:
        assert done.checkpoint_keep_attention == selective
        assert ("context_fn" in trainer.args.gradient_checkpointing_kwargs) == selective
    assert trainer.args.gradient_checkpointing_kwargs == asked and _patched(model) == []
    auto = speed.replace(checkpoint_skip_layers="auto")  # the run resolves it first
    with pytest.raises(ValueError, match="checkpoint_skip_layers is 'auto'"), speedups(trainer.model, auto):
        pass
    with pytest.raises(RuntimeError, match="injected"), speedups(trainer.model, speed, bf16=False, args=trainer.args):
        raise RuntimeError("injected")
    assert trainer.args.gradient_checkpointing_kwargs == asked and _patched(model) == []


def test_train_leaves_no_patch_and_the_sdpa_order_as_it_found_them(tiny_gemma, sample_file, tmp_path):
    from transformers import TrainerCallback

    from reviewgpt.recipe import load_recipe
    from reviewgpt.train.loop import train
    from reviewgpt.train.speed.attention import sdpa_order

    class Watch(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.model, self.order, self.patched = model, sdpa_order(), _patched(model)

    watch = Watch()
    before = sdpa_order()
    recipe = load_recipe("tiny", {"model": str(tiny_gemma), "max_steps": 1, "save_steps": 10,
                                  "attn_implementation": "sdpa" if torch_support.has("sdpa") else "eager",
                                  "sdpa_cudnn": True, "chunked_loss": True, "causal_sdpa": True})
    train(recipe, sample_file, tmp_path / "run", callbacks=[watch])
    assert watch.patched, "the options were in force while training"
    if before is not None:
        assert watch.order != before  # cuDNN first during the run
    assert sdpa_order() == before
    assert _patched(watch.model) == []
