"""Train: records -> tokenized examples (review kept whole) -> trl SFTTrainer (QLoRA) -> adapter.

The data is tokenized here, not by trl: trl 0.7.11 cuts the tail of each text, i.e. the review
(see `reviewgpt.tokenization`). SFTTrainer is given a torch Dataset, which it passes through
untouched, and a collator that pads labels with -100.

Re-running the same command after a crash resumes from the newest *complete* checkpoint
(transformers' own `get_last_checkpoint` only looks at folder names, so a checkpoint cut short
mid-save would be picked). On torch >= 2.6 transformers 4.38.2's resume `torch.load`s the RNG
state without `weights_only=False` and fails; `trusted_checkpoint_loading` passes it for files
inside the run's own checkpoint folder only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import torch
import yaml

from reviewgpt.distributed import (
    accumulation_per_process,
    ddp_skip_constant_buffers,
    floats_in_logs,
    is_main_process,
    single_gpu_guard,
    world_size,
)
from reviewgpt.errors import UserError
from reviewgpt.oom import with_oom_recovery
from reviewgpt.recipe import Recipe, save_recipe
from reviewgpt.records import Record, load_records, split_by_paper, write_rejects
from reviewgpt.tokenization import PromptEncoder, ReviewTooLong, pad_batch
from reviewgpt.torch_support import dataloader_prefetch_factor

log = logging.getLogger(__name__)

RECIPE_FILE = "reviewgpt_recipe.yaml"
LOG_FILE = "train_log.jsonl"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TokenizedSplit:
    examples: List[dict] = field(default_factory=list)
    papers_truncated: int = 0
    reviews_skipped: int = 0
    max_tokens: int = 0


def tokenize_records(records: Sequence[Record], encoder: PromptEncoder, recipe: Recipe,
                     desc: str = "tokenizing") -> TokenizedSplit:
    """Records -> input_ids/labels; a review that cannot fit stops or is skipped per the recipe."""
    from tqdm.auto import tqdm

    out = TokenizedSplit()
    for record in tqdm(records, desc=desc, unit="rec", disable=len(records) < 50):
        try:
            ex = encoder.encode_example(record.paper, record.review, recipe.max_seq_length, recipe.loss_on)
        except ReviewTooLong as exc:
            if recipe.on_review_too_long == "skip":
                out.reviews_skipped += 1
                log.warning("%s: skipped: %s", record.source, exc)
                continue
            raise UserError(
                f"{record.source}: {exc}; raise --max-seq-length or pass --on-review-too-long skip "
                "to skip and count such records."
            ) from None
        out.papers_truncated += ex.paper_truncated
        out.max_tokens = max(out.max_tokens, len(ex.input_ids))
        out.examples.append({"input_ids": ex.input_ids, "labels": ex.labels})
    return out


class ListDataset(torch.utils.data.Dataset):
    """A map dataset over pre-tokenized examples (trl 0.7.11 passes torch datasets through untouched)."""

    def __init__(self, examples: List[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.examples[index]


class PadCollator:
    """Right-pads a micro-batch."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: Optional[int] = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: List[dict]) -> dict:
        return pad_batch(features, self.pad_token_id, self.pad_to_multiple_of)


class TrainedTokens:
    """Counts the real (non-pad) tokens of the micro-batches the model trains on, for tokens/s.

    Counted at the model's forward in training mode, not in the collator: accelerate's DataLoader
    fetches one micro-batch ahead, so a run that stops mid-epoch collated a micro-batch it never
    trained on (+25% tokens at micro-batch 8 over 2 steps of 2, seen on the device). Eval batches
    (model in eval mode) are not counted."""

    def __init__(self, model):
        self.tokens = 0
        forward = model.forward

        def counting_forward(*args, **kwargs):
            if model.training:
                mask, ids = kwargs.get("attention_mask"), kwargs.get("input_ids")
                self.tokens += int(mask.sum()) if mask is not None else (ids.numel() if ids is not None else 0)
            return forward(*args, **kwargs)

        model.forward = counting_forward  # an instance attribute: DDP, DeepSpeed and accelerate call it


def is_complete_checkpoint(path: Path) -> bool:
    """A checkpoint the Trainer finished writing: weights, optimizer, scheduler, state and the
    RNG state, which transformers 4.38.2 writes last."""
    has_weights = any((path / n).is_file() for n in ("adapter_model.safetensors", "adapter_model.bin",
                                                      "model.safetensors", "pytorch_model.bin"))
    has_rng = any(path.glob("rng_state*.pth"))
    return (has_weights and has_rng and (path / "trainer_state.json").is_file()
            and (path / "optimizer.pt").is_file() and (path / "scheduler.pt").is_file())


