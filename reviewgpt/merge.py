"""Merge a LoRA adapter into its base model loaded in 16-bit.

The reference recipe lost a run trying to merge into the 4-bit model: bitsandbytes' 4-bit
weights cannot absorb the LoRA delta without dequantizing, and re-quantizing afterwards changes
the model. So the base is always loaded in 16 (or 32) bit here; a quantized base is refused
with that explanation.

Which 16-bit weights the delta goes into (`base_weights`):
- `16bit`: the base checkpoint's own weights (W + BA);
- `nf4`: the weights the adapter was trained against in QLoRA: each linear weight the 4-bit load
  quantizes is NF4-quantized and dequantized exactly as bitsandbytes did during training
  (blocks of 64, double quant), then W' + BA. The merged model then computes what the adapter on
  its 4-bit base computed, in plain 16-bit (docs/quality.md measures both);
- `auto` (default): `nf4` for a run trained in 4-bit, else `16bit`.

The merged model is written into a hidden folder beside --output and renamed into place when whole,
so a merge killed at any point leaves no folder that looks merged. Its reviewgpt.json records the
adapter's digest: merging the same adapter the same way again says so and writes nothing, and an
--output holding anything but a merged model of reviewgpt's is refused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Optional

from reviewgpt import run
from reviewgpt.errors import UserError
from reviewgpt.files import refuse_output_is_input, remove_stale_temporaries, temporary_name

log = logging.getLogger(__name__)

QUANTIZED_MERGE = (
    "a 4-bit (or 8-bit) quantized model cannot be merged with its adapter: merge into the 16-bit base "
    "(the default here) and quantize the merged model afterwards if you need to"
)


def read_adapter_recipe(adapter_dir: Path) -> dict:
    return run.read_recipe(adapter_dir)


def base_of(adapter_dir: Path, base: Optional[str]) -> str:
    adapter = run.adapter_base(adapter_dir)  # also checks that this is a run folder
    return base or adapter


BASE_WEIGHTS = ("auto", "16bit", "nf4")


def nf4_round_trip(model) -> int:
    """Replace each linear weight that a 4-bit load quantizes (all but the LM head) by its NF4
    quantize -> dequantize round trip, as bitsandbytes computes with it; returns how many."""
    import bitsandbytes.functional as bnb_functional
    import torch

    head = model.get_output_embeddings()
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            weight = module.weight.data
            device = "cuda" if torch.cuda.is_available() else weight.device
            original = weight.to(device=device, dtype=torch.bfloat16)  # transformers quantizes the bf16 load
            packed, state = bnb_functional.quantize_4bit(original, blocksize=64, compress_statistics=True,
                                                         quant_type="nf4")
            module.weight.data = bnb_functional.dequantize_4bit(packed, state).to(weight.device, weight.dtype)
            count += 1
    return count


def merge(adapter_dir, output_dir, base: Optional[str] = None, dtype: str = "bfloat16",
          base_weights: str = "auto") -> Path:
    import torch
    from peft import PeftModel

    from reviewgpt.models import FAMILIES, load_model, load_tokenizer

    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    if run.is_full_run(adapter_dir):
        raise UserError(f"{adapter_dir} is a full fine-tune (finetune full): its weights are the whole model and there "
                        f"is no adapter to merge, so nothing was copied; pass {adapter_dir} itself as --model to "
                        "review, eval or judge.")
    base_path = base_of(adapter_dir, base)
    if not Path(base_path).is_dir():
        raise UserError(f"base model {base_path!r} is not a local directory; pass --base DIR.")
    refuse_output_is_input(output_dir, {"the adapter folder": adapter_dir, "the base model": base_path})
    refuse_foreign_output(output_dir)
    base_config = json.loads((Path(base_path) / "config.json").read_text())
    if "quantization_config" in base_config:
        raise UserError(f"{base_path} is a quantized checkpoint; {QUANTIZED_MERGE}.")
    recipe = read_adapter_recipe(adapter_dir)
    family = recipe.get("family") or base_config.get("model_type", "llama")
    if base_weights not in BASE_WEIGHTS:
        raise UserError(f"--base-weights must be one of {', '.join(BASE_WEIGHTS)}, got {base_weights!r}.")
    if base_weights == "auto":
        base_weights = "nf4" if run.trained_on_4bit(recipe) else "16bit"
    metadata = {
        "base": str(base_path),
        "adapter": str(adapter_dir),
        "adapter_digest": run.adapter_digest(adapter_dir),
        "family": family,
        "template": recipe.get("template", run.DEFAULT_TEMPLATE),
        "recipe": recipe.get("name"),
        "dtype": dtype,
        "base_weights": base_weights,
        "max_seq_length": recipe.get("max_seq_length"),
        "review_max_input_tokens": recipe.get("review_max_input_tokens"),
        "max_new_tokens": recipe.get("max_new_tokens"),
        "generation": recipe.get("generation"),
    }
    if already_merged(output_dir, metadata):
        log.info("%s is already this merge (%s, %s, %s base weights); nothing to do", output_dir,
                 adapter_dir, dtype, base_weights)
        return output_dir
    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    log.info("loading %s in %s", base_path, dtype)
    model, _, _ = load_model(base_path, family if family in FAMILIES else None, dtype=torch_dtype, attention=None,
                             what="base model", fix="pass --base DIR")
    if base_weights == "nf4":
        try:
            import bitsandbytes  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - a broken install fails in many ways
            raise UserError(f"--base-weights nf4 needs bitsandbytes ({exc}); install it or pass --base-weights "
                            "16bit.") from None
        try:
            count = nf4_round_trip(model)
        except Exception as exc:  # noqa: BLE001 - bitsandbytes < 0.44 has no CPU 4-bit kernels, among others
            raise UserError(f"--base-weights nf4: bitsandbytes could not quantize here ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); run the merge on a GPU or pass "
                            "--base-weights 16bit.") from None
        log.info("NF4 round trip of %d linear weights (the base the adapter was trained on)", count)
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    merged = model.merge_and_unload()
    # What a killed merge into this --output left beside it (reviewgpt.files temporaries).
    remove_stale_temporaries(output_dir.parent, (output_dir.name, output_dir.name + "-old"))
    staging = temporary_name(output_dir)
    merged.save_pretrained(str(staging), safe_serialization=True)
    tokenizer_src = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else Path(base_path)
    load_tokenizer(str(tokenizer_src), family if family in FAMILIES else "llama").save_pretrained(str(staging))
    run.write_merge_metadata(staging, metadata)
    replace_folder(staging, output_dir)
    return output_dir


def refuse_foreign_output(output_dir: Path) -> None:
    """--output must be absent, empty, or a merged model of reviewgpt's (which a new merge replaces)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output {output_dir} is a file; pass a folder for the merged model.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not run.read_merge_metadata(output_dir):
        first = sorted(output_dir.iterdir())[0]
        raise UserError(f"--output {output_dir} holds {first.name} and is not a merged model of reviewgpt's; pass an "
                        "empty or new folder.")


def already_merged(output_dir: Path, metadata: dict) -> bool:
    """The folder is a whole merge of the same adapter into the same base, the same way."""
    done = run.read_merge_metadata(output_dir)
    keys = ("base", "adapter_digest", "dtype", "base_weights")
    return bool(done) and metadata["adapter_digest"] is not None and all(done.get(k) == metadata[k] for k in keys)


def replace_folder(staging: Path, output_dir: Path) -> None:
    """Put the whole `staging` folder where `output_dir` is: renames, so no reader sees half of it."""
    if output_dir.exists():
        old = temporary_name(output_dir.with_name(output_dir.name + "-old"))
        os.replace(output_dir, old)
        os.replace(staging, output_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, output_dir)
