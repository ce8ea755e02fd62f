"""A rating with each review (issue 21 item 3): trained as the review's last line, parsed by `review`,
scored by `score` against the humans' mean rating, a constant baseline and one human vs the others."""

import json

import pytest

from reviewgpt.cli import main
from reviewgpt.data.chat_templates import reference_ids
from reviewgpt.data.prompt import get_template
from reviewgpt.data.rating import decision_accepted, parse_rating, usable_rating, with_rating
from reviewgpt.data.records import load_records, records_digest, write_jsonl
from reviewgpt.data.tokenization import IGNORE_INDEX, PromptEncoder
from reviewgpt.errors import UserError
from reviewgpt.eval.rating import accept_threshold, spearman
from reviewgpt.eval.score import score_reviews
from reviewgpt.recipe import builtin_recipes, load_recipe
from reviewgpt.train.dataset import tokenize_records
from tests import util

PAPER = "# On Ratings\n\n## Abstract\nWe rate things.\n\n## Method\nA 3.5% gain (Table 1).\n"
REVIEW = "Strengths: a novel idea.\nWeaknesses: small experiments.\n\nSuggestions: add baselines.\n"


@pytest.mark.parametrize("text, rating", [
    ("A fine paper.\n\nRating: 6/10", 6),
    ("rating: 6 / 10", 6),
    ("**Rating:** 7/10", 7),
    ("## Overall rating = 8 out of 10.", 8),
    ("Rating: 9", 9),
    ("Rating: 10/10\n", 10),
    ("Rating: 6: Marginally above acceptance threshold", 6),  # ICLR's rating_text
    ("Rating: 7/10\nThe model went on.\nRating: 3/10", 3),  # the last rating line decides
    ("Rating: 4/10\r\n", 4),
])
def test_the_parser_reads_a_rating_line(text, rating):
    assert parse_rating(text) == rating


@pytest.mark.parametrize("text", [
    "", "A fine paper without a rating.", "Rating: 6.5/10", "Rating: 11/10", "Rating: 0/10", "Rating: 4/5",
    "Rating: six", "Rating: 6-7", "Rating: 6 7", "my rating is 6", "The rating: 5/10",
    "Preliminary rating:\nThis is an interesting work.",  # a heading of some real ICLR reviews
    "Preliminary rating:\n5 reasons to accept", "Rating: 7/10\nRating: 7.5/10",
])
def test_odd_text_gives_no_rating(text):
    assert parse_rating(text) is None


def test_the_rating_line_round_trips_and_record_fields_are_read():
    assert with_rating(REVIEW, 6) == REVIEW.rstrip() + "\n\nRating: 6/10" and with_rating(REVIEW, None) == REVIEW
    assert all(parse_rating(with_rating(REVIEW, r)) == r for r in range(1, 11))
    assert [usable_rating(v) for v in (6, 6.0, "7", None, 7.5, 0, 11, True, "high")] == [6, 6, 7] + [None] * 6
    assert [decision_accepted(d) for d in ("Accept (Poster)", "Accept (Oral)", "Reject", "Invite to Workshop Track",
                                           None, "Withdrawn")] == [True, True, False, False, None, None]


def test_records_keep_rating_and_decision_and_count_unusable_ratings(tmp_path):
    rows = [{"id": "a", "paper_id": "p", "paper": "P", "review": "R1", "rating": 6, "decision": "Reject"},
            {"id": "b", "paper_id": "p", "paper": "P", "review": "R2", "rating": 7.5},
            {"id": "c", "paper_id": "q", "paper": "Q", "review": "R3"}]
    loaded = load_records(util.write_jsonl(tmp_path / "d.jsonl", rows))
    assert [(r.rating, r.decision) for r in loaded.records] == [(6, "Reject"), (None, None), (None, None)]
    assert loaded.unusable_ratings == [f"{tmp_path / 'd.jsonl'}:2"]
    # The digest of a run's data covers ratings: a run trained with rating lines on other ratings is another run.
    plain = load_records(util.write_jsonl(tmp_path / "e.jsonl", [
        {k: v for k, v in row.items() if k not in ("rating", "decision")} for row in rows])).records
    assert records_digest(loaded.records) != records_digest(plain)
    write_jsonl(loaded.records, tmp_path / "prepared.jsonl")  # `data prepare` keeps them for `score`
    assert [json.loads(line).get("rating") for line in (tmp_path / "prepared.jsonl").read_text().splitlines()] == [
        6, None, None]


