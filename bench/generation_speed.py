"""Issue 20's generation measurement: `review`'s generated tokens/s with transformers' `generate`
(--engine hf, the path before) and the fast engine (reviewgpt.eval.engine), one JSON line per row.

    # SmolLM2 (a trained run folder on its 4-bit base, and its merge): N train papers, prompts <= 7,168
    # tokens, <= 1,024 new, repetition penalty 1.2; then the greedy token check (8 papers x 256 tokens)
    python bench/generation_speed.py smol --run RUN --merged MERGED --data iclr2017_train.jsonl.gz
    # gemma-7b / mistral-7b, random weights of the real architecture (built once under --weights-dir):
    # a 4-bit "run folder" (random LoRA r 64 on q/k/v/o) and the bf16 model; 7,168-token prompts,
    # exactly 512 new tokens each (no stop); batch 1, 8 and the largest that fits
    python bench/generation_speed.py synthetic --family gemma --weights-dir /tmp/weights

Choose rows with --engines (hf, fast, fast-sdpa: the fast engine with SDPA's decode attention instead
of the Triton kernel), --forms, --batches, --skip-check. Every row runs under its own time limit
(--row-seconds); a row that fails or runs out of time prints its error and the next row runs. The
hf rows of `synthetic` time the first --hf-new-tokens steps (one per forward, the GPU synchronized) and
extrapolate to 512: prefill + 512 x the mean step (`"extrapolated_from"` says so); 0 runs all 512.
On a CPU, a tiny --model (`reviewgpt tiny-model`) and a small --prompt-tokens run the same rows (to test
this script: tests/test_engine.py does; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

ARCHITECTURE = {"gemma": "gemma-7b", "mistral": "mistral-7b"}
RECIPE = {"gemma": "gemma-7b-it", "mistral": "mistral-7b-instruct-v0.2"}


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


def peak_gib():
    return round(torch.cuda.max_memory_allocated() / 1024 ** 3, 2) if torch.cuda.is_available() else None


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


@contextlib.contextmanager
def time_limit(seconds: int):
    def expired(*_):
        raise TimeoutError(f"row ran past --row-seconds {seconds}")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_row(row: dict, seconds: int, measure) -> None:
    """measure() -> dict of results; any failure becomes the row's "error"."""
    free_memory()
    started = time.perf_counter()
    try:
        with time_limit(seconds):
            row.update(measure())
    except Exception as exc:  # noqa: BLE001 - one failing row must not stop the others
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        traceback.print_exc(file=sys.stderr)
    row["wall_seconds"] = round(time.perf_counter() - started, 1)
    row["peak_allocated_gib"] = peak_gib()
    emit(row)


# --- smol: `review` end to end ---------------------------------------------------------------------

@contextlib.contextmanager
def engine_stats():
    """The fast engine's counts (prefill and decode seconds, steps, slots) that `review` logs at its end."""
    import logging

    found: list = []

    class Catch(logging.Handler):
        def emit(self, record):
            if record.msg == "fast engine: %s" and isinstance(record.args, dict):  # logging unwraps a lone dict
                found.append(record.args)

    logger, handler = logging.getLogger("reviewgpt.eval.engine"), Catch()
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@contextlib.contextmanager
def decode_kernel_for(engine: str):
    """`fast-sdpa`: the fast engine with SDPA's masked decode attention instead of the Triton kernel
    (REVIEWGPT_DECODE_KERNEL, as `review` reads it), to measure what the kernel brings in the same call."""
    import os

    previous = os.environ.pop("REVIEWGPT_DECODE_KERNEL", None)
    if engine == "fast-sdpa":
        os.environ["REVIEWGPT_DECODE_KERNEL"] = "sdpa"
    try:
        yield
    finally:
        os.environ.pop("REVIEWGPT_DECODE_KERNEL", None)
        if previous is not None:
            os.environ["REVIEWGPT_DECODE_KERNEL"] = previous


