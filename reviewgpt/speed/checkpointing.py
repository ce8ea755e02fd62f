"""Selective activation checkpointing: keep attention outputs instead of recomputing them.

With plain gradient checkpointing every layer's forward runs twice; attention's forward is
the costliest part of that recompute at 8-12K tokens. torch >= 2.4's selective checkpointing
(`create_selective_checkpoint_contexts`) can save the SDPA kernels' outputs (B x T x heads x
head_dim + log-sum-exp, ~100 MB per layer at 12K) while recomputing everything else. Costs memory,
so it is an option (`checkpoint_keep_attention`), off by default; `reviewgpt plan` accounts for it.
"""

from __future__ import annotations

import functools
import logging

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