def test_every_shipped_recipe_trains_without_the_rating_line():
    assert all(not load_recipe(name).review_rating for name in builtin_recipes())


@pytest.mark.parametrize("template, family", [("gemma-it", "gemma"), ("mistral-inst", "mistral"),
                                              ("smollm2-chatml", "llama"), ("alpaca", "llama")])
def test_training_ids_end_with_the_rating_line_with_loss_and_are_unchanged_when_off(
        template, family, gemma_tokenizer, mistral_tokenizer, llama_tokenizer, tmp_path):
    tokenizer = {"gemma": gemma_tokenizer, "mistral": mistral_tokenizer, "llama": llama_tokenizer}[family]
    data = util.write_jsonl(tmp_path / "d.jsonl", [{"paper": PAPER, "review": REVIEW, "rating": 6},
                                                   {"paper": PAPER + "More.", "review": REVIEW}])
    records = load_records(data).records
    encoder = PromptEncoder(tokenizer, get_template(template))
    recipe = load_recipe("tiny", {"template": template, "max_seq_length": 4096})
    on = tokenize_records(records, encoder, recipe.replace(review_rating=True)).examples
    off = tokenize_records(records, encoder, recipe).examples

    # Off (every shipped recipe): the ids and labels of the review alone, as before ratings existed.
    for example, record in zip(off, records):
        before = encoder.encode_example(record.paper, record.review, 4096, recipe.loss_on)
        assert (example["input_ids"], example["labels"]) == (before.input_ids, before.labels)
    # On: the model's own tooling on the review with its rating line; the line's tokens have loss.
    rated = REVIEW.rstrip() + "\n\nRating: 6/10"
    assert on[0]["input_ids"] == reference_ids(tokenizer, get_template(template), PAPER, rated)
    assert on[0]["input_ids"] != off[0]["input_ids"]
    learned = tokenizer.decode([t for t, label in zip(on[0]["input_ids"], on[0]["labels"]) if label != IGNORE_INDEX],
                               skip_special_tokens=True)
    assert learned.strip().endswith("Rating: 6/10") and parse_rating(learned) == 6
    assert on[1] == off[1]  # a record without a rating trains without the line


def test_data_check_counts_ratings_and_data_show_shows_the_line(tmp_path, tiny_gemma, capsys):
    data = util.write_jsonl(tmp_path / "d.jsonl", [
        {"paper": PAPER, "review": REVIEW, "rating": 6}, {"paper": PAPER, "review": REVIEW + "More.", "rating": "x"},
        {"paper": PAPER, "review": REVIEW + "Less."}])
    args = ["--recipe", "tiny", "--tokenizer", str(tiny_gemma)]
    assert main(["data", "check", str(data), *args]) == 0
    off = capsys.readouterr().out
    assert main(["data", "check", str(data), *args, "--review-rating"]) == 0
    out = capsys.readouterr().out
    stats = json.loads(out.strip().splitlines()[-1])
    assert (stats["review_rating"], stats["ratings"], stats["ratings_missing"], stats["ratings_unusable"]) == (
        True, 1, 2, 1)
    assert "1 of 3 record(s) carry a rating 1-10" in out and "2 review(s) will train without a rating line" in out
    assert stats["max_tokens"] > json.loads(off.strip().splitlines()[-1])["max_tokens"]
    assert "review_rating is off" in off

    assert main(["data", "show", str(data), *args, "--review-rating"]) == 0
    shown = capsys.readouterr().out
    assert "rating: 6, at the review's end" in shown and "same ids as the model's own tooling: yes" in shown
    assert "Rating: 6/10<end_of_turn>" in shown.split("<<</no loss>>>")[-1]  # in the part with loss
    assert main(["data", "show", str(data), *args]) == 0
    assert "Rating: 6/10" not in capsys.readouterr().out