def newest_complete_checkpoint(output_dir) -> Optional[Path]:
    candidates = []
    for child in Path(output_dir).glob("checkpoint-*"):
        m = CHECKPOINT_RE.match(child.name)
        if m and child.is_dir():
            if is_complete_checkpoint(child):
                candidates.append((int(m.group(1)), child))
            else:
                log.warning("ignoring incomplete checkpoint %s (cut short while saving?)", child)
    return max(candidates)[1] if candidates else None


@contextlib.contextmanager
def trusted_checkpoint_loading(checkpoint: Optional[Path]):
    """Let transformers 4.38.2 load the run's own RNG/optimizer files on torch >= 2.6."""
    if checkpoint is None:
        yield
        return
    original = torch.load
    root = Path(checkpoint).resolve()

    def load(f, *args, **kwargs):
        if "weights_only" not in kwargs and isinstance(f, (str, os.PathLike)):
            p = Path(f).resolve()
            if p == root or root in p.parents:
                kwargs["weights_only"] = False  # our own checkpoint, written by this run
        return original(f, *args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def make_log_callback(path: Path):
    from transformers import TrainerCallback

    class JsonlLogCallback(TrainerCallback):
        """Appends every log (loss, learning rate, eval loss) to train_log.jsonl as it happens."""

        def on_step_end(self, args, state, control, **kwargs):
            # Log at every checkpoint, so a checkpoint's log history holds every step's loss up to it
            # and a resumed run can report the mean over all its steps (`run_mean_loss`).
            if control.should_save:
                control.should_log = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs:
                return
            # Tensors (deepspeed >= 0.13.2's grad_norm) -> floats, here and in the copy the Trainer
            # keeps in its state, which transformers 4.38.x dumps to JSON (transformers#29207).
            floats_in_logs(logs)
            if state.log_history:
                floats_in_logs(state.log_history[-1])
            if not state.is_world_process_zero:
                return
            row = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time(), 3), **logs}
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    return JsonlLogCallback()


def drop_empty_param_groups(trainer) -> None:
    """Under DeepSpeed ZeRO, build the optimizer without empty parameter groups.

    transformers 4.38.2 makes a weight-decay and a no-decay group; with LoRA the second is empty.
    ZeRO drops empty groups after the scheduler was built for both, and torch >= 2.6's scheduler
    then fails its strict zip ("zip() argument 2 is longer than argument 1") at the first step.
    """
    if not getattr(trainer, "is_deepspeed_enabled", False):
        return
    create_optimizer = trainer.create_optimizer

    def create_optimizer_without_empty_groups():
        optimizer = create_optimizer()
        optimizer.param_groups[:] = [group for group in optimizer.param_groups if group["params"]]
        return optimizer

    trainer.create_optimizer = create_optimizer_without_empty_groups


def peak_memory_per_gpu() -> Optional[List[float]]:
    """Peak allocated GiB of each process's GPU (gathered from every rank under DDP)."""
    if not torch.cuda.is_available():
        return None
    mine = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        everyone = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(everyone, mine)
        return everyone
    return [mine]


