"""Evaluate a trained model: generate reviews, and measure them and the model.

    generate.py    `reviewgpt review`: one review per paper, the prompt built as in training
    generate_hf.py `review --engine hf`: transformers' generate in left-padded batches
    engine.py      its fast generation engine: continuous batching over slots of a preallocated KV cache
                   (engine_run.py: the loop over slots; engine_forward.py: prefill/decode passes, CUDA
                   graphs; decode_attention.py: the Triton split-K decode attention; engine_model.py: what
                   a model must be, adapters merged in memory, slots from memory; engine_sampling.py: next token)
    likelihood.py  `reviewgpt eval`: review NLL of held-out human reviews under the model
    score.py       `reviewgpt score`: ROUGE, criteria coverage, repetition, length vs the human reviews
    rating.py      `score`'s ratings: MAE, Spearman, accept/reject accuracy, baselines, humans vs humans
    coverage.py    which of the four criteria a review covers
    judge/         `reviewgpt judge`: pairwise LLM-judge win rates (an HTTP API or a local model)
    http.py        asking an HTTP JSON server: retries, refusals, giving up (the judge's API client)
    concurrency.py fewer requests in flight after timeouts (used by http.py)
    workers.py     blocking calls on daemon threads, so Ctrl-C exits at once
    needle.py      `reviewgpt needle`: recall of a fact hidden at a depth of a long context
    report.py      `reviewgpt report`: one Markdown page per run folder

Models load through reviewgpt.models, run folders are read through reviewgpt.run; nothing here
imports reviewgpt.train.
"""
