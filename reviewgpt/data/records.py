"""Paper-review records: load, validate, de-duplicate, split by paper, export.

Accepted shapes, per record (JSONL: one object a line; JSON: a list of objects; either may be
gzip-compressed, `.jsonl.gz`):
  {"paper": ..., "review": ...}                  reviewgpt / ICLR data
  {"input": ..., "output": ...}                  the reference recipe's jsonl
  {"instruction": ..., "input": ..., "output": ...}  Alpaca (LLaMA-Factory)
Optional: "id", "paper_id" (records sharing a paper_id stay on one side of the split; without
it, records with the same paper text share a paper); "rating" (the reviewer's 1-10 score: kept when it
is an integer 1-10, else counted as unusable, `reviewgpt.data.rating`) and "decision" (the paper's).

Every problem is reported with file:line and the field, so a user can fix the line; with
`skip_invalid` the bad records are counted and returned for a rejects file instead.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from reviewgpt.data.rating import usable_rating
from reviewgpt.errors import UserError
from reviewgpt.files import atomic_write_text

PAPER_KEYS = ("paper", "input")
REVIEW_KEYS = ("review", "output")


@dataclass(frozen=True)
class Record:
    id: str
    paper_id: str
    paper: str
    review: str
    source: str = ""  # "file:line", for messages
    rating: Optional[int] = None  # the reviewer's score, 1-10 (reviewgpt.data.rating.usable_rating)
    decision: Optional[str] = None  # the paper's decision as the file spells it ("Accept (Poster)", ...)


@dataclass(frozen=True)
class Rejected:
    source: str
    error: str
    raw: str


@dataclass
class LoadResult:
    records: List[Record] = field(default_factory=list)
    rejected: List[Rejected] = field(default_factory=list)
    duplicates: int = 0
    total: int = 0  # objects (or lines) seen, valid or not
    unusable_ratings: List[str] = field(default_factory=list)  # sources of valid records whose rating is not 1-10


def text_digest(*parts: str) -> str:
    """16 hex digits of sha256 over the parts (each ended by a NUL): a paper's or record's id when the
    file gives none, and the records' digest."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def _json_problem(exc: json.JSONDecodeError) -> str:
    # Some of json's messages end in "at" ("Unterminated string starting at"): say it once.
    return f"{exc.msg.removesuffix(' at')} at column {exc.colno}"


class _BadJson(str):
    """A line that is not valid JSON: the parser's message stands in for the object."""


