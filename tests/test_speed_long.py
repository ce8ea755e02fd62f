"""Long-context memory options change memory, not results (tiny models, CPU): checkpointed layers'
inputs offloaded to host memory, the lean gated MLP, and kept layers chosen by the planner (auto)."""

import gc
import logging
import weakref

import pytest
import torch
from peft import LoraConfig, get_peft_model

import reviewgpt.train.speed.mlp as lean
import reviewgpt.train.speed.offload as offload
from reviewgpt.train.speed.checkpointing import checkpoint_layers, recompute_all_layers
from reviewgpt.train.speed.mlp import GatedActivation, patch_lean_mlp, unpatch_lean_mlp
from reviewgpt.train.speed.offload import HostOffload
from tests.test_speed import assert_close, batch, load, loss_and_grads

# torch 1.13 (the cu117 image): offload stays off there, which the last test's end checks on any torch.
needs_offload = pytest.mark.skipif(not offload.offload_supported(), reason="checkpoint offload needs torch >= 2.1")

FAMILIES = ["gemma", "mistral", "llama"]


def checkpointed(path, dtype=torch.float32):
    model = load(path, dtype=dtype).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def inputs_alive_after_forward(model, ids, labels):
    """Whether each decoder layer's input hidden states are still alive between forward and backward."""
    refs = {}

    def remember(module, args):
        refs.setdefault(module, weakref.ref(args[0]))

    handles = [layer.register_forward_pre_hook(remember) for layer in model.model.layers]
    out = model(input_ids=ids, labels=labels)
    gc.collect()
    alive = [refs[layer]() is not None for layer in model.model.layers]
    out.loss.backward()
    for handle in handles:
        handle.remove()
    return alive


@needs_offload
@pytest.mark.parametrize("family", FAMILIES)
def test_offloaded_checkpoints_equal_the_plain_ones_and_leave_the_device(family, tiny_models, monkeypatch):
    model = checkpointed(tiny_models[family])
    ids, labels = batch(model.config.vocab_size)
    ref_loss, ref_grads = loss_and_grads(model, ids, labels)

    host = HostOffload(min_bytes=1)  # the tiny model's hidden states are a few KiB
    assert checkpoint_layers(model, offload=host) == 0  # no layer kept, every layer offloaded
    loss, grads = loss_and_grads(model, ids, labels)
    layers = model.config.num_hidden_layers
    hidden = ids.numel() * model.config.hidden_size * 4
    assert host.packed == layers and host.packed_bytes == layers * hidden  # the layer inputs, nothing else
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    assert set(grads) == set(ref_grads)
    for name in ref_grads:
        assert_close(grads[name], ref_grads[name], 1e-6)

    # What the checkpoints hold between forward and backward: with offload, not the layer inputs
    # (the first layer's input is also the embedding's output, which its backward keeps).
    assert not any(inputs_alive_after_forward(model, ids, labels)[1:])  # only host copies are left
    recompute_all_layers(model)
    assert all(inputs_alive_after_forward(model, ids, labels))  # plain checkpointing keeps them


@needs_offload
def test_offload_leaves_kept_layers_alone_and_survives_the_trainer_re_enabling(tiny_mistral):
    model = checkpointed(tiny_mistral)
    ids, labels = batch(model.config.vocab_size)
    ref_loss, ref_grads = loss_and_grads(model, ids, labels)
    host = HostOffload(min_bytes=1)
    assert checkpoint_layers(model, keep_last=1, offload=host) == 1
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # as Trainer does
    loss, grads = loss_and_grads(model, ids, labels)
    assert host.packed == model.config.num_hidden_layers - 1  # the kept layer is not checkpointed at all
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    for name in ref_grads:
        assert_close(grads[name], ref_grads[name], 1e-6)


def test_offload_moves_only_large_tensors_that_need_grad():
    host = HostOffload(min_bytes=1024)
    small = torch.zeros(8, requires_grad=True)
    frozen = torch.zeros(1024)
    large = torch.randn(1024, requires_grad=True)
    assert host.pack(small) is small and host.pack(frozen) is frozen
    packed = host.pack(large)
    assert isinstance(packed, tuple) and packed[1].data_ptr() != large.data_ptr()
    assert torch.equal(HostOffload.unpack(packed), large) and host.packed == 1


def test_offload_says_once_when_the_checkpoint_saves_its_inputs_elsewhere(caplog):
    host = HostOffload(min_bytes=1)
    x = torch.randn(4, 4, requires_grad=True)
    with caplog.at_level(logging.WARNING, logger="reviewgpt.train.speed.offload"):
        for _ in range(2):
            with host.hooks((x,)):
                y = x * 2  # a mul by a constant saves nothing: like a checkpoint holding inputs by closure
    assert y.requires_grad
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "nothing is offloaded" in caplog.records[0].message


@pytest.mark.parametrize("family", FAMILIES)
def test_lean_mlp_equals_the_gated_mlp(family, tiny_models, monkeypatch):
    model = checkpointed(tiny_models[family])
    ids, labels = batch(model.config.vocab_size)
    ref_loss, ref_grads = loss_and_grads(model, ids, labels)
    monkeypatch.setattr(lean, "CHUNK_BYTES", 7 * model.config.intermediate_size * 4)  # 7-row chunks, one ragged
    assert patch_lean_mlp(model) == model.config.num_hidden_layers
    loss, grads = loss_and_grads(model, ids, labels)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    assert set(grads) == set(ref_grads)
    for name in ref_grads:
        assert_close(grads[name], ref_grads[name], 1e-5)
    with torch.no_grad():  # evaluation: the original forward, same numbers
        assert torch.allclose(model(input_ids=ids).logits, model(input_ids=ids).logits)
    unpatch_lean_mlp(model)
    assert not any("forward" in vars(m) for m in model.modules())


