"""Speed and memory for QLoRA on the pinned stack (issue 4); each technique is a recipe option.

    chunked_loss              loss over labelled positions only, chunked; no T x vocab fp32 logits
    bf16_frozen_weights       undo peft's fp32 upcast of frozen norms/embedding: bf16 activations
    causal_sdpa               Gemma, Llama: SDPA with is_causal (flash kernel) when a batch has no padding;
                              Llama: masks the size of the batch, not context x context
    sdpa_cudnn                cuDNN fused attention first in SDPA's backend order (torch >= 2.5)
    fused_lora                LoRA up-projection + scale + residual add in one GEMM (peft's math)
    fused_rmsnorm             Mistral/Llama RMSNorm through torch's fused rms_norm kernel
    checkpoint_keep_attention save attention outputs in gradient checkpointing (memory for speed)
    checkpoint_skip_layers    N: the last N decoder layers are not recomputed (memory for speed);
                              auto: the planner's choice for the GPU (resolved by the caller)
    checkpoint_offload        checkpointed layers' inputs wait in pinned host memory (less GPU memory)
    lean_mlp                  GeGLU/SwiGLU keeping gate and up only, gradients written over them
    triton_mlp                the same as a Triton kernel each way (replaces lean_mlp where it runs)
    triton_rope               rotary embedding as one Triton kernel per tensor each way
    triton_rmsnorm            Gemma/Mistral/Llama RMSNorm as one Triton kernel each way
                              (the triton_* options: CUDA + triton >= 3.0, reviewgpt.train.speed.kernels)

`with speedups(trainer, recipe) as in_force:` applies them to a built trainer (after trl/peft have
wrapped the model) for the duration of the block and undoes every one when it ends, an exception
included: the instance patches, the kept layers, Gemma's RMSNorm forward and the process-wide SDPA
backend order, which is put back as it was before (generation later in the same process, as in the
quickstart, runs the stack's own code). `apply_speedups` / `remove_speedups` are the two halves.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from reviewgpt.models.llama_mask import patch_llama_causal_mask, unpatch_llama_causal_mask
from reviewgpt.recipe.speed_options import COUNTS, OFF, OPTIONS, SWITCHES, options_of  # noqa: F401
from reviewgpt.train.speed.attention import (
    patch_gemma_causal_sdpa,
    prefer_cudnn_attention,
    sdpa_order,
    set_sdpa_order,
    unpatch_gemma_causal_sdpa,
)
from reviewgpt.train.speed.checkpointing import attention_saving_context_fn, checkpoint_layers, recompute_all_layers
from reviewgpt.train.speed.kernels import apply_triton_kernels, remove_triton_kernels
from reviewgpt.train.speed.lora import patch_fused_lora, unpatch_fused_lora
from reviewgpt.train.speed.loss import causal_lm_loss, patch_chunked_loss, unpatch_chunked_loss
from reviewgpt.train.speed.mlp import patch_lean_mlp, unpatch_lean_mlp
from reviewgpt.train.speed.norm import patch_fused_rmsnorm, unpatch_fused_rmsnorm
from reviewgpt.train.speed.offload import HostOffload, offload_supported
from reviewgpt.train.speed.precision import keep_frozen_weights_in, unpatch_gemma_rmsnorm

log = logging.getLogger(__name__)

__all__ = ["OFF", "OPTIONS", "apply_speedups", "causal_lm_loss", "options_of", "remove_speedups", "speedups"]


def apply_speedups(trainer, recipe, bf16: bool = True) -> dict:
    """Apply the recipe's speed options to `trainer.model`; returns {option: in force}."""
    wanted = options_of(recipe)
    model = trainer.model
    done = dict(OFF)
    if wanted["chunked_loss"]:
        done["chunked_loss"] = patch_chunked_loss(model)
    if wanted["bf16_frozen_weights"] and bf16:
        cast = keep_frozen_weights_in(model, torch.bfloat16)
        done["bf16_frozen_weights"] = True
        log.info("kept %.1fM frozen parameters in bf16 (peft had upcast them to fp32)", cast / 1e6)
    if wanted["causal_sdpa"]:
        done["causal_sdpa"] = patch_gemma_causal_sdpa(model) | patch_llama_causal_mask(model)
    done["sdpa_cudnn"] = prefer_cudnn_attention(wanted["sdpa_cudnn"]) and wanted["sdpa_cudnn"]
    if wanted["fused_lora"]:
        done["fused_lora"] = patch_fused_lora(model) > 0
    if wanted["fused_rmsnorm"]:
        done["fused_rmsnorm"] = patch_fused_rmsnorm(model) > 0
    if wanted["lean_mlp"]:
        done["lean_mlp"] = patch_lean_mlp(model) > 0
    done.update(apply_triton_kernels(model, wanted))  # after the torch patches it replaces
    if done["triton_mlp"] and done["lean_mlp"]:
        done["lean_mlp"] = False  # triton_mlp's forward replaced lean_mlp's (same memory, one kernel)
    if done["triton_rmsnorm"] and done["fused_rmsnorm"]:
        done["fused_rmsnorm"] = False  # likewise for torch's rms_norm
    if wanted["checkpoint_keep_attention"]:
        done["checkpoint_keep_attention"] = _keep_attention_in_checkpoints(trainer)
    kept, offload = wanted["checkpoint_skip_layers"], None
    if kept == "auto":  # train and bench resolve it with the planner; without a GPU there is nothing to plan
        log.info("checkpoint_skip_layers auto: no GPU memory to plan for, every layer recomputed")
        kept = 0
    if wanted["checkpoint_offload"]:
        if not _checkpointing(trainer):
            log.info("checkpoint_offload needs gradient checkpointing; off")
        elif not offload_supported():
            log.info("checkpoint_offload needs torch >= 2.1 (checkpoint inputs as saved tensors); off on %s",
                     torch.__version__)
        else:
            offload = HostOffload()
    if (kept or offload) and _checkpointing(trainer):
        done["checkpoint_skip_layers"] = checkpoint_layers(model, keep_last=kept, offload=offload)
        done["checkpoint_offload"] = offload is not None
    log.info("speed options in force: %s", ", ".join(k for k, v in done.items() if v) or "none")
    return done


