"""On the GPU machine (no network): SmolLM2-135M-Instruct from its GGUF, read with the machine's own
transformers 5.x + gguf, written as the Hugging Face folder the local build makes
(../shared/tools/smollm2/build.sh): its config and tokenizer files come from that build, and every
tensor is checked against the build's sums. transformers 5.x will not save a GGUF-loaded model, so
the weights are written with safetensors directly.
    python convert_gguf.py STASH OUT      (STASH: the .gguf, build/ files, sums.json)
"""
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

stash, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
model = AutoModelForCausalLM.from_pretrained(str(stash), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                             torch_dtype=torch.float32)
sums = json.loads((stash / "sums.json").read_text())
tensors = {}
for name, tensor in model.state_dict().items():
    if name not in sums:
        continue  # the tied lm_head: the build does not save it either
    tensors[name] = tensor.to(torch.bfloat16).contiguous()
    got = float(tensors[name].float().sum())
    assert abs(got - sums[name]) <= 1e-3 * max(1.0, abs(sums[name])), (name, got, sums[name])
assert set(tensors) == set(sums), set(sums) ^ set(tensors)
save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
for f in (stash / "build").iterdir():
    shutil.copy(f, out / f.name)
print(f"converted {len(tensors)} tensors, sums equal to the local build's")
