"""`reviewgpt bench`: timed QLoRA training steps of a recipe, reference path and ours, one process.

Method (BASELINE.md): weights of the real architecture (random, saved once as bf16 safetensors,
when no local model is given: no hub), loaded in 4-bit NF4; peft's `prepare_model_for_kbit_training`
+ the recipe's LoRA, as trl 0.7.11's SFTTrainer does; the transformers Trainer step (paged AdamW,
bf16, gradient checkpointing); sequences of random token ids with labels = input ids; `warmup`
steps, then the median of `steps` timed steps; peak = torch.cuda.max_memory_allocated/reserved.

The model is loaded once per call. Reference rows (every speed option off: the seed recipe's path)
run first, while peft's fp32 upcast is still in place; then the recipe's options are applied.
`ablate=True` adds one row per technique, switched on in turn, at the first grid point.
"""

from __future__ import annotations

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
from reviewgpt.speed import OPTIONS, apply_speedups, options_of, remove_speedups

log = logging.getLogger(__name__)
GIB = 1 << 30
OFF = dict.fromkeys(OPTIONS, False)


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
            arch: Optional[Architecture] = None, label: str = "") -> dict:
    """One configuration: a fresh Trainer over `model`, `warmup + steps` optimizer steps."""
    from transformers import Trainer

    from reviewgpt.plan import predict
    from reviewgpt.train import ListDataset, PadCollator, training_arguments

    cuda = torch.cuda.is_available()
    run = recipe.replace(per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                         max_steps=warmup + steps, save_steps=10**9, logging_steps=10**9, **options)
    args = training_arguments(run, Path(output_dir), do_eval=False, cuda=cuda)
    args.disable_tqdm = True
    g = torch.Generator().manual_seed(seq * 31 + batch)
    vocab = model.get_input_embeddings().weight.shape[0]
    examples = []
    for _ in range(batch * (warmup + steps)):
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
    try:
        trainer.train()
    except torch.cuda.OutOfMemoryError as exc:
        row["error"] = f"out of memory: {str(exc).splitlines()[0]}"
    timed = timer.times[warmup:]
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
        row["predicted"] = predict(arch, seq, batch, lora_r=run.lora_r,
                                   lora_targets=run.lora_target_modules or ("q_proj", "k_proj", "v_proj", "o_proj"),
                                   options=options, quantize=run.quantize and cuda,
                                   paged_optimizer="paged" in args.optim)
    row.update(options=in_force, lora_dropout=run.lora_dropout, versions=versions())
    trainer.model.zero_grad(set_to_none=True)
    del trainer
    _free()
    return row


def ablation_steps(recipe, family: str) -> List[tuple]:
    """(label, options) rows switching the techniques on one at a time (then the extra options)."""
    on: dict = dict(OFF)
    rows = []
    for name in ("chunked_loss", "bf16_frozen_weights", "causal_sdpa"):
        if name == "causal_sdpa" and family != "gemma":
            continue
        on = {**on, name: True}
        rows.append((f"+{name}", dict(on)))
    for name in ("sdpa_cudnn", "checkpoint_keep_attention"):
        rows.append((f"defaults+{name}", {**on, name: True}))
    return rows


def run_bench(recipe, seqs: Iterable[int], batches: Iterable[int], steps: int = 4, warmup: int = 2,
              model_dir: Optional[str] = None, random_init: bool = False, reference: bool = False,
              ablate: bool = False, weights_dir: Optional[str] = None, emit=None) -> List[dict]:
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

    def record(row):
        rows.append(row)
        if emit:
            emit(row)

    if reference:
        for s, b in grid:
            record(measure(model, recipe, s, b, steps, warmup, dict(OFF), out_dir, arch, "reference"))
    if ablate:
        s, b = grid[0]
        for label, opts in ablation_steps(recipe, arch.family):
            if label.startswith("defaults+") or opts == ours:
                continue  # the recipe's own options are measured below, at every grid point
            record(measure(model, recipe, s, b, steps, warmup, opts, out_dir, arch, label))
    for s, b in grid:
        record(measure(model, recipe, s, b, steps, warmup, ours, out_dir, arch, "recipe defaults"))
    if ablate:
        s, b = grid[0]
        for label, opts in ablation_steps(recipe, arch.family):
            if label.startswith("defaults+") and opts != ours:
                record(measure(model, recipe, s, b, steps, warmup, opts, out_dir, arch, label))
    return rows
