"""Instance-level `forward` patches: the class keeps its own forward, so removing the patch
(`del module.forward`) restores the original exactly, and models not patched are untouched. What a
patch stored on a module for its forward (`_reviewgpt_*` attributes) goes with it."""

from __future__ import annotations

import types
from typing import Callable, Iterable, Sequence


def patch_forward(modules: Iterable, forward: Callable) -> int:
    """Give each module `forward` as its own method; returns how many were patched."""
    patched = 0
    for module in modules:
        module.forward = types.MethodType(forward, module)
        patched += 1
    return patched


def unpatch_forward(model, forward: Callable, attributes: Sequence[str] = ()) -> None:
    """Remove `forward` wherever `patch_forward` put it in `model`, with the `attributes` the patch
    stored on those modules for it."""
    for module in model.modules():
        if getattr(vars(module).get("forward"), "__func__", None) is forward:
            del module.forward
            for name in attributes:
                vars(module).pop(name, None)
