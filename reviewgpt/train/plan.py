"""Memory planner: which micro-batch and how many kept layers fit a GPU, from the predicted peak.

    reviewgpt plan --recipe gemma-7b-it --seq 12288 --gpu-mem 24

The prediction itself (architectures, calibration, `predict`) is reviewgpt.train.memory. `train` calls
`check_fits` before loading the model and refuses a configuration that will not fit.

`checkpoint_skip_layers: auto` is this module's alone: `with_planned_layers` turns it into the number
of layers that fit, once, at the start of a train run or a bench row, and everything after reads that
number. Before a GPU is known (the rows of `plan`, doctor's estimate) `auto` counts as its floor, no
layer kept (`at_auto_floor`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Optional

from reviewgpt import torch_support
from reviewgpt.errors import UserError
from reviewgpt.train.memory import (
    CALIBRATION,
    GIB,
    Architecture,
    architecture_of,
    predict_recipe,
)

log = logging.getLogger(__name__)


# Tried in turn by `plan` when nothing fits: the MLP's saved tensors first (no cost in time), then
# also the checkpointed layers' inputs on the host (PCIe copies).
MEMORY_OPTIONS = ({"lean_mlp": True}, {"lean_mlp": True, "checkpoint_offload": True})


def at_auto_floor(recipe):
    """`recipe` with `checkpoint_skip_layers: auto` counted as no layer kept (what is certain before the
    planner has chosen for a GPU); a number stays the number."""
    return recipe.with_speed(checkpoint_skip_layers=0) if recipe.speed.checkpoint_skip_layers == "auto" else recipe


def memory_options_to_try(recipe) -> tuple:
    """MEMORY_OPTIONS, less lean_mlp where triton_mlp runs: it keeps what lean_mlp keeps and replaces it."""
    if recipe.speed.triton_mlp and not torch_support.triton_problem():
        return ({"checkpoint_offload": True},)
    return MEMORY_OPTIONS


def usable_gib(gpu_mem_gib: float, headroom: float = 0.05, context_gib: Optional[float] = None) -> float:
    """What a step may use of `gpu_mem_gib`: minus the headroom share and the CUDA context (pass
    context_gib=0 for free memory measured after the context exists)."""
    context = CALIBRATION["cuda_context_gib"] if context_gib is None else context_gib
    return gpu_mem_gib * (1 - headroom) - context


def plan(recipe, seq: int, gpu_mem_gib: float, max_batch: int = 8, headroom: float = 0.05,
         reference: bool = False) -> dict:
    """Peak per batch size 1..max_batch and the largest batch that fits with headroom, keeping the
    recipe's effective batch (micro-batch x grad accumulation); when nothing fits, whether the
    memory options (checkpoint_offload, lean_mlp) would make it fit."""
    arch = architecture_of(recipe.model)
    usable = usable_gib(gpu_mem_gib, headroom)
    asked = recipe.speed.checkpoint_skip_layers
    recipe = at_auto_floor(recipe)  # the rows keep the recipe's layers, or none for auto
    rows, best = _batches(recipe, arch, seq, max_batch, usable, reference)
    memory_options = {}  # the rows stay the recipe's own; the recommendation may add memory options
    tried = memory_options_to_try(recipe) if best is None and not reference and recipe.gradient_checkpointing else ()
    for lean in tried:
        if all(getattr(recipe.speed, k) for k in lean):
            continue
        _, best = _batches(recipe.with_speed(**lean), arch, seq, max_batch, usable, reference)
        if best is not None:
            memory_options, recipe = lean, recipe.with_speed(**lean)
            break
    effective = recipe.effective_batch_size
    recommendation = None
    if best is not None:
        micro = max(d for d in range(1, best + 1) if effective % d == 0) if effective >= 1 else best
        recommendation = {"per_device_train_batch_size": micro,
                          "gradient_accumulation_steps": max(1, effective // micro),
                          "effective_batch_size": micro * max(1, effective // micro),
                          "largest_batch_that_fits": best, **memory_options}
        if recipe.gradient_checkpointing and not reference:
            kept = layers_that_fit(recipe, arch, seq, micro, usable)
            peak = predict_recipe(recipe.with_speed(checkpoint_skip_layers=kept), arch, seq, micro)
            recommendation.update(checkpoint_skip_layers=kept, peak_with_kept_layers_gib={
                "allocated": peak["allocated_gib"], "reserved": peak["reserved_gib"]})
    return {"recipe": recipe.name, "architecture": arch.name, "seq": seq, "gpu_mem_gib": gpu_mem_gib,
            "usable_gib": round(usable, 2), "path": "reference" if reference else "reviewgpt",
            "checkpoint_skip_layers": asked,
            "batches": rows, "recommendation": recommendation, "calibrated_on": CALIBRATION["calibrated_on"],
            "architecture_facts": asdict(arch)}


def _batches(recipe, arch, seq, max_batch, usable, reference):
    """Predicted rows for micro-batch 1..max_batch and the largest that fits `usable`."""
    rows, best = [], None
    for b in range(1, max_batch + 1):
        p = predict_recipe(recipe, arch, seq, b, reference)
        fits = p["reserved_gib"] <= usable
        rows.append({"batch": b, **p, "fits": fits})
        if fits:
            best = b
    return rows, best


def layers_that_fit(recipe, arch, seq: int, batch: int, usable_gib: float) -> int:
    """The most decoder layers that can skip recompute (checkpoint_skip_layers) within `usable_gib`."""
    best = 0
    for kept in range(arch.layers + 1):
        peak = predict_recipe(recipe.with_speed(checkpoint_skip_layers=kept), arch, seq, batch)
        if peak["reserved_gib"] > usable_gib:
            break
        best = kept
    return best


def free_gpu_gib() -> Optional[float]:
    """Free memory of this process's GPU (LOCAL_RANK under a launcher), or None without CUDA."""
    import os

    import torch

    if not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(int(os.environ.get("LOCAL_RANK", "0")))
    return free / GIB


