"""Tiny models of the real architectures, built locally (no hub): for tests, the quickstart
and CPU tries.

- Gemma: `GemmaForCausalLM` with a small config and a byte-level BPE tokenizer trained on the
  sample data, with Gemma's special tokens (<pad> <eos> <bos> <unk> <start_of_turn>
  <end_of_turn>) and `<bos>` added by the tokenizer as Gemma's does.
- Mistral: `MistralForCausalLM` with a small config (sliding window included) and Mistral 7B's
  real sentencepiece tokenizer when the `mistral-common` package is installed (it ships
  `tokenizer.model.v1`), else a byte-level BPE stand-in.
- Llama: `LlamaForCausalLM` shaped like SmolLM2-Instruct (tied embeddings) with a byte-level BPE
  tokenizer that has SmolLM2's ChatML control tokens (<|endoftext|> <|im_start|> <|im_end|>).
Each tokenizer is saved as its family's class (no `token_type_ids`, so `model(**tok(text))`
works in plain transformers) with the family's own chat template, so `apply_chat_template`
gives the model's real chat format. Weights are random (seeded); the point is the real code
paths, not quality.
"""

from __future__ import annotations

from pathlib import Path

GEMMA_SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
MISTRAL_SPECIAL = ["<unk>", "<s>", "</s>"]
CHATML_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
FAMILIES = ("gemma", "mistral", "llama")
# The built-in prompt template that each tiny model's own chat template writes (below): the one to
# train it with, since a chat format writes control tokens only its own tokenizer has.
TEMPLATE_OF_FAMILY = {"gemma": "gemma-it", "mistral": "mistral-inst", "llama": "smollm2-chatml"}

# The chat templates the real models ship (tokenizer_config.json of google/gemma-7b-it,
# mistralai/Mistral-7B-Instruct-v0.2 and HuggingFaceTB/SmolLM2-135M-Instruct), so the tiny
# tokenizers format conversations exactly as the real ones do.
CHAT_TEMPLATES = {
    "gemma": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
        "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
    ),
    "mistral": (
        "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
        "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
    ),
    "llama": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
        "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
}


def _corpus():
    from reviewgpt.data.prompt import INSTRUCTION, TEMPLATES
    from reviewgpt.data.sample import sample_records

    texts = [INSTRUCTION] + [t.head + t.tail for t in TEMPLATES.values()]
    for r in sample_records(n_papers=12, reviews_per_paper=1, seed=1):
        texts += [r["paper"], r["review"]]
    return texts


def train_bpe(special_tokens, vocab_size: int = 600):
    """A byte-level BPE `tokenizers.Tokenizer` trained on sample text (any text encodes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok


def mistral_tokenizer_file():
    try:
        import mistral_common
    except ImportError:
        return None
    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    return path if path.is_file() else None


def build_tokenizer(family: str):
    """The family's tokenizer class, special tokens and chat template (see the module docstring)."""
    if family == "gemma":
        from transformers import GemmaTokenizerFast

        # GemmaTokenizerFast adds <bos> through its post-processor, as Gemma's real tokenizer does.
        tok = GemmaTokenizerFast(tokenizer_object=train_bpe(GEMMA_SPECIAL), bos_token="<bos>", eos_token="<eos>",
                                 pad_token="<pad>", unk_token="<unk>", add_bos_token=True, add_eos_token=False,
                                 additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])
    elif family == "mistral":
        from transformers import LlamaTokenizerFast

        spm = mistral_tokenizer_file()
        if spm is not None:
            tok = LlamaTokenizerFast(vocab_file=str(spm), legacy=True, add_bos_token=True, add_eos_token=False)
        else:
            tok = LlamaTokenizerFast(tokenizer_object=train_bpe(MISTRAL_SPECIAL), bos_token="<s>", eos_token="</s>",
                                     unk_token="<unk>", add_bos_token=True, add_eos_token=False)
        tok.pad_token = tok.unk_token
    elif family == "llama":
        from transformers import GPT2TokenizerFast

        # SmolLM2-Instruct's tokenizer as reviewgpt loads it: ChatML controls, no BOS added.
        tok = GPT2TokenizerFast(tokenizer_object=train_bpe(CHATML_SPECIAL), bos_token="<|im_start|>",
                                eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>")
    else:
        raise ValueError(f"tiny models exist for {', '.join(FAMILIES)}, not {family!r}")
    tok.chat_template = CHAT_TEMPLATES[family]
    tok.model_max_length = 8192
    return tok


def tiny_config(family: str, vocab_size: int, bos_id: int, eos_id: int, pad_id: int,
                hidden: int = 64, layers: int = 2, sliding_window=None):
    if family == "gemma":
        from transformers import GemmaConfig

        return GemmaConfig(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=1, head_dim=hidden // 4, max_position_embeddings=2048,
            hidden_act="gelu_pytorch_tanh", bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
        )
    if family == "mistral":
        from transformers import MistralConfig

        return MistralConfig(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1e6,
            sliding_window=sliding_window, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
        )
    if family == "llama":
        from transformers import LlamaConfig

        # SmolLM2's shape in miniature: 3 query heads per KV head, tied embeddings.
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
            num_attention_heads=6 if hidden % 6 == 0 else 4, num_key_value_heads=2 if hidden % 6 == 0 else 1,
            max_position_embeddings=2048, rope_theta=1e5, tie_word_embeddings=True,
            bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
        )
    raise ValueError(f"tiny models exist for {', '.join(FAMILIES)}, not {family!r}")


def build_tiny_model(family: str, output_dir, seed: int = 0, hidden: int = 64, layers: int = 2,
                     sliding_window=None) -> Path:
    """Write a tiny random model + tokenizer of `family` to `output_dir` (safetensors)."""
    if hidden < 8 or hidden % 8 or layers < 1 or (sliding_window is not None and sliding_window < 1):
        raise ValueError(f"a tiny model needs hidden a positive multiple of 8 (4 heads of an even size), layers >= 1 "
                         f"and sliding_window >= 1; got hidden={hidden!r}, layers={layers!r}, "
                         f"sliding_window={sliding_window!r}")
    import torch
    from transformers import AutoModelForCausalLM

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(family)
    config = tiny_config(family, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                         tokenizer.pad_token_id, hidden=hidden, layers=layers, sliding_window=sliding_window)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return output_dir
