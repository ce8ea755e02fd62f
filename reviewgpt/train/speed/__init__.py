"""Speed and memory for QLoRA on the pinned stack; each technique is a recipe option (SpeedOptions).

    chunked_loss              loss over labelled positions only, chunked; no T x vocab fp32 logits
    bf16_frozen_weights       undo peft's fp32 upcast of frozen norms/embedding: bf16 activations
    causal_sdpa               Gemma, Llama: SDPA with is_causal (flash kernel) when a batch has no padding;
                              Llama: masks the size of the batch, not context x context
    sdpa_cudnn                cuDNN fused attention first in SDPA's backend order (torch >= 2.5)
    fused_lora                LoRA up-projection + scale + residual add in one GEMM (peft's math)
    fused_rmsnorm             Mistral/Llama RMSNorm through torch's fused rms_norm kernel
    lean_mlp                  GeGLU/SwiGLU keeping gate and up only, gradients written over them
    triton_mlp                the same as a Triton kernel each way (replaces lean_mlp where it runs)
    triton_rope               rotary embedding as one Triton kernel per tensor each way
    triton_rmsnorm            Gemma/Mistral/Llama RMSNorm as one Triton kernel each way
                              (the triton_* options: CUDA + triton >= 3.0, reviewgpt.train.speed.kernels)
    checkpoint_keep_attention save attention outputs in gradient checkpointing (memory for speed)
    checkpoint_skip_layers    N: the last N decoder layers are not recomputed (memory for speed)
    checkpoint_offload        checkpointed layers' inputs wait in pinned host memory (less GPU memory)

Each option is one entry of `PATCHES`: the options it serves, why it cannot run on a given model
(`applies_to`), how it is applied and how it is undone. `with speedups(model, speed, ...) as in_force:`
applies the entries of the options that are on, in the registry's order, for the duration of the
block, and undoes every applied entry, in reverse order, when the block ends (an exception included):
the instance patches, the kept layers, Gemma's RMSNorm forward, the Trainer's checkpointing arguments
and the process-wide switches (SDPA's backend order, the modules' rotary embedding), so generation
later in the same process (the quickstart) runs the stack's own code. Adding an option is one entry.

`checkpoint_skip_layers` must be a number here: `auto` is resolved by the planner at the start of the
run (reviewgpt.train.plan.with_planned_layers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, Tuple

import torch

from reviewgpt.models.llama_mask import patch_llama_causal_mask, unpatch_llama_causal_mask
from reviewgpt.recipe.speed_options import SpeedOptions
from reviewgpt.train.speed import kernels
from reviewgpt.train.speed.attention import (
    patch_gemma_causal_sdpa,
    prefer_cudnn_attention,
    set_sdpa_order,
    unpatch_gemma_causal_sdpa,
)
from reviewgpt.train.speed.checkpointing import attention_saving_context_fn, checkpoint_layers, recompute_all_layers
from reviewgpt.train.speed.lora import patch_fused_lora, unpatch_fused_lora
from reviewgpt.train.speed.loss import patch_chunked_loss, unpatch_chunked_loss
from reviewgpt.train.speed.mlp import patch_lean_mlp, unpatch_lean_mlp
from reviewgpt.train.speed.norm import patch_fused_rmsnorm, unpatch_fused_rmsnorm
from reviewgpt.train.speed.offload import HostOffload, offload_supported
from reviewgpt.train.speed.precision import keep_frozen_weights_in, unpatch_gemma_rmsnorm

log = logging.getLogger(__name__)


@dataclass
class Target:
    """What the entries patch: the (peft-wrapped) model, the options asked for, whether the run computes
    in bf16, the Trainer's arguments (the checkpointing options change them), and what an entry saved
    to undo itself."""

    model: object
    speed: SpeedOptions
    bf16: bool = True
    args: object = None  # transformers TrainingArguments, or None for a bare model
    saved: Dict[str, object] = field(default_factory=dict)

    @property
    def checkpointing(self) -> bool:
        return bool(getattr(self.model, "is_gradient_checkpointing", False)
                    or getattr(self.args, "gradient_checkpointing", False))


def runs_anywhere(target: Target) -> str:
    return ""


@dataclass(frozen=True)
class Patch:
    """One registry entry. `applies_to(target)` says why the options cannot run on this target ('' when
    they can); `apply(target)` applies them and returns {option: in force}; `undo(target)` puts back what
    apply changed. `replaces`: options whose work this entry's takes over when both are in force."""

    options: Tuple[str, ...]
    apply: Callable[[Target], dict]
    undo: Callable[[Target], None]
    applies_to: Callable[[Target], str] = runs_anywhere
    replaces: Tuple[str, ...] = ()


