"""Recipes: one frozen dataclass, filled from a commented YAML per model, overridden by flags.

The YAML files in `reviewgpt/recipes/` hold hyper-parameters only; model facts (LoRA targets,
template quirks, the transformers 4.38.2 Gemma fixes) live in `reviewgpt.models`. The CLI's
`train` flags are generated from `Recipe`'s fields, so there is one source of truth.

A package because a recipe is several typed blocks read by different layers; `Recipe` and its
YAML, what every caller wants, are the package itself (`from reviewgpt.recipe import load_recipe`),
and the blocks it nests sit beside it:

    speed_options.py       `Recipe.speed`: the speed and memory options (train.speed applies them,
                           train.memory predicts with them, bench varies them, OOM recovery reads them)
    generation_options.py  `Recipe.generation`: review's decoding defaults (eval reads them)
    fields.py              the typed, range-checked field machinery all three are built from

The blocks import nothing from reviewgpt but fields (and fields nothing but errors), so eval can read
the decoding defaults and train the speed options without this module's YAML loading.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Tuple

import yaml

from reviewgpt import run
from reviewgpt.data.prompt import TEMPLATES
from reviewgpt.errors import UserError
from reviewgpt.recipe.fields import (
    AT_LEAST_0,
    AT_LEAST_1,
    FRACTION,
    POSITIVE,
    Range,
    coerce,
    range_problem,
)
from reviewgpt.recipe.fields import help_field as _help
from reviewgpt.recipe.generation_options import GENERATION_FIELDS, GenerationOptions
from reviewgpt.recipe.speed_options import OPTIONS as SPEED_FIELDS
from reviewgpt.recipe.speed_options import SpeedOptions

RECIPE_DIR = Path(__file__).parent.parent / "recipes"  # reviewgpt/recipes/*.yaml, package data


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
    review_rating: bool = _help("end each training review with a 'Rating: N/10' line from its record's 'rating' "
                                "(1-10; records without one get no line)", default=False)
    finetune: Literal["qlora", "lora", "full"] = _help(
        "what trains: qlora = LoRA on a 4-bit NF4 base (needs a CUDA GPU), lora = LoRA on the 16-bit base, "
        "full = every weight (fp32 master weights, bf16 compute)", default="qlora")
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
    eval_steps: int = _help("evaluate every N steps when --eval is on (the run keeps the best of those "
                            "checkpoints as its final output)", AT_LEAST_1, default=50)
    early_stopping_patience: Optional[int] = _help(
        "with --eval: stop after N evaluations in a row without a lower held-out loss (default: never)",
        AT_LEAST_1, default=None)
    seed: int = _help("random seed (data split and training)", Range(0, 2**32 - 1), default=42)
    ddp_timeout: int = _help("torch.distributed timeout in seconds (reference: 180000000)", AT_LEAST_1,
                              default=180000000)
    review_max_input_tokens: Optional[int] = _help(
        "prompt budget at generation; the paper is trimmed to fit (default: max_seq_length - max_new_tokens, "
        "7168 for an 8192 recipe, as the reference)", AT_LEAST_1, default=None)
    max_new_tokens: int = _help("longest generated review", AT_LEAST_1, default=run.DEFAULT_MAX_NEW_TOKENS)
    # Speed and memory (docs/performance.md): one frozen dataclass, flags and flat YAML keys as before.
    speed: SpeedOptions = field(default_factory=SpeedOptions, metadata={
        "help": "speed and memory options (reviewgpt.recipe.speed_options; flags --chunked-loss, ...)"})
    # review's decoding defaults (reviewgpt.recipe.generation_options): YAML `generation:`, saved with the run
    generation: GenerationOptions = field(default_factory=GenerationOptions, metadata={
        "help": "review's decoding defaults (reviewgpt.recipe.generation_options; `review` flags override them)"})
    memory_check: bool = _help("refuse to start when `reviewgpt plan` predicts the GPU is too small",
                               default=True)
    oom_recovery: bool = _help("on CUDA out-of-memory: halve the micro-batch, double grad accumulation, "
                               "resume from the last checkpoint", default=True)
    report_to: Tuple[str, ...] = _help("where the Trainer also logs: none (offline), tensorboard (OUTPUT/runs), "
                                       "wandb, mlflow, ...", default=("none",))

    def __post_init__(self):
        if isinstance(self.speed, dict):  # Recipe(speed={...}) as YAML gives it
            object.__setattr__(self, "speed", SpeedOptions(**self.speed))
        if isinstance(self.generation, dict):
            object.__setattr__(self, "generation", GenerationOptions(**self.generation))
        for f in dataclasses.fields(self):
            problem = None if f.name in ("speed", "generation") else field_problem(f.name, getattr(self, f.name))
            if problem:
                raise ValueError(f"{f.name} {problem}")

    @property
    def quantize(self) -> bool:
        """The base is loaded in 4-bit NF4 (finetune qlora)."""
        return self.finetune == "qlora"

    @property
    def lora(self) -> bool:
        """An adapter is trained (qlora, lora); `full` trains the model's own weights."""
        return self.finetune != "full"

    @property
    def prompt_budget(self) -> int:
        """Prompt tokens at generation: review_max_input_tokens, else what training left for the paper."""
        return self.review_max_input_tokens or max(self.max_seq_length - self.max_new_tokens, 1)

    @property
    def effective_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    def replace(self, **changes) -> Recipe:
        """A copy with `changes` to the recipe's own fields (`with_speed` changes its speed options)."""
        try:
            return dataclasses.replace(self, **changes)
        except ValueError as exc:
            raise UserError(f"recipe {self.name!r}: {exc}.") from None

    def with_speed(self, **changes) -> Recipe:
        """A copy whose speed options have `changes` (`recipe.with_speed(lean_mlp=True)`)."""
        try:
            return dataclasses.replace(self, speed=self.speed.replace(**changes))
        except ValueError as exc:
            raise UserError(f"recipe {self.name!r}: {exc}.") from None

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        for name in ("lora_target_modules", "report_to"):  # YAML lists, not Python tuples
            if data[name] is not None:
                data[name] = list(data[name])
        return data