def smol(args) -> None:
    from reviewgpt.eval.generate import GenerationSettings, generate_reviews

    models = {"run": args.run, "merged": args.merged}
    for form in () if args.only_check else args.forms or ("run", "merged"):
        if not models.get(form):
            continue
        for engine in args.engines:
            if engine == "hf" and form not in args.hf_forms:
                continue
            papers = args.hf_papers if engine == "hf" else args.papers
            settings = GenerationSettings(max_input_tokens=args.max_input_tokens, max_new_tokens=args.max_new_tokens,
                                          limit=papers, batch_size=args.hf_batch if engine == "hf" else None,
                                          repetition_penalty=args.repetition_penalty,
                                          engine="hf" if engine == "hf" else "fast")

            def measure(model=models[form], settings=settings, engine=engine):
                with tempfile.TemporaryDirectory() as out, engine_stats() as stats, decode_kernel_for(engine):
                    summary = generate_reviews(model, args.data, Path(out) / "reviews.jsonl", settings)
                    rows = [json.loads(line) for line in (Path(out) / "reviews.jsonl").read_text().splitlines()]
                keys = ("engine", "written", "generated_tokens", "generation_seconds", "generated_tokens_per_s")
                return {**{k: summary.get(k) for k in keys},
                        "stopped": sum(r["finish_reason"] == "stop" for r in rows),
                        "mean_input_tokens": round(sum(r["input_tokens"] for r in rows) / max(len(rows), 1)),
                        **({"engine_stats": stats[-1]} if stats else {})}

            run_row({"mode": "smol", "form": form, "engine": engine, "papers": papers}, args.row_seconds, measure)
    if not args.skip_check:
        row = {"mode": "smol-check", "form": "merged" if args.merged else "run", "papers": args.check_papers,
               "new_tokens": args.check_tokens, "dtype": args.check_dtype}
        run_row(row, args.row_seconds, lambda: token_check(args))


def token_check(args) -> dict:
    """Greedy tokens of the first papers: hf batched (as `review`), hf one by one, fast."""
    from reviewgpt.data.prompt import get_template
    from reviewgpt.data.records import load_papers
    from reviewgpt.data.tokenization import PromptEncoder
    from reviewgpt.eval.engine import generate_fast
    from reviewgpt.eval.engine_sampling import Decoding
    from reviewgpt.eval.generate import stop_token_ids
    from reviewgpt.eval.generate_hf import generate_hf
    from reviewgpt.eval.likelihood import choose_template
    from reviewgpt.models import load_for_inference

    loaded = load_for_inference(args.merged or args.run)
    if args.check_dtype == "float32":  # bf16 rounding alone flips near-tied greedy picks (hf batched vs one by one)
        loaded.model = loaded.model.float()
    template = get_template(choose_template(loaded, None))
    encoder = PromptEncoder(loaded.tokenizer, template)
    papers = load_papers(args.data)[: args.check_papers]
    prompts = [encoder.encode_prompt(p.paper, args.max_input_tokens)[0] for p in papers]
    # the stop tokens `review` uses: without them transformers' greedy search still stops at the model's
    # own eos while the fast engine runs on, and the paths "differ" after a review has ended
    decoding = Decoding(max_new_tokens=args.check_tokens, repetition_penalty=args.repetition_penalty,
                        stop_ids=tuple(stop_token_ids(loaded.tokenizer, template)))
    batched = {i: t for i, t, _ in generate_hf(loaded, prompts, decoding, len(prompts))}
    single = {i: t for i, t, _ in generate_hf(loaded, prompts, decoding, 1)}
    fast = {i: t for i, t, _ in generate_fast(loaded, prompts, decoding, slots=len(prompts))}

    def first_difference(x, y):  # None when equal; a shorter sequence differs where it ends
        shorter_ends = None if len(x) == len(y) else min(len(x), len(y))
        return next((k for k, (s, t) in enumerate(zip(x, y)) if s != t), shorter_ends)

    def agreement(a, b):
        first = [first_difference(a[i], b[i]) for i in range(len(prompts))]
        return {"equal": sum(f is None for f in first), "first_difference": first,
                "lengths": [[len(a[i]), len(b[i])] for i in range(len(prompts))]}

    return {"fast_vs_hf_batched": agreement(fast, batched), "fast_vs_hf_one_by_one": agreement(fast, single),
            "hf_batched_vs_hf_one_by_one": agreement(batched, single)}


# --- synthetic: random 7B weights ------------------------------------------------------------------

