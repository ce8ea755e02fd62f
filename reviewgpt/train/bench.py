"""`reviewgpt bench`: timed QLoRA training steps of a recipe, reference path and ours.

Method (the baseline measurements'): weights of the real architecture (random, saved once as bf16 safetensors,
when no local model is given: no hub), loaded in 4-bit NF4; peft's `prepare_model_for_kbit_training`
+ the recipe's LoRA, as trl 0.7.11's SFTTrainer does; the transformers Trainer step (paged AdamW,
bf16, gradient checkpointing); sequences of random token ids with labels = input ids; `warmup`
steps, then the median of `steps` timed steps; peak = torch.cuda.max_memory_allocated/reserved.

Reference rows (every speed option off: the seed recipe's path) are each measured in a fresh
process, as the baseline was measured: the first grid point in this process before anything else
runs in it, the others in a child process each (`python -m reviewgpt.train.bench SPEC.json`). Measured
one after another on one loaded model, later reference rows inherited what earlier rows left in
the process (docs/performance.md, "The in-process reference"); `reference_in_process=True` keeps
that older way for comparison. Then the recipe's options are applied to the loaded model, one
row after another; after each row `Bench` undoes what the row changed in the process (patches,
SDPA backend order, Gemma/Llama's grown causal-mask buffer, accelerate's forward wrappers).

`ablate=True` adds one row per technique, switched on in turn, at the first grid point, and one
row per memory option on top of the recipe's; `skip_layers=(4, "auto")` adds rows with that many
layers not recomputed (auto: the planner's choice for the GPU's free memory, or `gpu_mem_gib`),
and `profile=N` adds the N costliest GPU operations of one step of the recipe's own options.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable, List, Optional

import torch

from reviewgpt.recipe.speed_options import SpeedOptions
from reviewgpt.train.bench_models import free_memory, load_prepared, model_for_bench
from reviewgpt.train.bench_timing import StepProfiler, StepTimer, versions
from reviewgpt.train.memory import CALIBRATION, Architecture, architecture_of, predict_recipe
from reviewgpt.train.plan import free_gpu_gib, with_planned_layers
from reviewgpt.train.speed import speedups

log = logging.getLogger(__name__)
GIB = 1 << 30
# Switched on one after another by --ablate (each row keeps the ones before it) ...
CHAIN = ("chunked_loss", "bf16_frozen_weights", "causal_sdpa", "sdpa_cudnn", "fused_lora", "fused_rmsnorm",
         "triton_rmsnorm", "triton_rope", "triton_mlp")
# ... and measured on top of the recipe's own options (memory for speed, or the other way round).
EXTRAS = ("checkpoint_keep_attention", "checkpoint_offload", "lean_mlp")
ONLY_FOR = {"causal_sdpa": ("gemma",), "fused_rmsnorm": ("mistral", "llama")}


def measure(model, recipe, seq: int, batch: int, steps: int, warmup: int, speed: SpeedOptions, output_dir,
            arch: Optional[Architecture] = None, label: str = "", profile: int = 0) -> dict:
    """One configuration: a fresh Trainer over `model` with the speed options `speed` (kept layers a
    number), `warmup + steps` optimizer steps (and one more under the profiler when `profile` > 0: its N
    costliest GPU kernels go into the row)."""
    from transformers import Trainer

    from reviewgpt.train.arguments import training_arguments
    from reviewgpt.train.dataset import ListDataset, PadCollator

    cuda = torch.cuda.is_available()
    profile = profile if cuda else 0
    run = recipe.replace(per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                         max_steps=warmup + steps + (1 if profile else 0), save_steps=10**9,
                         logging_steps=10**9, speed=speed)
    args = training_arguments(run, Path(output_dir), do_eval=False, cuda=cuda)
    args.disable_tqdm = True
    g = torch.Generator().manual_seed(seq * 31 + batch)
    vocab = model.get_input_embeddings().weight.shape[0]
    examples = []
    for _ in range(batch * run.max_steps):
        ids = torch.randint(3, vocab, (seq,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": ids})
    timer = StepTimer()
    trainer = Trainer(model=model, args=args, train_dataset=ListDataset(examples), data_collator=PadCollator(0),
                      callbacks=[timer.callback()])
    row = {"path": "reference" if speed == SpeedOptions.off() else "reviewgpt", "label": label,
           "recipe": recipe.name, "architecture": arch.name if arch else None, "seq": seq, "batch": batch}
    profiler = StepProfiler(warmup + steps) if profile else None
    if profiler:
        trainer.add_callback(profiler.callback())
    # the row's options are in force for its steps only: patches and the SDPA order end with the row
    with speedups(trainer.model, run.speed, bf16=run.bf16 and cuda, args=trainer.args) as in_force:
        free_memory()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        try:
            with profiler or contextlib.nullcontext():
                trainer.train()
        except torch.cuda.OutOfMemoryError as exc:
            row["error"] = f"out of memory: {str(exc).splitlines()[0]}"
        trainer.model.zero_grad(set_to_none=True)
    timed = timer.times[warmup:warmup + steps]
    if timed:
        step = statistics.median(timed)
        row.update(tokens_per_s=round(batch * seq / step, 1), step_s=round(step, 4),
                   step_times=[round(t, 4) for t in timer.times])
    if cuda:
        row.update(peak_allocated_gib=round(torch.cuda.max_memory_allocated() / GIB, 2),
                   peak_reserved_gib=round(torch.cuda.max_memory_reserved() / GIB, 2),
                   gpu=torch.cuda.get_device_name(0))
    else:
        row.update(peak_allocated_gib=None, peak_reserved_gib=None, gpu="cpu")
    if arch is not None:
        measured = run if cuda or not run.quantize else run.replace(finetune="lora")  # no 4-bit on a CPU
        row["predicted"] = predict_recipe(measured, arch, seq, batch)
    if profiler:
        row["profile_top_kernels"] = profiler.top(profile)
    row.update(options=in_force.as_dict(), lora_dropout=run.lora_dropout, versions=versions())
    del trainer
    free_memory()
    return row


def chain_steps(family: str) -> List[tuple]:
    """(label, SpeedOptions) rows switching CHAIN on one technique at a time, from every option off."""
    on = SpeedOptions.off()
    rows = []
    for name in CHAIN:
        if family not in ONLY_FOR.get(name, (family,)):
            continue
        on = on.replace(**{name: True})
        rows.append((f"+{name}", on))
    return rows


def on_top_steps(recipe, extras: Iterable[str] = EXTRAS, skip_layers: Iterable = ()) -> List[tuple]:
    """(label, SpeedOptions) rows adding memory-for-speed (or speed-for-memory) options to the recipe's own;
    a skip-layers entry may be "auto" (resolved per row by `Bench.row`)."""
    ours = recipe.speed
    rows = [(f"defaults+{name}", ours.replace(**{name: True})) for name in extras]
    rows += [(f"defaults+checkpoint_skip_layers={n}", ours.replace(checkpoint_skip_layers=n)) for n in skip_layers]
    return rows


class ProcessState:
    """What a bench row leaves behind in the process, captured on a freshly loaded model and put
    back after each row: Gemma/Llama's causal-mask buffer (transformers 4.38.2 replaces it by a
    twice larger one *on the CPU* when a sequence is longer, and then every later forward repeats,
    converts and copies it to the GPU: seconds per step), and the forward wrapper accelerate's
    `prepare` adds to the model on every new Trainer (one more autocast layer per row)."""

    def __init__(self, model):
        self.model = model
        self.masks = [(m, m.causal_mask) for m in model.modules() if isinstance(getattr(m, "causal_mask", None),
                                                                                    torch.Tensor)]
        self.forward = {k: vars(model)[k] for k in ("forward", "_original_forward") if k in vars(model)}

    def restore(self) -> None:
        for module, mask in self.masks:
            if module.causal_mask is not mask:
                module.register_buffer("causal_mask", mask, persistent=False)
        for key in ("forward", "_original_forward"):
            vars(self.model).pop(key, None)
        vars(self.model).update(self.forward)


class Bench:
    """One loaded model (the baseline method's load) and the rows measured on it, one after another."""

    def __init__(self, recipe, model_dir: str, arch: Architecture, steps: int = 4, warmup: int = 2,
                 emit=None, gpu_mem_gib: Optional[float] = None):
        self.recipe, self.arch, self.steps, self.warmup, self.emit = recipe, arch, steps, warmup, emit
        # What `checkpoint_skip_layers: auto` plans for: a card of gpu_mem_gib, or what is free now
        # (before the model is loaded: the planner counts the model itself).
        self.free_gib = gpu_mem_gib - CALIBRATION["cuda_context_gib"] if gpu_mem_gib else free_gpu_gib()
        self.model = load_prepared(model_dir, recipe)
        self.state = ProcessState(self.model)
        self.out_dir = tempfile.mkdtemp(prefix="reviewgpt-bench-")
        self.rows: List[dict] = []

    def row(self, seq: int, batch: int, speed: SpeedOptions, label: str, steps: Optional[int] = None,
            warmup: Optional[int] = None, profile: int = 0) -> dict:
        """Measure one row with the speed options `speed`; `checkpoint_skip_layers: auto` becomes the
        planner's number for this row's sequence and batch first (and the label says which)."""
        if speed.checkpoint_skip_layers == "auto":
            planned = with_planned_layers(self.recipe.replace(speed=speed), seq, batch, self.free_gib, arch=self.arch)
            speed = planned.speed
            kept = speed.kept_layers
            label = label.replace("=auto", f"=auto({kept})") if "=auto" in label else f"{label}, auto({kept})"
        try:
            row = measure(self.model, self.recipe, seq, batch, self.steps if steps is None else steps,
                          self.warmup if warmup is None else warmup, speed, self.out_dir, self.arch, label,
                          profile=profile)
        finally:
            self.state.restore()
        row["fresh_process"] = not self.rows and label == "reference"
        self.rows.append(row)
        if self.emit:
            self.emit(row)
        return row


def reference_in_fresh_process(recipe, model_dir: str, seq: int, batch: int, steps: int = 4, warmup: int = 2,
                               label: str = "reference") -> dict:
    """The reference path (every option off) at one grid point, in a child process that loads the
    model, measures this one row and exits: the baseline method."""
    from reviewgpt.recipe import save_recipe

    with tempfile.TemporaryDirectory(prefix="reviewgpt-reference-") as tmp:
        spec = Path(tmp, "spec.json")
        save_recipe(recipe, Path(tmp, "recipe.yaml"))
        spec.write_text(json.dumps({"recipe": str(Path(tmp, "recipe.yaml")), "model": str(model_dir), "seq": seq,
                                    "batch": batch, "steps": steps, "warmup": warmup, "label": label,
                                    "row": str(Path(tmp, "row.json"))}))
        log.info("reference %d x %d in a fresh process", seq, batch)
        done = subprocess.run([sys.executable, "-m", "reviewgpt.train.bench", str(spec)], check=False)
        if done.returncode != 0 or not Path(tmp, "row.json").is_file():
            return {"path": "reference", "label": label, "recipe": recipe.name, "seq": seq, "batch": batch,
                    "fresh_process": True, "error": f"the reference process exited with {done.returncode}"}
        return json.loads(Path(tmp, "row.json").read_text())


def _reference_process(spec_path: str) -> int:
    """Entry point of `reference_in_fresh_process`'s child: load, measure one reference row, write it."""
    from reviewgpt.recipe import load_recipe

    spec = json.loads(Path(spec_path).read_text())
    recipe = load_recipe(spec["recipe"])
    arch = architecture_of(spec["model"])
    bench = Bench(recipe, spec["model"], arch, spec["steps"], spec["warmup"])
    row = bench.row(spec["seq"], spec["batch"], SpeedOptions.off(), spec["label"])
    Path(spec["row"]).write_text(json.dumps(row))
    return 0


def run_bench(recipe, seqs: Iterable[int], batches: Iterable[int], steps: int = 4, warmup: int = 2,
              model_dir: Optional[str] = None, random_init: bool = False, reference: bool = False,
              ablate: bool = False, weights_dir: Optional[str] = None, emit=None, skip_layers: Iterable = (),
              profile: int = 0, reference_in_process: bool = False, gpu_mem_gib: Optional[float] = None) -> List[dict]:
    """Measure the grid (seq x batch); returns the rows (and passes each to `emit` as it is made)."""
    model_dir, arch = model_for_bench(recipe, model_dir, random_init, weights_dir)
    grid = [(s, b) for s in seqs for b in batches]
    ours = recipe.speed
    rows: List[dict] = []
    if reference and not reference_in_process:  # before this process loads anything (one GPU, one model)
        for s, b in grid[1:]:
            rows.append(reference_in_fresh_process(recipe, model_dir, s, b, steps, warmup))
            if emit:
                emit(rows[-1])
    bench = Bench(recipe, model_dir, arch, steps, warmup, emit, gpu_mem_gib)
    first = grid[0]
    for s, b in (grid if reference_in_process else grid[:1]) if reference else ():
        bench.row(s, b, SpeedOptions.off(), "reference")
    for label, opts in chain_steps(arch.family) if ablate else ():
        if opts != ours:  # the chain's last row is usually the recipe's own options, measured next
            bench.row(*first, opts, label)
    for i, (s, b) in enumerate(grid):
        bench.row(s, b, ours, "recipe defaults", profile=profile if i == 0 else 0)
    for label, opts in on_top_steps(recipe, EXTRAS if ablate else (), skip_layers):
        if opts != ours:
            bench.row(*first, opts, label)
    return rows + bench.rows


if __name__ == "__main__":  # the fresh process of `reference_in_fresh_process`
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(_reference_process(sys.argv[1]))
