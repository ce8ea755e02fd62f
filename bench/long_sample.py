"""Write sample records whose papers are long enough to fill an 8K-token example (device script)."""

import json
import sys

from reviewgpt.data.sample import sample_records

path, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 16
with open(path, "w", encoding="utf-8") as f:
    for r in sample_records(n_papers=n, reviews_per_paper=1, seed=3):
        r["paper"] = (r["paper"] + "\n\n") * 12  # ~8K+ tokens: `train` trims the paper, keeps the review
        f.write(json.dumps(r) + "\n")
