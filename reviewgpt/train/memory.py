"""Predict a QLoRA training step's peak GPU memory before loading anything: the architectures,
the calibration and the model of memory that `reviewgpt plan` (reviewgpt.train.plan), `train`'s
memory check, OOM recovery and `reviewgpt doctor` all ask.

The prediction adds up what is known exactly (4-bit weights, bf16/fp32 embedding, LoRA weights
and gradients, one checkpointed hidden state per layer) and what was measured (the working set of
one layer's recompute + backward, the reference loss's fp32 logits), per token, with coefficients
calibrated on the GPU device (CALIBRATION, docs/performance.md). It answers for a `SpeedOptions`
(the recipe's, or every option off: the reference path) whose kept layers are a number: `auto` is the
planner's to choose (reviewgpt.train.plan), and is refused here. bitsandbytes' paged optimizer states
live in CUDA unified memory, outside PyTorch's allocator, and are not counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from reviewgpt import torch_support
from reviewgpt.errors import UserError
from reviewgpt.models import FAMILIES
from reviewgpt.recipe.speed_options import TRITON_OPTIONS, SpeedOptions

GIB = 1 << 30


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    max_positions: int = 8192
    rope_theta: float = 10000.0

    @property
    def linear_params(self) -> int:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        per_layer = 2 * self.hidden * q + 2 * self.hidden * kv + 3 * self.hidden * self.intermediate
        return per_layer * self.layers

    def module_shapes(self) -> dict:
        """(in, out) of each linear module name, as LoRA sees it."""
        q, kv, h, i = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


# The real architectures (transformers configs of the hub models).
ARCHITECTURES = {
    "gemma-7b": Architecture("gemma-7b", "gemma", 256000, 3072, 24576, 28, 16, 16, 256, tied=True),
    "gemma-2b": Architecture("gemma-2b", "gemma", 256000, 2048, 16384, 18, 8, 1, 256, tied=True),
    "mistral-7b": Architecture("mistral-7b", "mistral", 32000, 4096, 14336, 32, 32, 8, 128, tied=False,
                               max_positions=32768, rope_theta=1e6),
    "llama-2-7b": Architecture("llama-2-7b", "llama", 32000, 4096, 11008, 32, 32, 32, 128, tied=False,
                               max_positions=4096),
}
FAMILY_DEFAULTS = {"gemma": "gemma-7b", "mistral": "mistral-7b", "llama": "llama-2-7b"}
HUB_IDS = {
    "google/gemma-7b-it": "gemma-7b", "google/gemma-7b": "gemma-7b",
    "google/gemma-2b-it": "gemma-2b", "google/gemma-2b": "gemma-2b",
    "mistralai/Mistral-7B-Instruct-v0.2": "mistral-7b", "mistralai/Mistral-7B-v0.1": "mistral-7b",
    "meta-llama/Llama-2-7b-hf": "llama-2-7b", "meta-llama/Llama-2-7b-chat-hf": "llama-2-7b",
}

# Bytes per token per hidden / intermediate unit for one layer's recompute + backward, the
# reference loss's bytes per logit, and fixed overhead; fitted on the device (docs/performance.md).
CALIBRATION = {
    "work_per_hidden": 30.0,
    "work_per_intermediate": 12.0,
    "reference_bytes_per_logit": 12.0,
    "overhead_gib": 0.5,
    # one decoder layer's activations kept for backward (checkpoint_skip_layers), bytes per token
    "kept_per_hidden": 19.0,
    "kept_per_intermediate": 7.3,
    # lean_mlp (reviewgpt.train.speed.mlp) keeps 3 instead of 6 sequence x intermediate tensors at the MLP's
    # backward: counted, that saves 6 of the 12 bytes; measured (H200, gemma-7b 32K/64K) it
    # saves 3.3 (2.4-2.6 GiB at 32K, not the 4.5 counted), so 8.7. In a kept layer (not measured) the
    # counted 2-byte saving is scaled alike: 7.3 - 1.1.
    "lean_work_per_intermediate": 8.7,
    "lean_kept_per_intermediate": 6.2,
    # The Triton kernels (reviewgpt.train.speed.kernels) in a kept layer, measured (H200, performance.md "Speed III":
    # gemma-7b 8K, 28 layers kept, each kernel off in turn; mistral-7b 12K, 32 kept): triton_mlp keeps no
    # act(gate): 2 bytes less per intermediate unit (10.5 GiB on both); triton_rmsnorm keeps bf16 x and a
    # per-row rstd instead of Gemma's fp32 copies: 4 bytes less per hidden unit (2.63 GiB); Mistral/Llama's
    # norms already ran torch's fused kernel (fused_rmsnorm): no change there. In the recompute working
    # set triton_mlp counts as lean_mlp, and Gemma's Triton norm holds ~6 bytes per hidden unit less
    # (gemma-7b 0 kept at 8K / 32K offloaded / 64K offloaded: 5.3-7.3).
    "triton_mlp_kept_saving": 2.0,
    "triton_rmsnorm_kept_saving": 4.0,
    "triton_rmsnorm_work_saving": 6.0,
    # Reserved = allocated x slope + slack with the chunked loss (fitted on the 14 rows of
    # docs/performance.md's calls 4-5 and the 32K/64K rows: within -6%..+7%); full fp32 logits (the reference
    # path) fragment more: x 1.22 (1.21-1.30 measured).
    "reserved_slope": 1.05,
    "reserved_slack_gib": 1.5,
    "reserved_over_allocated": 1.22,
    "cuda_context_gib": 0.6,
    "calibrated_on": "NVIDIA H100 80GB HBM3, bench/device_grid.sh (docs/performance.md): gemma-7b 8K/12K, "
                     "mistral-7b 12K b1/b3, reference and reviewgpt paths; kept layers fitted on H200 "
                     "(bench/device_speed.sh); 30 later device rows on H100 and H200 all within -3.4%..+5.1%",
}


def architecture_from_config(config: dict, name: str = "custom") -> Architecture:
    family = {"gemma": "gemma", "mistral": "mistral", "llama": "llama"}.get(config.get("model_type"), "llama")
    heads = config["num_attention_heads"]
    return Architecture(
        name=name, family=family, vocab=config["vocab_size"], hidden=config["hidden_size"],
        intermediate=config["intermediate_size"], layers=config["num_hidden_layers"], heads=heads,
        kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        tied=bool(config.get("tie_word_embeddings", family == "gemma")),
        max_positions=config.get("max_position_embeddings", 8192),
        rope_theta=config.get("rope_theta", 10000.0),
    )


def architecture_of(model: Optional[str]) -> Architecture:
    """From a local model directory's config.json, a known hub id, or an ARCHITECTURES name."""
    if model and (Path(model) / "config.json").is_file():
        config = json.loads((Path(model) / "config.json").read_text())
        return architecture_from_config(config, Path(model).name)
    if model in HUB_IDS:
        return ARCHITECTURES[HUB_IDS[model]]
    if model in ARCHITECTURES:
        return ARCHITECTURES[model]
    raise UserError(f"no architecture known for model {model!r}: pass a local model directory (with "
                    f"config.json) or one of {', '.join(sorted(HUB_IDS))}.")


