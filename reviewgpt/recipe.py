"""Recipes: one frozen dataclass, filled from a commented YAML per model, overridden by flags.

The YAML files in `reviewgpt/recipes/` hold hyper-parameters only; model facts (LoRA targets,
template quirks, the transformers 4.38.2 Gemma fixes) live in `reviewgpt.models`. The CLI's
`train` flags are generated from `Recipe`'s fields, so there is one source of truth.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Tuple, Union

import yaml

from reviewgpt import run
from reviewgpt.data.prompt import TEMPLATES
from reviewgpt.errors import UserError

RECIPE_DIR = Path(__file__).parent / "recipes"
# A number of decoder layers, or "auto": as many as the planner says fit the GPU (reviewgpt.train.plan).
LayerCount = Union[int, Literal["auto"]]


@dataclass(frozen=True)
class Range:
    """The numbers a field accepts: bounds inclusive unless `*_open`; `also` lists single values
    allowed outside them (max_steps' -1)."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    also: Tuple[float, ...] = ()

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {self.low}"
        else:
            text = f"{'<' if self.high_open else '<='} {self.high}"
        return " or ".join([*(str(v) for v in self.also), text])

    def contains(self, value) -> bool:
        if value in self.also:
            return True
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))


AT_LEAST_1 = Range(1)
AT_LEAST_0 = Range(0)
POSITIVE = Range(0, low_open=True)
FRACTION = Range(0, 1, high_open=True)  # [0, 1)


def _help(text: str, range: Optional[Range] = None, **kwargs):
    return field(metadata={"help": text, **({"range": range} if range else {})}, **kwargs)


