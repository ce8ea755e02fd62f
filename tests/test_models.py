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
    with pytest.raises(UserError, match="4-bit QLoRA needs a CUDA GPU .* pass --no-quantize"):
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