def random_run_folder(base: Path, family: str, directory: Path, rank: int = 64) -> Path:
    """A run folder as `train` writes it for a 4-bit recipe: random LoRA on q/k/v/o of `base`."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from reviewgpt import run
    from reviewgpt.recipe import load_recipe

    if (directory / "adapter_model.safetensors").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    lora = LoraConfig(r=rank, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM")
    with torch.device("meta"):
        shapes = get_peft_model(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base)), lora)
    generator = torch.Generator().manual_seed(0)
    weights = {name: torch.randn(t.shape, generator=generator) * (0.02 if "lora_B" in name else t.shape[-1] ** -0.5)
               for name, t in get_peft_model_state_dict(shapes).items()}
    save_file(weights, str(directory / "adapter_model.safetensors"))
    lora.base_model_name_or_path = str(base)
    lora.save_pretrained(str(directory))
    run.write_recipe(load_recipe(RECIPE[family], {"model": str(base)}), directory)
    return directory


def synthetic_prompts(vocab: int, count: int, length: int):
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(100, vocab, (length,), generator=generator).tolist() for _ in range(count)]


def hf_row(loaded, prompts, args) -> dict:
    """`review`'s hf path at batch len(prompts): prefill and the first steps timed, 512 extrapolated."""
    from reviewgpt.eval.engine_model import causal_lm_of
    from reviewgpt.eval.engine_sampling import Decoding
    from reviewgpt.eval.generate_hf import generate_hf

    steps = args.hf_new_tokens or args.new_tokens
    stamps = []

    def stamp(*_):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    hook = causal_lm_of(loaded.model).register_forward_hook(stamp)  # generate calls the causal LM once a step
    try:
        started = time.perf_counter()
        produced = sum(len(t) for _, t, _ in generate_hf(loaded, prompts, Decoding(max_new_tokens=steps),
                                                         len(prompts)))
    finally:
        hook.remove()
    prefill, step = stamps[0] - started, (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1)
    seconds = prefill + args.new_tokens * step
    return {"generated_tokens_per_s": round(len(prompts) * args.new_tokens / seconds, 1),
            "prefill_seconds": round(prefill, 3), "step_ms": round(1000 * step, 2), "measured_tokens": produced,
            **({"extrapolated_from": steps} if steps != args.new_tokens else {})}


def fast_row(loaded, prompts, args, engine_name: str = "fast") -> dict:
    from reviewgpt.eval.engine import Engine
    from reviewgpt.eval.engine_sampling import Decoding

    engine = Engine(loaded.model, slots=len(prompts), decode_kernel="sdpa" if engine_name == "fast-sdpa" else None)
    started = time.perf_counter()
    produced = sum(len(done.tokens) for done in engine.generate(prompts, Decoding(max_new_tokens=args.new_tokens)))
    seconds = time.perf_counter() - started
    return {"generated_tokens_per_s": round(produced / seconds, 1), "generated_tokens": produced,
            "seconds": round(seconds, 2), "engine_stats": engine.stats}


