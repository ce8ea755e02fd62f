"""Print issue 10's table from the folder scripts/device/quality.sh fills (also run locally on the
results it brings back): dev review NLL, scores, training tokens/s, per model."""

import json
import re
import sys
from pathlib import Path

q = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/q")


def last_json(path: Path):
    if not path.is_file():
        return None
    for line in reversed(path.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


rows = []
for name in ("a", "b", "c", "c2", "d", "c_merged_16bit", "c_merged_nf4"):
    ev = last_json(q / f"{name}_eval.log")
    sc = last_json(q / f"{name}_score.log")
    tr = json.loads((q / name / "train_summary.json").read_text()) if (q / name / "train_summary.json").is_file() \
        else None
    row = {"model": name, "nll": ev and ev["nll"], "nll_ci95": ev and ev["nll_ci95"],
           "review_tokens": ev and ev["review_tokens"], "template": ev and ev["template"]}
    if sc:
        m = sc["means"]
        row.update({k: m[k]["mean"] for k in ("rouge1", "rouge2", "rougeL", "coverage", "repetition", "words")})
    if tr:
        row.update({"steps": tr.get("global_step"), "tokens_per_s": tr.get("tokens_per_s"),
                    "train_tokens": tr.get("train_tokens"), "train_seconds": tr.get("seconds")})
    rows.append(row)
base = rows[0]["nll"]
print(f"{'model':<16}{'NLL':>8}{'vs a':>8}{'R-1':>7}{'R-2':>7}{'R-L':>7}{'cov':>6}{'rep4':>7}{'words':>7}{'tok/s':>9}")
for r in rows:
    if r["nll"] is None and "rouge1" not in r:
        continue
    rel = f"{(r['nll'] - base) / base:+.1%}" if r["nll"] and base else ""
    print(f"{r['model']:<16}{r['nll'] or float('nan'):>8.4f}{rel:>8}"
          + "".join(f"{r.get(k, float('nan')):>7.3f}" for k in ("rouge1", "rouge2", "rougeL"))
          + f"{r.get('coverage', float('nan')):>6.2f}{r.get('repetition', float('nan')):>7.3f}"
          + f"{r.get('words', float('nan')):>7.0f}{r.get('tokens_per_s') or float('nan'):>9.0f}")
(q / "table.json").write_text(json.dumps(rows, indent=1))
show = (q / "data_show.txt")
if show.is_file():
    print(re.sub(r"\s+", " ", show.read_text().splitlines()[1])[:200])
