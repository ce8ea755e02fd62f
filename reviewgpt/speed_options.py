"""The recipe's speed options, by name: what `reviewgpt.train.speed` applies, `plan` and
`reviewgpt.memory` predict with, `bench` varies and OOM recovery gives up first.

Imports nothing from reviewgpt, so the recipe, the memory model and train all read it.
"""

from __future__ import annotations

SWITCHES = ("chunked_loss", "bf16_frozen_weights", "causal_sdpa", "sdpa_cudnn", "fused_lora", "fused_rmsnorm",
            "checkpoint_keep_attention", "checkpoint_offload", "lean_mlp")
COUNTS = ("checkpoint_skip_layers",)  # integer options (or "auto"); 0 = off
OPTIONS = SWITCHES + COUNTS
OFF = {**dict.fromkeys(SWITCHES, False), **dict.fromkeys(COUNTS, 0)}


def _count(value):
    return value if value == "auto" else int(value or 0)


def options_of(recipe) -> dict:
    """The speed options a recipe (or any object with those attributes) asks for."""
    return {**{name: bool(getattr(recipe, name, False)) for name in SWITCHES},
            **{name: _count(getattr(recipe, name, 0)) for name in COUNTS}}
