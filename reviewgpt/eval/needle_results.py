"""needle.csv's rows (one per length x depth cell) and the depth x length heatmap drawn from them:
what `reviewgpt needle` writes and `reviewgpt report` reads back."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, List

CSV_FIELDS = [
    "length",
    "depth_percent",
    "needle_position",
    "tokens_needle_to_answer",
    "answer_loss",
    "answer_tokens",
    "retrieved",
    "generated",
]


def read_rows(csv_path) -> List[Dict]:
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["length"], r["depth_percent"] = int(r["length"]), float(r["depth_percent"])
        r["answer_loss"], r["retrieved"] = float(r["answer_loss"]), r["retrieved"] in ("True", True)
    return rows


def plot_heatmap(rows: List[Dict], png_path, title: str = "needle in a haystack") -> Path:
    """Depth x length heatmaps: answer loss (left) and retrieval (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lengths = sorted({r["length"] for r in rows})
    depths = sorted({r["depth_percent"] for r in rows})
    loss = np.full((len(depths), len(lengths)), math.nan)
    found = np.full((len(depths), len(lengths)), math.nan)
    for r in rows:
        i, j = depths.index(r["depth_percent"]), lengths.index(r["length"])
        loss[i, j], found[i, j] = r["answer_loss"], float(r["retrieved"])
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * len(lengths), 1.5 + 0.45 * len(depths)), squeeze=False)
    panels = (
        (loss, "answer loss (nats/token, lower = recalled)", "viridis_r", None),
        (found, "retrieved by greedy generation", "RdYlGn", (0, 1)),
    )
    for ax, (data, label, cmap, limits) in zip(axes[0], panels):
        image = ax.imshow(
            data,
            aspect="auto",
            cmap=cmap,
            origin="upper",
            vmin=limits[0] if limits else None,
            vmax=limits[1] if limits else None,
        )
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], rotation=45)
        ax.set_yticks(range(len(depths)), [f"{d:g}%" for d in depths])
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("needle depth")
        ax.set_title(label, fontsize=9)
        fig.colorbar(image, ax=ax)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return Path(png_path)
