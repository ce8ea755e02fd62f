"""The tables of docs/quality.md (issues 20 and 21) from what scripts/device/session.sh brings back
(its tarballs unpacked into one folder Q): dev review NLL and training figures per run, and the
decoding table (ROUGE, coverage, repetition, length, reviews that ended by themselves) per model and
decoding. Prints markdown and writes the raw figures as JSON.
    python scripts/device/tables.py Q docs/results/quality2_h200.json
"""

import json
import sys
from pathlib import Path

q = Path(sys.argv[1])
out = Path(sys.argv[2]) if len(sys.argv) > 2 else None


def last_json(path: Path):
    if not path.is_file():
        return None
    for line in reversed(path.read_text(errors="replace").splitlines()):
        line = line[line.find("{"):] if "{" in line else ""
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


runs = []
base_nll = (last_json(q / "base_eval.log") or {}).get("nll")
for log in sorted(q.glob("*_eval.log")):
    name = log.name[: -len("_eval.log")]
    ev = last_json(log) or {}
    summary = q / name / "train_summary.json"
    tr = json.loads(summary.read_text()) if summary.is_file() else {}
    runs.append({"run": name, "nll": ev.get("nll"), "nll_ci95": ev.get("nll_ci95"),
                 "review_tokens": ev.get("review_tokens"),
                 "vs_base": None if not (base_nll and ev.get("nll")) else round(100 * (ev["nll"] / base_nll - 1), 2),
                 "global_step": tr.get("global_step"), "best_step": tr.get("best_step"),
                 "train_seconds": tr.get("seconds"), "tokens_per_s": tr.get("tokens_per_s"),
                 "peak_allocated_gib": tr.get("peak_allocated_gib_per_gpu")})

decodings = []
for review_file in sorted((q / "dec").glob("*.jsonl")):
    model, decoding = review_file.stem.split("__")
    score = q / "dec" / f"{review_file.stem}.score" / "score.json"
    rows = [json.loads(line) for line in review_file.read_text().splitlines() if line.strip()]
    summary = last_json(q / "dec" / f"{review_file.stem}.review.log") or {}
    scored = json.loads(score.read_text()) if score.is_file() else {}
    means, rating = scored.get("means", {}), scored.get("rating") or {}
    decodings.append({
        "model": model, "decoding": decoding, "reviews": len(rows),
        "ended_by_themselves": sum(r.get("finish_reason") == "stop" for r in rows),
        **{k: (v["mean"] if isinstance(v, dict) else v) for k, v in means.items()},
        "generated_tokens_per_s": summary.get("generated_tokens_per_s"), "engine": summary.get("engine"),
        **({"rating": {"rated": rating.get("rated"), **rating.get("model", {}), "constant": rating.get("constant"),
                       "humans": rating.get("humans")}} if rating.get("rated") else {})})

print("| run | dev NLL (95% CI) | vs base | steps (best) | train s | tokens/s | peak GiB |")
print("|---|---|---|---|---|---|---|")
for r in runs:
    ci = r["nll_ci95"] or [None, None]
    print(f"| {r['run']} | {r['nll']} ({ci[0]}-{ci[1]}) | {r['vs_base']}% | {r['global_step']} ({r['best_step']}) | "
          f"{r['train_seconds']} | {r['tokens_per_s']} | {r['peak_allocated_gib']} |")
print()
print("| model | decoding | R-1 | R-2 | R-L | coverage | rep. 4-grams | words | length ratio | ended | tok/s |")
print("|---|---|---|---|---|---|---|---|---|---|---|")

def pct(d, key):
    return "" if d.get(key) is None else f"{100 * d[key]:.1f}"


for d in decodings:
    print(f"| {d['model']} | {d['decoding']} | {pct(d, 'rouge1')} | {pct(d, 'rouge2')} | {pct(d, 'rougeL')} | "
          f"{pct(d, 'coverage')} | {pct(d, 'repetition')} | {d.get('words', 0):.0f} | {d.get('length_ratio', 0):.2f} | "
          f"{d['ended_by_themselves']} of {d['reviews']} | {d['generated_tokens_per_s']} |")
if out:
    out.write_text(json.dumps({"runs": runs, "decodings": decodings}, indent=1) + "\n")
