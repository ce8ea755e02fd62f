import pytest
import torch

import reviewgpt
from reviewgpt.errors import UserError
from reviewgpt.models import load_base_model, load_config, load_tokenizer
from tests.util import needs_sdpa


def test_qlora_config_is_the_reference_nf4_double_quant_bf16():
    bnb, lora = reviewgpt.qlora_config("gemma")
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (64, 16, 0.1)
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert lora.task_type == "CAUSAL_LM"


def test_qlora_config_without_quantization_and_custom_targets():
    bnb, lora = reviewgpt.qlora_config("mistral", r=8, target_modules=("q_proj",), quantize=False)
    assert bnb is None and lora.r == 8 and set(lora.target_modules) == {"q_proj"}
    with pytest.raises(UserError, match="unknown model family 'gpt2'"):
        reviewgpt.qlora_config("gpt2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_4bit_without_cuda_is_a_clear_error(tiny_gemma):
    with pytest.raises(UserError, match="4-bit QLoRA needs a CUDA GPU .* pass --finetune lora"):
        load_base_model(str(tiny_gemma), "gemma", quantize=True, bf16=False)


def test_gemma_config_gets_the_tanh_gelu(tiny_gemma, tmp_path):
    import json
    import shutil

    copy = tmp_path / "g"
    shutil.copytree(tiny_gemma, copy)
    config = json.loads((copy / "config.json").read_text())
    config["hidden_act"] = "gelu"  # what the hub's gemma config says
    (copy / "config.json").write_text(json.dumps(config))
    assert load_config(str(copy), "gemma").hidden_act == "gelu_pytorch_tanh"
    model = load_base_model(str(copy), "gemma", quantize=False, bf16=False, attn_implementation="eager")
    assert model.config.hidden_act == "gelu_pytorch_tanh"


def test_tokenizers_pad_right_and_mistral_gets_a_pad_token(tiny_gemma, tiny_mistral):
    g = load_tokenizer(str(tiny_gemma), "gemma")
    m = load_tokenizer(str(tiny_mistral), "mistral")
    assert g.padding_side == m.padding_side == "right"
    assert g("x")["input_ids"][0] == g.bos_token_id  # Gemma's <bos> first
    assert m.pad_token_id is not None and m.pad_token_id != m.eos_token_id


def test_hub_ids_fail_offline_with_the_fix():
    with pytest.raises(UserError, match="not a local directory .* pass --tokenizer DIR"):
        load_tokenizer("google/gemma-7b-it", "gemma")


@pytest.mark.parametrize("attention", ["eager", pytest.param("sdpa", marks=needs_sdpa)])
def test_the_asked_attention_is_the_one_loaded(tiny_mistral, attention):
    # transformers 4.38.2 drops attn_implementation= when a config is passed as well.
    model = load_base_model(str(tiny_mistral), "mistral", quantize=False, bf16=False, attn_implementation=attention)
    assert model.config._attn_implementation == attention


# The README's CPU environment (`pip install torch==2.13.0 -e .`) has no bitsandbytes: hide it.
WITHOUT_BITSANDBYTES = '''
import importlib.abc, importlib.machinery, importlib.metadata, sys

class HideBitsandbytes(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] != "bitsandbytes":
            return importlib.machinery.PathFinder.find_spec(name, path, target)

    def find_distributions(self, context=importlib.metadata.DistributionFinder.Context()):
        found = importlib.machinery.PathFinder.find_distributions(context)
        return (d for d in found if (d.metadata["Name"] or "").lower() != "bitsandbytes")

sys.meta_path = [HideBitsandbytes() if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
'''


def readme_python():
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    assert blocks, "the README shows library use"
    return "\n".join(blocks)


def test_the_readme_python_runs_as_shown_without_bitsandbytes():
    import json
    import subprocess
    import sys

    code = WITHOUT_BITSANDBYTES + readme_python() + "\nimport json; print(json.dumps(bnb_config.to_dict()))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    without = json.loads(out.stdout.strip().splitlines()[-1])
    assert without == reviewgpt.qlora_config("gemma")[0].to_dict()  # the same config as with bitsandbytes
    assert without["load_in_4bit"] and without["bnb_4bit_quant_type"] == "nf4"


def test_saving_an_adapter_from_a_script_does_not_reach_the_network(tiny_gemma, tmp_path):
    """A script that makes the CLI's one call (reviewgpt.offline_by_default) runs offline as the CLI does."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    shutil.copytree(tiny_gemma, tmp_path / "tiny-gemma")  # a relative name that is also a valid hub repo id
    script = '''
import json, socket
attempts = []

def refuse(*args, **kwargs):
    attempts.append(repr(args[:2]))
    raise OSError("no network in this test")

socket.getaddrinfo = refuse
socket.socket.connect = lambda self, address: refuse(address)

import reviewgpt
reviewgpt.offline_by_default()
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("tiny-gemma")
get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained("adapter")
print(json.dumps(attempts))
'''
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_a_broken_flash_attn_is_said_not_silently_replaced(tmp_path, monkeypatch, caplog):
    import sys

    from reviewgpt import models

    broken = tmp_path / "flash_attn"
    broken.mkdir()
    (broken / "__init__.py").write_text(
        "raise ImportError('flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    monkeypatch.setattr(models, "cuda_available", lambda: True)
    from reviewgpt.torch_support import has

    assert models.resolve_attention("auto") == ("sdpa" if has("sdpa") else "eager")  # eager: torch 1.13
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "flash-attn is installed but does not import" in warning and "undefined symbol" in warning
