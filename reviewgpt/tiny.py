"""Tiny models of the real architectures, built locally (no hub): for tests, the quickstart
and CPU tries.

- Gemma: `GemmaForCausalLM` with a small config and a byte-level BPE tokenizer trained on the
  sample data, with Gemma's special tokens (<pad> <eos> <bos> <unk> <start_of_turn>
  <end_of_turn>) and `<bos>` added by the tokenizer as Gemma's does.
- Mistral: `MistralForCausalLM` with a small config (sliding window included) and Mistral 7B's
  real sentencepiece tokenizer when the `mistral-common` package is installed (it ships
  `tokenizer.model.v1`), else a byte-level BPE stand-in.
Weights are random (seeded); the point is the real code paths, not quality.
"""

from __future__ import annotations

from pathlib import Path

GEMMA_SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
MISTRAL_SPECIAL = ["<unk>", "<s>", "</s>"]


def _corpus():
    from reviewgpt.prompt import INSTRUCTION, TEMPLATES
    from reviewgpt.sample import sample_records

    texts = [INSTRUCTION] + [t.head + t.tail for t in TEMPLATES.values()]
    for r in sample_records(n_papers=12, reviews_per_paper=1, seed=1):
        texts += [r["paper"], r["review"]]
    return texts


def build_bpe_tokenizer(special_tokens, bos: str, eos: str, pad: str, unk: str, vocab_size: int = 600):
    """A byte-level BPE tokenizer (any text encodes; no unknown characters)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

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
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk,
        additional_special_tokens=[t for t in special_tokens if t not in (bos, eos, pad, unk)],
        model_max_length=8192,
    )


def mistral_tokenizer_file():
    try:
        import mistral_common
    except ImportError:
        return None
    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    return path if path.is_file() else None


def build_tokenizer(family: str):
    if family == "gemma":
        return build_bpe_tokenizer(GEMMA_SPECIAL, bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>")
    spm = mistral_tokenizer_file()
    if spm is not None:
        from transformers import LlamaTokenizerFast

        tok = LlamaTokenizerFast(vocab_file=str(spm), legacy=True, add_bos_token=True, add_eos_token=False)
        tok.pad_token = tok.unk_token
        return tok
    return build_bpe_tokenizer(MISTRAL_SPECIAL, bos="<s>", eos="</s>", pad="<unk>", unk="<unk>")


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
    raise ValueError(f"tiny models exist for gemma and mistral, not {family!r}")


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
