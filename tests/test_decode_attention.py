"""The Triton decode attention (reviewgpt.eval.decode_attention) against SDPA with the engine's boolean
mask, and the fast engine's greedy tokens with it against transformers' `generate`, per family.

Without a CUDA GPU the kernels run in triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1
before triton is imported; tests marked `triton` run with it): slow, so the shapes are small, but the
cache spans several of the kernel's chunks (256 keys each) and holds dead slots and a sliding window.
"""

import pytest
import torch
from torch.nn import functional

from reviewgpt import torch_support
from reviewgpt.errors import UserError
from reviewgpt.eval.engine import Engine, default_decode_kernel
from reviewgpt.eval.engine_forward import allowed_keys
from reviewgpt.eval.engine_sampling import Decoding
from tests.test_engine import fast, hf, load_lively, prompts_for, stops_ending_rows_at_different_steps
from tests.util import needs_sdpa

PROBLEM = torch_support.triton_problem()
if not PROBLEM:
    # Imported now, while TRITON_INTERPRET is set (collection): triton fixes a kernel's mode when defining it.
    from reviewgpt.eval.decode_attention import MIN_KEYS_PER_SPLIT, decode_attention, keys_per_split

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [needs_sdpa, pytest.mark.triton,
              pytest.mark.skipif(bool(PROBLEM), reason=f"the decode kernel needs triton >= 3.0: {PROBLEM}")]


def reference(q, keys, values, positions, window):
    """What engine_forward.decode computes without the kernel: SDPA over the whole cache, masked."""
    mask = allowed_keys(positions[:, None], keys.shape[2], window)[:, None]
    return functional.scaled_dot_product_attention(q.float(), keys.float(), values.float(), attn_mask=mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("heads, groups, head_dim, window", [
    (2, 3, 16, None),  # grouped queries (the tiny llama, SmolLM2's 3)
    (1, 1, 64, None),  # one query per KV head (gemma-7b)
    (2, 4, 8, 7),  # a head size under tl.dot's 16, Mistral's 4 groups and a sliding window
])
def test_the_kernel_attends_as_sdpa_with_the_mask(dtype, heads, groups, head_dim, window):
    generator = torch.Generator().manual_seed(0)

    def draw(*shape):
        return torch.randn(*shape, generator=generator).to(DEVICE, dtype)

    capacity = 2 * MIN_KEYS_PER_SPLIT + 88  # three chunks, the last one partial
    # positions: the last key, a chunk's edge, one key, a middle; slot 4 is dead (length 0)
    positions = torch.tensor([capacity - 1, MIN_KEYS_PER_SPLIT - 1, 0, 300, -1], device=DEVICE)
    q = draw(5, heads, groups, head_dim)
    keys, values = draw(6, heads, capacity, head_dim), draw(6, heads, capacity, head_dim)  # a slot past the ones used
    got = decode_attention(q, keys[:5], values[:5], (positions + 1), window)
    assert got.shape == q.shape and got.dtype == dtype
    want = reference(q[:4], keys[:4], values[:4], positions[:4], window)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got[:4].float(), want, rtol=tolerance, atol=tolerance)
    assert torch.all(got[4] == 0)  # a dead slot reads nothing and gives zeros, not NaN


@pytest.mark.parametrize("capacity, slots, heads",
                         [(8192, 1, 3), (8192, 256, 3), (7680, 29, 16), (600, 5, 2), (64, 1, 1)])