def largest_batch(loaded, engine: str, args) -> int:
    """The largest batch an engine is given: the fast engine's own fit; for hf, what its DynamicCache
    (copied whole by torch.cat each step: twice the cache), its whole-batch prefill and transformers
    4.38.2's context^2 masks leave room for. An hf row that still runs out of memory halves it."""
    from reviewgpt.eval.engine import Engine
    from reviewgpt.eval.engine_model import activation_bytes_per_token, decoder_parts, kv_bytes_per_token

    fast = Engine(loaded.model).slots_that_fit(args.prompt_tokens, args.new_tokens)
    if engine == "fast" or not torch.cuda.is_available():
        return fast
    free, _ = torch.cuda.mem_get_info()
    context = args.prompt_tokens + args.new_tokens
    per_row = (2 * kv_bytes_per_token(decoder_parts(loaded.model)) * context
               + 2 * activation_bytes_per_token(loaded.model) * args.prompt_tokens + 6 * context * context)
    return max(1, min(fast, int(0.8 * free // per_row)))


def halving_on_oom(measure, prompts):
    """measure(prompts), retried with half the prompts after a CUDA out-of-memory (3 times at most)."""
    for _ in range(3):
        try:
            return {**measure(prompts), "batch": len(prompts)}
        except torch.cuda.OutOfMemoryError:
            if len(prompts) == 1:
                raise
            prompts = prompts[: len(prompts) // 2]
            free_memory()
    return {**measure(prompts), "batch": len(prompts)}


def synthetic(args) -> None:
    from reviewgpt.eval.engine_model import merge_adapter_in_memory
    from reviewgpt.models import load_for_inference
    from reviewgpt.train.bench_models import random_weights
    from reviewgpt.train.memory import ARCHITECTURES

    base = Path(args.model) if args.model else random_weights(ARCHITECTURES[ARCHITECTURE[args.family]],
                                                             Path(args.weights_dir) / f"random-{args.family}")
    folders = {"bf16": base}
    if "4bit" in (args.forms or ("4bit", "bf16")):
        folders["4bit"] = random_run_folder(base, args.family, Path(args.weights_dir) / f"run-{args.family}-4bit")
    for form in args.forms or ("4bit", "bf16"):
        free_memory()
        loaded = load_for_inference(folders[form], quantize=(form == "4bit") if torch.cuda.is_available() else None)
        vocab = loaded.model.config.vocab_size
        for engine in args.engines:  # hf first: the fast engine merges a run's adapter into the loaded model
            if engine != "hf" and loaded.kind == "run":
                loaded.model = merge_adapter_in_memory(loaded.model)[0]  # what `review` does by default
            row_of = hf_row if engine == "hf" else functools.partial(fast_row, engine_name=engine)
            largest = largest_batch(loaded, "hf" if engine == "hf" else "fast", args) if "max" in args.batches else None
            for batch in args.batches:
                prompts = synthetic_prompts(vocab, largest if batch == "max" else int(batch), args.prompt_tokens)

                def measure(prompts=prompts, row_of=row_of, loaded=loaded, halve=batch == "max" and engine == "hf"):
                    if halve:
                        return halving_on_oom(lambda p: row_of(loaded, p, args), prompts)
                    return row_of(loaded, prompts, args)

                run_row({"mode": "synthetic", "family": args.family, "form": form, "engine": engine,
                         "batch": len(prompts), "largest": batch == "max", "prompt_tokens": args.prompt_tokens,
                         "new_tokens": args.new_tokens}, args.row_seconds, measure)
        del loaded, measure


def use_kernel_tiles(tiles: dict) -> None:
    from reviewgpt.eval import decode_attention

    decode_attention.PROGRAMS = tiles.get("programs", decode_attention.PROGRAMS)
    decode_attention.TILES.update({int(k): tuple(v) for k, v in tiles.items() if k != "programs"})
    emit({"mode": "kernel-tiles", "tiles": decode_attention.TILES, "programs": decode_attention.PROGRAMS})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("smol", help="SmolLM2 run folder and merged model on real papers")
    s.add_argument("--run"), s.add_argument("--merged"), s.add_argument("--data", required=True)
    s.add_argument("--forms", nargs="*", choices=("run", "merged"))
    s.add_argument("--papers", type=int, default=256, help="papers for the fast rows")
    s.add_argument("--hf-papers", type=int, default=40, help="papers for the hf rows (one batch, as measured before)")
    s.add_argument("--hf-batch", type=int, default=40)
    s.add_argument("--hf-forms", nargs="*", choices=("run", "merged"), default=["run", "merged"],
                   help="the forms that get an hf row (each takes minutes on the GPU)")
    s.add_argument("--max-input-tokens", type=int, default=7168)
    s.add_argument("--max-new-tokens", type=int, default=1024)
    s.add_argument("--repetition-penalty", type=float, default=1.2)
    s.add_argument("--check-papers", type=int, default=8), s.add_argument("--check-tokens", type=int, default=256)
    s.add_argument("--skip-check", action="store_true")
    s.add_argument("--only-check", action="store_true", help="the token check alone, no speed rows")
    s.add_argument("--check-dtype", choices=("bfloat16", "float32"), default="bfloat16",
                   help="the check's weights: in bf16 near-tied logits round differently per batch shape")
    y = sub.add_parser("synthetic", help="gemma-7b / mistral-7b random weights, 7K prompts, 512 new tokens")
    y.add_argument("--family", choices=tuple(ARCHITECTURE), required=True)
    y.add_argument("--weights-dir", default=tempfile.gettempdir())
    y.add_argument("--model", help="a bf16 model folder to use instead of random weights")
    y.add_argument("--forms", nargs="*", choices=("4bit", "bf16"))
    y.add_argument("--batches", nargs="*", default=["1", "8", "max"])
    y.add_argument("--prompt-tokens", type=int, default=7168)
    y.add_argument("--new-tokens", type=int, default=512)
    y.add_argument("--hf-new-tokens", type=int, default=64)
    for p in (s, y):
        p.add_argument("--engines", nargs="*", choices=("hf", "fast", "fast-sdpa"), default=["hf", "fast"],
                       help="fast-sdpa: the fast engine with SDPA's masked decode attention, not the Triton kernel")
        p.add_argument("--row-seconds", type=int, default=240)
        p.add_argument("--kernel-tiles", type=Path, help="the Triton kernel's tiles from bench/decode_kernel.py "
                       "--write-best, instead of reviewgpt.eval.decode_attention's TILES and PROGRAMS")
    args = parser.parse_args(argv)
    if args.kernel_tiles:
        use_kernel_tiles(json.loads(args.kernel_tiles.read_text()))
    started = time.perf_counter()
    import transformers

    emit({"mode": "versions", "torch": torch.__version__, "transformers": transformers.__version__,
          "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None})
    (smol if args.mode == "smol" else synthetic)(args)
    emit({"mode": "done", "seconds": round(time.perf_counter() - started, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
