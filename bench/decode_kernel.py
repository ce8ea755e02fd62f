"""The Triton decode attention (reviewgpt.eval.decode_attention) alone: its time per layer and the KV
cache bandwidth it reaches, for every tile candidate, against SDPA with the engine's mask; one JSON
line per row, then the best tile per shape.

    python bench/decode_kernel.py                       # SmolLM2's shape, 256 and 128 slots
    python bench/decode_kernel.py --shapes smol mistral gemma --write-best best.json

A shape is a model's attention (kv heads, query heads per kv head, head size); each slot holds a paper
of 6,000-8,191 tokens (cache capacity 8,192: 7,168-token prompts and 1,024 new tokens), and in the
rows marked "tail", a third of the slots are dead (length 0), as in a run's last steps. Bandwidth: the
live keys and values read, over the kernel's time (the mean of --repeats launches, CUDA events).
`--write-best` writes {head size: [keys per tile, warps, stages], "programs": n} for
`bench/generation_speed.py --kernel-tiles`, to measure a whole run with the tiles chosen here.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.nn import functional  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = {"smol": (3, 3, 64), "mistral": (8, 4, 128), "gemma": (16, 1, 256)}  # kv heads, groups, head size
CANDIDATES = {"block_n": (32, 64, 128), "warps": (2, 4, 8), "stages": (2, 3, 4)}


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


def timed(launch, repeats: int) -> float:
    """Mean milliseconds per launch."""
    launch()
    if DEVICE == "cpu":  # triton's interpreter (the test of this script): no events
        started = time.perf_counter()
        for _ in range(repeats):
            launch()
        return (time.perf_counter() - started) * 1e3 / repeats
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        launch()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def case(shape: str, slots: int, tail: bool, capacity: int, seed: int = 0):
    heads, groups, head_dim = SHAPES[shape]
    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    lengths = torch.randint(capacity * 3 // 4, capacity, (slots,), generator=generator, device=DEVICE)
    if tail:
        lengths[torch.randperm(slots, generator=generator, device=DEVICE)[:slots // 3]] = 0

    def normal(*size):
        return torch.randn(*size, generator=generator, device=DEVICE, dtype=torch.bfloat16)

    return normal(slots, heads, groups, head_dim), normal(slots, heads, capacity, head_dim), \
        normal(slots, heads, capacity, head_dim), lengths


def sdpa(q, keys, values, lengths):
    mask = (torch.arange(keys.shape[2], device=q.device) < lengths[:, None])[:, None, None]
    return functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["smol"], choices=sorted(SHAPES))
    parser.add_argument("--slots", nargs="+", type=int, default=[256, 128])
    parser.add_argument("--capacity", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--programs", nargs="+", type=int, default=[1024, 2048, 4096, 8192])
    parser.add_argument("--tiles", nargs="+", help="candidates as keys,warps,stages (default: every combination)")
    parser.add_argument("--write-best", type=Path)
    args = parser.parse_args(argv)
    candidates = [tuple(int(n) for n in tile.split(",")) for tile in args.tiles] if args.tiles \
        else list(itertools.product(*CANDIDATES.values()))
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print("bench/decode_kernel.py times the kernel on a CUDA GPU; none is visible here.", file=sys.stderr)
        return 2
    from reviewgpt.eval import decode_attention as kernel

    emit({"mode": "versions", "torch": torch.__version__,
          "gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else None})
    best_tiles = {}
    for shape in args.shapes:
        head_dim = SHAPES[shape][2]
        block_d = max(16, 1 << (head_dim - 1).bit_length())
        cases = [(slots, tail, case(shape, slots, tail, args.capacity))
                 for slots in args.slots for tail in (False, True)]
        default_tile, default_programs = kernel.TILES[block_d], kernel.PROGRAMS
        candidates_here = candidates if default_tile in candidates else [default_tile, *candidates]
        totals = {}
        for tile in candidates_here:
            kernel.TILES[block_d] = tile
            total = 0.0
            for slots, tail, tensors in cases:
                q, keys, values, lengths = tensors
                try:
                    got = kernel.decode_attention(*tensors)
                    ms = timed(lambda t=tensors: kernel.decode_attention(*t), args.repeats)
                except Exception as exc:  # noqa: BLE001 - a tile that does not fit (shared memory) is skipped
                    emit({"shape": shape, "tile": tile, "error": f"{type(exc).__name__}: {str(exc)[:120]}"})
                    total = float("inf")
                    break
                live = lengths > 0  # SDPA gives NaN for a dead slot (no key); the kernel, zeros
                error = (got[live].float() - sdpa(q, keys, values, lengths)[live].float()).abs().max().item()
                gigabytes = lengths.sum().item() * SHAPES[shape][0] * head_dim * 2 * 2 / 1e9
                emit({"shape": shape, "slots": slots, "tail": tail, "tile": tile, "programs": kernel.PROGRAMS,
                      "ms": round(ms, 4), "gb_per_s": round(gigabytes / ms * 1e3), "max_error": round(error, 4)})
                total += ms if error < 0.05 else float("inf")
            totals[tile] = total
        best = min(totals, key=totals.get)
        kernel.TILES[block_d] = best
        by_programs = {}
        for programs in args.programs:
            kernel.PROGRAMS = programs
            by_programs[programs] = sum(timed(lambda c=c: kernel.decode_attention(*c), args.repeats)
                                        for _, _, c in cases)
        kernel.PROGRAMS = default_programs
        for slots, tail, c in cases:
            emit({"shape": shape, "slots": slots, "tail": tail, "engine": "sdpa",
                  "ms": round(timed(lambda c=c: sdpa(*c), args.repeats), 4)})
        programs = min(by_programs, key=by_programs.get)
        emit({"shape": shape, "best_tile": best, "best_ms": round(totals[best], 4), "default_tile": default_tile,
              "default_ms": round(totals[default_tile], 4), "best_programs": programs,
              "ms_by_programs": {k: round(v, 4) for k, v in by_programs.items()}})
        best_tiles[str(block_d)] = list(best)
        best_tiles.setdefault("programs", programs)  # the first shape's: PROGRAMS is one for all
        kernel.TILES[block_d] = default_tile
        del cases
        torch.cuda.empty_cache()
    if args.write_best:
        args.write_best.write_text(json.dumps(best_tiles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
