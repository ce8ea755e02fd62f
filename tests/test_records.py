import json

import pytest

from reviewgpt.data.prompt import INSTRUCTION
from reviewgpt.data.records import export_alpaca, load_papers, load_records, split_by_paper, write_rejects
from reviewgpt.errors import UserError
from tests.util import write_jsonl

GOOD = {"paper": "a paper", "review": "a review"}


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"paper": "x", "review": ', r"data.jsonl:2: not valid JSON"),
        ('["paper", "review"]', r"data.jsonl:2: expected a JSON object .* got list"),
        ('{"review": "r"}', r"data.jsonl:2: field 'paper' \(or 'input'\) is missing"),
        ('{"paper": "p"}', r"data.jsonl:2: field 'review' \(or 'output'\) is missing"),
        ('{"paper": 3, "review": "r"}', r"data.jsonl:2: field 'paper' must be a string, got int"),
        ('{"paper": "p", "review": "  "}', r"data.jsonl:2: field 'review' is empty"),
        ('{"paper": "p", "review": "r", "id": [1]}', r"data.jsonl:2: field 'id' must be a string or an integer"),
        ('{"instruction": 5, "input": "p", "output": "r"}', r"data.jsonl:2: field 'instruction' must be a string"),
    ],
)
def test_each_invalid_record_is_named_by_file_line_and_field(tmp_path, line, message):
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD, line])
    with pytest.raises(UserError, match=message) as info:
        load_records(path)
    assert "--skip-invalid" in str(info.value)


def test_skip_invalid_counts_and_keeps_the_rejects(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD, '{"paper": "p"}', "not json", {"input": "i", "output": "o"}])
    result = load_records(path, skip_invalid=True)
    assert [r.paper for r in result.records] == ["a paper", "i"]
    assert [r.source for r in result.rejected] == [f"{path}:2", f"{path}:3"]
    write_rejects(result.rejected, tmp_path / "rejects.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert rows[1]["raw"] == "not json" and "not valid JSON" in rows[1]["error"]


def test_three_shapes_are_accepted(tmp_path):
    rows = [{"paper": "p1", "review": "r1"}, {"input": "p2", "output": "r2"},
            {"instruction": INSTRUCTION, "input": "p3", "output": "r3"}]
    result = load_records(write_jsonl(tmp_path / "d.jsonl", rows))
    assert [(r.paper, r.review) for r in result.records] == [("p1", "r1"), ("p2", "r2"), ("p3", "r3")]


def test_json_list_files_are_read_and_errors_name_the_record(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([GOOD, {"paper": "p"}]))
    with pytest.raises(UserError, match=r"d.json:record 2: field 'review'"):
        load_records(path)
    path.write_text('{"paper": "p", "review": "r"}')
    with pytest.raises(UserError, match="must hold a list of records"):
        load_records(path)


def test_exact_duplicates_are_removed_and_counted(tmp_path):
    result = load_records(write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, {"paper": "a paper", "review": "other"}]))
    assert result.duplicates == 1 and len(result.records) == 2 and result.total == 3


@pytest.mark.parametrize("content, message", [("", "holds no records"), ("\n\n", "holds no records")])
def test_empty_file_is_an_error(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_records(path)


def test_missing_and_non_utf8_files_are_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_records(tmp_path / "nope.jsonl")
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes('{"paper": "caf\xe9", "review": "r"}'.encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_records(bad)


def test_split_is_by_paper_deterministic_and_disjoint(sample_file):
    records = load_records(sample_file).records
    train, evals = split_by_paper(records, 0.25, seed=1)
    assert {r.paper_id for r in train}.isdisjoint({r.paper_id for r in evals})
    assert len(train) + len(evals) == len(records)
    assert len({r.paper_id for r in evals}) == 2  # ceil(0.25 x 8 papers)
    assert split_by_paper(records, 0.25, seed=1) == (train, evals)
    assert split_by_paper(records, 0.25, seed=2) != (train, evals)


def test_records_without_paper_id_share_a_paper_by_text(tmp_path):
    rows = [{"paper": "same", "review": "r1"}, {"paper": "same", "review": "r2"}, {"paper": "other", "review": "r3"}]
    records = load_records(write_jsonl(tmp_path / "d.jsonl", rows)).records
    assert records[0].paper_id == records[1].paper_id != records[2].paper_id
    train, evals = split_by_paper(records, 0.5)
    assert len(evals) in (1, 2) and {r.paper for r in evals} != {"same", "other"}


def test_alpaca_export_is_what_llama_factory_reads(tmp_path, sample_file):
    records = load_records(sample_file).records
    info_path = export_alpaca(tmp_path, {"paper_review": records[:3], "paper_review_eval": records[3:4]})
    info = json.loads(info_path.read_text())
    assert info["paper_review"] == {"file_name": "paper_review.json",
                                    "columns": {"prompt": "instruction", "query": "input", "response": "output"}}
    rows = json.loads((tmp_path / "paper_review.json").read_text())
    # LLaMA-Factory joins instruction and input with "\n": the user turn reads INSTRUCTION\n\nPAPER.
    assert rows[0] == {"instruction": INSTRUCTION + "\n", "input": records[0].paper, "output": records[0].review}
    assert len(json.loads((tmp_path / "paper_review_eval.json").read_text())) == 1


def test_load_papers_gives_each_paper_once(sample_file, tmp_path):
    papers = load_papers(sample_file)
    assert len(papers) == 8 and len({p.id for p in papers}) == 8
    with pytest.raises(UserError, match=r"p.jsonl:1: field 'paper' \(or 'input'\) is missing"):
        load_papers(write_jsonl(tmp_path / "p.jsonl", [{"title": "t"}]))


def test_a_line_separator_inside_a_json_string_does_not_split_the_record(tmp_path):
    """JSON strings may hold U+2028/U+2029 raw; str.splitlines() splits there (a real ICLR record does)."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"paper": "a\u2028b\x0cc", "review": "r\u2029s"}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    records = load_records(path).records
    assert len(records) == 1 and records[0].paper == "a\u2028b\x0cc" and records[0].review == "r\u2029s"
