"""The one model loader (`load_model`): base models for training, run folders, merged models,
judge and needle models all load here, with one set of family fixes and one pad policy.

Over 300 lines: the loader and the facts it applies (families, QLoRA config, attention choice,
tokenizer policy) are read together, and each part is used only by the loader and its callers.

A package: the loader is the package itself (`from reviewgpt.models import load_model`), and beside
it what both training and inference use without either importing the other:

    llama_mask.py  Llama's batch-sized causal mask (applied here at inference, by train.speed in training)
    tiny.py        `reviewgpt tiny-model`: tiny random Gemma/Mistral/Llama models and tokenizers, built
                   locally for the tests, the quickstart and bench's random weights

Imports nothing from train, eval, env or the CLI.

    load_model          any causal LM folder or hub id -> (model, family, attention)
    load_base_model     the base for training (4-bit NF4 when asked, no KV cache)
    load_for_inference  a run folder (adapter on its base), a merged model or a plain model, eval mode
    load_prompt_tokenizer  what load_for_inference gives but the weights (`review --server`)
    load_tokenizer      the one pad policy

Pinned-stack fixes applied here:
- Gemma on transformers 4.38.2 reads `hidden_act="gelu"` (exact GELU) but was trained with the
  tanh approximation: set `gelu_pytorch_tanh` (transformers 4.39 made the same change).
- Gemma needs `<bos>` first (the tokenizer adds it; our templates keep it) and right padding.
- Mistral's tokenizer has no pad token: use `unk` (not `eos`, which would mask the EOS label
  in collators that pad with -100 by id); a tokenizer with neither pad nor unk pads with `eos`.
- 4-bit loading without CUDA fails in transformers with a misleading "requires Accelerate ...
  pip install bitsandbytes" message: check first and say what to do.
- Llama under SDPA gets a causal mask the size of the batch (reviewgpt.models.llama_mask) at inference.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from reviewgpt import run, torch_support
from reviewgpt.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    name: str
    # Attention projections, as the reference runs trained them; recipes may add the MLP.
    lora_targets: Tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    hidden_act: Optional[str] = None


FAMILIES = {
    "gemma": Family("gemma", hidden_act="gelu_pytorch_tanh"),
    "mistral": Family("mistral"),
    "llama": Family("llama"),
}


def qlora_config(
    family: str = "gemma",
    r: int = 64,
    alpha: int = 16,
    dropout: float = 0.1,
    target_modules: Optional[Tuple[str, ...]] = None,
    quantize: bool = True,
):
    """(BitsAndBytesConfig or None, LoraConfig) for the reference QLoRA: NF4, double quant,
    bf16 compute; LoRA r 64, alpha 16, dropout 0.1 on the family's projections."""
    import torch
    from peft import LoraConfig

    if family not in FAMILIES:
        raise UserError(f"unknown model family {family!r}; choose one of: {', '.join(FAMILIES)}.")
    bnb = _nf4_config(torch.bfloat16) if quantize else None
    lora = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules or FAMILIES[family].lora_targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return bnb, lora


def _bitsandbytes_installed() -> bool:
    try:
        importlib.metadata.version("bitsandbytes")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _nf4_config(compute_dtype):
    """4-bit NF4 with double quantization, built also where bitsandbytes is not installed.

    transformers 4.38.2 checks bitsandbytes' version when a 4-bit BitsAndBytesConfig is built, so
    `qlora_config("gemma")` failed on a laptop (the README's CPU environment). The config is only
    data until a model is loaded in 4-bit, and that load checks for a GPU and bitsandbytes first
    (`check_quantization_possible`): without bitsandbytes, build it and then switch 4-bit on."""
    from transformers import BitsAndBytesConfig

    kwargs = dict(bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute_dtype)
    if _bitsandbytes_installed():
        return BitsAndBytesConfig(load_in_4bit=True, **kwargs)
    config = BitsAndBytesConfig(**kwargs)
    config.load_in_4bit = True
    return config


def require_local_or_cached(name: str, what: str, flag: str) -> None:
    """Fail early and clearly when a hub id is given and the hub is not reachable."""
    if Path(name).is_dir():
        return
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        try:
            from huggingface_hub import snapshot_download

            snapshot_download(name, local_files_only=True)
            return
        except Exception:  # noqa: BLE001 - any failure means "not cached"
            raise UserError(
                f"{what} {name!r} is not a local directory and is not in the Hugging Face cache "
                f"(reviewgpt runs offline: HF_HUB_OFFLINE=1); pass {flag} DIR with a downloaded copy, "
                "or set HF_HUB_OFFLINE=0 to let it download."
            ) from None


