"""`reviewgpt judge` end to end: pairs -> judgments (cached) -> verdicts JSONL + summary.

Every pair is judged twice, candidate as A then as B. Judgments already in the cache are not
asked again; the rest run on a thread pool of `concurrency` workers (1 for a local model), and
each one is cached by the worker that got it. Output files in `output_dir`:

- `verdicts.cache.jsonl`  every judgment as it arrived (see `cache.py`)
- `verdicts.jsonl`        one line per pair: both orders' winners and reasons, scores, coverage
- `summary.json`, `summary.md`  win rates, intervals, position consistency, coverage
- `judge_prompt.txt`      the judge prompt and its version

(verdicts.jsonl and the summaries are written by `outputs.py`.)
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

from reviewgpt.eval.judge.cache import CACHE_FILE, VerdictCache, cache_key
from reviewgpt.eval.judge.client import JudgeRequestError
from reviewgpt.eval.judge.data import Pair, load_paper_texts, load_reviews, make_pairs
from reviewgpt.eval.judge.outputs import _finite, _write_outputs  # noqa: F401 - _finite: read here too
from reviewgpt.eval.judge.prompt import (
    JUDGE_PROMPT_VERSION,
    UnparsableVerdict,
    build_messages,
    parse_verdict,
    prompt_text,
    trim_paper,
)
from reviewgpt.eval.judge.stats import CANDIDATE_POSITION

log = logging.getLogger(__name__)

RAW_ANSWER_KEPT = 4000  # characters of an unparsable answer kept for inspection


@dataclass(frozen=True)
class JudgeRunConfig:
    output_dir: str = field(metadata={"help": "folder for verdicts, cache and summary"})
    pairing: str = field(
        default="first",
        metadata={
            "help": "first: each candidate vs the paper's first "
            "reference review; all: vs every reference review"
        },
    )
    paper_chars: int = field(
        default=6000, metadata={"help": "characters of the paper shown to the judge (0: none)"}
    )
    concurrency: int = field(default=4, metadata={"help": "requests in flight at once"})
    parse_retries: int = field(default=2, metadata={"help": "re-asks of an answer not in the asked format"})
    retry_unparsable: bool = field(default=False, metadata={"help": "re-ask judgments cached as unparsable"})
    limit: int | None = field(default=None, metadata={"help": "judge at most this many pairs"})

    def __post_init__(self):
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, not {self.concurrency!r}")
        if self.parse_retries < 0:
            raise ValueError(f"parse_retries must be >= 0, not {self.parse_retries!r}")
        if self.paper_chars < 0:
            raise ValueError(f"paper_chars must be >= 0 (0: no paper), not {self.paper_chars!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, not {self.limit!r}")


@dataclass(frozen=True)
class Task:
    pair_index: int
    order: str  # "AB": candidate is A; "BA": candidate is B
    messages: tuple
    key: str
    paper_trimmed: bool = False  # the paper was cut to the judge model's context (local judges)


def build_tasks(pairs: List[Pair], judge_identity: str, paper_chars: int, fit_paper=None) -> List[Task]:
    """Both orders of every pair; `fit_paper(review_a, review_b, paper) -> (paper, trimmed)` (a local
    judge's) cuts the paper to the model's context, in tokens, after `paper_chars` cut it in characters."""
    tasks = []
    for index, pair in enumerate(pairs):
        paper, trimmed = trim_paper(pair.paper, paper_chars), False
        if fit_paper is not None:
            paper, trimmed = fit_paper(pair.candidate.review, pair.reference.review, paper)
        for order in CANDIDATE_POSITION:
            a, b = (pair.candidate, pair.reference) if order == "AB" else (pair.reference, pair.candidate)
            messages = build_messages(a.review, b.review, paper)
            tasks.append(
                Task(index, order, tuple(messages), cache_key(judge_identity, JUDGE_PROMPT_VERSION, messages),
                     trimmed)
            )
    return tasks


def ask(backend, messages: List[Dict[str, str]], parse_retries: int) -> dict:
    """One judgment: {"status": "ok"|"unparsable", "verdict", "raw", "attempts", "error"}.
    Raises JudgeRequestError when the judge cannot be reached (the judgment stays missing)."""
    if getattr(backend, "returns_verdicts", False):
        return {
            "status": "ok",
            "verdict": backend.verdict(messages).to_dict(),
            "raw": None,
            "attempts": 1,
            "error": None,
        }
    problem, answer = "", ""
    for attempt in range(1, parse_retries + 2):
        answer = backend.complete(messages)
        try:
            verdict = parse_verdict(answer)
        except UnparsableVerdict as exc:
            problem = str(exc)
            log.info("unparsable judgment (attempt %d/%d): %s", attempt, parse_retries + 1, problem)
            continue
        return {
            "status": "ok",
            "verdict": verdict.to_dict(),
            "raw": answer[:RAW_ANSWER_KEPT],
            "attempts": attempt,
            "error": None,
        }
    return {
        "status": "unparsable",
        "verdict": None,
        "raw": answer[:RAW_ANSWER_KEPT],
        "attempts": parse_retries + 1,
        "error": problem,
    }


def _ask_and_cache(
    backend, task: Task, pair: Pair, cache: VerdictCache, config: JudgeRunConfig, identity: str
):
    try:
        result = ask(backend, list(task.messages), config.parse_retries)
    except JudgeRequestError as exc:
        log.warning("paper %s order %s: %s", pair.paper_id, task.order, exc)
        return task, {"status": "missing", "error": str(exc)}
    entry = {
        "key": task.key,
        "judge": identity,
        "prompt_version": JUDGE_PROMPT_VERSION,
        "paper_id": pair.paper_id,
        "candidate_id": pair.candidate.review_id,
        "reference_id": pair.reference.review_id,
        "order": task.order,
        **result,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    cache.put(entry)  # at once: a crash after this line loses nothing
    return task, entry


def _run_pending(backend, pending: List[Task], pairs: List[Pair], cache, config, identity, progress) -> Dict:
    from tqdm.auto import tqdm

    results = {}
    workers = 1 if getattr(backend, "single_threaded", False) else config.concurrency
    bar = tqdm(total=len(pending), desc="judging", unit="judgment", disable=not progress)
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge")
    try:
        futures = {
            executor.submit(_ask_and_cache, backend, t, pairs[t.pair_index], cache, config, identity)
            for t in pending
        }
        while futures:
            done, futures = wait(futures, timeout=0.5, return_when=FIRST_EXCEPTION)
            for future in done:
                task, entry = future.result()  # re-raises a UserError (bad key, unknown model): stop the run
                results[task.key] = entry
                bar.update(1)
    except BaseException:
        # Ctrl-C or a fatal error: drop what has not started and stop retrying; answers already on the
        # wire still arrive and are cached.
        if hasattr(backend, "cancel"):
            backend.cancel()
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
    executor.shutdown(wait=True)
    return results


def run_judge(
    candidate_path, reference_path, backend, config: JudgeRunConfig, papers_path=None, progress: bool = True
) -> dict:
    """Judge every pair (asking only what the cache lacks) and write the results; returns the summary."""
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    candidates, references = load_reviews(candidate_path), load_reviews(reference_path)
    papers = load_paper_texts(papers_path) if papers_path else {}
    pairs = make_pairs(candidates, references, config.pairing, papers)
    if config.limit is not None:
        pairs = pairs[: config.limit]
    if not pairs:
        from reviewgpt.errors import UserError

        raise UserError(
            f"no paper is in both {candidate_path} and {reference_path} (matched by 'paper_id', "
            "else 'id'); check that both files describe the same papers."
        )
    identity = backend.identity
    (output_dir / "judge_prompt.txt").write_text(prompt_text(), encoding="utf-8")
    cache = VerdictCache(output_dir / CACHE_FILE)
    tasks = build_tasks(pairs, identity, config.paper_chars, getattr(backend, "fit_paper", None))
    trimmed = sum(t.paper_trimmed for t in tasks if t.order == "AB")
    if trimmed:
        log.info("%d paper(s) trimmed to the judge's context of %d tokens", trimmed, backend.context_tokens)

    def needs_asking(task: Task) -> bool:
        entry = cache.get(task.key)
        return entry is None or (config.retry_unparsable and entry.get("status") == "unparsable")

    pending = [t for t in tasks if needs_asking(t)]
    log.info(
        "%d pairs, %d judgments: %d cached, %d to ask",
        len(pairs),
        len(tasks),
        len(tasks) - len(pending),
        len(pending),
    )
    fresh = _run_pending(backend, pending, pairs, cache, config, identity, progress) if pending else {}

    per_pair: List[Dict[str, dict]] = [{} for _ in pairs]
    for task in tasks:
        per_pair[task.pair_index][task.order] = (
            cache.get(task.key) or fresh.get(task.key) or {"status": "missing"}
        )
    summary = _write_outputs(
        output_dir, pairs, per_pair, candidates, references, identity, config, candidate_path, reference_path,
        papers_trimmed=trimmed,
    )
    summary["asked"] = len(pending)
    summary["judge_gone"] = getattr(backend, "gave_up", None)  # why the client stopped asking, if it did
    return summary
