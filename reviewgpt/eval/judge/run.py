"""`reviewgpt judge` end to end: pairs -> judgments (cached) -> verdicts JSONL + summary.

Every pair is judged twice, candidate as A then as B. Judgments already in the cache are not
asked again; the rest run on `concurrency` daemon threads (1 for a local model; an HTTP judge may
send fewer at once after timeouts, `eval/http.py`), and each one is cached by the worker that got
it. On Ctrl-C or a fatal error the run stops at once: the verdicts that arrived are in the cache,
the requests in flight are abandoned (`eval/workers.py`). Output files in `output_dir`, each written
under a temporary name and renamed into place (`reviewgpt.files`):

- `verdicts.cache.jsonl`  every judgment as it arrived (see `cache.py`)
- `verdicts.jsonl`        one line per pair: both orders' winners and reasons, scores, coverage
- `summary.json`, `summary.md`  win rates, intervals, position consistency, coverage
- `judge_prompt.txt`      the judge prompt and its version

(verdicts.jsonl and the summaries are written by `outputs.py`.)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

from reviewgpt.errors import UserError
from reviewgpt.eval.http import RequestFailed
from reviewgpt.eval.judge.cache import CACHE_FILE, VerdictCache, cache_key
from reviewgpt.eval.judge.data import Pair, ReviewEntry, load_paper_texts, load_reviews, make_pairs
from reviewgpt.eval.judge.outputs import JudgedPairs, write_outputs
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
    Raises RequestFailed when the judge cannot be reached (the judgment stays missing)."""
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


def _ask_and_cache(backend, task: Task, pair: Pair, cache: VerdictCache, config: JudgeRunConfig,
                   identity: str) -> dict:
    try:
        result = ask(backend, list(task.messages), config.parse_retries)
    except RequestFailed as exc:
        # Once the client stopped (the judge given up on, Ctrl-C), every judgment left fails the same way:
        # one warning (or the interruption) said it already.
        level = logging.DEBUG if getattr(backend, "stopped", False) else logging.WARNING
        log.log(level, "paper %s order %s: %s", pair.paper_id, task.order, exc)
        return {"status": "missing", "error": str(exc)}
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
    return entry


def _run_pending(backend, pending: List[Task], pairs: List[Pair], cache, config, identity, progress) -> Dict:
    from tqdm.auto import tqdm

    from reviewgpt.eval.workers import run_on_daemon_threads

    results = {}
    bar = tqdm(total=len(pending), desc="judging", unit="judgment", disable=not progress)

    def arrived(task: Task, entry: dict) -> None:
        results[task.key] = entry
        bar.update(1)

    try:
        run_on_daemon_threads(
            pending, lambda t: _ask_and_cache(backend, t, pairs[t.pair_index], cache, config, identity),
            _workers(backend, config), arrived, name="judge")
    except BaseException:
        # Ctrl-C or a fatal error (a refused key or request): no retry, nothing new sent, and no verdict
        # write cut off by the exit; the requests still on the wire are abandoned (a rerun asks them).
        if hasattr(backend, "cancel"):
            backend.cancel()
        cache.close()
        raise
    finally:
        bar.close()
    return results


def _workers(backend, config: JudgeRunConfig) -> int:
    return 1 if getattr(backend, "single_threaded", False) else config.concurrency


def _without_reference(candidates: List[ReviewEntry], references: List[ReviewEntry], reference_path) -> int:
    """How many candidate papers have no reference review (not judged); said once, as a warning."""
    candidate_papers = list(dict.fromkeys(c.paper_id for c in candidates))
    referenced = {r.paper_id for r in references}
    lacking = [p for p in candidate_papers if p not in referenced]
    if lacking:
        shown = ", ".join(lacking[:3]) + (", ..." if len(lacking) > 3 else "")
        log.warning("%d of %d candidate papers have no reference review in %s and are not judged (%s)",
                    len(lacking), len(candidate_papers), reference_path, shown)
    return len(lacking)


def run_judge(
    candidate_path, reference_path, backend, config: JudgeRunConfig, papers_path=None, progress: bool = True
) -> dict:
    """Judge every pair (asking only what the cache lacks) and write the results; returns the summary."""
    from reviewgpt.files import atomic_write_text, remove_stale_temporaries

    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output_dir)  # left by a run killed while writing its summary
    candidates, references = load_reviews(candidate_path), load_reviews(reference_path)
    papers = load_paper_texts(papers_path) if papers_path else {}
    pairs = make_pairs(candidates, references, config.pairing, papers)
    if config.limit is not None:
        pairs = pairs[: config.limit]
    if not pairs:
        raise UserError(
            f"no paper is in both {candidate_path} and {reference_path} (matched by 'paper_id', "
            "else 'id'); check that both files describe the same papers."
        )
    without_reference = _without_reference(candidates, references, reference_path)
    identity = backend.identity
    atomic_write_text(output_dir / "judge_prompt.txt", prompt_text())
    cache = VerdictCache(output_dir / CACHE_FILE)
    tasks = build_tasks(pairs, identity, config.paper_chars, getattr(backend, "fit_paper", None))
    trimmed = sum(t.paper_trimmed for t in tasks if t.order == "AB")
    if trimmed:
        log.info("%d paper(s) trimmed to the judge's context of %d tokens", trimmed, backend.context_tokens)

    def needs_asking(task: Task) -> bool:
        entry = cache.get(task.key)
        return entry is None or (config.retry_unparsable and entry.get("status") == "unparsable")

    pending = [t for t in tasks if needs_asking(t)]
    log.info("%d pairs, %d judgments: %d cached, %d to ask", len(pairs), len(tasks), len(tasks) - len(pending),
             len(pending))
    fresh = _run_pending(backend, pending, pairs, cache, config, identity, progress) if pending else {}

    per_pair: List[Dict[str, dict]] = [{} for _ in pairs]
    for task in tasks:
        per_pair[task.pair_index][task.order] = (
            cache.get(task.key) or fresh.get(task.key) or {"status": "missing"}
        )
    workers = _workers(backend, config)
    lowered_to = getattr(backend, "concurrency_limit", None)  # an HTTP judge's, after timeouts
    this_run = {
        "judgments_asked": len(pending),
        "judgments_answered": sum(e.get("status") in ("ok", "unparsable") for e in fresh.values()),
        "judgments_cached": len(tasks) - len(pending),
        "concurrency": workers,
        "concurrency_final": min(workers, lowered_to or workers),
        "judge_gone": getattr(backend, "gave_up", None),  # why the client stopped asking, if it did
    }
    judged = JudgedPairs(
        pairs=pairs, per_pair=per_pair, candidates=candidates, references=references, identity=identity,
        candidate_path=str(candidate_path), reference_path=str(reference_path), pairing=config.pairing,
        paper_chars=config.paper_chars, limit=config.limit, papers_trimmed=trimmed,
        candidate_papers_without_reference=without_reference, this_run=this_run)
    return write_outputs(output_dir, judged)
