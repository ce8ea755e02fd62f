"""What each image's torch can do (reviewgpt.torch_support), and the code paths that ask it.

The decisions take the torch version as an argument, so they are tested for the images' torch
(1.13.1, 2.2.1) on whatever torch runs the suite; `test_the_table_matches_the_installed_torch`
checks the table against the real torch, on every stack the suite runs on.
"""

from __future__ import annotations

import logging

import pytest
import torch

from reviewgpt import torch_support
from reviewgpt.errors import UserError
from reviewgpt.models import attention_alternatives, load_base_model, resolve_attention

CU117, CU118, CPU = "1.13.1+cu117", "2.2.1+cu118", "2.13.0+cpu"


def test_the_table_matches_the_installed_torch():
    import torch.nn.functional as F
    from transformers.utils import is_torch_sdpa_available

    assert torch_support.has("rms_norm") == hasattr(F, "rms_norm")
    assert torch_support.has("register_fake") == hasattr(torch.library, "register_fake")
    assert torch_support.has("sdpa") == is_torch_sdpa_available()
    try:  # what transformers 4.38.2's Trainer does without worker processes
        torch.utils.data.DataLoader([1, 2], num_workers=0, prefetch_factor=None)
        accepts_none = True
    except ValueError:
        accepts_none = False
    assert torch_support.has("dataloader_prefetch_none") == accepts_none
    # ... and the value it is given instead works on this torch
    prefetch = torch_support.dataloader_prefetch_factor()
    loader = torch.utils.data.DataLoader([1, 2], num_workers=0, prefetch_factor=prefetch)
    assert [int(x) for x in loader] == [1, 2]


@pytest.mark.parametrize("version, missing", [
    (CU117, {"dataloader_prefetch_none", "sdpa", "rms_norm", "register_fake", "checkpoint_saved_inputs"}),
    (CU118, {"rms_norm", "register_fake"}),
    (CPU, set()),
])
def test_what_each_images_torch_lacks(version, missing):
    assert {name for name in torch_support.FEATURES if not torch_support.has(name, version)} == missing
    assert len(torch_support.missing(version)) == len(missing)


def test_prefetch_factor_is_2_only_on_torch_1():
    assert torch_support.dataloader_prefetch_factor(CU117) == 2
    assert torch_support.dataloader_prefetch_factor("2.0.0") is None
    assert torch_support.dataloader_prefetch_factor(CU118) is None


def test_training_arguments_give_the_dataloader_what_torch_accepts(monkeypatch, tmp_path):
    """transformers 4.38.2 passes prefetch_factor=None to DataLoader; torch 1.13 refused it in every
    training path (train, bench: both build their arguments here)."""
    from reviewgpt.recipe import load_recipe
    from reviewgpt.train.arguments import training_arguments

    recipe = load_recipe("tiny")
    monkeypatch.setattr(torch_support, "installed_torch_version", lambda: CU117)
    assert training_arguments(recipe, tmp_path, do_eval=False, cuda=False).dataloader_prefetch_factor == 2
    monkeypatch.setattr(torch_support, "installed_torch_version", lambda: CPU)
    assert training_arguments(recipe, tmp_path, do_eval=False, cuda=False).dataloader_prefetch_factor is None


def test_ddp_wraps_gemma_without_broadcasting_its_constant_buffers(tiny_gemma, tmp_path):
    """DDP broadcasts every buffer when it wraps a model; torch 1.13's gloo cannot send Gemma's bool
    causal_mask ("Invalid scalar type"). One gloo process is enough to go through that broadcast."""
    import torch.distributed as dist

    from reviewgpt.train.distributed import ddp_skip_constant_buffers

    model = load_base_model(str(tiny_gemma), "gemma", quantize=False, bf16=False, attn_implementation="eager")
    names = ddp_skip_constant_buffers(model)
    assert "model.causal_mask" in names and model.model.causal_mask.dtype == torch.bool
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        assert wrapped.module is model
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("requested, version, expected", [
    ("auto", CU117, "eager"),  # was sdpa: "PyTorch SDPA requirements in Transformers are not met"
    ("sdpa", CU117, "eager"),
    ("eager", CU117, "eager"),
    ("auto", CU118, "sdpa"),
    ("sdpa", CPU, "sdpa"),
    ("flash_attention_2", CU117, "flash_attention_2"),
])
def test_attention_a_torch_cannot_run_becomes_eager_with_one_line(requested, version, expected, caplog):
    if requested == "auto" and torch.cuda.is_available():
        pytest.skip("auto picks flash-attn on a GPU where it imports")
    with caplog.at_level(logging.INFO, logger="reviewgpt.models"):
        assert resolve_attention(requested, torch_version=version) == expected
    said = [r.getMessage() for r in caplog.records if r.name == "reviewgpt.models"]
    if expected == "eager" and requested != "eager":
        assert said == [f"torch {version} has no SDPA for transformers 4.38.2 (needs torch >= 2.1.1): "
                        "using eager attention"]
    else:
        assert said == []


def test_alternatives_never_name_what_failed_or_what_the_torch_lacks():
    assert attention_alternatives("flash_attention_2", CPU) == "sdpa or eager"
    assert attention_alternatives("flash_attention_2", CU117) == "eager"
    assert attention_alternatives("sdpa", CPU) == "eager"
    assert attention_alternatives("eager", CPU) == "sdpa"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where flash-attn cannot run")
def test_attention_that_cannot_load_is_one_clear_error(tiny_gemma):
    """transformers raises ImportError for flash-attn that is not there; it was a traceback."""
    with pytest.raises(UserError, match=r"with flash_attention_2 attention .*flash_attn.*; "
                                         r"pass --attn-implementation (sdpa or )?eager\.$"):
        load_base_model(str(tiny_gemma), "gemma", quantize=False, bf16=False,
                        attn_implementation="flash_attention_2")


def test_old_torch_loads_the_models_eager(tiny_gemma, monkeypatch):
    """Every loader asks resolve_attention: train/bench (load_base_model) and needle."""
    from reviewgpt.eval.needle import load_needle_model

    monkeypatch.setattr(torch_support, "installed_torch_version", lambda: CU117)
    model = load_base_model(str(tiny_gemma), "gemma", quantize=False, bf16=False, attn_implementation="auto")
    assert model.config._attn_implementation == "eager"
    model, _ = load_needle_model(str(tiny_gemma), "sdpa", device="cpu")
    assert model.config._attn_implementation == "eager"