def test_review_rows_carry_the_rating_of_the_generated_review(tiny_gemma, sample_file, tmp_path, monkeypatch):
    """The tiny model's generate is replaced by one that writes a known review; the row is built from it."""
    import torch

    import reviewgpt.models
    from reviewgpt.eval.generate import GenerationSettings, generate_reviews

    load = reviewgpt.models.load_for_inference
    texts = iter(["Solid work.\n\n**Rating:** 7/10", "No rating here.", "Rating: 4/10"])

    def load_with_canned_reviews(*args, **kwargs):
        loaded = load(*args, **kwargs)
        tokenizer = loaded.tokenizer

        def generate(input_ids, **_):
            tail = tokenizer(next(texts), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            return torch.cat([input_ids, torch.tensor([tail])], dim=1)

        loaded.model.generate = generate
        return loaded

    monkeypatch.setattr(reviewgpt.models, "load_for_inference", load_with_canned_reviews)
    out = tmp_path / "reviews.jsonl"
    generate_reviews(tiny_gemma, sample_file, out, GenerationSettings(max_new_tokens=16, limit=3, batch_size=1,
                                                                      engine="hf"))  # the model's generate
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["review"], r["rating"]) for r in rows) == [
        ("No rating here.", None), ("Rating: 4/10", 4), ("Solid work.\n\n**Rating:** 7/10", 7)]


# A hand-made reference (dev) and baseline (train) set with known answers.
REFERENCE = [("A", 6, "Accept (Poster)"), ("A", 8, "Accept (Poster)"), ("B", 3, "Reject"), ("B", 5, "Reject"),
             ("C", 5, "Invite to Workshop Track"), ("C", 6, "Invite to Workshop Track"),
             ("C", 7, "Invite to Workshop Track"), ("D", 9, "Accept (Oral)")]
BASELINE = [("X", 7, "Accept (Poster)"), ("X", 8, "Accept (Poster)"), ("Y", 4, "Reject"), ("Y", 5, "Reject"),
            ("Z", 3, "Reject"), ("Z", 6, "Reject")]


def _records(path, rows):
    return util.write_jsonl(path, [{"id": f"{p}{i}", "paper_id": p, "paper": f"Paper {p}.", "review": f"Review {i}.",
                                    "rating": rating, "decision": decision}
                                   for i, (p, rating, decision) in enumerate(rows)])


@pytest.fixture()
def rated(tmp_path):
    candidates = util.write_jsonl(tmp_path / "c.jsonl", [
        {"paper_id": "A", "review": "Good.\n\nRating: 8/10", "rating": 8},
        {"paper_id": "B", "review": "Weak.\n\nRating: 4/10"},  # no `rating` key: parsed from the text
        {"paper_id": "C", "review": "Fine.\n\nRating: 7/10", "rating": 7},
        {"paper_id": "D", "review": "It ran on without a rating", "rating": None}])
    return candidates, _records(tmp_path / "dev.jsonl", REFERENCE), _records(tmp_path / "train.jsonl", BASELINE)