def test_the_chunks_cover_the_cache_and_fill_the_gpu(capacity, slots, heads):
    from reviewgpt.eval.decode_attention import BLOCK_KEYS, PROGRAMS

    chunk = keys_per_split(capacity, slots, heads)
    splits = -(-capacity // chunk)
    assert chunk % BLOCK_KEYS == 0 and (splits - 1) * chunk < capacity <= splits * chunk
    assert slots * heads * splits >= PROGRAMS or chunk <= max(MIN_KEYS_PER_SPLIT, BLOCK_KEYS)  # else: longer chunks
    assert chunk >= min(MIN_KEYS_PER_SPLIT, capacity) or slots * heads * splits <= PROGRAMS


def test_keys_past_a_slots_length_are_not_read():
    # NaN after each slot's length (or in a dead slot) would poison any kernel that reads them, masked or not.
    q = torch.randn(3, 1, 2, 16, device=DEVICE)
    keys, values = torch.randn(3, 1, 300, 16, device=DEVICE), torch.randn(3, 1, 300, 16, device=DEVICE)
    lengths = torch.tensor([5, 290, 0], device=DEVICE)
    for slot, length in enumerate(lengths.tolist()):
        keys[slot, :, length:] = float("nan")
        values[slot, :, length:] = float("nan")
    got = decode_attention(q, keys, values, lengths, None)
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got[:2], reference(q[:2], keys[:2].nan_to_num(), values[:2].nan_to_num(),
                                                  lengths[:2] - 1, None), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module", params=["gemma", "mistral", "llama"])
def family_model(request, tiny_models):
    return request.param, load_lively(tiny_models[request.param])


def test_greedy_tokens_with_the_kernel_equal_generate(family_model):
    # As tests/test_engine.py checks the SDPA path: slots refilled, rows ending at different steps,
    # steps over a power-of-two count of slots (dead rows past the live ones, as with CUDA graphs).
    family, loaded = family_model
    prompts = prompts_for(loaded, lengths=(23, 41, 17, 35, 29))
    free_running = hf(loaded, prompts, Decoding(max_new_tokens=12), batch_size=1)
    decoding = Decoding(max_new_tokens=12, stop_ids=stops_ending_rows_at_different_steps(free_running))
    got, stats = fast(loaded.model, prompts, decoding, slots=4, bucket_slots=True, decode_kernel="triton")
    assert stats["decode_kernel"] == "triton" and stats["padded_steps"] > 0
    assert got == hf(loaded, prompts, decoding, batch_size=1), family
    assert {keys for _, keys in stats["step_shapes"]} == {stats["capacity"]}  # one key bucket: the whole cache


def test_mistral_sliding_window_with_the_kernel(tmp_path_factory):
    from reviewgpt.models.tiny import build_tiny_model

    path = build_tiny_model("mistral", tmp_path_factory.mktemp("mistral-window-kernel"), sliding_window=8)
    loaded = load_lively(path, attn_implementation="eager")  # eager honours the window (tests/test_engine.py)
    prompts = prompts_for(loaded, lengths=(20, 13))
    decoding = Decoding(max_new_tokens=10)
    got, _ = fast(loaded.model, prompts, decoding, slots=2, decode_kernel="triton")
    assert got == hf(loaded, prompts, decoding, batch_size=2)


def test_the_kernel_is_the_default_on_a_gpu_and_an_environment_variable_chooses(monkeypatch):
    monkeypatch.delenv("REVIEWGPT_DECODE_KERNEL", raising=False)
    assert default_decode_kernel("cpu") == "sdpa"
    assert default_decode_kernel("cuda:0") == "triton"
    monkeypatch.setenv("REVIEWGPT_DECODE_KERNEL", "sdpa")
    assert default_decode_kernel("cuda:0") == "sdpa"
    monkeypatch.setenv("REVIEWGPT_DECODE_KERNEL", "flash")
    with pytest.raises(UserError, match="REVIEWGPT_DECODE_KERNEL='flash'.*sdpa, triton"):
        default_decode_kernel("cuda:0")


def test_an_unknown_kernel_is_refused(tiny_llama):
    from reviewgpt.models import load_for_inference

    with pytest.raises(ValueError, match="decode kernel 'flash'"):
        Engine(load_for_inference(tiny_llama).model, decode_kernel="flash")


def test_a_kernel_that_fails_to_run_falls_back_to_sdpa_in_one_line(tiny_llama, monkeypatch, caplog):
    from reviewgpt.eval import decode_attention as module

    def fails(*_args, **_kwargs):
        raise RuntimeError("out of resource: shared memory, Required: 262144, Hardware limit: 232448\nmore")

    monkeypatch.setattr(module, "decode_attention", fails)
    loaded = load_lively(tiny_llama)
    prompts = prompts_for(loaded, lengths=(12, 20, 9))
    decoding = Decoding(max_new_tokens=6)
    got, stats = fast(loaded.model, prompts, decoding, slots=2, decode_kernel="triton")
    assert got == fast(loaded.model, prompts, decoding, slots=2, decode_kernel="sdpa")[0]
    assert stats["decode_kernel"] == "sdpa"
    assert [r.getMessage() for r in caplog.records if "Triton decode" in r.getMessage()] == [
        "the Triton decode attention failed (RuntimeError: out of resource: shared memory, Required: 262144, "
        "Hardware limit: 232448); decoding with SDPA's attention"]


def test_the_kernel_benchmark_times_each_tile_against_sdpa_and_writes_the_best(tmp_path, capsys):
    # bench/decode_kernel.py chooses TILES on a GPU; here (interpreter, tiny cache) its rows and choice.
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from decode_kernel import main

    best = tmp_path / "best.json"
    assert main(["--slots", "3", "--capacity", "320", "--repeats", "1", "--tiles", "32,2,3",
                 "--programs", "64", "2048", "--write-best", str(best)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    timed = [r for r in rows if "max_error" in r]
    assert {tuple(r["tile"]) for r in timed} == {(32, 2, 3), (64, 4, 2)}  # the candidates and today's tile
    assert len(timed) == 2 * 2 and all(r["max_error"] < 0.05 for r in timed)  # with and without dead slots
    assert sum(r.get("engine") == "sdpa" for r in rows) == 2
    chosen = json.loads(best.read_text())
    assert chosen["64"] in ([32, 2, 3], [64, 4, 2]) and chosen["programs"] in (64, 2048)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", ["gemma", "mistral", "llama"])
def test_the_fused_rms_norm_gives_the_modules_numbers(family, dtype, tiny_models):
    # What the kernel changes is the order of the mean's sum: at most the last bit of an output.
    from transformers import AutoModelForCausalLM

    from reviewgpt.eval.fused_norm import fusable, rms_norm

    model = AutoModelForCausalLM.from_pretrained(tiny_models[family], torch_dtype=dtype).to(DEVICE)
    norm = model.model.layers[0].input_layernorm
    with torch.no_grad():
        norm.weight.copy_(torch.randn(norm.weight.shape, generator=torch.Generator().manual_seed(0)))
        x = (torch.randn(5, 3, norm.weight.shape[0], generator=torch.Generator().manual_seed(1)) * 4).to(DEVICE, dtype)
        expected, got = norm(x), rms_norm(norm, x)
    assert fusable(norm, x) and got.dtype == expected.dtype == dtype and got.shape == x.shape
    if dtype == torch.float32:
        assert torch.allclose(got, expected, rtol=1e-6, atol=1e-6)
    elif DEVICE == "cuda":
        assert (got == expected).float().mean() > 0.98  # nearly all bit-equal, the rest one bf16 ulp away
        assert torch.allclose(got.float(), expected.float(), rtol=2 ** -7, atol=2 ** -7)
    else:  # triton's interpreter rounds to bf16 its own way (by truncation): two bf16 ulps
        assert torch.allclose(got.float(), expected.float(), rtol=2 ** -6, atol=2 ** -6)
    assert not fusable(norm, x.float() if dtype == torch.bfloat16 else x.bfloat16())  # mixed dtypes: the module
