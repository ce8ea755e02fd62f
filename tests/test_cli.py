import argparse
import json
import subprocess
import sys

import pytest

from reviewgpt import cli
from reviewgpt.cli import build_parser, main
from reviewgpt.errors import UserError
from reviewgpt.recipe import load_recipe
from tests.util import write_jsonl


def _all_subcommands(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _all_subcommands(sub, (*prefix, name))


SUBCOMMANDS = [path for path, _ in _all_subcommands(build_parser())]


def test_the_core_subcommands_exist():
    names = {path[0] for path in SUBCOMMANDS}
    assert {"recipes", "data", "train", "merge", "review", "quickstart", "tiny-model"} <= names
    assert ("data", "check") in SUBCOMMANDS and ("data", "prepare") in SUBCOMMANDS


@pytest.mark.parametrize("path", SUBCOMMANDS, ids=[" ".join(p) for p in SUBCOMMANDS])
def test_every_subcommand_help_ends_with_an_example(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out.split("\n\n")[-1] or "example" in out[-600:], out[-600:]


def test_help_does_not_import_torch():
    code = "import sys; from reviewgpt.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_python_dash_m_reviewgpt_works():
    out = subprocess.run([sys.executable, "-m", "reviewgpt", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("reviewgpt ")


def test_unknown_recipe_is_one_line_and_exit_2(capsys, tmp_path):
    assert main(["train", "--recipe", "llama-70b", "--data", "x.jsonl", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown recipe 'llama-70b'" in err and "Traceback" not in err


def test_train_aliases_pick_the_recipe(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "main", lambda argv: seen.append(argv) or 0)
    cli.train_gemma(["--data", "d.jsonl"])
    cli.train_mistral(["--data", "d.jsonl"])
    assert seen == [["train-gemma", "--data", "d.jsonl"], ["train-mistral", "--data", "d.jsonl"]]
    parser = build_parser()
    for alias, recipe in (("train-gemma", "gemma-7b-it"), ("train-mistral", "mistral-7b-instruct-v0.2")):
        args = parser.parse_args([alias, "--data", "d.jsonl", "--output", "o"])
        assert (args.recipe, args.func) == (recipe, parser.parse_args(["train", "--recipe", "x", "--data", "d",
                                                                        "--output", "o"]).func)
        assert parser.parse_args([alias, "--recipe", "tiny", "--data", "d", "--output", "o"]).recipe == "tiny"


@pytest.mark.parametrize("alias, recipe", [("train-gemma", "gemma-7b-it"),
                                           ("train-mistral", "mistral-7b-instruct-v0.2")])
def test_an_aliases_help_shows_its_recipe_preset_not_required(alias, recipe, capsys, monkeypatch):
    # issue 19 item 11: `train-gemma --help` showed `--recipe RECIPE` as required, though the alias sets it.
    monkeypatch.setattr(sys, "argv", [alias, "--help"])
    with pytest.raises(SystemExit):
        getattr(cli, alias.replace("-", "_"))()
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {alias} [-h] [--recipe RECIPE] --data DATA")
    assert f"--recipe RECIPE built-in recipe name (see `reviewgpt recipes`) or a YAML file (default: {recipe})" \
        in " ".join(out.split())


def test_recipe_flags_are_generated_from_the_dataclass(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--max-seq-length", "--finetune {qlora,lora,full}", "--loss-on {review,all}", "--lora-target-modules",
                 "--learning-rate", "--on-review-too-long {error,skip}"):
        assert flag in out


def test_recipes_lists_and_validates(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "gemma-7b-it" in out and "mistral-7b-instruct-v0.2" in out and out.count(" ok") >= 3


def test_data_check_last_line_is_json(sample_file, tiny_gemma, capsys):
    assert main(["data", "check", str(sample_file), "--recipe", "tiny", "--tokenizer", str(tiny_gemma),
                 "--max-length", "512"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("records", "valid", "invalid", "duplicates", "papers_truncated", "reviews_truncated", "max_tokens"):
        assert key in last
    assert (last["records"], last["valid"], last["invalid"]) == (16, 16, 0)
    assert last["max_tokens"] > 384 and last["papers_truncated"] > 0


def test_data_check_counts_invalid_and_unfit_records_and_fails(tmp_path, tiny_gemma, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"paper": "p " * 50, "review": "r"}, {"paper": "p"}, "{oops",
                                              {"paper": "p", "review": "long " * 600},
                                              {"paper": "p " * 50, "review": "r"}])
    code = main(["data", "check", str(data), "--recipe", "tiny", "--tokenizer", str(tiny_gemma),
                 "--max-length", "200", "--rejects", str(tmp_path / "rej.jsonl")])
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1
    assert (stats["records"], stats["valid"], stats["invalid"], stats["duplicates"]) == (5, 2, 2, 1)
    assert stats["reviews_truncated"] == 1
    assert len((tmp_path / "rej.jsonl").read_text().splitlines()) == 2


def test_data_check_names_the_invalid_records_and_the_length_every_review_fits(tmp_path, tiny_gemma, capsys):
    from reviewgpt.data.prompt import get_template
    from reviewgpt.data.tokenization import PromptEncoder
    from reviewgpt.models import load_tokenizer

    reviews = ["Fine. " * n for n in (10, 20, 40, 80, 160, 320)]
    data = write_jsonl(tmp_path / "d.jsonl", [{"paper": "A paper. " * 30, "review": r} for r in reviews]
                       + ['{"paper": "p", "review": 3}', "{oops", '{"paper": "p", "review": "r'])
    args = ["data", "check", str(data), "--recipe", "tiny", "--tokenizer", str(tiny_gemma)]
    assert main([*args, "--max-length", "200"]) == 1
    out = capsys.readouterr().out
    stats = json.loads(out.strip().splitlines()[-1])
    encoder = PromptEncoder(load_tokenizer(str(tiny_gemma), "gemma"), get_template("gemma-it"))
    needs = sorted(encoder.shortest_length(encoder.encode_text("A paper. " * 30, r)) for r in reviews)
    assert (stats["max_length_for_all_reviews"], stats["max_length_for_95pct_reviews"]) == (needs[-1], needs[-1])
    assert f"every review fits at --max-seq-length {needs[-1]}" in out
    assert f"invalid: {data}:7: field 'review' must be a string" in out
    assert f"invalid: {data}:8: not valid JSON" in out
    assert f"{data}:9: not valid JSON (Unterminated string starting at column" in out  # not "at at"
    capsys.readouterr()
    assert main([*args, "--max-length", str(needs[-1])]) == 1  # still 3 invalid records, but every review fits
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["reviews_truncated"] == 0
    assert main([*args, "--max-length", str(needs[-1] - 1)]) == 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["reviews_truncated"] == 1


# A review as long (in characters) as the longest of the real ICLR 2017 sample (3,526), in words the
# tiny tokenizer was not trained on, as real reviews are.
LONG_REVIEW = ("The authors propose a regularizer for convolutional networks and evaluate it on CIFAR and "
               "ImageNet subsets; the ablations are thin, the baselines dated, and the claimed invariance is "
               "never measured directly. ") * 17


def test_the_tiny_recipe_fits_a_review_as_long_as_the_real_samples_longest(tmp_path, tiny_gemma, capsys):
    assert len(LONG_REVIEW) >= 3526
    data = write_jsonl(tmp_path / "d.jsonl", [{"paper": "A paper. " * 400, "review": LONG_REVIEW}])
    assert main(["data", "check", str(data), "--recipe", "tiny", "--tokenizer", str(tiny_gemma)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["reviews_truncated"] == 0


def test_data_check_without_a_tokenizer_says_how(sample_file, capsys):
    assert main(["data", "check", str(sample_file), "--recipe", "gemma-7b-it"]) == 2
    assert "pass --tokenizer DIR" in capsys.readouterr().err


def test_data_prepare_splits_by_paper_and_exports(sample_file, tmp_path, capsys):
    assert main(["data", "prepare", str(sample_file), "--output", str(tmp_path), "--eval-fraction", "0.25"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["train_papers"], summary["eval_papers"], summary["train"] + summary["eval"]) == (6, 2, 16)
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert set(info) == {"paper_review", "paper_review_eval"}


def test_bad_data_line_stops_train_with_file_and_line(tmp_path, tiny_gemma, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"paper": "p", "review": "r"}, '{"paper": "p", "review": 3}'])
    code = main(["train", "--recipe", "tiny", "--model", str(tiny_gemma), "--data", str(data), "--output",
                 str(tmp_path / "run")])
    assert code == 2
    assert f"{data}:2: field 'review' must be a string, got int" in capsys.readouterr().err


def test_4bit_on_cpu_from_the_cli_is_one_clear_sentence(tmp_path, tiny_gemma, sample_file, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU message")
    code = main(["train", "--recipe", "tiny", "--model", str(tiny_gemma), "--data", str(sample_file),
                 "--output", str(tmp_path), "--finetune", "qlora"])
    assert code == 2
    assert "needs a CUDA GPU and this machine has none; pass --finetune lora" in capsys.readouterr().err


def _run(argv):
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's usage errors
        return exc.code


BAD_NUMBERS = [
    (["train", "--recipe", "tiny", "--data", "d.jsonl", "--max-steps", "-1", "--num-train-epochs", "-1"],
     "--num-train-epochs"),
    (["train", "--recipe", "tiny", "--data", "d.jsonl", "--max-steps", "-5"], "--max-steps"),
    (["train", "--recipe", "tiny", "--data", "d.jsonl", "--learning-rate", "-1"], "--learning-rate"),
    (["train", "--recipe", "tiny", "--data", "d.jsonl", "--gpus", "0"], "--gpus"),
    (["review", "--model", "m", "--papers", "p.jsonl", "--max-new-tokens", "-5"], "--max-new-tokens"),
    (["review", "--model", "m", "--papers", "p.jsonl", "--limit", "-1"], "--limit"),
    (["review", "--model", "m", "--papers", "p.jsonl", "--temperature", "-1"], "--temperature"),
    (["judge", "--candidate", "c", "--reference", "r", "--judge", "openai:m", "--paper-chars", "-5"], "--paper-chars"),
    (["judge", "--candidate", "c", "--reference", "r", "--judge", "openai:m", "--timeout", "nan"], "--timeout"),
    (["data", "check", "d.jsonl", "--recipe", "tiny", "--max-length", "-1"], "--max-length"),
    (["tiny-model", "--layers", "-1"], "--layers"),
    (["tiny-model", "--hidden", "0"], "--hidden"),
    (["tiny-model", "--hidden", "12"], "--hidden"),
    (["plan", "--recipe", "tiny", "--gpu-mem", "-24"], "--gpu-mem"),
    (["needle", "--model", "m", "--lengths", "1k,2k"], "--lengths"),
]


@pytest.mark.parametrize("argv, flag", BAD_NUMBERS, ids=[f"{a[0]} {f}" for a, f in BAD_NUMBERS])
def test_a_bad_number_is_one_line_naming_the_flag_and_exit_2(argv, flag, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run([*argv, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err and "Traceback" not in err, err
    assert not out.exists()


@pytest.mark.parametrize("path", SUBCOMMANDS, ids=[" ".join(p) for p in SUBCOMMANDS])
def test_help_shows_each_default_once(path, capsys):
    with pytest.raises(SystemExit):
        main([*path, "--help"])
    out = capsys.readouterr().out
    assert "(default: None)" not in out
    options = out.split("\n  -")
    assert not [o for o in options if o.count("(default") > 1], "an option's help says its default twice"


def test_a_train_error_is_the_only_line_on_stderr(tmp_path):
    cmd = [sys.executable, "-m", "reviewgpt", "train", "--recipe", "tiny", "--model", str(tmp_path),
           "--data", str(tmp_path / "nosuch.jsonl"), "--output", str(tmp_path / "run")]
    err = subprocess.run(cmd, capture_output=True, text=True).stderr
    assert err.count("\n") == 1 and "nosuch.jsonl: no such file" in err, err


@pytest.mark.parametrize("command", ["train", "data prepare", "judge", "needle"])
def test_a_failed_command_leaves_no_empty_output_folder(command, tmp_path, tiny_gemma, capsys):
    missing, out = str(tmp_path / "missing.jsonl"), tmp_path / "out"
    argv = {
        "train": ["train", "--recipe", "tiny", "--model", str(tiny_gemma), "--data", missing],
        "data prepare": ["data", "prepare", missing],
        "judge": ["judge", "--candidate", missing, "--reference", missing, "--judge", "openai:m"],
        "needle": ["needle", "--model", str(tmp_path / "no-model")],
    }[command]
    assert main([*argv, "--output", str(out)]) == 2
    assert "error:" in capsys.readouterr().err
    assert not out.exists()


def test_data_prepare_trims_the_llamafactory_export_so_its_cutoff_never_reaches_the_review(tmp_path, tiny_mistral,
                                                                                          capsys):
    from transformers import AutoTokenizer

    from reviewgpt.data.llamafactory import LF_TEMPLATES, row_lengths
    from reviewgpt.data.sample import sample_records
    from reviewgpt.data.tokenization import CUT_MARKER

    records = sample_records(n_papers=6, reviews_per_paper=1, seed=5)
    records = [{**r, "paper": r["paper"] * (1 if i == 0 else 4)} for i, r in enumerate(records)]  # 5 too long
    data = write_jsonl(tmp_path / "d.jsonl", records)
    cutoff = 1024
    assert main(["data", "prepare", str(data), "--output", str(tmp_path / "out"), "--eval-fraction", "0",
                 "--tokenizer", str(tiny_mistral), "--max-length", str(cutoff)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = json.loads((tmp_path / "out" / "paper_review.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_mistral)
    by_review = {r["review"]: r for r in records}
    for row in rows:
        record = by_review[row["output"]]  # the review exported whole
        prompt, response = row_lengths(tokenizer, LF_TEMPLATES["mistral"], row["instruction"], row["input"],
                                       row["output"])
        # LLaMA-Factory 0.6.3's infer_max_len keeps the response whole only when the row fits:
        max_response = int(cutoff * (response / (prompt + response)))
        assert prompt + response < cutoff and max_response >= response and cutoff - response >= prompt
        if row["input"] != record["paper"]:
            assert row["input"].endswith(CUT_MARKER) and record["paper"].startswith(row["input"][:-len(CUT_MARKER)])
            assert prompt + response > cutoff - 40  # the paper kept as much as fits
    assert summary["llamafactory_papers_trimmed"] == 5
    whole = [json.loads(line)["paper"] for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert sorted(whole) == sorted(r["paper"] for r in records)  # reviewgpt's own files stay whole


@pytest.mark.parametrize("template", ["mistral-inst", "gemma-it"])
def test_the_llamafactory_export_spaces_instruction_and_paper_as_reviewgpt_does(template):
    from reviewgpt.data.llamafactory import EXPORT_INSTRUCTION
    from reviewgpt.data.prompt import make_formatting_func

    lf_user_turn = "\n".join([EXPORT_INSTRUCTION, "PAPER TEXT"])  # llmtuner 0.6.3's convert_alpaca
    assert lf_user_turn in make_formatting_func(template)({"paper": "PAPER TEXT", "review": "R"})


# issue 19 item 11: what `--help` says.
def _help(path, capsys) -> str:
    with pytest.raises(SystemExit):
        main([*path, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("path", [(), *SUBCOMMANDS], ids=["reviewgpt", *[" ".join(p) for p in SUBCOMMANDS]])
def test_help_is_wrapped_and_says_what_it_means(path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    out = _help(path, capsys)
    assert not [line for line in out.splitlines() if len(line) > 100], "a description or example is not wrapped"
    assert "%%" not in out  # a help string's % is written %%; a description's is printed as written
    assert ".jsonl or .json" not in out and "JSONL/JSON" not in out  # .jsonl.gz is read too
    for option in out.split("\n  -"):
        if option.startswith("-no-4bit"):
            assert "default" not in option, "--no-4bit shows store_false's True beside --4bit's default"


def test_the_data_summary_names_every_action(capsys):
    data_line = next(line for line in _help((), capsys).splitlines() if line.strip().startswith("data "))
    assert all(action in data_line for action in ("check", "show", "prepare"))


def test_score_help_prints_one_percent_sign(capsys):
    assert "95% bootstrap" in _help(("score",), capsys)


@pytest.mark.parametrize("argv, help_of", [
    (["train", "--recipe", "tiny", "--data", "d.jsonl", "--output", "o", "--bogus"], "reviewgpt train"),
    (["data", "check", "d.jsonl", "--recipe", "tiny", "--bogus", "1"], "reviewgpt data check"),
    (["train", "--recipe", "tiny", "--data", "d.jsonl", "--output", "o", "--gpus", "0"], "reviewgpt train"),
    (["--bogus"], "reviewgpt"),
])
def test_a_usage_mistake_points_to_the_help_of_the_command_given(argv, help_of, capsys):
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith(f"; see `{help_of} --help`.\n"), err
    assert err.startswith(f"{help_of}: error: ")


# issue 19 item 10: settings the model or the data cannot honour are refused before any weights load.
@pytest.fixture
def no_weights_loaded(monkeypatch):
    import reviewgpt.models

    def refuse(*args, **kwargs):
        raise AssertionError("the check must come before the weights load")

    monkeypatch.setattr(reviewgpt.models, "load_base_model", refuse)


def _train(model, data, out, *extra):
    return main(["train", "--recipe", "tiny", "--model", str(model), "--data", str(data), "--output", str(out),
                 "--max-steps", "1", *extra])


def test_train_refuses_a_length_beyond_the_models_positions(tiny_gemma, sample_file, tmp_path, capsys,
                                                              no_weights_loaded):
    assert _train(tiny_gemma, sample_file, tmp_path / "run", "--max-seq-length", "100000000") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-seq-length 100000000 is more than the 2048 positions of" in err
    assert "(max_position_embeddings in its config.json); pass --max-seq-length 2048 or less." in err


def test_the_recipes_lengths_within_their_models_positions_pass(tmp_path):
    # Mistral-7B-Instruct-v0.2 trains at 12,288 of its 32,768 positions; SmolLM2 at all of its 8,192.
    from reviewgpt.train.checks import check_length_fits_model

    for recipe, positions in (("mistral-7b-instruct-v0.2", 32768), ("smollm2-135m", 8192), ("gemma-7b-it", 8192)):
        model = tmp_path / recipe
        model.mkdir()
        (model / "config.json").write_text(json.dumps({"max_position_embeddings": positions}))
        check_length_fits_model(load_recipe(recipe, {"model": str(model)}))
    with pytest.raises(UserError, match="more than the 8192 positions"):
        check_length_fits_model(load_recipe("smollm2-135m", {"model": str(tmp_path / "smollm2-135m"),
                                                             "max_seq_length": 8193}))
    check_length_fits_model(load_recipe("gemma-7b-it", {"model": "not/cached-here"}))  # the loader says so


def test_train_refuses_a_micro_batch_larger_than_the_data(tiny_gemma, sample_file, tmp_path, capsys,
                                                            no_weights_loaded):
    assert _train(tiny_gemma, sample_file, tmp_path / "run", "--per-device-train-batch-size", "1000000") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert ("--per-device-train-batch-size 1000000 is more than the 16 training records; pass "
            "--per-device-train-batch-size 16 or less.") in err
    assert _train(tiny_gemma, sample_file, tmp_path / "run", "--per-device-train-batch-size", "16", "--eval") == 2
    assert "more than the 12 training records (4 held out for eval)" in capsys.readouterr().err


def test_train_with_eval_on_one_paper_says_nothing_can_be_held_out(tiny_gemma, tmp_path, capsys, no_weights_loaded):
    data = write_jsonl(tmp_path / "one.jsonl", [{"paper": "A paper. " * 20, "review": "Fine."}])
    assert _train(tiny_gemma, data, tmp_path / "run", "--eval") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--eval: {data} holds one paper" in err and "leave out --eval" in err, err
    assert _train(tiny_gemma, data, tmp_path / "run", "--eval", "--eval-fraction", "0") == 2
    assert "--eval with eval_fraction 0 holds no paper out" in capsys.readouterr().err


# issue 19 item 12: a script reading `reviewgpt train`'s stdout gets its JSON result and nothing else.
def test_train_prints_only_its_json_result_on_stdout(tiny_gemma, sample_file, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "reviewgpt", "train", "--recipe", "tiny", "--model", str(tiny_gemma),
           "--data", str(sample_file), "--output", str(run_dir), "--save-steps", "1", "--logging-steps", "1",
           "--max-seq-length", "384", "--max-steps"]
    first = subprocess.run([*cmd, "1"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0 and (run_dir / "README.md").is_file()  # peft's model card, no metadata block
    out = subprocess.run([*cmd, "2"], capture_output=True, text=True, timeout=300)  # continues into the folder
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 1, out.stdout
    assert json.loads(lines[0])["global_step"] == 2
    assert "{'loss': " in out.stderr and "'train_runtime': " in out.stderr  # the Trainer's logs: on stderr
    assert "Repo card metadata block was not found" not in out.stderr


# issue 19 item 15: LLaMA-Factory's ChatML template (SmolLM2's format), as llmtuner 0.6.3 lays it out.
def test_the_chatml_llamafactory_export_keeps_every_review_whole(tmp_path, tiny_llama, capsys):
    from transformers import AutoTokenizer

    from reviewgpt.data.sample import sample_records
    from reviewgpt.data.tokenization import CUT_MARKER

    records = sample_records(n_papers=6, reviews_per_paper=1, seed=5)
    records = [{**r, "paper": r["paper"] * (1 if i == 0 else 4)} for i, r in enumerate(records)]  # 5 too long
    data = write_jsonl(tmp_path / "d.jsonl", records)
    cutoff = 1024
    assert main(["data", "prepare", str(data), "--output", str(tmp_path / "out"), "--eval-fraction", "0",
                 "--tokenizer", str(tiny_llama), "--max-length", str(cutoff), "--llamafactory-template", "chatml"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    by_review = {r["review"]: r for r in records}
    for row in json.loads((tmp_path / "out" / "paper_review.json").read_text()):
        # llmtuner 0.6.3 "chatml": no system turn; the user turn in one piece; the response, then the EOS that
        # replace_eos makes <|im_end|>; every piece encoded without the tokenizer's own additions.
        user = f"<|im_start|>user\n{row['instruction']}\n{row['input']}<|im_end|>\n<|im_start|>assistant\n"
        prompt = len(tokenizer.encode(user, add_special_tokens=False))
        response = len(tokenizer.encode(row["output"], add_special_tokens=False) + [im_end])
        max_response = int(cutoff * (response / (prompt + response)))  # its infer_max_len
        assert max_response >= response and cutoff - response >= prompt  # the review whole, the prompt uncut
        record = by_review[row["output"]]
        if row["input"] != record["paper"]:
            assert row["input"].endswith(CUT_MARKER) and record["paper"].startswith(row["input"][:-len(CUT_MARKER)])
            assert prompt + response > cutoff - 40  # the paper kept as much as fits
    assert summary["llamafactory_papers_trimmed"] == 5