@dataclass(frozen=True)
class Recipe:
    name: str = _help("recipe name", default="custom")
    family: Literal["gemma", "mistral", "llama"] = _help("model family (decides LoRA targets and fixes)",
                                                         default="gemma")
    model: Optional[str] = _help("hub id or local directory of the base model", default=None)
    tokenizer: Optional[str] = _help("tokenizer directory (default: the model's)", default=None)
    template: str = _help(f"prompt template: {', '.join(TEMPLATES)}", default=run.DEFAULT_TEMPLATE)
    max_seq_length: int = _help("tokens per training example; the paper is trimmed to fit, never the review",
                                AT_LEAST_1, default=8192)
    loss_on: Literal["review", "all"] = _help("'review': loss on review tokens only; 'all': reference",
                                              default="review")
    on_review_too_long: Literal["error", "skip"] = _help("a review that alone does not fit: stop or skip+count",
                                                         default="error")
    quantize: bool = _help("load the base in 4-bit NF4 (QLoRA); needs a CUDA GPU", default=True)
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = _help(
        "attention kernel; auto = flash-attn 2 when installed on a GPU, else sdpa", default="auto")
    lora_r: int = _help("LoRA rank", AT_LEAST_1, default=64)
    lora_alpha: int = _help("LoRA alpha", AT_LEAST_1, default=16)
    lora_dropout: float = _help("LoRA dropout", FRACTION, default=0.1)
    lora_target_modules: Optional[Tuple[str, ...]] = _help("LoRA targets (default: the family's)", default=None)
    per_device_train_batch_size: int = _help("micro-batch per device", AT_LEAST_1, default=1)
    per_device_eval_batch_size: int = _help("eval micro-batch per device", AT_LEAST_1, default=1)
    gradient_accumulation_steps: int = _help("micro-batches per optimizer step", AT_LEAST_1, default=16)
    learning_rate: float = _help("peak learning rate", POSITIVE, default=2.0e-4)
    max_grad_norm: float = _help("gradient clipping norm (0: no clipping)", AT_LEAST_0, default=0.3)
    weight_decay: float = _help("AdamW weight decay", AT_LEAST_0, default=0.001)
    optim: str = _help("transformers optimizer name", default="paged_adamw_32bit")
    lr_scheduler_type: str = _help("learning-rate schedule", default="constant")
    warmup_ratio: float = _help("warm-up share of the steps", Range(0, 1), default=0.03)
    num_train_epochs: float = _help("epochs (when max_steps is -1)", POSITIVE, default=2.0)
    max_steps: int = _help("stop after this many optimizer steps (-1: use epochs)", Range(1, also=(-1,)),
                           default=-1)
    bf16: bool = _help("bf16 mixed precision (fp16 gives NaN losses on Gemma)", default=True)
    gradient_checkpointing: bool = _help("recompute activations to save memory", default=True)
    save_steps: int = _help("checkpoint every N optimizer steps", AT_LEAST_1, default=10)
    save_total_limit: int = _help("checkpoints kept", AT_LEAST_1, default=3)
    logging_steps: int = _help("log every N optimizer steps", AT_LEAST_1, default=10)
    eval_fraction: float = _help("share of papers held out for evaluation", FRACTION, default=0.05)
    eval_steps: int = _help("evaluate every N steps when --eval is on", AT_LEAST_1, default=50)
    seed: int = _help("random seed (data split and training)", Range(0, 2**32 - 1), default=42)
    ddp_timeout: int = _help("torch.distributed timeout in seconds (reference: 180000000)", AT_LEAST_1,
                              default=180000000)
    review_max_input_tokens: Optional[int] = _help(
        "prompt budget at generation; the paper is trimmed to fit (default: max_seq_length - max_new_tokens, "
        "7168 for an 8192 recipe, as the reference)", AT_LEAST_1, default=None)
    max_new_tokens: int = _help("longest generated review", AT_LEAST_1, default=run.DEFAULT_MAX_NEW_TOKENS)
    # Speed and memory (issue 4; reviewgpt.train.speed, reviewgpt.train.plan, reviewgpt.train.oom; docs/performance.md).
    chunked_loss: bool = _help("loss over labelled positions only, in chunks: never T x vocab fp32 logits "
                               "(same loss and gradients)", default=True)
    bf16_frozen_weights: bool = _help("keep frozen norms/embedding in bf16 after peft's fp32 upcast, so "
                                      "activations stay bf16 (with --bf16)", default=True)
    causal_sdpa: bool = _help("Gemma/Llama + sdpa: is_causal instead of a 4-D mask when a batch has no padding "
                              "(flash kernel); Llama: batch-sized masks", default=True)
    sdpa_cudnn: bool = _help("cuDNN fused attention first in SDPA's backend order (torch >= 2.5; "
                             "no-op before)", default=True)
    fused_lora: bool = _help("LoRA up-projection, scaling and residual add in one GEMM (peft's math, fewer "
                             "passes over the activations)", default=True)
    fused_rmsnorm: bool = _help("Mistral/Llama RMSNorm through torch's fused rms_norm kernel (torch >= 2.4; "
                                "no-op before)", default=True)
    checkpoint_keep_attention: bool = _help("save attention outputs in gradient checkpointing instead of "
                                            "recomputing them (faster, more memory; torch >= 2.4)", default=False)
    checkpoint_skip_layers: LayerCount = _help(
        "the last N decoder layers keep their activations instead of being recomputed (faster, more memory); "
        "auto = as many as fit the GPU's free memory at the run's longest sequence (`reviewgpt plan`)",
        AT_LEAST_0, default=0)
    checkpoint_offload: bool = _help("gradient checkpointing keeps each layer's input in pinned host memory "
                                     "instead of on the GPU (less GPU memory for long sequences)", default=False)
    lean_mlp: bool = _help("GeGLU/SwiGLU as one autograd step that keeps only gate and up and writes its "
                           "gradients over them: 3 fewer sequence x intermediate tensors in backward", default=False)
    memory_check: bool = _help("refuse to start when `reviewgpt plan` predicts the GPU is too small",
                               default=True)
    oom_recovery: bool = _help("on CUDA out-of-memory: halve the micro-batch, double grad accumulation, "
                               "resume from the last checkpoint", default=True)
    report_to: Tuple[str, ...] = _help("where the Trainer also logs: none (offline), tensorboard (OUTPUT/runs), "
                                       "wandb, mlflow, ...", default=("none",))

    def __post_init__(self):
        for f in dataclasses.fields(self):
            problem = field_problem(f.name, getattr(self, f.name))
            if problem:
                raise ValueError(f"{f.name} {problem}")

    @property
    def prompt_budget(self) -> int:
        """Prompt tokens at generation: review_max_input_tokens, else what training left for the paper."""
        return self.review_max_input_tokens or max(self.max_seq_length - self.max_new_tokens, 1)

    @property
    def effective_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    def replace(self, **changes) -> Recipe:
        try:
            return dataclasses.replace(self, **changes)
        except ValueError as exc:
            raise UserError(f"recipe {self.name!r}: {exc}.") from None

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        for name in ("lora_target_modules", "report_to"):  # YAML lists, not Python tuples
            if data[name] is not None:
                data[name] = list(data[name])
        return data