def field_types() -> dict:
    """Type of every recipe field, the speed options' too (by their flat names)."""
    return {**typing.get_type_hints(Recipe), **typing.get_type_hints(SpeedOptions)}


def flat_fields() -> list:
    """Recipe's fields in order, `speed` replaced by its options in place: the `train` flags and
    YAML keys, as they were before the options moved into one dataclass."""
    out = []
    for f in dataclasses.fields(Recipe):
        if f.name != "generation":  # set in the YAML; `review` has its own flags for it
            out.extend(dataclasses.fields(SpeedOptions) if f.name == "speed" else [f])
    return out


_CHOICES = {"template": tuple(TEMPLATES)}
# transformers 4.38.2's logging integrations (`report_to`), plus "none".
REPORT_TO = ("none", "tensorboard", "wandb", "mlflow", "comet_ml", "clearml", "neptune", "azure_ml", "dvclive",
             "codecarbon", "flyte", "dagshub")


def field_problem(name: str, value) -> Optional[str]:
    """What is wrong with `value` for field `name` ("must be >= 1, got 0"), or None."""
    f = next(f for f in flat_fields() if f.name == name)
    if name == "report_to":
        unknown = [v for v in value if v not in REPORT_TO]
        if unknown or not value or ("none" in value and len(value) > 1):
            return f"must be none or some of {list(REPORT_TO[1:])}, got {','.join(value)!r}"
    return range_problem(f, field_types()[name], value, _CHOICES.get(name))


def flag_name(field_name: str) -> str:
    """The `train` flag of a recipe field: learning_rate -> --learning-rate."""
    return "--" + field_name.replace("_", "-")


def builtin_recipes() -> dict:
    """name -> path of every YAML recipe shipped in the package."""
    return {p.stem: p for p in sorted(RECIPE_DIR.glob("*.yaml"))}


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
    overrides = dict(overrides or {})
    generation_overrides = overrides.pop("generation", None) or {}  # the library's way to set the block
    if not isinstance(generation_overrides, dict):
        raise UserError("the generation override must be a mapping of option: value (e.g. repetition_penalty: 1.2).")
    unknown = sorted(set(overrides) - set(hints))
    unknown += sorted(f"generation.{k}" for k in set(generation_overrides) - set(GENERATION_FIELDS))
    if unknown:
        raise UserError(f"unknown recipe field(s) {unknown} in the overrides; see `reviewgpt train --help` for the "
                        "fields.")
    nested = data.pop("speed", None) or {}  # the speed options under `speed:` (as run folders write them)
    if not isinstance(nested, dict):
        raise UserError(f"{path}: speed must be a mapping of option: value (e.g. chunked_loss: true).")
    generation = data.pop("generation", None) or {}
    if not isinstance(generation, dict):
        raise UserError(f"{path}: generation must be a mapping of option: value (e.g. repetition_penalty: 1.2).")
    unknown = sorted(set(data) - set(hints)) + sorted(f"speed.{k}" for k in set(nested) - set(SPEED_FIELDS))
    unknown += sorted(f"generation.{k}" for k in set(generation) - set(GENERATION_FIELDS))
    if unknown:
        raise UserError(f"{path}: unknown recipe field(s) {unknown}; see `reviewgpt train --help` for the fields.")
    values = {}
    for key, value in [*data.items(), *nested.items()]:  # flat speed keys (older recipes) load the same
        values[key] = _checked(key, coerce(value, hints[key], f"{path}: {key}"), f"{path}: {key}")
    values.setdefault("name", path.stem)
    for key, value in overrides.items():
        if value is not None:  # a flag names itself, so a bad value is not blamed on the YAML file
            values[key] = _checked(key, coerce(value, hints[key], flag_name(key)), flag_name(key))
    speed = {k: values.pop(k) for k in list(values) if k in SPEED_FIELDS}
    generation_hints = typing.get_type_hints(GenerationOptions)
    generation = {k: coerce(v, generation_hints[k], f"{path}: generation.{k}") for k, v in generation.items()}
    try:
        generation = GenerationOptions(**generation)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}.") from None
    given = {k: coerce(v, generation_hints[k], f"generation.{k}") for k, v in generation_overrides.items()
             if v is not None}
    try:
        generation = dataclasses.replace(generation, **given)
    except ValueError as exc:  # an override names itself, as a flag does: not blamed on the YAML file
        raise UserError(f"{exc}.") from None
    try:
        return Recipe(**values, speed=SpeedOptions(**speed), generation=generation)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}.") from None


def _checked(name: str, value, where: str):
    problem = field_problem(name, value)
    if problem:
        raise UserError(f"{where} {problem}.")
    return value


def save_recipe(recipe: Recipe, path) -> None:
    Path(path).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False), encoding="utf-8")