def with_planned_layers(recipe, seq: int, batch: Optional[int] = None, gpu_free_gib: Optional[float] = None,
                        headroom: float = 0.05, arch: Optional[Architecture] = None):
    """`recipe` with `checkpoint_skip_layers: auto` replaced by the most layers that fit the GPU's
    free memory (with `headroom`) at `seq` tokens x `batch` (the micro-batch); other recipes as given."""
    if recipe.speed.checkpoint_skip_layers != "auto":
        return recipe
    batch = batch or recipe.per_device_train_batch_size
    free = gpu_free_gib if gpu_free_gib is not None else free_gpu_gib()
    kept = 0
    if free is None:
        log.info("checkpoint_skip_layers auto: no CUDA GPU to plan for, every layer recomputed")
    elif not recipe.gradient_checkpointing:
        log.info("checkpoint_skip_layers auto: gradient checkpointing is off, nothing to keep")
    else:
        try:
            arch = arch or architecture_of(recipe.model)
        except UserError as exc:
            log.info("checkpoint_skip_layers auto: every layer recomputed (%s)", exc)
            return recipe.with_speed(checkpoint_skip_layers=0)
        usable = usable_gib(free, headroom, context_gib=0)  # free memory: the context is already taken
        kept = layers_that_fit(recipe, arch, seq, batch, usable)
        planned = recipe.with_speed(checkpoint_skip_layers=kept)
        peak = predict_recipe(planned, arch, seq, batch)
        log.info("checkpoint_skip_layers auto: %d of %d layers kept from recompute at %d tokens x %d "
                 "(%.1f GiB reserved predicted, %.1f GiB usable of %.1f GiB free)", kept, arch.layers, seq, batch,
                 peak["reserved_gib"], usable, free)
    return recipe.with_speed(checkpoint_skip_layers=kept)


def check_fits(recipe, seq: int, gpu_mem_gib: Optional[float] = None) -> Optional[dict]:
    """Raise UserError when the recipe's micro-batch is predicted not to fit this GPU."""
    if not recipe.memory_check:
        return None
    if gpu_mem_gib is None:
        import torch

        if not torch.cuda.is_available():
            return None
        gpu_mem_gib = torch.cuda.get_device_properties(0).total_memory / GIB
    try:
        result = plan(recipe, seq, gpu_mem_gib, max_batch=recipe.per_device_train_batch_size)
    except UserError as exc:  # unknown architecture: nothing to check against
        log.info("memory check skipped: %s", exc)
        return None
    row = result["batches"][-1]
    if row["fits"]:
        log.info("memory plan: %.1f GiB predicted of %.1f GiB usable", row["reserved_gib"], result["usable_gib"])
        return result
    micro = recipe.per_device_train_batch_size
    if recipe.speed.checkpoint_skip_layers not in (0, "auto"):  # first see whether keeping fewer layers is the fix
        without = plan(recipe.with_speed(checkpoint_skip_layers=0), seq, gpu_mem_gib, max_batch=micro)
        if without["batches"][-1]["fits"]:
            kept = layers_that_fit(recipe, architecture_of(recipe.model), seq, micro, result["usable_gib"])
            raise UserError(
                f"recipe {recipe.name!r} at {seq} tokens x micro-batch {micro} keeps "
                f"{recipe.speed.checkpoint_skip_layers} layers' activations (checkpoint_skip_layers) and needs "
                f"~{row['reserved_gib']:.1f} GiB, more than the {result['usable_gib']:.1f} GiB usable on this "
                f"{gpu_mem_gib:.0f} GiB GPU; pass --checkpoint-skip-layers {kept}. See `reviewgpt plan`; "
                "--no-memory-check skips this check.")
        result = without
    rec = result["recommendation"]
    fix = "use a shorter --max-seq-length or a larger GPU"
    if rec:
        flags = ["--" + name.replace("_", "-") for name in ("checkpoint_offload", "lean_mlp") if rec.get(name)]
        if rec["per_device_train_batch_size"] != micro:
            flags.append(f"--per-device-train-batch-size {rec['per_device_train_batch_size']} "
                         f"--gradient-accumulation-steps {rec['gradient_accumulation_steps']} (same effective batch)")
        fix = "pass " + " ".join(flags)
    raise UserError(
        f"recipe {recipe.name!r} at {seq} tokens x micro-batch {recipe.per_device_train_batch_size} needs "
        f"~{row['reserved_gib']:.1f} GiB, more than the {result['usable_gib']:.1f} GiB usable on this "
        f"{gpu_mem_gib:.0f} GiB GPU; {fix}. See `reviewgpt plan`; --no-memory-check skips this check.")

