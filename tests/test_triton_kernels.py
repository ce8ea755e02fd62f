"""triton_mlp, triton_rope and triton_rmsnorm change speed, not results: each Triton kernel against
the torch ops it replaces (fp32 to rounding, bf16 within a bf16 step), tiny models with gradient
checkpointing and LoRA, the fallbacks, and where the options stay off (with one log line).

Without a CUDA GPU the kernels run in triton's interpreter: tests/conftest.py sets TRITON_INTERPRET=1
before triton is imported, and tests marked `triton` run with it. The interpreter is slow: shapes are tiny.
"""

import collections
import logging
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers.models.gemma import modeling_gemma
from transformers.models.llama import modeling_llama
from transformers.models.mistral import modeling_mistral

from reviewgpt import torch_support
from reviewgpt.recipe.speed_options import TRITON_OPTIONS, SpeedOptions
from reviewgpt.train.speed import kernels, speedups
from tests.test_speed import assert_close, batch, load, loss_and_grads
from tests.test_speed_long import checkpointed

PROBLEM = torch_support.triton_problem()
if not PROBLEM:
    # Imported now, while TRITON_INTERPRET is set (collection): triton fixes a kernel's mode when defining it.
    from reviewgpt.train.speed import triton_kernels as tk

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FAMILIES = ["gemma", "mistral", "llama"]
MODELING = {"gemma": modeling_gemma, "mistral": modeling_mistral, "llama": modeling_llama}
ALL_ON = SpeedOptions.off().replace(**dict.fromkeys(TRITON_OPTIONS, True))  # the kernels, nothing else
ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": lambda g: F.gelu(g, approximate="tanh"), "silu": F.silu}
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]
ORIGINAL_ROPE = {name: module.apply_rotary_pos_emb for name, module in MODELING.items()}


def needs_triton(test):
    """For tests that run the kernels; the others (the options off, the planner) run on every stack,
    torch 2.2's triton 2.2 included."""
    test = pytest.mark.triton(test)
    return pytest.mark.skipif(bool(PROBLEM), reason=f"the Triton kernels need triton >= 3.0: {PROBLEM}")(test)


def randn(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device=DEVICE, dtype=dtype)


def leaf(x):
    return x.detach().clone().requires_grad_()


def assert_matches(got, ref, rounded_to=None):
    """fp32: to rounding. bf16 (or an fp32 result of bf16 rounding): within a bf16 step of each value
    plus one of the tensor's largest, since the torch ops round between ops where the kernels round
    once, and RoPE's difference and RMSNorm's backward cancel (a step of the terms, not of the result)."""
    assert got.dtype == ref.dtype and got.shape == ref.shape
    tol = 2**-7 if torch.bfloat16 in (ref.dtype, rounded_to) else 1e-5
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol * ref.abs().max().item())


@pytest.fixture()
def launches(monkeypatch):
    """Kernel name -> launches, counted while the test runs."""
    counts = collections.Counter()
    run = tk._run

    def counting(kernel, grid, *args, **meta):
        counts[kernel.fn.__name__] += 1
        run(kernel, grid, *args, **meta)

    monkeypatch.setattr(tk, "_run", counting)
    return counts