def test_score_reports_mae_spearman_accuracy_baselines_and_humans(rated, tmp_path):
    candidates, reference, baseline = rated
    summary = score_reviews(candidates, reference, tmp_path / "score", baseline_path=baseline)
    r = summary["rating"]
    assert (r["papers"], r["rated"], r["unrated"], r["decided"]) == (4, 3, 1, 3)
    # The baseline data's best split: ratings >= 7 accepted there, all 6 reviews right (6 gives 5).
    assert (r["accept_threshold"], r["threshold_from"], r["baseline_data"]) == (7, "baseline data", str(baseline))
    # Candidate 8, 4, 7 against the human means 7, 4, 6: the same order; C (7) is predicted accept, wrongly.
    assert r["model"]["mae"]["value"] == pytest.approx(2 / 3, abs=1e-4)
    assert r["model"]["spearman"]["value"] == pytest.approx(1.0)
    assert r["model"]["accuracy"]["value"] == pytest.approx(2 / 3, abs=1e-4)
    # Constant: the baseline's mean rating 33 / 6 = 5.5 (|1.5| + |1.5| + |0.5|) / 3; majority reject: B, C right.
    c = r["constant"]
    assert (c["rating"], c["decision"], c["spearman"]["value"]) == (5.5, "reject", None)
    assert c["mae"]["value"] == pytest.approx(3.5 / 3, abs=1e-4) and c["accuracy"]["value"] == pytest.approx(2 / 3,
                                                                                                             abs=1e-4)
    # Humans of A, B, C (D has one): 6 vs 8, 8 vs 6, 3 vs 5, 5 vs 3, 5 vs 6.5, 6 vs 6, 7 vs 5.5.
    h = r["humans"]
    assert (h["reviews"], h["papers"]) == (7, 3)
    assert h["mae"]["value"] == pytest.approx(11 / 7, abs=1e-4)
    assert h["spearman"]["value"] == pytest.approx(spearman([6, 8, 3, 5, 5, 6, 7], [8, 6, 5, 3, 6.5, 6, 5.5]),
                                                   abs=1e-4)
    assert h["accuracy"]["value"] == pytest.approx(5 / 7, abs=1e-4)  # 6 of A says reject, 7 of C accept
    per = {p["paper_id"]: p for p in summary["per_paper"]}
    assert (per["A"]["rating"], per["A"]["human_rating"], per["A"]["accepted"]) == (8, 7.0, True)
    assert per["D"]["rating"] is None
    md = (tmp_path / "score" / "score.md").read_text()
    assert "| candidate | 0.67 (" in md and "| constant baseline | 1.17 (" in md and "n/a (constant)" in md
    assert json.loads((tmp_path / "score" / "score.json").read_text())["rating"]["accept_threshold"] == 7


def test_score_baselines_fall_back_to_the_reference_and_the_threshold_can_be_given(rated, capsys):
    candidates, reference, baseline = rated
    r = score_reviews(candidates, reference)["rating"]
    # The reference's own mean 49 / 8; accept A, D vs reject B, C: a tie is no majority for accept.
    assert r["constant"]["rating"] == 6.125 and r["constant"]["decision"] == "reject"
    assert r["accept_threshold"] == 8 and "the reference itself" in r["baseline_data"]
    assert main(["score", "--candidate", str(candidates), "--reference", str(reference), "--baseline-data",
                 str(baseline), "--accept-threshold", "8"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (last["rating"]["accept_threshold"], last["rating"]["threshold_from"]) == (8, "--accept-threshold")
    assert last["rating"]["model"]["accuracy"]["value"] == 1.0  # 8 accept, 4 and 7 reject


def test_score_has_no_rating_section_without_ratings_and_refuses_odd_ones(rated, tmp_path):
    candidates, reference, _ = rated
    humans_unrated = util.write_jsonl(tmp_path / "h.jsonl", [{"paper_id": p, "paper": "P", "review": f"R{i}"}
                                                             for i, (p, _, _) in enumerate(REFERENCE)])
    assert score_reviews(candidates, humans_unrated)["rating"] is None
    plain = util.write_jsonl(tmp_path / "p.jsonl", [{"paper_id": "A", "review": "Good.", "rating": None}])
    assert score_reviews(plain, reference)["rating"] is None
    odd = util.write_jsonl(tmp_path / "o.jsonl", [{"paper_id": "A", "review": "Good.", "rating": "8"}])
    with pytest.raises(UserError, match=r"o.jsonl:1: 'rating' must be an integer 1-10 or null, got '8'"):
        score_reviews(odd, reference)
    unrated = util.write_jsonl(tmp_path / "u.jsonl", [{"paper_id": "A", "paper": "P", "review": "R"}])
    with pytest.raises(UserError, match="no record carries a rating"):
        score_reviews(candidates, reference, baseline_path=unrated)


def test_spearman_and_the_threshold_on_known_answers():
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6 x 2 / (4 x 15)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / 10 ** 0.5)  # ties get their mean rank
    assert spearman([5, 5, 5], [1, 2, 3]) is None and spearman([1], [2]) is None  # undefined
    assert accept_threshold([(7, True), (8, True), (4, False), (6, False)]) == 7
    assert accept_threshold([(5, True), (7, False)]) == 1  # ties: the lower (1 and 2..5 all get one right)
