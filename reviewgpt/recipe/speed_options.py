"""The recipe's speed and memory options: one frozen dataclass, `Recipe.speed`.

They travel typed from the recipe to every step that reads them: `reviewgpt.train.speed` applies them,
`reviewgpt.train.memory` / `reviewgpt plan` predict with them, `reviewgpt bench` varies them and OOM
recovery gives the kept layers up first. `checkpoint_skip_layers: auto` is turned into a number once,
at the start of a run (reviewgpt.train.plan.with_planned_layers); every later step reads that number
(`kept_layers`) and refuses an unresolved `auto`. Their `train` flags
(`--chunked-loss`, ...) and YAML keys keep the names they had as top-level recipe fields: a recipe
may write them flat (as before) or under `speed:`; both load the same.

Imports nothing from reviewgpt but the field machinery, so the recipe, the planner and train all read it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Union

from reviewgpt.recipe.fields import AT_LEAST_0, check_ranges, help_field

# A number of decoder layers, or "auto": as many as the planner says fit the GPU (reviewgpt.train.plan).
LayerCount = Union[int, Literal["auto"]]


@dataclass(frozen=True)
class SpeedOptions:
    chunked_loss: bool = help_field("loss over labelled positions only, in chunks: never T x vocab fp32 logits "
                               "(same loss and gradients)", default=True)
    bf16_frozen_weights: bool = help_field("keep frozen norms/embedding in bf16 after peft's fp32 upcast, so "
                                      "activations stay bf16 (with --bf16)", default=True)
    causal_sdpa: bool = help_field("Gemma/Llama + sdpa: is_causal instead of a 4-D mask when a batch has no padding "
                              "(flash kernel); Llama: batch-sized masks", default=True)
    sdpa_cudnn: bool = help_field("cuDNN fused attention first in SDPA's backend order (torch >= 2.5; "
                             "no-op before)", default=True)
    fused_lora: bool = help_field("LoRA up-projection, scaling and residual add in one GEMM (peft's math, fewer "
                             "passes over the activations)", default=True)
    fused_rmsnorm: bool = help_field("Mistral/Llama RMSNorm through torch's fused rms_norm kernel (torch >= 2.4; "
                                "no-op before)", default=True)
    checkpoint_keep_attention: bool = help_field("save attention outputs in gradient checkpointing instead of "
                                            "recomputing them (faster, more memory; torch >= 2.4)", default=False)
    checkpoint_skip_layers: LayerCount = help_field(
        "the last N decoder layers keep their activations instead of being recomputed (faster, more memory); "
        "auto = as many as fit the GPU's free memory at the run's longest sequence (`reviewgpt plan`)",
        AT_LEAST_0, default=0)
    checkpoint_offload: bool = help_field("gradient checkpointing keeps each layer's input in pinned host memory "
                                     "instead of on the GPU (less GPU memory for long sequences)", default=False)
    lean_mlp: bool = help_field("GeGLU/SwiGLU as one autograd step that keeps only gate and up and writes its "
                           "gradients over them: 3 fewer sequence x intermediate tensors in backward", default=False)
    triton_mlp: bool = help_field("GeGLU/SwiGLU as one Triton kernel each way, keeping only gate and up (lean_mlp's "
                             "memory, faster; CUDA + triton >= 3.0, off otherwise)", default=True)
    triton_rope: bool = help_field("rotary position embedding as one Triton kernel per tensor each way "
                              "(CUDA + triton >= 3.0, off otherwise)", default=True)
    triton_rmsnorm: bool = help_field("Gemma/Mistral/Llama RMSNorm as one Triton kernel each way, keeping the "
                                 "bf16 input instead of fp32 copies (CUDA + triton >= 3.0, off otherwise)",
                                 default=True)

    def __post_init__(self):
        check_ranges(self)

    @classmethod
    def off(cls) -> SpeedOptions:
        """Every option off: the seed recipe's path (bench's and the planner's reference)."""
        return cls(**{**dict.fromkeys(OPTIONS, False), "checkpoint_skip_layers": 0})

    def replace(self, **changes) -> SpeedOptions:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def kept_layers(self) -> int:
        """checkpoint_skip_layers as the number it is once a run has resolved `auto`
        (reviewgpt.train.plan.with_planned_layers, at the start of train and of each bench row)."""
        if self.checkpoint_skip_layers == "auto":
            raise ValueError("checkpoint_skip_layers is 'auto': the planner turns it into a number at the start of "
                             "a run (reviewgpt.train.plan.with_planned_layers); pass that number")
        return self.checkpoint_skip_layers


OPTIONS = tuple(f.name for f in dataclasses.fields(SpeedOptions))
TRITON_OPTIONS = ("triton_mlp", "triton_rope", "triton_rmsnorm")  # off where triton >= 3.0 cannot run them
