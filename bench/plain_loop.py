"""The plain pinned path for a small model, the comparison of issue 13's small-model target.

What a user gets from the pinned stack without reviewgpt: transformers 4.38.2's model with
`attn_implementation="sdpa"`, bf16 weights, peft LoRA (r 64 / alpha 16 / dropout 0.1 on the given
modules), gradient checkpointing (`use_reentrant=False`), batch 1, torch AdamW, one optimizer step per
record; each record is the reference `formatting_func` text tokenized with tail truncation at
`--max-seq-length` (as trl 0.7.11 does), labels = input ids. Nothing of reviewgpt's speed work is
applied: 4.38.2's Llama builds its max_positions x max_positions causal mask every forward.

Prints one JSON line: tokens/s over all steps (the first included, as `reviewgpt train`'s summary
counts), tokens/s after `--warmup` steps, peak memory.

    python bench/plain_loop.py --model /tmp/smol --data train.jsonl.gz --steps 16
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
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--max-seq-length", type=int, default=8192)
    p.add_argument("--lora-target-modules", help="default: the smollm2-135m recipe's")
    args = p.parse_args(argv)

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import reviewgpt
    from reviewgpt.data.records import load_records
    from reviewgpt.recipe import load_recipe

    targets = args.lora_target_modules.split(",") if args.lora_target_modules else list(
        load_recipe("smollm2-135m").lora_target_modules)

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    records = load_records(args.data).records[: args.steps]
    texts = [reviewgpt.formatting_func({"input": r.paper, "output": r.review}) for r in records]
    batches = [tokenizer(t, truncation=True, max_length=args.max_seq_length, return_tensors="pt")["input_ids"]
               for t in texts]
    model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="sdpa",
                                                 torch_dtype=torch.bfloat16 if cuda else torch.float32).to(device)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=64, lora_alpha=16, lora_dropout=0.1, bias="none",
                                             task_type="CAUSAL_LM",
                                             target_modules=targets))
    model.train()
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=2e-4)
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    tokens, started, steady_tokens, steady_started = 0, time.time(), 0, None
    for step, ids in enumerate(batches):
        if step == args.warmup:
            sync()
            steady_started = time.time()
        ids = ids.to(device)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += ids.numel()
        if steady_started is not None:
            steady_tokens += ids.numel()
        print(f"step {step + 1}/{len(batches)} tokens {ids.numel()} loss {loss.item():.4f}", file=sys.stderr)
    sync()
    ended = time.time()
    summary = {
        "path": "plain pinned (4.38.2 sdpa, bf16 LoRA, gradient checkpointing, batch 1, AdamW)",
        "steps": len(batches), "train_tokens": tokens, "seconds": round(ended - started, 1),
        "tokens_per_s": round(tokens / (ended - started), 1),
        "tokens_per_s_after_warmup": round(steady_tokens / (ended - steady_started), 1) if steady_started else None,
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else "cpu",
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