def rope_tables(positions, dim, dtype):
    """cos, sin of (rows, seq, dim) for `positions`, as transformers' rotary embeddings build them."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(DEVICE, dtype), emb.sin().to(DEVICE, dtype)


def heads_like_transformers(b, t, heads, dim, dtype, seed):
    """(b, heads, t, dim) as the attention modules make it: a (b, t, heads, dim) projection transposed."""
    return randn(b, t, heads, dim, dtype=dtype, seed=seed).transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# Kernels against the torch ops


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_gated_activation_equals_the_activation_times_up(kind, dtype, launches):
    gate, up = randn(3, 5, 70, dtype=dtype, seed=1), randn(3, 5, 70, dtype=dtype, seed=2)  # 1050: one ragged block
    grad = randn(3, 5, 70, dtype=dtype, seed=3)
    ref_gate, ref_up = leaf(gate), leaf(up)
    ref = ACTIVATIONS[kind](ref_gate) * ref_up
    ref.backward(grad)
    got_gate, got_up = leaf(gate), leaf(up)
    out = tk.GatedActivation.apply(got_gate * 1, got_up * 1, kind)  # non-leaf inputs, as in the model
    out.backward(grad)
    assert_matches(out, ref.detach())
    assert_matches(got_gate.grad, ref_gate.grad)
    assert_matches(got_up.grad, ref_up.grad)
    assert launches == {"_gated_forward_kernel": 1, "_gated_backward_kernel": 1}


@needs_triton
def test_gated_activation_backward_runs_once(launches):
    gate, up = leaf(randn(4, 32, seed=1)), leaf(randn(4, 32, seed=2))
    out = tk.GatedActivation.apply(gate * 1, up * 1, "silu")
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="triton_mlp: this graph's backward already ran .retain_graph is not "
                                           "supported.; turn triton_mlp off to backpropagate twice"):
        out.sum().backward()  # its first backward wrote the gradients over the saved gate and up
    assert launches["_gated_backward_kernel"] == 1


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("positions", ["one_row_for_all", "per_row"])
def test_rope_equals_transformers_on_transposed_heads(positions, dtype, launches):
    b, t, dim = 2, 11, 16
    q = heads_like_transformers(b, t, 3, dim, dtype, seed=1)  # 3 heads: a masked block of 4
    k = heads_like_transformers(b, t, 1, dim, dtype, seed=2)  # grouped-query attention: fewer key heads
    rows = torch.arange(t).repeat(b, 1)
    if positions == "per_row":
        rows[1] += 5  # a row with its own positions: cos and sin of shape (batch, seq, dim)
    else:
        rows = rows[:1]  # cos and sin of batch 1, broadcast over the rows (no padding)
    cos, sin = rope_tables(rows, dim, dtype)
    ref_q, ref_k = leaf(q), leaf(k)
    ref = modeling_llama.apply_rotary_pos_emb(ref_q, ref_k, cos, sin)
    got_q, got_k = leaf(q), leaf(k)
    assert got_q.stride(-1) == 1 and not got_q.is_contiguous()  # read through its strides, not copied
    got = (tk.Rope.apply(got_q, cos, sin), tk.Rope.apply(got_k, cos, sin))
    grads = (randn(b, 3, t, dim, dtype=dtype, seed=3), randn(b, 1, t, dim, dtype=dtype, seed=4))
    torch.autograd.backward(ref, grads)
    torch.autograd.backward(got, grads)
    for g, r in zip(got, ref):
        assert_matches(g, r.detach())
        assert g.transpose(1, 2).is_contiguous() == r.transpose(1, 2).is_contiguous()  # what attention expects
    assert_matches(got_q.grad, ref_q.grad)
    assert_matches(got_k.grad, ref_k.grad)
    assert launches == {"_rope_kernel": 4}


@needs_triton
def test_fused_rope_indexes_mistral_caches_by_position_ids(launches):
    b, t, dim = 2, 9, 16
    q = heads_like_transformers(b, t, 4, dim, torch.float32, seed=1)
    k = heads_like_transformers(b, t, 2, dim, torch.float32, seed=2)
    cos, sin = rope_tables(torch.arange(32), dim, torch.float32)  # Mistral 4.38.2 passes the (seq, dim) cache
    position_ids = torch.arange(t).repeat(b, 1)
    position_ids[1] += 7
    position_ids = position_ids.to(DEVICE)
    fused = kernels._fused_rope(modeling_mistral.apply_rotary_pos_emb)
    got = fused(q, k, cos, sin, position_ids)
    ref = modeling_mistral.apply_rotary_pos_emb(q, k, cos, sin, position_ids)
    for g, r in zip(got, ref):
        assert_matches(g, r)
    assert launches == {"_rope_kernel": 2}


@needs_triton
def test_fused_rope_runs_the_original_where_the_kernel_does_not_fit(launches):
    b, t = 2, 5
    fused = kernels._fused_rope(modeling_gemma.apply_rotary_pos_emb)
    assert fused.reviewgpt_original is modeling_gemma.apply_rotary_pos_emb
    q = heads_like_transformers(b, t, 4, 24, torch.float32, seed=1)
    k = heads_like_transformers(b, t, 1, 24, torch.float32, seed=2)
    cos, sin = rope_tables(torch.arange(t).repeat(b, 1), 24, torch.float32)  # half of 24 is not a power of two
    for g, r in zip(fused(q, k, cos, sin), modeling_gemma.apply_rotary_pos_emb(q, k, cos, sin)):
        assert torch.equal(g, r)
    q16, k16 = q[..., :16].bfloat16(), k[..., :16].bfloat16()
    cos16, sin16 = rope_tables(torch.arange(t).repeat(b, 1), 16, torch.float32)  # fp32 tables, bf16 heads
    for g, r in zip(fused(q16, k16, cos16, sin16), modeling_gemma.apply_rotary_pos_emb(q16, k16, cos16, sin16)):
        assert torch.equal(g, r)
    q16, k16, expanded = q16.float(), k16.float(), sin16[:1].expand_as(sin16)  # sin laid out unlike cos
    for g, r in zip(fused(q16, k16, cos16, expanded), modeling_gemma.apply_rotary_pos_emb(q16, k16, cos16, expanded)):
        assert torch.equal(g, r)  # the kernel reads sin with cos's strides
    assert not launches


NORMS = {"gemma": modeling_gemma.GemmaRMSNorm, "llama": modeling_llama.LlamaRMSNorm}


def frozen_norm(style, width, dtype):
    norm = NORMS[style](width, eps=1e-6).to(DEVICE, dtype)
    with torch.no_grad():
        norm.weight.copy_(randn(width, seed=4, scale=0.5))
    return norm.requires_grad_(False)  # LoRA: the base model's norms are frozen


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("style", NORMS)
def test_rmsnorm_equals_the_module(style, dtype, launches):
    width = 48  # not a power of two: a masked block of 64
    norm = frozen_norm(style, width, dtype)
    x, grad = randn(2, 7, width, dtype=dtype, seed=5, scale=3.0), randn(2, 7, width, dtype=dtype, seed=6)
    ref_x = leaf(x)
    ref = norm(ref_x)
    ref.backward(grad)
    assert kernels.patch_triton_rmsnorm(norm) == 1
    got_x = leaf(x)
    got = norm(got_x * 1)
    got.backward(grad)
    kernels.unpatch_triton_rmsnorm(norm)
    assert "forward" not in vars(norm)
    assert_matches(got, ref.detach())
    assert_matches(got_x.grad, ref_x.grad)
    assert launches == {"_rmsnorm_forward_kernel": 1, "_rmsnorm_backward_kernel": 1}


@needs_triton
def test_llama_rmsnorm_keeps_the_modules_dtype_promotion(launches):
    norm = frozen_norm("llama", 32, torch.float32)  # peft's fp32 upcast of the norms, bf16 activations
    x = randn(3, 32, dtype=torch.bfloat16, seed=7)
    ref = norm(x)
    kernels.patch_triton_rmsnorm(norm)
    assert ref.dtype == torch.float32  # `weight * hidden_states.to(input_dtype)` promotes
    assert_matches(norm(x), ref, rounded_to=torch.bfloat16)
    assert launches == {"_rmsnorm_forward_kernel": 1}


@needs_triton
def test_llama_rmsnorm_rounds_before_the_weight_as_the_module_does(launches):
    norm = frozen_norm("llama", 64, torch.float32)  # bf16 input, fp32 weight: the rounding shows in the output
    x = randn(8, 64, dtype=torch.bfloat16, seed=3)
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    nearest = norm(x)  # the module: weight * normed.to(bf16), rounded to nearest
    # triton's interpreter casts to bf16 by truncation (the GPU rounds to nearest): either rounding counts
    truncated = norm.weight * (normed.view(torch.int32) & ~0xFFFF).view(torch.float32)
    kernels.patch_triton_rmsnorm(norm)
    got = norm(x)
    assert launches == {"_rmsnorm_forward_kernel": 1}

    def share_equal(a, b):
        return torch.isclose(a, b, rtol=1e-6, atol=0).float().mean().item()

    rounded_first = torch.isclose(got, nearest, rtol=1e-6, atol=0) | torch.isclose(got, truncated, rtol=1e-6, atol=0)
    assert rounded_first.float().mean() > 0.95  # a rare rsqrt last-bit flip aside
    assert share_equal(norm.weight * normed, nearest) < 0.5 and share_equal(norm.weight * normed, truncated) < 0.5


@needs_triton
def test_a_norm_whose_weight_trains_keeps_the_forward_patched_before(launches):
    from reviewgpt.train.speed.patching import patch_forward
    from reviewgpt.train.speed.precision import _gemma_rmsnorm_forward

    norm = frozen_norm("gemma", 32, torch.bfloat16)
    patch_forward([norm], _gemma_rmsnorm_forward)  # bf16_frozen_weights' round-once forward
    norm.weight.requires_grad_(True)
    x = randn(3, 32, dtype=torch.bfloat16, seed=5)
    before = norm(x)
    kernels.patch_triton_rmsnorm(norm)
    assert torch.equal(norm(x), before) and not launches  # not 4.38.2's class forward (it rounds 1 + w in bf16)
    kernels.unpatch_triton_rmsnorm(norm)


# ---------------------------------------------------------------------------------------------
# Tiny models: gradient checkpointing, LoRA, the Trainer

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_model(path, dtype=torch.float32):
    model = get_peft_model(checkpointed(path, dtype=dtype).to(DEVICE),
                           LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS))
    with torch.no_grad():  # lora_B starts at zero; make the adapter matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model


def small_batch(vocab):
    return tuple(t.to(DEVICE) for t in batch(vocab, t=16, prompt=6))


def assert_nothing_patched(model):
    assert not any("forward" in vars(m) for m in model.modules())
    for name, module in MODELING.items():
        assert module.apply_rotary_pos_emb is ORIGINAL_ROPE[name]
        assert not hasattr(module.apply_rotary_pos_emb, "reviewgpt_original")


@needs_triton
@pytest.mark.parametrize("family", FAMILIES)
def test_triton_kernels_equal_the_modules_with_checkpointing_and_lora(family, tiny_models, launches):
    model = lora_model(tiny_models[family])
    ids, labels = small_batch(model.config.vocab_size)
    ref_loss, ref_grads = loss_and_grads(model, ids, labels)
    with torch.no_grad():
        ref_logits = model(input_ids=ids).logits
    with speedups(model, ALL_ON, bf16=False) as done:
        assert done == ALL_ON
        layers = model.config.num_hidden_layers
        assert sum("forward" in vars(m) for m in model.modules()) == layers + 2 * layers + 1  # MLPs, norms
        assert MODELING[family].apply_rotary_pos_emb.reviewgpt_original is ORIGINAL_ROPE[family]

        loss, grads = loss_and_grads(model, ids, labels)
        # Each layer runs forward twice (checkpointing recomputes it) and backward once, plus the final norm:
        # the kernels ran everywhere, no fallback.
        assert launches == {"_gated_forward_kernel": 2 * layers, "_gated_backward_kernel": layers,
                            "_rope_kernel": 2 * (2 * layers) + 2 * layers,
                            "_rmsnorm_forward_kernel": 2 * (2 * layers) + 1,
                            "_rmsnorm_backward_kernel": 2 * layers + 1}
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
        assert set(grads) == set(ref_grads) and all("lora_" in name for name in grads)
        for name in ref_grads:
            assert_close(grads[name], ref_grads[name], 1e-5)
        with torch.no_grad():  # evaluation: the kernels too, same logits
            torch.testing.assert_close(model(input_ids=ids).logits, ref_logits, rtol=1e-5, atol=1e-5)

    assert_nothing_patched(model)
    launches.clear()
    assert torch.equal(loss_and_grads(model, ids, labels)[0], ref_loss) and not launches


@needs_triton
def test_triton_kernels_under_bf16_autocast_with_lora(tiny_gemma, launches):
    model = lora_model(tiny_gemma)
    ids, labels = small_batch(model.config.vocab_size)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        ref_loss, ref_grads = loss_and_grads(model, ids, labels)
        with speedups(model, ALL_ON, bf16=False):
            loss, grads = loss_and_grads(model, ids, labels)
    assert set(launches) == {"_gated_forward_kernel", "_gated_backward_kernel", "_rope_kernel",
                             "_rmsnorm_forward_kernel", "_rmsnorm_backward_kernel"}  # bf16 GeGLU and RoPE too
    assert abs(loss.item() - ref_loss.item()) <= 1e-2 * abs(ref_loss.item())
    for name in ref_grads:
        assert_close(grads[name], ref_grads[name], 2e-2)


@needs_triton
def test_norms_whose_weight_trains_run_their_own_forward(tiny_mistral, launches):
    model = checkpointed(tiny_mistral).to(DEVICE)  # no LoRA: the norms' weights train too
    ids, labels = small_batch(model.config.vocab_size)
    ref_loss, ref_grads = loss_and_grads(model, ids, labels)
    with speedups(model, SpeedOptions.off().replace(triton_rmsnorm=True), bf16=False) as done:
        assert (done.triton_mlp, done.triton_rope, done.triton_rmsnorm) == (False, False, True)
        loss, grads = loss_and_grads(model, ids, labels)
        assert not launches  # the kernel's backward gives no weight gradient: the module's forward ran
        assert torch.equal(loss, ref_loss) and all(torch.equal(grads[n], ref_grads[n]) for n in ref_grads)
        with torch.no_grad():  # no weight gradient wanted: the kernel
            model(input_ids=ids)
        assert launches == {"_rmsnorm_forward_kernel": 2 * model.config.num_hidden_layers + 1}
    assert_nothing_patched(model)


@needs_triton
def test_speedups_put_the_kernels_in_place_of_lean_mlp_through_the_trainer(tiny_llama, tmp_path, launches,
                                                                           monkeypatch, caplog):
    from transformers import Trainer, TrainingArguments

    from reviewgpt.recipe import load_recipe
    from reviewgpt.train.dataset import ListDataset, PadCollator
    model = get_peft_model(load(tiny_llama), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.enable_input_require_grads()  # as peft's k-bit preparation does: the residual stream needs grad
    args = TrainingArguments(str(tmp_path), report_to=[], use_cpu=DEVICE == "cpu", gradient_checkpointing=True,
                             gradient_checkpointing_kwargs={"use_reentrant": False}, max_steps=1,
                             per_device_train_batch_size=1, save_strategy="no")
    ids = list(range(3, 19))
    trainer = Trainer(model=model, args=args, train_dataset=ListDataset([{"input_ids": ids, "labels": ids}]),
                      data_collator=PadCollator(0))
    recipe = load_recipe("tiny", {"model": str(tiny_llama), "lean_mlp": True})
    assert all(getattr(recipe.speed, option) for option in TRITON_OPTIONS)  # on by default
    with speedups(trainer.model, recipe.speed, bf16=False, args=trainer.args) as done:
        assert all(getattr(done, option) for option in TRITON_OPTIONS)
        assert not done.lean_mlp and not done.fused_rmsnorm  # replaced by the kernels, not in force
        trainer.train()
    layers = model.config.num_hidden_layers
    assert launches["_gated_backward_kernel"] == layers and launches["_rope_kernel"] == 6 * layers
    assert launches["_rmsnorm_backward_kernel"] == 2 * layers + 1  # input grads: the first norm's too
    assert_nothing_patched(model)

    # torch 2.2's triton: the kernels off with one line, lean_mlp in force as the recipe asks
    monkeypatch.setattr(torch_support, "triton_problem", lambda: "triton 2.2.0 is older than 3.0")
    with caplog.at_level(logging.INFO, logger="reviewgpt.train.speed"), speedups(
            trainer.model, recipe.speed, bf16=False, args=trainer.args) as done:
        assert done.lean_mlp and not any(getattr(done, option) for option in TRITON_OPTIONS)
    assert "triton_mlp, triton_rope, triton_rmsnorm off: triton 2.2.0 is older than 3.0" in caplog.messages


# ---------------------------------------------------------------------------------------------
# Where the kernels cannot run (every stack, no triton needed)


def test_triton_problem_says_why_the_kernels_cannot_run(tiny_gemma, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` fails
    assert torch_support.triton_problem() == "triton is not installed"
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__="2.2.0"))  # torch 2.2's
    assert torch_support.triton_problem() == "triton 2.2.0 is older than 3.0"
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__="3.0.0"))
    assert torch_support.triton_problem() == ""
    model = load(tiny_gemma)
    # on the CPU without TRITON_INTERPRET (tests/conftest.py unsets it for tests not marked `triton`)
    assert kernels.triton_problem(model) == "the model is on cpu, not a CUDA GPU"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.triton_problem(model) == ""


@pytest.mark.parametrize("problem", ["triton is not installed", "triton 2.2.0 is older than 3.0", ""])
def test_the_kernels_patch_nothing_where_they_cannot_run(problem, tiny_gemma, monkeypatch, caplog):
    monkeypatch.setattr(torch_support, "triton_problem", lambda: problem)
    model = load(tiny_gemma)
    with caplog.at_level(logging.INFO, logger="reviewgpt.train.speed"), speedups(model, ALL_ON, bf16=False) as done:
        assert not any(getattr(done, option) for option in TRITON_OPTIONS)
        assert_nothing_patched(model)
    # only this package's "off" lines: on torch 1.13 the loader also says it has no SDPA (the cu117 image)
    off = [r.getMessage() for r in caplog.records if r.name == "reviewgpt.train.speed" and " off: " in r.getMessage()]
    assert off == [f"triton_mlp, triton_rope, triton_rmsnorm off: {problem or 'the model is on cpu, not a CUDA GPU'}"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="reviewgpt.train.speed"), speedups(model, SpeedOptions.off()):
        pass
    assert not [r for r in caplog.records if " off: " in r.getMessage()]  # none asked: nothing said


def test_predict_recipe_counts_the_triton_options_only_where_triton_runs(monkeypatch):
    from reviewgpt.recipe import load_recipe
    from reviewgpt.train.memory import ARCHITECTURES, predict_recipe

    # kept layers a number, as the planner leaves them: the prediction refuses an unresolved `auto`
    gemma, arch = load_recipe("gemma-7b-it").with_speed(checkpoint_skip_layers=0), ARCHITECTURES["gemma-7b"]
    assert all(getattr(gemma.speed, option) for option in TRITON_OPTIONS)
    off = gemma.with_speed(**dict.fromkeys(TRITON_OPTIONS, False))
    monkeypatch.setattr(torch_support, "triton_problem", lambda: "triton is not installed")
    assert predict_recipe(gemma, arch, 32768, 1) == predict_recipe(off, arch, 32768, 1)
    monkeypatch.setattr(torch_support, "triton_problem", lambda: "")
    # where triton runs, triton_mlp keeps what lean_mlp keeps
    assert predict_recipe(gemma, arch, 32768, 1)["allocated_gib"] < predict_recipe(off, arch, 32768, 1)["allocated_gib"]
