"""The reference recipe's training path on real records, for comparisons (docs/quality.md, issue 13).

What the reference ran (REFERENCE.md 1a, after Google's example_sft_qlora.py): the reference
`formatting_func` text through trl 0.7.11's SFTTrainer, which tokenizes each text with
`truncation=True, max_length=max_seq_length` (the tail - the review - is cut) and trains with its
default collator (loss on every token); QLoRA NF4 + double quant, LoRA r 64 / alpha 16 / dropout
0.1, paged AdamW 32-bit, lr 2e-4 constant with 3% warm-up, max_grad_norm 0.3, weight decay 0.001,
batch 1 x accumulation 16, bf16, gradient checkpointing; SDPA attention (flash-attn is not on the
GPU image). Two changes, neither changes the math: checkpointing with `use_reentrant=False` (needed
on today's torch; transformers 4.38.2 passes none), and the model's forward wrapped to count the
tokens it trains on (reviewgpt.train.logs.TrainedTokens, as `reviewgpt train` counts them).

It writes the adapter like `reviewgpt train` (plus `reviewgpt_recipe.yaml` naming the template
and length it was trained with, so `reviewgpt eval` and `review` read the folder like a run) and
`train_summary.json` with tokens/s.

    python bench/reference_sft.py --model DIR --data train.jsonl.gz --output runs/ref --max-steps 40 \
        --lora-target-modules q_proj,k_proj,v_proj,o_proj
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--max-steps", type=int, required=True)
    p.add_argument("--max-seq-length", type=int, default=8192)
    p.add_argument("--lora-target-modules", default="q_proj,k_proj,v_proj,o_proj")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--logging-steps", type=int, default=5)
    p.add_argument("--gradient-accumulation-steps", type=int, default=16,
                   help="the reference's 16; fewer for short speed runs")
    args = p.parse_args(argv)

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainingArguments, set_seed
    from trl import SFTTrainer

    import reviewgpt
    from reviewgpt.data.records import load_records
    from reviewgpt.models import load_config
    from reviewgpt.train.logs import TrainedTokens

    records = load_records(args.data).records
    data = Dataset.from_dict({"input": [r.paper for r in records], "output": [r.review for r in records]})
    family = {"gemma": "gemma", "mistral": "mistral"}.get(json.loads((Path(args.model) / "config.json").read_text())
                                                          .get("model_type"), "llama")
    cuda = torch.cuda.is_available()  # without one (a smoke test): plain LoRA in fp32
    quantized = dict(quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16), torch_dtype=torch.bfloat16, device_map={"": 0}) if cuda else {}
    model = AutoModelForCausalLM.from_pretrained(args.model, config=load_config(args.model, family, "sdpa"),
                                                 **quantized)
    model.config.use_cache = False
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lora = LoraConfig(r=64, lora_alpha=16, lora_dropout=0.1, bias="none", task_type="CAUSAL_LM",
                      target_modules=args.lora_target_modules.split(","))
    training = TrainingArguments(
        output_dir=args.output, per_device_train_batch_size=1,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        optim="paged_adamw_32bit" if cuda else "adamw_torch", save_strategy="no", logging_steps=args.logging_steps,
        learning_rate=2e-4,
        weight_decay=0.001, fp16=False, bf16=cuda, max_grad_norm=0.3, max_steps=args.max_steps, warmup_ratio=0.03,
        lr_scheduler_type="constant", gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False}, report_to=[], seed=args.seed, data_seed=args.seed,
    )
    set_seed(args.seed)
    trainer = SFTTrainer(model=model, args=training, train_dataset=data, peft_config=lora, tokenizer=tokenizer,
                         formatting_func=reviewgpt.formatting_func, max_seq_length=args.max_seq_length,
                         packing=False)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.time()
    with TrainedTokens(trainer.model) as trained:  # counted as `reviewgpt train` counts them
        result = trainer.train()
    seconds = time.time() - started
    out = Path(args.output)
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    (out / "reviewgpt_recipe.yaml").write_text(
        f"name: reference-sft\nfamily: {family}\ntemplate: alpaca-reference\nmax_seq_length: {args.max_seq_length}\n"
        f"loss_on: all\nquantize: {str(cuda).lower()}\nmax_new_tokens: 1024\n", encoding="utf-8")
    logs = [row for row in trainer.state.log_history if "loss" in row]
    summary = {"path": "reference (trl 0.7.11 SFTTrainer, formatting_func, tail truncation, loss on all)",
               "records": len(records), "global_step": trainer.state.global_step,
               "train_loss": result.training_loss, "losses": [(r["step"], r["loss"]) for r in logs],
               "train_tokens": trained.tokens, "seconds": round(seconds, 1),
               "tokens_per_s": round(trained.tokens / seconds, 1),
               "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
               "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
               "gpu": torch.cuda.get_device_name(0) if cuda else "cpu"}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
