"""`reviewgpt bench`: timed QLoRA training steps of a recipe, reference path and ours, one process.

Method (BASELINE.md): weights of the real architecture (random, saved once as bf16 safetensors,
when no local model is given: no hub), loaded in 4-bit NF4; peft's `prepare_model_for_kbit_training`
+ the recipe's LoRA, as trl 0.7.11's SFTTrainer does; the transformers Trainer step (paged AdamW,
bf16, gradient checkpointing); sequences of random token ids with labels = input ids; `warmup`
steps, then the median of `steps` timed steps; peak = torch.cuda.max_memory_allocated/reserved.

The model is loaded once per call. Reference rows (every speed option off: the seed recipe's path)
run first, while peft's fp32 upcast is still in place; then the recipe's options are applied.
`ablate=True` adds one row per technique, switched on in turn, at the first grid point;
`skip_layers=(4, 8)` adds rows with that many layers not recomputed (memory for speed), and
`profile=N` adds the N costliest GPU operations of one step of the recipe's own options.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Iterable, List, Optional

import torch

from reviewgpt.plan import ARCHITECTURES, Architecture, architecture_of
from reviewgpt.speed import OFF, apply_speedups, options_of, remove_speedups

log = logging.getLogger(__name__)
GIB = 1 << 30
# Switched on one after another by --ablate (each row keeps the ones before it) ...
CHAIN = ("chunked_loss", "bf16_frozen_weights", "causal_sdpa", "sdpa_cudnn", "fused_lora", "fused_rmsnorm")
# ... and measured on top of the recipe's own options (they cost memory).
EXTRAS = ("checkpoint_keep_attention",)
ONLY_FOR = {"causal_sdpa": ("gemma",), "fused_rmsnorm": ("mistral", "llama")}


def transformers_config(arch: Architecture, tokenizer=None):
    ids = {}
    if tokenizer is not None:
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    common = dict(vocab_size=arch.vocab, hidden_size=arch.hidden, intermediate_size=arch.intermediate,
                  num_hidden_layers=arch.layers, num_attention_heads=arch.heads,
                  num_key_value_heads=arch.kv_heads, max_position_embeddings=arch.max_positions,
                  rope_theta=arch.rope_theta, torch_dtype="bfloat16", **ids)
    if arch.family == "gemma":
        from transformers import GemmaConfig

        return GemmaConfig(head_dim=arch.head_dim, hidden_act="gelu_pytorch_tanh", **common)
    from transformers import MistralConfig

    return MistralConfig(sliding_window=None, **common)


def random_weights(arch: Architecture, directory) -> Path:
    """A bf16 safetensors checkpoint of `arch` with random weights (+ a local tokenizer), made once."""
    from transformers import AutoModelForCausalLM

    from reviewgpt.tiny import build_tokenizer

    directory = Path(directory)
    if (directory / "config.json").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(arch.family)
    config = transformers_config(arch, tokenizer)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    started = time.time()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    model.save_pretrained(directory, safe_serialization=True, max_shard_size="4GB")
    tokenizer.save_pretrained(directory)
    log.info("random %s weights written to %s in %.0f s", arch.name, directory, time.time() - started)
    del model
    _free()
    return directory


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_prepared(model_dir: str, recipe):
    """4-bit base + peft kbit preparation + LoRA: what SFTTrainer trains."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    from reviewgpt.models import load_base_model, qlora_config

    cuda = torch.cuda.is_available()
    model = load_base_model(model_dir, recipe.family, recipe.quantize and cuda, recipe.bf16 and cuda,
                            recipe.attn_implementation)
    if recipe.quantize and cuda:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    _, lora = qlora_config(recipe.family, recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout,
                           recipe.lora_target_modules, quantize=recipe.quantize)
    return get_peft_model(model, lora)


class StepTimer:
    def __init__(self):
        self.times: List[float] = []
        self._start = 0.0

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class _Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                timer._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                timer.times.append(time.perf_counter() - timer._start)

        return _Timer()


class StepProfiler:
    """torch.profiler over one optimizer step (after `skip` steps): where the GPU time goes."""

    def __init__(self, skip: int):
        from torch.profiler import ProfilerActivity, profile, schedule

        self.prof = profile(activities=[ProfilerActivity.CUDA],
                            schedule=schedule(wait=skip, warmup=0, active=1, repeat=1))

    def __enter__(self):
        self.prof.__enter__()
        return self

    def __exit__(self, *exc):
        return self.prof.__exit__(*exc)

    def callback(self):
        from transformers import TrainerCallback

        prof = self.prof

        class _Step(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                prof.step()

        return _Step()

    def top(self, n: int) -> List[dict]:
        def self_us(event):
            return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)

        try:
            events = sorted(self.prof.key_averages(), key=self_us, reverse=True)
        except Exception as exc:  # noqa: BLE001 - a profiler problem must not lose the measurement
            log.warning("no profile: %s", exc)
            return []
        total = sum(self_us(e) for e in events) or 1
        return [{"kernel": e.key[:100], "ms": round(self_us(e) / 1000, 2), "share": round(self_us(e) / total, 4),
                 "calls": e.count} for e in events[:n]]