def architecture_or_family_default(model: Optional[str], family: str) -> Architecture:
    """`architecture_of(model)`, or the family's 7B architecture when the model is not known (a rough
    answer for `doctor`, which must say something before the weights are downloaded)."""
    try:
        return architecture_of(model)
    except UserError:
        return ARCHITECTURES[FAMILY_DEFAULTS[family]]


def lora_params(arch: Architecture, r: int, targets) -> int:
    shapes = arch.module_shapes()
    return sum(r * sum(shapes[t]) for t in targets if t in shapes) * arch.layers


def _lora_beyond_attention(arch: Architecture, targets, r: int, dropout: float, act: int) -> int:
    """Bytes per token a kept layer holds for LoRA on modules other than q, k, v, o (the calibration's
    recipes adapted those four, so the fitted coefficients hold theirs): each keeps its dropped-out
    input (activation + a bool mask) and its r-wide down-projection for backward. Measured on
    SmolLM2-135M with all seven adapted (H200, 8 x 8192, 30 kept): 55.81 GiB, predicted -4.9% with this
    term, -33% without."""
    shapes = arch.module_shapes()
    beyond = [t for t in targets if t in shapes and t not in ("q_proj", "k_proj", "v_proj", "o_proj")]
    return sum(shapes[t][0] * ((act + 1) if dropout else 0) + 2 * r for t in beyond)


def _gemma_mask_side(arch: Architecture, seq: int) -> int:
    side = arch.max_positions
    while side < seq:  # 4.38.2 doubles its causal-mask buffer when a sequence is longer
        side *= 2
    return side


