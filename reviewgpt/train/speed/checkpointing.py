"""How layers are checkpointed: spend spare GPU memory on less recompute, or host memory on less GPU memory.

1. `checkpoint_keep_attention`: keep attention outputs instead of recomputing them.

With plain gradient checkpointing every layer's forward runs twice; attention's forward is
the costliest part of that recompute at 8-12K tokens. torch >= 2.4's selective checkpointing
(`create_selective_checkpoint_contexts`) can save the SDPA kernels' outputs (B x T x heads x
head_dim + log-sum-exp, ~100 MB per layer at 12K) while recomputing everything else. Costs memory,
so it is an option (`checkpoint_keep_attention`), off by default; `reviewgpt plan` accounts for it.

2. `checkpoint_skip_layers: N`: the last N decoder layers are not checkpointed at all (see
`checkpoint_layers` below); `reviewgpt plan` says how many fit in the GPU's spare memory, and
`auto` lets it choose.

3. `checkpoint_offload`: the layers that are checkpointed keep their inputs in host memory
(reviewgpt.train.speed.offload), through the same wrapper.
"""

from __future__ import annotations

import functools
import logging
import types

import torch

log = logging.getLogger(__name__)

_SDPA_OPS = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_cudnn_attention",
             "_scaled_dot_product_efficient_attention", "_flash_attention_forward")


def _attention_ops() -> set:
    ops = set()
    for name in _SDPA_OPS:
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            ops.add(op.default)
    return ops


def save_attention_policy(ctx, op, *args, **kwargs):
    """Module-level (so training_args.bin still pickles): save SDPA outputs, recompute the rest."""
    from torch.utils.checkpoint import CheckpointPolicy

    global _SAVE
    if _SAVE is None:
        _SAVE = _attention_ops()
    return CheckpointPolicy.MUST_SAVE if op in _SAVE else CheckpointPolicy.PREFER_RECOMPUTE


_SAVE = None


def attention_saving_context_fn():
    """A `context_fn` for `torch.utils.checkpoint.checkpoint(use_reentrant=False)`, or None."""
    try:
        from torch.utils.checkpoint import create_selective_checkpoint_contexts
    except ImportError:
        log.warning("torch %s has no selective checkpointing; checkpoint_keep_attention ignored",
                    torch.__version__)
        return None
    return functools.partial(create_selective_checkpoint_contexts, save_attention_policy)


# --- Which layers are checkpointed, and where their inputs wait -------------------------------
#
# transformers 4.38.2 checkpoints every decoder layer or none (`model.gradient_checkpointing`), so a
# 12K step on an 80 GB card recomputes all 32 Mistral layers while tens of GiB sit unused. The
# decoder loop calls `self._gradient_checkpointing_func(decoder_layer.__call__, ...)`; wrapping that
# function lets the chosen layers run plainly (their activations stay until backward), the rest be
# checkpointed as before and, with `offload`, the checkpointed layers' inputs wait in host memory
# (reviewgpt.train.speed.offload). Which layers are kept does not change the compute or the peak; the
# last ones are chosen. The Trainer re-enables checkpointing at train() start (replacing the
# function), so the model's `gradient_checkpointing_enable` is wrapped too, to wrap again after
# each enable.


class LayerCheckpointing:
    """A `_gradient_checkpointing_func`: kept layers run without checkpointing; the others are
    checkpointed, with their saved inputs in host memory when `offload` is given."""

    def __init__(self, checkpoint_fn, kept_layers=(), offload=None):
        self.checkpoint_fn = checkpoint_fn
        self.layer_ids = {id(layer) for layer in kept_layers}
        self.offload = offload

    def __call__(self, fn, *args, **kwargs):
        if id(getattr(fn, "__self__", None)) in self.layer_ids:
            return fn(*args, **kwargs)
        if self.offload is None:
            return self.checkpoint_fn(fn, *args, **kwargs)
        with self.offload.hooks(args):
            return self.checkpoint_fn(fn, *args, **kwargs)


def decoder_stack(model):
    """The module that loops over decoder layers (MistralModel, GemmaModel, LlamaModel)."""
    for module in model.modules():
        if hasattr(module, "gradient_checkpointing") and isinstance(getattr(module, "layers", None),
                                                                      torch.nn.ModuleList):
            return module
    return None


def _owner_of_enable(model):
    """The transformers model whose `gradient_checkpointing_enable` the Trainer ends up calling."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def checkpoint_layers(model, keep_last: int = 0, offload=None) -> int:
    """Let the last `keep_last` decoder layers skip recompute and, with `offload` (a HostOffload),
    keep the other layers' inputs in host memory; returns how many layers are kept."""
    stack = decoder_stack(model)
    if stack is None or (keep_last <= 0 and offload is None):
        return 0
    layers = list(stack.layers)[-keep_last:] if keep_last > 0 else []

    def wrap():
        func = getattr(stack, "_gradient_checkpointing_func", None)
        if func is not None:
            func = func.checkpoint_fn if isinstance(func, LayerCheckpointing) else func
            stack._gradient_checkpointing_func = LayerCheckpointing(func, layers, offload)

    owner = _owner_of_enable(model)
    enable = type(owner).gradient_checkpointing_enable

    def gradient_checkpointing_enable(self, *args, **kwargs):
        enable(self, *args, **kwargs)
        wrap()

    owner.gradient_checkpointing_enable = types.MethodType(gradient_checkpointing_enable, owner)
    wrap()
    return len(layers)


def recompute_all_layers(model) -> None:
    """Undo `checkpoint_layers`: every layer checkpointed, inputs on the GPU."""
    owner = _owner_of_enable(model)
    vars(owner).pop("gradient_checkpointing_enable", None)
    stack = decoder_stack(model)
    func = getattr(stack, "_gradient_checkpointing_func", None) if stack is not None else None
    if isinstance(func, LayerCheckpointing):
        stack._gradient_checkpointing_func = func.checkpoint_fn