def read_text(path: Path) -> str:
    """A data file's text; `.gz` files are decompressed (gzip)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; pass a .jsonl, .jsonl.gz or .json file of records.") from None
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise UserError(f"{path}: not a readable gzip file ({exc}); re-compress it or pass the plain file.") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8.") from None


def _raw_items(path: Path) -> Iterator[Tuple[str, object, str]]:
    """Yield (source "file:line", parsed object or _BadJson, raw text)."""
    text = read_text(path)
    stripped = text.lstrip()
    suffix = Path(path.stem).suffix if path.suffix == ".gz" else path.suffix
    if suffix == ".json" or stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{path}:{exc.lineno}: not valid JSON ({_json_problem(exc)}); "
                "fix the file or write one record per line as JSONL."
            ) from None
        if not isinstance(items, list):
            raise UserError(f"{path}: a .json data file must hold a list of records, not a {type(items).__name__}.")
        for index, item in enumerate(items):
            yield f"{path}:record {index + 1}", item, json.dumps(item, ensure_ascii=False)
        return
    # "\n" only: str.splitlines() also splits at U+2028 and other separators that JSON strings may hold.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{lineno}", json.loads(line), line
        except json.JSONDecodeError as exc:
            yield f"{path}:{lineno}", _BadJson(f"not valid JSON ({_json_problem(exc)})"), line


def json_objects(path) -> Iterator[Tuple[str, object]]:
    """(source "file:line", object) for every record of a JSONL or JSON-list file; a line that is
    not valid JSON stops with its file:line (readers that may skip bad lines use `_raw_items`)."""
    for source, obj, _raw in _raw_items(Path(path)):
        if isinstance(obj, _BadJson):
            raise UserError(f"{source}: {obj}; fix the line.")
        yield source, obj


def _pick(obj: dict, keys: Tuple[str, ...]) -> Tuple[Optional[str], object]:
    for key in keys:
        if key in obj:
            return key, obj[key]
    return None, None


def validate(obj: object, source: str) -> Record:
    """One raw JSON value -> Record, or UserError naming the source and the field."""
    if not isinstance(obj, dict):
        raise UserError(f"{source}: expected a JSON object with 'paper' and 'review', got {type(obj).__name__}.")
    paper_key, paper = _pick(obj, PAPER_KEYS)
    review_key, review = _pick(obj, REVIEW_KEYS)
    if paper_key is None:
        raise UserError(f"{source}: field 'paper' (or 'input') is missing; every record needs the paper text.")
    if review_key is None:
        raise UserError(f"{source}: field 'review' (or 'output') is missing; every record needs the review text.")
    for key, value in ((paper_key, paper), (review_key, review)):
        if not isinstance(value, str):
            raise UserError(f"{source}: field {key!r} must be a string, got {type(value).__name__}.")
        if not value.strip():
            raise UserError(f"{source}: field {key!r} is empty.")
    if "instruction" in obj and not isinstance(obj["instruction"], str):
        raise UserError(f"{source}: field 'instruction' must be a string, got {type(obj['instruction']).__name__}.")
    for key in ("id", "paper_id"):
        if key in obj and not isinstance(obj[key], (str, int)):
            raise UserError(f"{source}: field {key!r} must be a string or an integer, got {type(obj[key]).__name__}.")
    paper_id = str(obj["paper_id"]) if "paper_id" in obj else "paper-" + text_digest(paper)
    record_id = str(obj["id"]) if "id" in obj else "rec-" + text_digest(paper, review)
    decision = obj.get("decision")
    return Record(id=record_id, paper_id=paper_id, paper=paper, review=review, source=source,
                  rating=usable_rating(obj.get("rating")), decision=decision if isinstance(decision, str) else None)


def load_records(path, skip_invalid: bool = False) -> LoadResult:
    """Read and validate every record of `path`; drop exact duplicates (same paper and review).

    Raises UserError at the first invalid record unless `skip_invalid`, in which case invalid
    records are returned in `rejected` (nothing is dropped silently).
    """
    path = Path(path)
    result = LoadResult()
    seen = set()
    for source, obj, raw in _raw_items(path):
        result.total += 1
        try:
            if isinstance(obj, _BadJson):
                raise UserError(f"{source}: {obj}.")
            record = validate(obj, source)
        except UserError as exc:
            if not skip_invalid:
                message = str(exc)
                if "--skip-invalid" not in message:
                    message = message.rstrip(".") + "; fix it or pass --skip-invalid to set it aside."
                raise UserError(message) from None
            result.rejected.append(Rejected(source=source, error=str(exc), raw=raw))
            continue
        key = (record.paper, record.review)
        if key in seen:
            result.duplicates += 1
            continue
        seen.add(key)
        result.records.append(record)
        if record.rating is None and obj.get("rating") is not None:
            result.unusable_ratings.append(source)
    if result.total == 0:
        raise UserError(f"{path}: the file holds no records.")
    return result


def write_rejects(rejected: List[Rejected], path) -> None:
    """The invalid records, whole (written under a temporary name, then renamed into place)."""
    atomic_write_text(path, "".join(json.dumps(asdict(item), ensure_ascii=False) + "\n" for item in rejected))


def records_digest(records: List[Record]) -> str:
    """What the records say, in order (ids, papers, reviews, ratings): a run folder records it, and a
    resume on other data is refused."""
    return text_digest(*(str(part) for r in records for part in (r.id, r.paper_id, r.paper, r.review, r.rating)))


def split_by_paper(records: List[Record], eval_fraction: float, seed: int = 0) -> Tuple[List[Record], List[Record]]:
    """Deterministic train/eval split in which no paper is on both sides.

    Papers are ordered by a hash of (seed, paper_id); the first ceil(fraction x papers) go to eval.
    The order of records within each side is the input order.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise UserError(f"eval_fraction must be in [0, 1), got {eval_fraction!r}.")
    papers = sorted({r.paper_id for r in records}, key=lambda pid: text_digest(str(seed), pid))
    n_eval = math.ceil(eval_fraction * len(papers)) if eval_fraction > 0 else 0
    if n_eval >= len(papers) and n_eval > 0:
        n_eval = len(papers) - 1  # always keep something to train on
    eval_papers = set(papers[:n_eval])
    train = [r for r in records if r.paper_id not in eval_papers]
    evals = [r for r in records if r.paper_id in eval_papers]
    return train, evals


