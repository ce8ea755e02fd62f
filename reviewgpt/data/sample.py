"""A small, synthetic paper-review data set that reviewgpt writes itself.

No data can be downloaded at run time, and real papers stay their authors' property, so the
quickstart and the tests use these generated records: markdown-ish papers (title, abstract,
sections) and reviews that cover the four criteria. Deterministic for a given seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TOPICS = [
    ("sparse attention", "long documents", "memory"),
    ("contrastive pretraining", "image retrieval", "label noise"),
    ("graph neural networks", "molecule property prediction", "over-smoothing"),
    ("low-rank adaptation", "instruction tuning", "catastrophic forgetting"),
    ("curriculum learning", "reinforcement learning", "sample efficiency"),
    ("quantization", "on-device inference", "accuracy loss"),
    ("data augmentation", "speech recognition", "domain shift"),
    ("mixture of experts", "machine translation", "load balancing"),
    ("diffusion models", "image synthesis", "sampling speed"),
    ("meta-learning", "few-shot classification", "task ambiguity"),
    ("pruning", "convolutional networks", "latency"),
    ("retrieval augmentation", "question answering", "hallucination"),
]
SECTIONS = ["Introduction", "Related Work", "Method", "Experiments", "Conclusion"]
SENTENCES = [
    "We study {a} for {b} and show that it reduces {c}.",
    "Prior work on {b} treats {c} as a fixed cost; we argue it can be learned.",
    "Our method combines {a} with a simple regulariser that is cheap to compute.",
    "Experiments on three benchmarks show consistent gains over strong baselines.",
    "An ablation isolates the contribution of each component of the approach.",
    "We analyse failure cases where {c} dominates and {a} does not help.",
    "The training cost grows linearly with the input length.",
    "Code and hyper-parameters are given in the appendix.",
]


def _paper(rng: random.Random, index: int, topic) -> tuple:
    a, b, c = topic
    title = f"{a.title()} for {b.title()}: Study {index}"
    parts = [f"# {title}", "", "## Abstract", " ".join(s.format(a=a, b=b, c=c) for s in rng.sample(SENTENCES, 3))]
    for section in SECTIONS:
        n = rng.randint(2, 5)
        parts += ["", f"## {section}", " ".join(rng.choice(SENTENCES).format(a=a, b=b, c=c) for _ in range(n))]
    return title, "\n".join(parts)


def _review(rng: random.Random, topic, reviewer: int) -> str:
    a, b, c = topic
    verdict = rng.choice(["a clear accept", "borderline", "a weak reject"])
    return (
        f"Importance and novelty: applying {a} to {b} is {rng.choice(['timely', 'incremental', 'novel'])}.\n"
        f"Reasons for acceptance: the experiments are {rng.choice(['thorough', 'convincing', 'clean'])} "
        f"and the method is simple.\n"
        f"Reasons for rejection: the treatment of {c} is {rng.choice(['shallow', 'unclear', 'limited'])}.\n"
        f"Suggestions for improvement: add {rng.choice(['an ablation', 'error bars', 'a larger baseline'])} "
        f"and discuss {c}.\nOverall, as reviewer {reviewer}, I find this {verdict}."
    )


def sample_records(n_papers: int = 24, reviews_per_paper: int = 2, seed: int = 0) -> list:
    rng = random.Random(seed)
    records = []
    for i in range(n_papers):
        topic = TOPICS[i % len(TOPICS)]
        title, paper = _paper(rng, i, topic)
        for j in range(reviews_per_paper):
            records.append({"id": f"paper{i:03d}_r{j}", "paper_id": f"paper{i:03d}", "title": title,
                            "paper": paper, "review": _review(rng, topic, j + 1)})
    return records


def write_sample(path, n_papers: int = 24, reviews_per_paper: int = 2, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in sample_records(n_papers, reviews_per_paper, seed):
            f.write(json.dumps(record) + "\n")
    return path
