"""Model facts per family, QLoRA configs, and loading a base model and tokenizer.

Pinned-stack fixes applied here (REFERENCE.md section 2):
- Gemma on transformers 4.38.2 reads `hidden_act="gelu"` (exact GELU) but was trained with the
  tanh approximation: set `gelu_pytorch_tanh` (transformers 4.39 made the same change).
- Gemma needs `<bos>` first (the tokenizer adds it; our templates keep it) and right padding.
- Mistral's tokenizer has no pad token: use `unk` (not `eos`, which would mask the EOS label
  in collators that pad with -100 by id).
- 4-bit loading without CUDA fails in transformers with a misleading "requires Accelerate ...
  pip install bitsandbytes" message: check first and say what to do.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from reviewgpt import torch_support
from reviewgpt.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    name: str
    # Attention projections, as the baseline (BASELINE.md) measured; recipes may add the MLP.
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
    from transformers import BitsAndBytesConfig

    if family not in FAMILIES:
        raise UserError(f"unknown model family {family!r}; choose one of: {', '.join(FAMILIES)}.")
    bnb = None
    if quantize:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise UserError("4-bit QLoRA needs the bitsandbytes package: install the `gpu` extra, "
                            "or pass --no-quantize (quantize=False) for plain LoRA.")
        bnb = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    lora = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules or FAMILIES[family].lora_targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return bnb, lora


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
            "4-bit QLoRA needs a CUDA GPU and this machine has none; pass --no-quantize to train "
            "plain LoRA (16/32-bit) instead."
        )
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - import can fail in many ways (missing CUDA libs)
        raise UserError(
            f"4-bit QLoRA needs bitsandbytes, which does not import here ({exc}); "
            "install the `gpu` extra or run `reviewgpt doctor`."
        ) from None


def _flash_attn_imports() -> bool:
    try:
        import flash_attn  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or built for another torch/CUDA/ABI
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
    from transformers import AutoModelForCausalLM

    require_local_or_cached(path, "model", "--model")
    if quantize:
        check_quantization_possible()
    attention = resolve_attention(attn_implementation)
    config = load_config(path, family, attention)
    window = getattr(config, "sliding_window", None)
    if window and attention == "sdpa":
        log.warning("%s has a %d-token sliding window, which transformers 4.38.2's SDPA path ignores (it attends "
                    "to the whole context); --attn-implementation flash_attention_2 (or eager) honours it",
                    path, window)
    bnb, _ = qlora_config(family, quantize=quantize)
    dtype = torch.bfloat16 if bf16 else torch.float32
    kwargs = dict(config=config, torch_dtype=dtype)
    if bnb is not None:
        kwargs["quantization_config"] = bnb
        # One GPU per process (under accelerate/torchrun LOCAL_RANK picks it): never let a single
        # process spread over several GPUs.
        kwargs["device_map"] = device_map or {"": int(os.environ.get("LOCAL_RANK", "0"))}
    elif device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise UserError(f"could not load the model from {path!r} ({exc}); pass --model DIR.") from None
    except ImportError as exc:  # an attention kind this stack cannot run (flash-attn not installed, ...)
        raise UserError(f"could not load {path!r} with {attention} attention ({str(exc).splitlines()[0]}); "
                        f"pass --attn-implementation {attention_alternatives(attention)}.") from None
    model.config.use_cache = False  # incompatible with gradient checkpointing; generation turns it on
    return model