def test_lean_mlp_with_lora_on_the_mlp_under_bf16_autocast(tiny_gemma):
    targets = ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(checkpointed(tiny_gemma), LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    ids, labels = batch(model.config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss, ref_grads = loss_and_grads(model, ids, labels)
        patch_lean_mlp(model)
        loss, grads = loss_and_grads(model, ids, labels)
    assert abs(loss.item() - ref_loss.item()) <= 1e-2 * abs(ref_loss.item())
    assert any("gate_proj.lora_A" in n for n in grads)
    for name in ref_grads:
        assert_close(grads[name], ref_grads[name], 2e-2)


def test_lean_mlp_backward_runs_once_and_matches_autograd():
    torch.manual_seed(0)
    gate = torch.randn(5, 6, 32, requires_grad=True)
    up = torch.randn(5, 6, 32, requires_grad=True)
    for kind, act in (("gelu_tanh", lambda g: torch.nn.functional.gelu(g, approximate="tanh")),
                      ("gelu", torch.nn.functional.gelu), ("silu", torch.nn.functional.silu)):
        g0, u0 = (act(gate) * up).sum(), None
        ref = torch.autograd.grad(g0, (gate, up))
        g, u = gate.detach().clone().requires_grad_(), up.detach().clone().requires_grad_()
        out = GatedActivation.apply(g * 1, u * 1, kind)  # non-leaf inputs, as in the model
        assert torch.allclose(out, act(gate) * up, atol=1e-6)
        out.sum().backward(retain_graph=True)
        assert_close(g.grad, ref[0], 1e-6)
        assert_close(u.grad, ref[1], 1e-6)
        with pytest.raises(RuntimeError, match="retain_graph is not supported"):
            out.sum().backward()
        del u0


def test_lean_mlp_leaves_unknown_activations_alone(tiny_mistral):
    model = load(tiny_mistral)
    model.model.layers[0].mlp.act_fn = torch.nn.ReLU()
    assert patch_lean_mlp(model) == model.config.num_hidden_layers - 1


@needs_offload
def test_speedups_with_offload_lean_mlp_and_kept_layers_through_the_trainer(tiny_llama, tmp_path, monkeypatch,
                                                                             caplog):
    from transformers import Trainer, TrainingArguments

    from reviewgpt.recipe import load_recipe
    from reviewgpt.train.dataset import ListDataset, PadCollator
    from reviewgpt.train.speed import speedups

    monkeypatch.setattr(offload, "MIN_BYTES", 1)
    model = get_peft_model(load(tiny_llama), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.enable_input_require_grads()  # as peft's k-bit preparation does: the residual stream needs grad
    args = TrainingArguments(str(tmp_path), report_to=[], use_cpu=True, gradient_checkpointing=True,
                             gradient_checkpointing_kwargs={"use_reentrant": False}, max_steps=1,
                             per_device_train_batch_size=1, save_strategy="no")
    ids = list(range(3, 35))
    trainer = Trainer(model=model, args=args, train_dataset=ListDataset([{"input_ids": ids, "labels": ids}]),
                      data_collator=PadCollator(0))
    recipe = load_recipe("tiny", {"model": str(tiny_llama), "checkpoint_skip_layers": 1,
                                  "checkpoint_offload": True, "lean_mlp": True})
    stack = model.base_model.model.model
    with speedups(trainer.model, recipe.speed, bf16=False, args=trainer.args) as done:
        assert done.checkpoint_offload and done.lean_mlp and done.checkpoint_skip_layers == 1
        trainer.train()  # re-enables checkpointing itself: the wrapper (kept layer + offload) must be back
        func = stack._gradient_checkpointing_func
        assert func.offload is not None and func.offload.packed == model.config.num_hidden_layers - 1
    assert not any("forward" in vars(m) for m in stack.modules())

    # on a torch that lacks what offloading needs: off, with one log line
    monkeypatch.setattr("reviewgpt.train.speed.offload_supported", lambda: False)
    with caplog.at_level(logging.INFO, logger="reviewgpt.train.speed"), speedups(
            trainer.model, recipe.with_speed(checkpoint_skip_layers=0, lean_mlp=False).speed, bf16=False,
            args=trainer.args) as done:
        assert not done.checkpoint_offload
    assert any("checkpoint_offload needs torch >= 2.1" in r.message for r in caplog.records)


def test_auto_is_a_number_before_the_speed_options_apply(tiny_mistral, tmp_path, monkeypatch, caplog):
    """The planner turns `auto` into a number at the start of a run (none kept without a GPU); the speed
    options refuse an `auto` that was not."""
    from transformers import Trainer, TrainingArguments

    from reviewgpt.recipe import load_recipe
    from reviewgpt.train.plan import with_planned_layers
    from reviewgpt.train.speed import speedups

    model = load(tiny_mistral)
    args = TrainingArguments(str(tmp_path), report_to=[], use_cpu=True, gradient_checkpointing=True)
    trainer = Trainer(model=model, args=args)
    recipe = load_recipe("tiny", {"model": str(tiny_mistral), "checkpoint_skip_layers": "auto"})
    with pytest.raises(ValueError, match="'auto'"), speedups(trainer.model, recipe.speed, args=trainer.args):
        pass
    monkeypatch.setattr("reviewgpt.train.plan.free_gpu_gib", lambda: None)
    with caplog.at_level(logging.INFO, logger="reviewgpt.train.plan"):
        planned = with_planned_layers(recipe, 64)
    assert planned.speed.checkpoint_skip_layers == 0
    assert any("checkpoint_skip_layers auto" in r.message for r in caplog.records)
    with speedups(trainer.model, planned.speed, bf16=False, args=trainer.args) as done:
        assert done.checkpoint_skip_layers == 0