def field_types() -> dict:
    return typing.get_type_hints(Recipe)


_CHOICES = {"template": tuple(TEMPLATES)}
# transformers 4.38.2's logging integrations (`report_to`), plus "none".
REPORT_TO = ("none", "tensorboard", "wandb", "mlflow", "comet_ml", "clearml", "neptune", "azure_ml", "dvclive",
             "codecarbon", "flyte", "dagshub")


def field_problem(name: str, value) -> Optional[str]:
    """What is wrong with `value` for field `name` ("must be >= 1, got 0"), or None."""
    f = next(f for f in dataclasses.fields(Recipe) if f.name == name)
    choices = _CHOICES.get(name) or typing.get_args(field_types()[name])
    if (name in _CHOICES or typing.get_origin(field_types()[name]) is Literal) and value not in choices:
        return f"must be one of {list(choices)}, got {value!r}"
    if name == "report_to":
        unknown = [v for v in value if v not in REPORT_TO]
        if unknown or not value or ("none" in value and len(value) > 1):
            return f"must be none or some of {list(REPORT_TO[1:])}, got {','.join(value)!r}"
    allowed = f.metadata.get("range")
    if allowed is not None and isinstance(value, (int, float)) and not allowed.contains(value):
        return f"must be {allowed.describe()}, got {value!r}"
    return None


def flag_name(field_name: str) -> str:
    """The `train` flag of a recipe field: learning_rate -> --learning-rate."""
    return "--" + field_name.replace("_", "-")


def builtin_recipes() -> dict:
    """name -> path of every YAML recipe shipped in the package."""
    return {p.stem: p for p in sorted(RECIPE_DIR.glob("*.yaml"))}


def describe(hint) -> str:
    """'an integer or 'auto'' for LayerCount, and so on: for error messages."""
    if typing.get_origin(hint) is typing.Union:
        return " or ".join(describe(member) for member in typing.get_args(hint))
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(v) for v in typing.get_args(hint))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _coerce(value, hint, where: str):
    """Check a YAML or flag value against the field's type (`where` names it: 'FILE: field' or '--flag');
    YAML '2e-4' (a string!) is caught here."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # e.g. LayerCount: an integer or "auto"
        for member in args:
            try:
                return _coerce(value, member, where)
            except UserError:
                continue
        raise UserError(f"{where} must be {describe(hint)}, got {value!r}.")
    if origin is Literal:
        if value not in args:
            raise UserError(f"{where} must be one of {list(args)}, got {value!r}.")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{where} must be a list of strings, got {value!r}.")
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}.")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where} must be an integer, got {value!r}.")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(
                f"{where} must be a number, got {value!r} (write YAML floats with a dot, e.g. 2.0e-4)."
            )
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"{where} must be a string, got {value!r}.")
        return value
    return value


def load_recipe(name_or_path: str, overrides: Optional[dict] = None) -> Recipe:
    """A built-in recipe by name, or a YAML file by path; `overrides` (e.g. CLI flags) win."""
    recipes = builtin_recipes()
    path = Path(name_or_path)
    if name_or_path in recipes:
        path = recipes[name_or_path]
    elif path.suffix in (".yaml", ".yml") and not path.is_file():
        raise UserError(f"--recipe {name_or_path}: no such file; pass an existing .yaml file or a built-in recipe "
                        f"name ({', '.join(recipes)}).")
    elif not (path.suffix in (".yaml", ".yml") and path.is_file()):
        raise UserError(
            f"unknown recipe {name_or_path!r}; choose one of: {', '.join(recipes)} (or pass a .yaml file)."
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc}).") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping of field: value.")
    hints = field_types()
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise UserError(f"{path}: unknown recipe field(s) {unknown}; see `reviewgpt train --help` for the fields.")
    values = {}
    for key, value in data.items():
        values[key] = _checked(key, _coerce(value, hints[key], f"{path}: {key}"), f"{path}: {key}")
    values.setdefault("name", path.stem)
    for key, value in (overrides or {}).items():
        if value is not None:  # a flag names itself, so a bad value is not blamed on the YAML file
            values[key] = _checked(key, _coerce(value, hints[key], flag_name(key)), flag_name(key))
    try:
        return Recipe(**values)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}.") from None


def _checked(name: str, value, where: str):
    problem = field_problem(name, value)
    if problem:
        raise UserError(f"{where} {problem}.")
    return value


def save_recipe(recipe: Recipe, path) -> None:
    Path(path).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False), encoding="utf-8")
