"""Issue 13's device measurement (run by bench/device_speed2.sh): the reference path and ours with
the new options, one model per process, rows in order of what the targets need, the optional ones
only while the time budget lasts; then the target table.

    python bench/speed2.py run gemma --output OUT/speed2.jsonl [--budget-end UNIX_TIME]
    python bench/speed2.py run mistral --output OUT/speed2.jsonl
    python bench/speed2.py table OUT/speed2.jsonl

The reference row is the first thing the process measures after loading the model (BASELINE.md's
method: a fresh process; see reviewgpt.train.bench); ours follow on the same loaded model, with what each
row changes in the process undone after it. `--tiny DIR` runs the same plan on a tiny local model
on the CPU, sequences divided by 256 (to test this script; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("speed2")


@dataclass(frozen=True)
class Row:
    label: str
    seq: int
    options: dict = field(default_factory=dict)  # on top of the recipe's own
    optional: bool = False  # measured only while the budget lasts
    warmup: int = 2
    steps: int = 3
    seconds: int = 15  # estimated on an H200, model loaded, steps included


NONE_KEPT = {"checkpoint_skip_layers": 0}  # the memory rows: what a 24 / 40 GB card gets (auto keeps none there)
AUTO_KEPT = {"checkpoint_skip_layers": "auto"}  # the recipes keep 0 until this row has been measured
PLANS = {
    "mistral": ("mistral-7b-instruct-v0.2", 12288, [
        Row("defaults+checkpoint_skip_layers=auto", 12288, AUTO_KEPT, seconds=12),
        Row("defaults+checkpoint_skip_layers=0", 12288, NONE_KEPT, seconds=12),  # issue 4's defaults
    ]),
    "gemma": ("gemma-7b-it", 8192, [
        Row("defaults+checkpoint_skip_layers=auto", 8192, AUTO_KEPT, seconds=10),
        Row("defaults+checkpoint_skip_layers=0", 8192, NONE_KEPT, seconds=10),
        Row("defaults+checkpoint_skip_layers=0+checkpoint_offload", 32768, {**NONE_KEPT, "checkpoint_offload": True},
            seconds=35),
        Row("defaults+checkpoint_skip_layers=0+lean_mlp", 32768, {**NONE_KEPT, "lean_mlp": True}, seconds=35),
        Row("defaults+checkpoint_skip_layers=0+checkpoint_offload+lean_mlp", 32768,
            {**NONE_KEPT, "checkpoint_offload": True, "lean_mlp": True}, seconds=35),
        Row("defaults+checkpoint_skip_layers=0+checkpoint_offload+lean_mlp", 65536,
            {**NONE_KEPT, "checkpoint_offload": True, "lean_mlp": True}, warmup=1, steps=2, seconds=55),
        Row("defaults+checkpoint_skip_layers=0", 32768, NONE_KEPT, optional=True, seconds=35),
        Row("defaults+checkpoint_skip_layers=0+lean_mlp", 65536, {**NONE_KEPT, "lean_mlp": True}, optional=True,
            warmup=1, steps=2, seconds=55),
        Row("defaults+checkpoint_skip_layers=0+checkpoint_offload", 65536, {**NONE_KEPT, "checkpoint_offload": True},
            optional=True, warmup=1, steps=2, seconds=55),
    ]),
}
TRITON_OFF = {"triton_mlp": False, "triton_rope": False, "triton_rmsnorm": False}  # the defaults before them
PLANS["gemma-triton"] = ("gemma-7b-it", 8192, [
    Row("defaults+checkpoint_skip_layers=auto", 8192, AUTO_KEPT, seconds=10),
    Row("defaults-triton+checkpoint_skip_layers=auto", 8192, {**AUTO_KEPT, **TRITON_OFF}, seconds=10),
    Row("defaults+checkpoint_skip_layers=0", 8192, NONE_KEPT, seconds=10),
    *(Row(f"defaults-{name}+checkpoint_skip_layers=auto", 8192, {**AUTO_KEPT, name: False}, seconds=10)
      for name in TRITON_OFF),
    Row("defaults+checkpoint_skip_layers=0+checkpoint_offload", 32768, {**NONE_KEPT, "checkpoint_offload": True},
        seconds=35),
    Row("defaults+checkpoint_skip_layers=0+checkpoint_offload", 65536, {**NONE_KEPT, "checkpoint_offload": True},
        warmup=1, steps=2, seconds=55),
    Row("defaults+checkpoint_skip_layers=0", 65536, NONE_KEPT, warmup=1, steps=2, seconds=55),
    Row("defaults+checkpoint_skip_layers=0", 32768, NONE_KEPT, optional=True, seconds=35),
])
PLANS["mistral-triton"] = ("mistral-7b-instruct-v0.2", 12288, [
    Row("defaults+checkpoint_skip_layers=auto", 12288, AUTO_KEPT, seconds=12),
    Row("defaults-triton+checkpoint_skip_layers=auto", 12288, {**AUTO_KEPT, **TRITON_OFF}, seconds=12),
    Row("defaults+checkpoint_skip_layers=0", 12288, NONE_KEPT, seconds=12),
])
TARGETS = {  # (recipe, seq): what issue 13 asks of micro-batch 1
    ("gemma-7b-it", 8192): {"ratio": 2.4},
    ("mistral-7b-instruct-v0.2", 12288): {"ratio": 1.6},
    ("gemma-7b-it", 32768): {"reserved": 22.0, "tokens_per_s": 5000},
    ("gemma-7b-it", 65536): {"reserved": 36.0},
}


def probe_causal_mask(bench, repeats: int = 3) -> Optional[dict]:
    """Time transformers 4.38.2's `_update_causal_mask` (Gemma, Llama) for a sequence 1.5x its
    buffer, as the reference path runs it at 12288 tokens: the buffer is replaced by a twice larger
    one created on the CPU, which every later call repeats, converts and copies to the GPU."""
    import torch

    stack = next((m for m in bench.model.modules() if isinstance(getattr(m, "causal_mask", None), torch.Tensor)),
                 None)
    if stack is None:
        return None
    side, device = stack.causal_mask.shape[-1], stack.causal_mask.device
    seq = side * 3 // 2
    hidden = torch.empty(1, seq, 1, device=device)  # the call reads only shape, dtype (fp32: peft's upcast), device
    ones = torch.ones(1, seq, dtype=torch.long, device=device)
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        mask = type(stack)._update_causal_mask(stack, ones, hidden)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(round(time.perf_counter() - started, 3))
        del mask
    row = {"probe": "causal_mask", "recipe": bench.recipe.name, "architecture": bench.arch.name, "seq": seq,
           "buffer_side_before": side, "buffer_device_before": str(device),
           "buffer_device_after": str(stack.causal_mask.device), "seconds": seconds}
    bench.state.restore()
    return row


def run(family: str, output: Path, budget_end: float, hard_end: float = float("inf"), tiny: Optional[str] = None,
        fresh_references=(), seqs=(), weights_dir: Optional[str] = None) -> int:
    """Load the model, measure the reference, time the causal-mask probe, then our rows (a row
    that would end after `hard_end` is skipped, an optional one after `budget_end`), then
    `fresh_references` (sequence lengths) in a child process each, if the budget allows. `seqs`: only
    the core rows at these sequence lengths (a confirmation call), no probe, no optional row.
    `weights_dir`: where the random weights are made once (default: the temp folder)."""
    from reviewgpt.recipe import load_recipe
    from reviewgpt.recipe.speed_options import SpeedOptions
    from reviewgpt.train.bench import Bench, reference_in_fresh_process
    from reviewgpt.train.bench_models import model_for_bench
    from reviewgpt.train.oom import free_gpu

    name, reference_seq, rows = PLANS[family]
    scale = 256 if tiny else 1
    recipe = load_recipe(name)
    model_dir, arch = model_for_bench(recipe, tiny, random_init=tiny is None, weights_dir=weights_dir)

    def emit(row):
        with open(output, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if "probe" in row:
            print(f"probe {row}", flush=True)
            return
        print(f"{row.get('architecture')} {row['seq']} {row['label']}: {row.get('tokens_per_s')} tokens/s, "
              f"{row.get('peak_allocated_gib')} / {row.get('peak_reserved_gib')} GiB {row.get('error', '')}",
              flush=True)

    started = time.time()
    bench = Bench(recipe, model_dir, arch, emit=emit)
    log.info("%s loaded in %.0f s", model_dir, time.time() - started)
    bench.row(reference_seq // scale, 1, SpeedOptions.off(), "reference", warmup=2, steps=3)
    probe = None if seqs else probe_causal_mask(bench)
    if probe:
        emit(probe)
    ours = recipe.speed

    def measure(row: Row, end: float):
        if time.time() + row.seconds > end:
            log.warning("skipped (time budget): %s at %d", row.label, row.seq)
            return
        try:
            bench.row(row.seq // scale, 1, ours.replace(**row.options), row.label, warmup=row.warmup, steps=row.steps)
        except Exception as exc:  # noqa: BLE001 - one failed row must not cost the call's other rows
            log.exception("row failed: %s at %d", row.label, row.seq)
            emit({"path": "reviewgpt", "label": row.label, "recipe": recipe.name, "architecture": arch.name,
                  "seq": row.seq // scale, "batch": 1, "error": f"{type(exc).__name__}: {exc}"[:300]})
            free_gpu(exc)

    if seqs:
        rows = [r for r in rows if r.seq in seqs and not r.optional]
    for row in (r for r in rows if not r.optional):
        measure(row, hard_end)
    for seq in fresh_references:  # first of the optional: a child loads the model again (~40 s), then 5 steps
        if time.time() + 80 > budget_end:
            log.warning("skipped (time budget): reference at %d in a fresh process", seq)
            continue
        emit(reference_in_fresh_process(recipe, model_dir, seq // scale, 1, steps=3, warmup=2))
    for row in (r for r in rows if r.optional):
        measure(row, budget_end)
    return 0


def _fmt(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list, scale: int = 1) -> str:
    """Every row with its ratio to the reference of the same call, then the targets (sequences of
    the targets divided by `scale`, as `run --tiny` divides them)."""
    reference = {(r["recipe"], r["seq"], r["batch"]): r for r in rows
                 if r["label"] == "reference" and r.get("fresh_process", True)}
    gpus = sorted({r.get("gpu") for r in rows if r.get("gpu")})
    out = [f"card: {', '.join(gpus) or 'unknown'}", "",
           "| model | seq | row | tokens/s | vs reference | alloc GiB | reserved GiB | planner alloc / reserved "
           "| error alloc / reserved | host pinned GiB (planner) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = reference.get((r["recipe"], r["seq"], r["batch"]))
        ratio = r["tokens_per_s"] / ref["tokens_per_s"] if ref and r.get("tokens_per_s") and ref.get(
            "tokens_per_s") else None
        pred = r.get("predicted") or {}
        errors = [(r.get(k) - pred[p]) / r.get(k) if r.get(k) and pred.get(p) else None
                  for k, p in (("peak_allocated_gib", "allocated_gib"), ("peak_reserved_gib", "reserved_gib"))]
        label = r["label"] + (" (in-process, after another row)" if r["label"] == "reference"
                              and not r.get("fresh_process", True) else "")
        label += f" ({r['error']})" if r.get("error") else ""
        out.append(f"| {r['architecture']} | {r['seq']} | {label} "
                   f"| {_fmt(r.get('tokens_per_s'), '.0f')} | {_fmt(ratio, '.2f')} "
                   f"| {_fmt(r.get('peak_allocated_gib'))} | {_fmt(r.get('peak_reserved_gib'))} "
                   f"| {_fmt(pred.get('allocated_gib'))} / {_fmt(pred.get('reserved_gib'))} "
                   f"| {_fmt(errors[0], '+.1%')} / {_fmt(errors[1], '+.1%')} | {_fmt(pred.get('host_pinned_gib'))} |")
    out += ["", "| target | best row | value | met? |", "|---|---|---|---|"]
    for (recipe, seq), want in TARGETS.items():
        seq //= scale
        ours = [r for r in rows if r["recipe"] == recipe and r["seq"] == seq and r["batch"] == 1
                and r["label"] != "reference" and r.get("tokens_per_s")]
        ref = reference.get((recipe, seq, 1))
        arch = ours[0]["architecture"] if ours else recipe
        if "ratio" in want:
            best = max(ours, key=lambda r: r["tokens_per_s"], default=None)
            value = best["tokens_per_s"] / ref["tokens_per_s"] if best and ref and ref.get("tokens_per_s") else None
            out.append(f"| {arch} {seq} b1 >= {want['ratio']}x reference | {best['label'] if best else '-'} "
                       f"| {_fmt(value, '.2f')}x | {'yes' if value and value >= want['ratio'] else 'no'} |")
        else:
            fits = [r for r in ours if r.get("peak_reserved_gib") is not None
                    and r["peak_reserved_gib"] <= want["reserved"]
                    and r["tokens_per_s"] >= want.get("tokens_per_s", 0)]
            best = max(fits or ours, key=lambda r: r["tokens_per_s"], default=None)
            goal = f"<= {want['reserved']} GiB reserved" + (
                f", >= {want['tokens_per_s']} tokens/s" if "tokens_per_s" in want else "")
            value = f"{best['peak_reserved_gib']} GiB, {best['tokens_per_s']:.0f} tokens/s" if best else "-"
            out.append(f"| {arch} {seq} b1 {goal} | {best['label'] if best else '-'} | {value} "
                       f"| {'yes' if fits else 'no'} |")
    errors = [abs(r["peak_allocated_gib"] - r["predicted"]["allocated_gib"]) / r["peak_allocated_gib"]
              for r in rows if r.get("peak_allocated_gib") and r.get("predicted")]
    worst = max(errors, default=None)
    out.append(f"| planner within 10% (allocated) on every row | all {len(errors)} rows | worst {_fmt(worst, '.1%')} "
               f"| {'yes' if worst is not None and worst <= 0.10 else 'no'} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="measure one model's rows")
    r.add_argument("family", choices=sorted(PLANS))
    r.add_argument("--output", required=True, type=Path, help="JSON lines are appended here")
    r.add_argument("--budget-end", type=float, default=float("inf"),
                   help="unix time after which optional rows are skipped")
    r.add_argument("--hard-end", type=float, default=float("inf"),
                   help="unix time after which no row starts (the device call's limit)")
    r.add_argument("--fresh-reference", type=int, action="append", default=[], metavar="SEQ",
                   help="at the end, if the budget allows: the reference at SEQ in a fresh process")
    r.add_argument("--weights-dir", help="where the random weights are made once (default: the temp folder)")
    r.add_argument("--tiny", help="a tiny local model directory: the same plan on the CPU, sequences / 256")
    r.add_argument("--seq", type=int, action="append", default=[], dest="seqs",
                   help="only the core rows at this sequence length (repeatable): a confirmation call")
    t = sub.add_parser("table", help="print the rows and the target table")
    t.add_argument("jsonl", type=Path)
    t.add_argument("--scale", type=int, default=1, help="256 for the rows of `run --tiny`")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "run":
        return run(args.family, args.output, args.budget_end, args.hard_end, args.tiny, args.fresh_reference, args.seqs,
                   args.weights_dir)
    rows = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
    print(table([r for r in rows if "probe" not in r], args.scale))
    for probe in (r for r in rows if "probe" in r):
        print(f"\nprobe: transformers 4.38.2 `_update_causal_mask` of {probe['architecture']} at {probe['seq']} tokens "
              f"(buffer {probe['buffer_side_before']}^2 on {probe['buffer_device_before']}, then on "
              f"{probe['buffer_device_after']}): {probe['seconds']} s per call (one call per forward)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