def _chunked_loss(t: Target) -> dict:
    return {"chunked_loss": patch_chunked_loss(t.model)}


def _bf16_frozen_weights(t: Target) -> dict:
    cast = keep_frozen_weights_in(t.model, torch.bfloat16)
    log.info("kept %.1fM frozen parameters in bf16 (peft had upcast them to fp32)", cast / 1e6)
    return {"bf16_frozen_weights": True}


def _causal_sdpa(t: Target) -> dict:
    return {"causal_sdpa": patch_gemma_causal_sdpa(t.model) | patch_llama_causal_mask(t.model)}


def _undo_causal_sdpa(t: Target) -> None:
    unpatch_gemma_causal_sdpa(t.model)
    unpatch_llama_causal_mask(t.model)


def _sdpa_cudnn(t: Target) -> dict:
    t.saved["sdpa_order"] = prefer_cudnn_attention()
    return {"sdpa_cudnn": t.saved["sdpa_order"] is not None}


def _keep_attention(t: Target) -> dict:
    context_fn = attention_saving_context_fn()
    if context_fn is None:
        return {}
    t.saved["gradient_checkpointing_kwargs"] = t.args.gradient_checkpointing_kwargs
    kwargs = {**(t.args.gradient_checkpointing_kwargs or {}), "use_reentrant": False, "context_fn": context_fn}
    t.args.gradient_checkpointing_kwargs = kwargs  # the Trainer re-enables with these on train()
    t.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return {"checkpoint_keep_attention": True}


def _undo_keep_attention(t: Target) -> None:
    if "gradient_checkpointing_kwargs" in t.saved:
        t.args.gradient_checkpointing_kwargs = t.saved.pop("gradient_checkpointing_kwargs")
        t.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=t.args.gradient_checkpointing_kwargs)


def _checkpoint_layers(t: Target) -> dict:
    offload = None
    if t.speed.checkpoint_offload:
        if offload_supported():
            offload = HostOffload()
        else:
            log.info("checkpoint_offload needs torch >= 2.1 (checkpoint inputs as saved tensors); off on %s",
                     torch.__version__)
    if not (t.speed.kept_layers or offload):
        return {}
    kept = checkpoint_layers(t.model, keep_last=t.speed.kept_layers, offload=offload)
    return {"checkpoint_skip_layers": kept, "checkpoint_offload": offload is not None}


def _needs_bf16(t: Target) -> str:
    return "" if t.bf16 else "the run does not compute in bf16"


def _needs_checkpointing(t: Target) -> str:
    return "" if t.checkpointing else "needs gradient checkpointing"


def _needs_trainer_checkpointing(t: Target) -> str:
    """The Trainer enables checkpointing from its arguments at train(): keeping attention changes those."""
    return _needs_checkpointing(t) or ("" if t.args is not None else "needs the Trainer's arguments")


def _needs_triton(t: Target) -> str:
    return kernels.triton_problem(t.model)


def _count_to_flag(patch: Callable, option: str) -> Callable[[Target], dict]:
    """An apply for a patch function that returns how many modules it patched."""
    return lambda t: {option: patch(t.model) > 0}