def write_jsonl(records: List[Record], path) -> None:
    """Records as `reviewgpt train` reads them; rating and decision only where the record has them."""
    def row(r: Record) -> dict:
        extra = {k: v for k, v in (("rating", r.rating), ("decision", r.decision)) if v is not None}
        return {"id": r.id, "paper_id": r.paper_id, "paper": r.paper, "review": r.review, **extra}

    atomic_write_text(path, "".join(json.dumps(row(r), ensure_ascii=False) + "\n" for r in records))


def export_alpaca(out_dir, datasets: Dict[str, List[Record]]) -> Path:
    """Write LLaMA-Factory's Alpaca JSON per data set and one `dataset_info.json` registering them.

    The reference recipe trained Mistral through LLaMA-Factory this way: instruction = the
    reviewer instruction, input = the paper, output = the review. Returns dataset_info's path.
    The instruction ends in a newline: LLaMA-Factory joins it to the paper with another
    (reviewgpt.data.llamafactory), so the user turn reads `INSTRUCTION\n\nPAPER` as reviewgpt's do.
    """
    from reviewgpt.data.llamafactory import EXPORT_INSTRUCTION

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = {}
    for name, records in datasets.items():
        data_path = out_dir / f"{name}.json"
        rows = [{"instruction": EXPORT_INSTRUCTION, "input": r.paper, "output": r.review} for r in records]
        atomic_write_text(data_path, json.dumps(rows, ensure_ascii=False, indent=1))
        info[name] = {
            "file_name": data_path.name,
            "columns": {"prompt": "instruction", "query": "input", "response": "output"},
        }
    info_path = out_dir / "dataset_info.json"
    atomic_write_text(info_path, json.dumps(info, indent=2) + "\n")
    return info_path


@dataclass(frozen=True)
class Paper:
    id: str
    paper: str
    source: str = ""


def load_papers(path) -> List[Paper]:
    """Papers to review: records with 'paper' (or 'input'); one entry per paper.

    The id is the record's 'paper_id', else its 'id', else a hash of the text, so a data file with
    several reviews per paper yields each paper once.
    """
    path = Path(path)
    papers, seen = [], set()
    for source, obj in json_objects(path):
        if not isinstance(obj, dict):
            raise UserError(f"{source}: expected a JSON object with 'paper', got {type(obj).__name__}.")
        key, text = _pick(obj, PAPER_KEYS)
        if key is None:
            raise UserError(f"{source}: field 'paper' (or 'input') is missing; every line needs the paper text.")
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{source}: field {key!r} must be a non-empty string.")
        paper_id = str(obj.get("paper_id", obj.get("id", "paper-" + text_digest(text))))
        if paper_id in seen:
            continue
        seen.add(paper_id)
        papers.append(Paper(id=paper_id, paper=text, source=source))
    if not papers:
        raise UserError(f"{path}: the file holds no papers.")
    return papers