def versions() -> dict:
    import accelerate
    import peft
    import transformers
    import trl

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
           "peft": peft.__version__, "accelerate": accelerate.__version__}
    try:
        import bitsandbytes

        out["bitsandbytes"] = bitsandbytes.__version__
    except Exception:  # noqa: BLE001 - absent or broken on CPU machines
        out["bitsandbytes"] = None
    return out


def measure(model, recipe, seq: int, batch: int, steps: int, warmup: int, options: dict, output_dir,
            arch: Optional[Architecture] = None, label: str = "", profile: int = 0) -> dict:
    """One configuration: a fresh Trainer over `model`, `warmup + steps` optimizer steps (and one
    more under the profiler when `profile` > 0: its N costliest GPU kernels go into the row)."""
    from transformers import Trainer

    from reviewgpt.plan import predict_recipe
    from reviewgpt.train import ListDataset, PadCollator, training_arguments

    cuda = torch.cuda.is_available()
    profile = profile if cuda else 0
    run = recipe.replace(per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                         max_steps=warmup + steps + (1 if profile else 0), save_steps=10**9,
                         logging_steps=10**9, **options)
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
    remove_speedups(trainer)
    in_force = apply_speedups(trainer, run, bf16=run.bf16 and cuda)
    _free()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    row = {"path": "reference" if not any(options.values()) else "reviewgpt", "label": label,
           "recipe": recipe.name, "architecture": arch.name if arch else None, "seq": seq, "batch": batch}
    profiler = StepProfiler(warmup + steps) if profile else None
    if profiler:
        trainer.add_callback(profiler.callback())
    try:
        with profiler or contextlib.nullcontext():
            trainer.train()
    except torch.cuda.OutOfMemoryError as exc:
        row["error"] = f"out of memory: {str(exc).splitlines()[0]}"
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
        row["predicted"] = predict_recipe(run.replace(quantize=run.quantize and cuda), arch, seq, batch)
    if profiler:
        row["profile_top_kernels"] = profiler.top(profile)
    row.update(options=in_force, lora_dropout=run.lora_dropout, versions=versions())
    trainer.model.zero_grad(set_to_none=True)
    del trainer
    _free()
    return row


def chain_steps(family: str) -> List[tuple]:
    """(label, options) rows switching CHAIN on one technique at a time, from every option off."""
    on: dict = dict(OFF)
    rows = []
    for name in CHAIN:
        if family not in ONLY_FOR.get(name, (family,)):
            continue
        on = {**on, name: True}
        rows.append((f"+{name}", dict(on)))
    return rows


def on_top_steps(recipe, extras: Iterable[str] = EXTRAS, skip_layers: Iterable[int] = ()) -> List[tuple]:
    """(label, options) rows adding memory-for-speed options to the recipe's own."""
    ours = options_of(recipe)
    rows = [(f"defaults+{name}", {**ours, name: True}) for name in extras]
    rows += [(f"defaults+checkpoint_skip_layers={n}", {**ours, "checkpoint_skip_layers": n}) for n in skip_layers]
    return rows


def run_bench(recipe, seqs: Iterable[int], batches: Iterable[int], steps: int = 4, warmup: int = 2,
              model_dir: Optional[str] = None, random_init: bool = False, reference: bool = False,
              ablate: bool = False, weights_dir: Optional[str] = None, emit=None, skip_layers: Iterable[int] = (),
              profile: int = 0) -> List[dict]:
    """Measure the grid (seq x batch); returns the rows (and passes each to `emit` as it is made)."""
    arch = ARCHITECTURES.get(recipe.model) or architecture_of(model_dir or recipe.model)
    if model_dir is None:
        if not random_init:
            model_dir = recipe.model
        else:
            base = weights_dir or os.environ.get("REVIEWGPT_RANDOM_WEIGHTS") or tempfile.gettempdir()
            model_dir = str(random_weights(arch, Path(base) / f"reviewgpt-random-{arch.name}"))
    arch = architecture_of(model_dir) if Path(model_dir, "config.json").is_file() else arch
    grid = [(s, b) for s in seqs for b in batches]
    ours = options_of(recipe)
    model = load_prepared(model_dir, recipe)
    out_dir = tempfile.mkdtemp(prefix="reviewgpt-bench-")
    rows = []

    def record(seq, batch, options, label, top=0):
        row = measure(model, recipe, seq, batch, steps, warmup, options, out_dir, arch, label, profile=top)
        rows.append(row)
        if emit:
            emit(row)

    first = grid[0]
    if reference:
        for s, b in grid:
            record(s, b, dict(OFF), "reference")
    for label, opts in chain_steps(arch.family) if ablate else ():
        if opts != ours:  # the chain's last row is usually the recipe's own options, measured next
            record(*first, opts, label)
    for i, (s, b) in enumerate(grid):
        record(s, b, ours, "recipe defaults", top=profile if i == 0 else 0)
    for label, opts in on_top_steps(recipe, EXTRAS if ablate else (), skip_layers):
        if opts != ours:
            record(*first, opts, label)
    return rows