# Applied in this order, undone in the reverse one. The triton_* kernels come after the torch patches
# they replace, and the kept layers after the checkpointing arguments they wrap.
PATCHES = (
    Patch(("chunked_loss",), _chunked_loss, lambda t: unpatch_chunked_loss(t.model)),
    Patch(("bf16_frozen_weights",), _bf16_frozen_weights, lambda t: unpatch_gemma_rmsnorm(t.model),
          applies_to=_needs_bf16),  # the cast itself stays: it loses nothing, the weights were loaded in bf16
    Patch(("causal_sdpa",), _causal_sdpa, _undo_causal_sdpa),
    Patch(("sdpa_cudnn",), _sdpa_cudnn, lambda t: set_sdpa_order(t.saved.pop("sdpa_order", None))),
    Patch(("fused_lora",), _count_to_flag(patch_fused_lora, "fused_lora"), lambda t: unpatch_fused_lora(t.model)),
    Patch(("fused_rmsnorm",), _count_to_flag(patch_fused_rmsnorm, "fused_rmsnorm"),
          lambda t: unpatch_fused_rmsnorm(t.model)),
    Patch(("lean_mlp",), _count_to_flag(patch_lean_mlp, "lean_mlp"), lambda t: unpatch_lean_mlp(t.model)),
    Patch(("triton_mlp",), _count_to_flag(kernels.patch_triton_mlp, "triton_mlp"),
          lambda t: kernels.unpatch_triton_mlp(t.model), applies_to=_needs_triton, replaces=("lean_mlp",)),
    Patch(("triton_rope",), lambda t: {"triton_rope": kernels.patch_triton_rope(t.model)},
          lambda t: kernels.unpatch_triton_rope(), applies_to=_needs_triton),
    Patch(("triton_rmsnorm",), _count_to_flag(kernels.patch_triton_rmsnorm, "triton_rmsnorm"),
          lambda t: kernels.unpatch_triton_rmsnorm(t.model), applies_to=_needs_triton, replaces=("fused_rmsnorm",)),
    Patch(("checkpoint_keep_attention",), _keep_attention, _undo_keep_attention,
          applies_to=_needs_trainer_checkpointing),
    Patch(("checkpoint_skip_layers", "checkpoint_offload"), _checkpoint_layers,
          lambda t: recompute_all_layers(t.model), applies_to=_needs_checkpointing),
)


@contextlib.contextmanager
def speedups(model, speed: SpeedOptions, *, bf16: bool = True, args=None):
    """The options of `speed` in force on `model` for the block; yields a SpeedOptions of what is in force
    (an option off where it cannot run or was replaced; kept layers as counted). `args`: the Trainer's
    TrainingArguments (the checkpointing options read and change them; put back after)."""
    target = Target(model, speed, bf16, args)
    speed.kept_layers  # noqa: B018 - refuses an unresolved `auto` before anything is patched
    in_force = dataclasses.asdict(SpeedOptions.off())
    applied, cannot = [], {}
    try:
        for patch in PATCHES:
            asked = [name for name in patch.options if getattr(speed, name)]
            if not asked:
                continue
            why_not = patch.applies_to(target)
            if why_not:
                cannot.setdefault(why_not, []).extend(asked)
                continue
            applied.append(patch)  # before apply: a patch that fails half-way is undone too
            in_force.update(patch.apply(target))
        for reason, names in cannot.items():
            log.info("%s off: %s", ", ".join(names), reason)
        for patch in applied:
            for replaced in patch.replaces:
                if any(in_force[name] for name in patch.options):
                    in_force[replaced] = False  # this entry's forward took over that option's work
        log.info("speed options in force: %s", ", ".join(k for k, v in in_force.items() if v) or "none")
        yield SpeedOptions(**in_force)
    finally:
        for patch in reversed(applied):
            patch.undo(target)
