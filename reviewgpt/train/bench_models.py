"""The models `reviewgpt bench` measures: weights of a real architecture (random, saved once as
bf16 safetensors: no hub) and the 4-bit base + peft kbit preparation + LoRA that SFTTrainer trains."""

from __future__ import annotations

import gc
import logging
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

from reviewgpt.train.memory import ARCHITECTURES, Architecture, architecture_of

log = logging.getLogger(__name__)


def free_memory() -> None:
    """Collect garbage and return the CUDA allocator's cached blocks: between bench rows."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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

    from reviewgpt.models.tiny import build_tokenizer

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
    free_memory()
    return directory


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


def model_for_bench(recipe, model_dir: Optional[str] = None, random_init: bool = False,
                    weights_dir: Optional[str] = None):
    """(model directory, architecture): the given directory, random weights of the recipe's
    architecture made once (no hub), or the recipe's model."""
    arch = ARCHITECTURES.get(recipe.model) or architecture_of(model_dir or recipe.model)
    if model_dir is None:
        if not random_init:
            model_dir = recipe.model
        else:
            base = weights_dir or tempfile.gettempdir()
            model_dir = str(random_weights(arch, Path(base) / f"reviewgpt-random-{arch.name}"))
    arch = architecture_of(model_dir) if Path(model_dir, "config.json").is_file() else arch
    return model_dir, arch
