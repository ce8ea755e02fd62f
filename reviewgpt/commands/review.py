"""`reviewgpt review`: one generated review per paper, as JSONL."""

from __future__ import annotations

import json

from reviewgpt.commands import float_flag, int_flag


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "review", help="generate one review per paper (JSONL); a rerun skips papers already reviewed",
        epilog="example:\n  reviewgpt review --model runs/gemma-merged --papers papers.jsonl --output reviews.jsonl",
    )
    p.add_argument("--model", required=True, help="merged model folder, `train` run folder (adapter) or base model")
    p.add_argument("--papers", required=True, help="records with 'paper' (or 'input'), 'paper_id'/'id' optional: "
                                                      ".jsonl, .jsonl.gz or .json")
    p.add_argument("--output", required=True, help="JSONL to append reviews to")
    p.add_argument("--max-input-tokens", type=int_flag(1),
                   help="prompt budget; the paper is trimmed to fit (default: the recipe's, else the trained length "
                        "- --max-new-tokens)")
    p.add_argument("--max-new-tokens", type=int_flag(1), help="longest review (default: the recipe's)")
    p.add_argument("--temperature", type=float_flag(0), default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float_flag(0, 1, low_open=True), default=1.0,
                   help="nucleus sampling when temperature > 0")
    p.add_argument("--template", help="prompt template (default: the one the model was trained with)")
    p.add_argument("--limit", type=int_flag(1), help="review at most this many papers")
    p.add_argument("--batch-size", type=int_flag(1),
                   help="papers generated together (default: as many as fit in the GPU's free memory with the "
                        "fast engine, 8 with --engine hf)")
    p.add_argument("--repetition-penalty", type=float_flag(0, low_open=True), default=1.0,
                   help="> 1 discourages repeated tokens (small models loop under greedy decoding); 1 = off")
    p.add_argument("--no-repeat-ngram-size", type=int_flag(0), default=0,
                   help="> 0: never repeat an n-gram of this many tokens of the paper or the review; 0 = off")
    p.add_argument("--seed", type=int_flag(0), default=0, help="seed of the sampling (with --temperature > 0)")
    p.add_argument("--engine", choices=("fast", "hf"), default="fast",
                   help="fast: continuous batching, a preallocated KV cache and CUDA graphs (docs/performance.md); "
                        "hf: transformers' generate in left-padded batches, as before")
    p.add_argument("--keep-adapter", action="store_true",
                   help="fast engine: run a run folder's LoRA adapter (and 4-bit base) as loaded instead of merging "
                        "it into the weights in memory (the merge dequantizes a 4-bit base to 16-bit)")
    quant = p.add_mutually_exclusive_group()
    quant.add_argument("--4bit", dest="quantize", action="store_true", default=None,
                       help="load the base in 4-bit NF4 (needs a GPU; default: as the run was trained)")
    quant.add_argument("--no-4bit", dest="quantize", action="store_false", default=None,
                       help="load the base in 16-bit")
    p.set_defaults(func=run)


def run(args) -> int:
    from reviewgpt.eval.generate import GenerationSettings, generate_reviews

    settings = GenerationSettings(max_input_tokens=args.max_input_tokens, max_new_tokens=args.max_new_tokens,
                                  temperature=args.temperature, top_p=args.top_p, template=args.template,
                                  limit=args.limit, batch_size=args.batch_size, quantize=args.quantize,
                                  repetition_penalty=args.repetition_penalty,
                                  no_repeat_ngram_size=args.no_repeat_ngram_size, seed=args.seed, engine=args.engine,
                                  keep_adapter=args.keep_adapter)
    print(json.dumps(generate_reviews(args.model, args.papers, args.output, settings)))
    return 0