def _checkpointing(trainer) -> bool:
    return bool(getattr(trainer.model, "is_gradient_checkpointing", False) or trainer.args.gradient_checkpointing)


def _keep_attention_in_checkpoints(trainer) -> bool:
    if not _checkpointing(trainer):
        return False
    context_fn = attention_saving_context_fn()
    if context_fn is None:
        return False
    kwargs = {**(trainer.args.gradient_checkpointing_kwargs or {}), "use_reentrant": False, "context_fn": context_fn}
    trainer.args.gradient_checkpointing_kwargs = kwargs  # the Trainer re-enables with these on train()
    trainer.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return True


@contextlib.contextmanager
def speedups(trainer, recipe, bf16: bool = True):
    """The recipe's speed options in force for the block (yields {option: in force}); every patch
    removed and the SDPA backend order put back as it was when the block ends."""
    order = sdpa_order()
    try:
        yield apply_speedups(trainer, recipe, bf16=bf16)
    finally:
        remove_speedups(trainer)
        set_sdpa_order(order)


def remove_speedups(trainer) -> None:
    """Undo the patches (not the bf16 cast, which loses nothing: the weights were loaded in bf16)."""
    unpatch_chunked_loss(trainer.model)
    unpatch_gemma_rmsnorm(trainer.model)
    unpatch_gemma_causal_sdpa(trainer.model)
    unpatch_llama_causal_mask(trainer.model)
    unpatch_fused_lora(trainer.model)
    unpatch_fused_rmsnorm(trainer.model)
    unpatch_lean_mlp(trainer.model)
    remove_triton_kernels(trainer.model)
    recompute_all_layers(trainer.model)
    prefer_cudnn_attention(False)