def predict(arch: Architecture, seq: int, batch: int, *, speed: Optional[SpeedOptions] = None, lora_r: int = 64,
            lora_targets=None, quantize: bool = True, gradient_checkpointing: bool = True, paged_optimizer: bool = True,
            labelled_fraction: float = 1.0, lora_dropout: float = 0.1, calibration: Optional[dict] = None,
            full: bool = False, eight_bit_optimizer: bool = False) -> dict:
    """Predicted peak allocated bytes of one training step, with its parts (all in GiB).

    `speed`: the options in force (None: every option off, the reference path); its kept layers must be
    a number. `full`: every weight trains (finetune full): fp32 master weights and gradients, the
    optimizer's two states per weight (4 bytes each, 1 for an 8-bit optimizer), autocast's bf16 copy of
    each weight, an fp32 residual stream; no LoRA, no frozen weights to cast."""
    cal = {**CALIBRATION, **(calibration or {})}
    opts = speed or SpeedOptions.off()
    kept = min(opts.kept_layers, arch.layers) if gradient_checkpointing else 0
    offload = opts.checkpoint_offload and gradient_checkpointing
    lean = opts.lean_mlp or opts.triton_mlp  # in the recompute working set triton_mlp is lean_mlp
    per_intermediate = cal["lean_work_per_intermediate"] if lean else cal["work_per_intermediate"]
    if opts.triton_mlp:  # in a kept layer it was measured on its own
        kept_per_intermediate = cal["kept_per_intermediate"] - cal["triton_mlp_kept_saving"]
    elif opts.lean_mlp:
        kept_per_intermediate = cal["lean_kept_per_intermediate"]
    else:
        kept_per_intermediate = cal["kept_per_intermediate"]
    kept_per_hidden, work_per_hidden = cal["kept_per_hidden"], cal["work_per_hidden"]
    if opts.triton_rmsnorm and arch.family == "gemma":
        kept_per_hidden -= cal["triton_rmsnorm_kept_saving"]
        work_per_hidden -= cal["triton_rmsnorm_work_saving"]
    targets = lora_targets or FAMILIES[arch.family].lora_targets
    tokens = batch * seq
    act = 2 if opts.bf16_frozen_weights else 4  # residual stream / frozen float weights
    if full:
        act = 4
    parts = {
        "weights": arch.linear_params * (0.5 + 1 / 64 + 4 / (64 * 256) if quantize else (4 if full else 2)),
        "embedding": arch.vocab * arch.hidden * act * (1 if arch.tied else 2),
        "lora": 0 if full else lora_params(arch, lora_r, targets) * (8 if paged_optimizer else 16),
        "checkpoints": (arch.layers - kept) * tokens * arch.hidden * act if gradient_checkpointing else 0,
        "layer_work": tokens * (work_per_hidden * arch.hidden * act / 2 + per_intermediate * arch.intermediate),
    }
    host = 0
    if offload and kept < arch.layers:  # the inputs wait on the host; the one being recomputed comes back
        host = parts["checkpoints"]
        parts["checkpoints"] = tokens * arch.hidden * act
    if full:
        params = arch.linear_params + arch.vocab * arch.hidden * (1 if arch.tied else 2)
        parts["gradients"] = params * 4
        parts["optimizer"] = params * (2 if eight_bit_optimizer else 8)
        parts["autocast_copies"] = params * 2
    if not gradient_checkpointing:
        parts["layer_work"] *= arch.layers
    if kept:
        parts["kept_layers"] = kept * tokens * (kept_per_hidden * arch.hidden * act / 2
                                                + kept_per_intermediate * arch.intermediate
                                                + _lora_beyond_attention(arch, targets, lora_r, lora_dropout, act))
    if opts.checkpoint_keep_attention:
        parts["checkpoints"] += (arch.layers - kept) * tokens * arch.heads * (arch.head_dim * 2 + 4)
    if arch.family == "gemma" and not opts.causal_sdpa:
        side = _gemma_mask_side(arch, seq)
        parts["attention_mask"] = 2 * batch * side * side * act
    labelled = tokens * labelled_fraction
    if opts.chunked_loss:
        rows = min(8192, max(128, GIB // (4 * arch.vocab)), labelled)  # one chunk of fp32 logits at most
        loss = 2 * labelled * arch.hidden * act + rows * arch.vocab * 6
        if act == 4:  # fp32 frozen LM head: a bf16 copy of it shows in the peak (measured, H100)
            parts["lm_head_bf16_copy"] = arch.vocab * arch.hidden * 2
    else:
        loss = tokens * arch.vocab * cal["reference_bytes_per_logit"]
    parts["loss_or_layer"] = max(loss, parts.pop("layer_work"))
    parts["overhead"] = cal["overhead_gib"] * GIB
    total = sum(parts.values()) / GIB
    if opts.chunked_loss:
        reserved = total * cal["reserved_slope"] + cal["reserved_slack_gib"]
    else:  # full fp32 logits: the allocator's cache fragments more
        reserved = total * cal["reserved_over_allocated"]
    return {"allocated_gib": round(total, 2), "reserved_gib": round(reserved, 2),
            "host_pinned_gib": round(host / GIB, 2),
            "parts_gib": {k: round(v / GIB, 2) for k, v in parts.items()}}


def predict_recipe(recipe, arch, seq, batch, reference=False, calibration=None) -> dict:
    """`predict` for a recipe's LoRA, optimizer and speed options (every option off with `reference`).
    The triton_* options count only where the installed triton can run them (else they stay off)."""
    speed = SpeedOptions.off() if reference else recipe.speed
    if torch_support.triton_problem():
        speed = speed.replace(**dict.fromkeys(TRITON_OPTIONS, False))
    return predict(arch, seq, batch, speed=speed, lora_r=recipe.lora_r, lora_targets=recipe.lora_target_modules,
                   quantize=recipe.quantize, gradient_checkpointing=recipe.gradient_checkpointing,
                   paged_optimizer="paged" in recipe.optim, lora_dropout=recipe.lora_dropout, calibration=calibration,
                   full=not recipe.lora, eight_bit_optimizer="8bit" in recipe.optim)