def _truncate_log(path: Path, step: int) -> None:
    """On resume, drop log lines of steps the crashed run did after its last checkpoint."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def logged_loss_sum(log_history: List[dict], step: int) -> float:
    """The sum of the per-step training losses of steps 1..`step`, from a Trainer's log history.

    Each logged loss is the mean over the steps since the previous log; the callback above logs at
    every checkpoint, so the intervals reach `step` exactly (for older checkpoints the last logged
    mean stands in for the steps after it)."""
    total, previous = 0.0, 0
    for row in log_history:
        if "loss" in row and previous < row["step"] <= step:
            total += row["loss"] * (row["step"] - previous)
            previous = row["step"]
    if 0 < previous < step:
        total *= step / previous
    return total


def run_mean_loss(training_loss: float, global_step: int, checkpoint: Optional[Path]) -> Optional[float]:
    """The mean training loss over all the run's steps.

    transformers 4.38.2 divides the losses summed *since the resume* by every step of the run, so a
    resumed run reported 2.52 where the uninterrupted one reported 6.32: add the losses of the steps
    before the checkpoint back from its log history."""
    if math.isnan(training_loss) or not global_step:
        return None
    if checkpoint is None:
        return training_loss
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    before = logged_loss_sum(state.get("log_history", []), state["global_step"])
    return (before + training_loss * global_step) / global_step


def resume_batch(checkpoint: Path, recipe: Recipe, train_batch_size: int, write: bool = True) -> None:
    """Resume at this run's micro-batch when the effective batch is unchanged; refuse otherwise.

    transformers 4.38.2 resumes with the checkpoint's micro-batch (`train_batch_size` in
    trainer_state.json, kept for auto_find_batch_size): a rerun at 2 x 2 after a crash at 4 x 2
    trained at 4 x 2 and would run out of memory again. The sampler's order does not depend on the
    micro-batch, so with the same effective batch each optimizer step sees the same samples and the
    skipped ones are exactly those already trained on; with another effective batch the resume
    would skip the wrong number of samples."""
    state_path = checkpoint / "trainer_state.json"
    state = json.loads(state_path.read_text())
    saved_path = checkpoint.parent / RECIPE_FILE
    micro, accumulation = recipe.per_device_train_batch_size, recipe.gradient_accumulation_steps
    if saved_path.is_file():
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
        old_micro, old_accumulation = saved["per_device_train_batch_size"], saved["gradient_accumulation_steps"]
        old = old_micro * old_accumulation
        if old != recipe.effective_batch_size:
            fix = (f"--gradient-accumulation-steps {old // micro}" if old % micro == 0 else
                   f"--per-device-train-batch-size {old_micro} --gradient-accumulation-steps {old_accumulation}")
            raise UserError(
                f"{checkpoint} was trained at an effective batch of {old} ({old_micro} x {old_accumulation} "
                f"accumulation) and this run asks for {recipe.effective_batch_size} ({micro} x {accumulation}), so "
                f"the resume would skip the wrong samples; pass {fix} to keep the effective batch, or train into "
                "a new --output.")
    if state.get("train_batch_size") in (None, train_batch_size):
        return
    if not saved_path.is_file():
        raise UserError(
            f"{checkpoint} was trained at micro-batch {state['train_batch_size']} and {saved_path} is missing, so "
            f"its effective batch is unknown; pass --per-device-train-batch-size {state['train_batch_size']} to "
            "resume it, or train into a new --output.")
    log.info("resuming %s at micro-batch %d x %d accumulation (it was trained at %d x %d; same effective batch)",
             checkpoint, micro, accumulation, old_micro, old_accumulation)
    state["train_batch_size"] = train_batch_size
    if write:  # every process checks; one writes
        state_path.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")


def local_paths_absolute(recipe: Recipe) -> Recipe:
    """The base model and tokenizer as absolute paths when they are local folders: the run folder
    records them (adapter_config.json, reviewgpt_recipe.yaml) and `merge` or `review` may run from
    another directory. Hub ids stay as they are."""
    changes = {name: str(Path(value).resolve()) for name, value in
               (("model", recipe.model), ("tokenizer", recipe.tokenizer)) if value and Path(value).is_dir()}
    return recipe.replace(**changes) if changes else recipe


def plot_loss_curve(log_path: Path, png_path: Path) -> Optional[Path]:
    if not log_path.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = {}, {}
    for line in log_path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if "loss" in row:
            train[row["step"]] = row["loss"]
        if "eval_loss" in row:
            evals[row["step"]] = row["eval_loss"]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(sorted(train), [train[s] for s in sorted(train)], label="train loss")
    if evals:
        ax.plot(sorted(evals), [evals[s] for s in sorted(evals)], "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return png_path


def _optimizer_for_device(recipe: Recipe, cuda: bool) -> str:
    if not cuda and ("paged" in recipe.optim or "bnb" in recipe.optim or "8bit" in recipe.optim):
        log.warning("optimizer %r needs bitsandbytes on a GPU; using adamw_torch on this CPU", recipe.optim)
        return "adamw_torch"
    return recipe.optim


# The package each `report_to` integration needs, when it is not its own name.
REPORT_TO_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "azure_ml": ("azureml",),
                      "codecarbon": ("codecarbon",), "flyte": ("flytekit",)}


def check_report_to(report_to) -> None:
    """Say which package a `--report-to` integration needs before the Trainer fails on it."""
    import importlib.util

    for name in report_to:
        if name == "none":
            continue
        packages = REPORT_TO_PACKAGES.get(name, (name,))
        if not any(importlib.util.find_spec(p) for p in packages):
            raise UserError(f"--report-to {name} needs the {packages[0]} package, which is not installed: "
                            f"pip install {packages[0]}, or pass --report-to none.")


def training_arguments(recipe: Recipe, output_dir: Path, do_eval: bool, cuda: bool):
    from transformers import TrainingArguments

    bf16 = recipe.bf16 and cuda
    if recipe.bf16 and not cuda:
        log.warning("no CUDA GPU: training in fp32 instead of bf16")
    processes = world_size()
    accumulation = accumulation_per_process(recipe.per_device_train_batch_size,
                                            recipe.gradient_accumulation_steps, processes)
    if processes > 1:
        log.info("%d processes: accumulation %d per process keeps the effective batch of %d",
                 processes, accumulation, recipe.effective_batch_size)
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        per_device_eval_batch_size=recipe.per_device_eval_batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=recipe.learning_rate,
        max_grad_norm=recipe.max_grad_norm,
        weight_decay=recipe.weight_decay,
        optim=_optimizer_for_device(recipe, cuda),
        lr_scheduler_type=recipe.lr_scheduler_type,
        warmup_ratio=recipe.warmup_ratio,
        num_train_epochs=recipe.num_train_epochs,
        max_steps=recipe.max_steps,
        bf16=bf16,
        fp16=False,
        gradient_checkpointing=recipe.gradient_checkpointing,
        # transformers 4.38.2 calls checkpointing without use_reentrant; torch warns (later raises).
        gradient_checkpointing_kwargs={"use_reentrant": False},
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=recipe.save_total_limit,
        logging_steps=recipe.logging_steps,
        evaluation_strategy="steps" if do_eval else "no",
        eval_steps=recipe.eval_steps if do_eval else None,
        seed=recipe.seed,
        data_seed=recipe.seed,
        ddp_timeout=recipe.ddp_timeout,
        remove_unused_columns=False,
        report_to=[] if "none" in recipe.report_to else list(recipe.report_to),
        save_safetensors=True,
        disable_tqdm=False,
        use_cpu=not cuda,
        # Set by `reviewgpt train --deepspeed zero2` for the processes it launches.
        deepspeed=os.environ.get("REVIEWGPT_DEEPSPEED_CONFIG") or None,
        # Every LoRA weight gets a gradient; the unused-parameter search only costs time under DDP.
        ddp_find_unused_parameters=False if processes > 1 else None,
    )
    # transformers 4.38.2 hands DataLoader prefetch_factor=None, which torch 1.x refuses; its own check
    # forbids 2 without workers, so the torch's accepted value is set after it (reviewgpt.torch_support).
    args.dataloader_prefetch_factor = dataloader_prefetch_factor()
    single_gpu_guard(args)
    return args


@with_oom_recovery  # issue 4: a CUDA OOM halves the micro-batch and resumes (recipe.oom_recovery)
def train(recipe: Recipe, data_path, output_dir, *, resume_from=None, do_eval: bool = False,
          skip_invalid: bool = False, callbacks: Sequence = ()) -> dict:
    """Run one training job; returns a summary (also written to OUTPUT/train_summary.json)."""
    from transformers import set_seed
    from trl import SFTTrainer

    from reviewgpt.models import load_base_model, load_tokenizer, qlora_config
    from reviewgpt.plan import check_fits, with_planned_layers
    from reviewgpt.prompt import get_template, make_formatting_func
    from reviewgpt.speed import apply_speedups

    if not recipe.model:
        raise UserError(f"recipe {recipe.name!r} names no model; pass --model DIR.")
    recipe = local_paths_absolute(recipe)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()

    loaded = load_records(data_path, skip_invalid=skip_invalid)
    if loaded.rejected and is_main_process():
        write_rejects(loaded.rejected, output_dir / "rejects.jsonl")
        log.warning("%d invalid record(s) set aside in %s", len(loaded.rejected), output_dir / "rejects.jsonl")
    if loaded.duplicates:
        log.info("%d exact duplicate record(s) removed", loaded.duplicates)
    train_records, eval_records = split_by_paper(loaded.records, recipe.eval_fraction if do_eval else 0.0,
                                                 recipe.seed)
    if not train_records:
        raise UserError(f"{data_path}: no valid records to train on.")

    tokenizer = load_tokenizer(recipe.tokenizer or recipe.model, recipe.family)
    encoder = PromptEncoder(tokenizer, get_template(recipe.template))
    train_split = tokenize_records(train_records, encoder, recipe, "tokenizing train")
    eval_split = tokenize_records(eval_records, encoder, recipe, "tokenizing eval") if eval_records else None
    if not train_split.examples:
        raise UserError(f"{data_path}: every review was too long for max_seq_length={recipe.max_seq_length}.")

    # checkpoint_skip_layers auto: the most layers the GPU's free memory holds at the longest example
    step_recipe = with_planned_layers(recipe, train_split.max_tokens)
    if cuda:  # refuse before loading what `reviewgpt plan` predicts will not fit (recipe.memory_check)
        check_fits(step_recipe, train_split.max_tokens)
    check_report_to(recipe.report_to)
    args = training_arguments(recipe, output_dir, do_eval and eval_split is not None, cuda)

    checkpoint = Path(resume_from) if resume_from else newest_complete_checkpoint(output_dir)
    if resume_from and not (checkpoint.is_dir() and is_complete_checkpoint(checkpoint)):
        raise UserError(f"--resume-from {resume_from}: not a complete checkpoint folder.")
    log_path = output_dir / LOG_FILE
    main_process = is_main_process()  # under several processes only rank 0 writes files
    if checkpoint is not None:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        log.info("resuming from %s (step %d)", checkpoint, state["global_step"])
        resume_batch(checkpoint, recipe, args.train_batch_size, write=main_process)
        if main_process:
            _truncate_log(log_path, state["global_step"])
    elif main_process:
        log_path.unlink(missing_ok=True)
    if main_process:
        save_recipe(recipe, output_dir / RECIPE_FILE)
    model = load_base_model(recipe.model, recipe.family, recipe.quantize, recipe.bf16 and cuda,
                            recipe.attn_implementation)
    _, lora = qlora_config(recipe.family, recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout,
                           recipe.lora_target_modules, quantize=recipe.quantize)

    # SFTTrainer builds the LoRA layers (random A matrices) before the Trainer seeds anything:
    # seed first, or two runs of the same command start from different adapters.
    set_seed(recipe.seed)
    collator = PadCollator(tokenizer.pad_token_id)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=ListDataset(train_split.examples),
        eval_dataset=ListDataset(eval_split.examples) if eval_split and args.do_eval else None,
        peft_config=lora,
        tokenizer=tokenizer,
        data_collator=collator,
        formatting_func=make_formatting_func(recipe.template),  # unused: the data is pre-tokenized
        max_seq_length=recipe.max_seq_length,
        packing=False,
        callbacks=[make_log_callback(log_path), *callbacks],
    )
    drop_empty_param_groups(trainer)
    if world_size() > 1:
        ddp_skip_constant_buffers(trainer.model)  # torch 1.13's gloo cannot broadcast Gemma's bool mask
    apply_speedups(trainer, step_recipe, bf16=args.bf16)  # issue 4: the recipe's speed options
    trained = TrainedTokens(trainer.model)
    started = time.time()
    with trusted_checkpoint_loading(checkpoint):
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trained_s = max(time.time() - started, 1e-9)  # the training itself: saving and plotting are not in tokens/s
    trainer.save_model(str(output_dir))  # the adapter (+ adapter_config naming the base model); rank 0 only
    png = None
    if main_process:
        tokenizer.save_pretrained(str(output_dir))
        png = plot_loss_curve(log_path, output_dir / "loss_curve.png")
    summary = {
        "output": str(output_dir),
        "recipe": recipe.name,
        "train_records": len(train_split.examples),
        "eval_records": len(eval_split.examples) if eval_split else 0,
        "invalid": len(loaded.rejected),
        "duplicates": loaded.duplicates,
        "papers_truncated": train_split.papers_truncated + (eval_split.papers_truncated if eval_split else 0),
        "reviews_skipped": train_split.reviews_skipped + (eval_split.reviews_skipped if eval_split else 0),
        "max_tokens": train_split.max_tokens,
        "resumed_from": str(checkpoint) if checkpoint else None,
        "global_step": trainer.state.global_step,
        "train_loss": run_mean_loss(result.training_loss, trainer.state.global_step, checkpoint),
        "seconds": round(trained_s, 1),
        # Tokens this process trained on (not eval batches) over the training's wall time.
        "train_tokens": trained.tokens,
        "tokens_per_s": round(trained.tokens / trained_s, 1),
        "loss_curve": str(png) if png else None,
        "world_size": world_size(),
        "peak_allocated_gib_per_gpu": peak_memory_per_gpu(),
    }
    if main_process:
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