class _DropMessage(logging.Filter):
    """Drops the records of one logger whose message starts with `prefix`; passes the rest."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


REPO_CARD_NOTICE = "Repo card metadata block was not found"


def silence_repo_card_notice() -> None:
    """Drop huggingface_hub's "Repo card metadata block was not found" (printed twice: by its own
    handler and by the root one). peft 0.9.0 rewrites the run folder's README.md model card on every
    adapter save, and huggingface_hub says this whenever that README has no YAML block (the user's
    own notes, say); peft then goes on with empty metadata, so there is nothing to fix. Only this
    message of that one logger is dropped; idempotent."""
    logger = logging.getLogger("huggingface_hub.repocard")
    if not any(isinstance(f, _DropMessage) for f in logger.filters):
        logger.addFilter(_DropMessage(REPO_CARD_NOTICE))


def model_positions(model) -> Optional[int]:
    """The positions a model was built for (max_position_embeddings), read from the config.json of a
    local folder or of a cached hub id without loading any weights; also takes a loaded config or
    model. None when that cannot be told here (the loader reports a missing model)."""
    import json

    if not isinstance(model, (str, Path)):
        config = getattr(model, "config", model)
        positions = getattr(config, "max_position_embeddings", None)
        return int(positions) if positions else None
    path = Path(model) / "config.json"
    if not path.is_file():
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(str(model), "config.json")
        except ValueError:  # not a hub id either (HFValidationError): the loader says so
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        positions = json.loads(path.read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return int(positions) if isinstance(positions, int) and positions > 0 else None


def load_tokenizer(path: str, family: str, padding_side: str = "right"):
    from transformers import AutoTokenizer

    require_local_or_cached(path, "tokenizer", "--tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load a tokenizer from {path!r} ({exc}); pass --tokenizer DIR.") from None
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token_id is None:
        if tokenizer.unk_token_id is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.pad_token = tokenizer.eos_token
    if family == "gemma" and tokenizer.bos_token_id is None:
        raise UserError(f"tokenizer {path!r} has no BOS token; Gemma needs <bos> first.")
    return tokenizer


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_quantization_possible() -> None:
    if not cuda_available():
        raise UserError(
            "4-bit QLoRA needs a CUDA GPU and this machine has none; pass --finetune lora to train LoRA on the "
            "16/32-bit base instead (review and eval: --no-4bit)."
        )
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - import can fail in many ways (missing CUDA libs)
        raise UserError(
            f"4-bit QLoRA needs bitsandbytes, which does not import here ({exc}); "
            "install the `gpu` extra or run `reviewgpt doctor`."
        ) from None


def _flash_attn_imports() -> bool:
    """flash-attn 2 imports. One that is installed but does not import (a wheel built for another
    torch/CUDA/C++ ABI: "undefined symbol") is said out loud: it would otherwise train silently
    slower and with more memory."""
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        import flash_attn  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure (ImportError, OSError from the .so)
        log.warning("flash-attn is installed but does not import (%s: %s); using sdpa attention instead. "
                    "`reviewgpt doctor` shows the fix (a wheel matching this torch, CUDA and C++ ABI).",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return False
    return True


def resolve_attention(requested: str, torch_version: Optional[str] = None) -> str:
    """The attention kind to load with. "auto": flash-attn 2 on a GPU where it imports, else SDPA.
    SDPA on a torch that transformers 4.38.2 refuses it for (< 2.1.1, e.g. the cu117 image's 1.13)
    becomes eager, said in one log line."""
    if requested == "auto":
        requested = "flash_attention_2" if cuda_available() and _flash_attn_imports() else "sdpa"
    if requested == "sdpa" and not torch_support.has("sdpa", torch_version):
        log.warning("torch %s has no SDPA for transformers 4.38.2 (needs torch >= %s): using eager attention",
                    torch_version or torch_support.installed_torch_version(), torch_support.FEATURES["sdpa"].since)
        return "eager"
    return requested


def attention_alternatives(failed: str, torch_version: Optional[str] = None) -> str:
    """The attention kinds to suggest when `failed` did not load ("sdpa or eager", or "eager")."""
    kinds = [k for k in ("sdpa", "eager") if k != failed and (k != "sdpa" or torch_support.has("sdpa", torch_version))]
    return " or ".join(kinds)


def load_config(path: str, family: str, attn_implementation: Optional[str] = None):
    from transformers import AutoConfig

    # transformers 4.38.2 ignores `from_pretrained(..., attn_implementation=X)` when a `config=` is
    # passed too (the model silently gets sdpa), so the choice goes into the config here.
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    config = AutoConfig.from_pretrained(path, **kwargs)
    fix = FAMILIES[family].hidden_act
    if fix and getattr(config, "hidden_act", None) != fix:
        log.info("setting hidden_act=%s (transformers 4.38.2 reads %r for %s)", fix, config.hidden_act, family)
        config.hidden_act = fix
    return config


def load_model(path: str, family: Optional[str] = None, *, quantize: bool = False, dtype=None,
               device: Optional[str] = None, attention: Optional[str] = "auto", device_map=None,
               what: str = "model", fix: str = "pass --model DIR"):
    """The one way reviewgpt loads a causal LM (train, review, eval, merge, judge, needle): the hub
    check, the family's fixes (Gemma's tanh GELU), the attention kind written into the config,
    4-bit NF4 when `quantize` (one GPU per process), every load failure as one UserError ending
    in `fix`. `family` None: read from the config (`family_of`). `attention` None: the config's
    own (merge). `device` moves a model that is not quantized. Returns (model, family, attention)."""
    import torch
    from transformers import AutoModelForCausalLM

    require_local_or_cached(path, what, "--model")
    if quantize:
        check_quantization_possible()
    attention = resolve_attention(attention) if attention else None
    try:
        family = family or family_of(load_config(path, "llama"))
        config = load_config(path, family, attention)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load the {what} from {path!r} ({exc}); {fix}.") from None
    kwargs = dict(config=config, torch_dtype=dtype or torch.float32)
    if quantize:
        kwargs["quantization_config"] = qlora_config(family, quantize=True)[0]
        # One GPU per process (under accelerate/torchrun LOCAL_RANK picks it): never let a single
        # process spread over several GPUs.
        kwargs["device_map"] = device_map or {"": int(os.environ.get("LOCAL_RANK", "0"))}
    elif device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load the {what} from {path!r} ({exc}); {fix}.") from None
    except ImportError as exc:  # an attention kind this stack cannot run (flash-attn not installed, ...)
        raise UserError(f"could not load {path!r} with {attention} attention ({str(exc).splitlines()[0]}); "
                        f"pass --attn-implementation {attention_alternatives(attention)}.") from None
    if device and not quantize:
        model.to(device)
    return model, family, attention


def load_base_model(
    path: str,
    family: str,
    quantize: bool,
    bf16: bool,
    attn_implementation: str = "auto",
    device_map=None,
):
    """The base model for training: 4-bit NF4 when `quantize`, else 16/32-bit."""
    import torch

    model, _, attention = load_model(path, family, quantize=quantize, device_map=device_map,
                                     dtype=torch.bfloat16 if bf16 else torch.float32, attention=attn_implementation)
    window = getattr(model.config, "sliding_window", None)
    if window and attention == "sdpa":
        log.warning("%s has a %d-token sliding window, which transformers 4.38.2's SDPA path ignores (it attends "
                    "to the whole context); --attn-implementation flash_attention_2 (or eager) honours it",
                    path, window)
    model.config.use_cache = False  # incompatible with gradient checkpointing; generation turns it on
    return model


@dataclass
class InferenceModel:
    """A model ready for evaluation or generation, with what its folder says about its training."""

    model: object
    tokenizer: object
    kind: str  # "run" (adapter on its base), "merged" or "base"
    family: str
    quantized: bool
    template: Optional[str] = None  # the training template, when the folder records it
    max_seq_length: Optional[int] = None  # the training length, when recorded
    metadata: Optional[dict] = None  # the run's recipe or the merge metadata


def family_of(config) -> str:
    model_type = getattr(config, "model_type", "")
    return model_type if model_type in FAMILIES else "llama"


def load_for_inference(model_dir, quantize: Optional[bool] = None, attn_implementation: str = "auto"
                       ) -> InferenceModel:
    """A `train` run folder (its adapter on its base), a `merge` output or a plain model folder,
    in eval mode on the GPU when there is one (bf16; fp32 on the CPU).

    `quantize` None follows the run: its base is loaded in 4-bit when it was trained in 4-bit and
    a GPU is here (on a CPU it is loaded in 16/32-bit and a warning says so); True asks for 4-bit.
    """
    import torch

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"--model {model_dir}: no such folder; pass a `reviewgpt train` run folder, a merged "
                        "model or a model folder.")
    cuda = cuda_available()
    is_run = run.is_run(model_dir)
    if not is_run and not (model_dir / "config.json").is_file():
        raise UserError(f"--model {model_dir}: no config.json or adapter_config.json; pass a `reviewgpt train` run "
                        "folder, a merged model or a model folder.")
    metadata = run.read_metadata(model_dir)
    base = str(model_dir)
    if is_run:
        base = run.adapter_base(model_dir)
        require_local_or_cached(base, "the adapter's base model", "`reviewgpt merge RUN --base DIR` and --model")
    trained_4bit = run.trained_on_4bit(metadata) and is_run
    if quantize is None:
        quantize = trained_4bit and cuda
        if trained_4bit and not cuda:
            log.warning("%s was trained on a 4-bit base; without a GPU it is evaluated on the 16/32-bit base",
                        model_dir)
    model, family, attention = load_model(base, metadata.get("family"), quantize=bool(quantize),
                                          dtype=torch.bfloat16 if cuda else torch.float32,
                                          attention=attn_implementation, device_map={"": 0} if quantize else None)
    if is_run:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(model_dir))
    if not quantize:
        model.to("cuda" if cuda else "cpu")
    model.eval()
    model.config.use_cache = True
    if attention == "sdpa" and family == "llama":
        from reviewgpt.models.llama_mask import patch_llama_causal_mask

        patch_llama_causal_mask(model)  # 4.38.2 builds a context x context mask per forward otherwise
    tokenizer = load_tokenizer(str(_tokenizer_folder(model_dir, base)), family)
    kind = "run" if is_run or run.is_full_run(model_dir) else ("merged" if metadata else "base")
    return InferenceModel(model=model, tokenizer=tokenizer, kind=kind,
                          family=family, quantized=bool(quantize), template=metadata.get("template"),
                          max_seq_length=metadata.get("max_seq_length"), metadata=metadata)


def _tokenizer_folder(model_dir: Path, base: str) -> Path:
    """A model folder's own tokenizer (a run or merge saves one), else its base's."""
    return model_dir if (model_dir / "tokenizer_config.json").is_file() else Path(base)


def load_prompt_tokenizer(model_dir=None, tokenizer_dir=None) -> InferenceModel:
    """What `load_for_inference` gives but the weights, for `review --server` (a server holds them): the
    same tokenizer (`tokenizer_dir`, else the folder's own, else its base's), metadata and template.
    `model` is the folder whose config.json holds the model's positions (`model_positions` reads it), or
    None when only a tokenizer folder without a config.json is given."""
    if model_dir is None and tokenizer_dir is None:
        raise ValueError("pass model_dir or tokenizer_dir")
    metadata, config_folder, base = {}, None, None
    if model_dir is not None:
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise UserError(f"--model {model_dir}: no such folder; pass a `reviewgpt train` run folder, a merged "
                            "model or a model folder (its tokenizer builds the prompts).")
        metadata = run.read_metadata(model_dir)
        base = run.adapter_base(model_dir) if run.is_run(model_dir) else str(model_dir)
        config_folder = base
    if tokenizer_dir is not None:
        tokenizer_dir = Path(tokenizer_dir)
        if not tokenizer_dir.is_dir():
            raise UserError(f"--tokenizer {tokenizer_dir}: no such folder; pass the folder of the served model's "
                            "tokenizer.")
        if config_folder is None and (tokenizer_dir / "config.json").is_file():
            config_folder = str(tokenizer_dir)
    else:
        tokenizer_dir = _tokenizer_folder(model_dir, base)
    family = metadata.get("family")
    if family not in FAMILIES:
        try:  # the pad policy and Gemma's BOS check follow the family
            family = family_of(load_config(config_folder, "llama")) if config_folder else "llama"
        except (OSError, ValueError):
            family = "llama"
    kind = "run" if model_dir is not None and run.is_run(model_dir) else ("merged" if metadata else "base")
    return InferenceModel(model=config_folder, tokenizer=load_tokenizer(str(tokenizer_dir), family), kind=kind,
                          family=family, quantized=False, template=metadata.get("template"),
                          max_seq_length=metadata.get("max_seq_length"), metadata=metadata)
