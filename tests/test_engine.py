"""The fast generation engine (reviewgpt.eval.engine) gives the tokens of transformers' `generate` as
`review` calls it (reviewgpt.eval.generate_hf.generate_hf), on the tiny models of each family, on the CPU.

The tiny models' random weights are drawn larger here ("livened"): with the fixtures' 0.02 std every
prompt gives one token repeated, which a broken attention would give too. Each test checks its own
premise (rows end at different steps, the option changes the output, the adapter matters)."""

import copy
import json

import pytest
import torch

from reviewgpt import torch_support
from reviewgpt.eval.engine import Engine, generate_fast
from reviewgpt.eval.engine_model import (
    decoder_parts,
    kv_bytes_per_token,
    merge_adapter_in_memory,
    slots_for_memory,
    unsupported_reason,
)
from reviewgpt.eval.engine_sampling import Decoding, NgramTable, TokenChooser
from reviewgpt.eval.generate_hf import generate_hf
from reviewgpt.models import load_for_inference
from tests.util import needs_sdpa, skip_unless_bitsandbytes_quantizes_on_cpu

# The engine attends with scaled_dot_product_attention: on torch < 2.1.1 (the cu117 image) review takes
# transformers' generate instead (test_a_torch_without_sdpa_is_named_and_review_takes_generate).
pytestmark = needs_sdpa

LENGTHS = (23, 41, 17, 35, 29, 12, 38)


def liven(model, seed: int = 0, scale: float = 3.0) -> None:
    """Every matrix drawn with std scale / sqrt(fan-in): outputs that depend on the whole context."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "lora_" not in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale / param.shape[1] ** 0.5)


def load_lively(path, scale: float = 3.0, **kwargs):
    loaded = load_for_inference(path, **kwargs)
    liven(loaded.model, scale=scale)
    return loaded


def prompts_for(loaded, lengths=LENGTHS, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    vocab = loaded.model.config.vocab_size
    return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]


def hf(loaded, prompts, decoding, batch_size=4):
    return {i: tokens for i, tokens, _ in generate_hf(loaded, prompts, decoding, batch_size)}


def fast(model, prompts, decoding, **engine_kwargs):
    engine = Engine(model, **engine_kwargs)
    out = {done.index: done.tokens for done in engine.generate(prompts, decoding)}
    return out, engine.stats


def stops_ending_rows_at_different_steps(outputs) -> tuple:
    """Tokens that the first rows generate at steps 3, 7 and 11: as stop tokens, rows end at different steps."""
    return tuple(sorted({outputs[row][step] for row, step in ((0, 2), (1, 6), (2, 10))}))


@pytest.fixture(scope="module", params=["gemma", "mistral", "llama"])
def family_model(request, tiny_models):
    return request.param, load_lively(tiny_models[request.param])


def test_greedy_tokens_equal_generate_while_slots_are_refilled(family_model):
    family, loaded = family_model
    prompts = prompts_for(loaded)
    free_running = hf(loaded, prompts, Decoding(max_new_tokens=16))
    assert len({t for tokens in free_running.values() for t in tokens}) > 20, "the model repeats itself"
    decoding = Decoding(max_new_tokens=16, stop_ids=stops_ending_rows_at_different_steps(free_running))
    left_padded = hf(loaded, prompts, decoding, batch_size=4)
    one_by_one = hf(loaded, prompts, decoding, batch_size=1)
    got, stats = fast(loaded.model, prompts, decoding, slots=3)
    assert got == left_padded == one_by_one, family
    assert len({len(tokens) for tokens in got.values()}) >= 3  # rows ended at different steps
    assert stats["prefill_passes"] > 1 and stats["slots"] == 3  # finished slots took waiting papers


def test_the_stats_say_where_the_time_went_and_the_callers_time_is_its_own(llama):
    import time

    engine = Engine(llama.model, slots=2)
    handed = 0
    for _ in engine.generate(prompts_for(llama, lengths=(12, 20, 9)), Decoding(max_new_tokens=5)):
        handed += 1
        time.sleep(0.2)  # the caller writing a review: counted as the consumer's, not as decoding
    stats = engine.stats
    assert handed == 3 and stats["consumer_seconds"] >= 0.6
    accounted = stats["prefill_seconds"] + stats["decode_seconds"] + stats["consumer_seconds"]
    assert accounted <= stats["wall_seconds"] + 4 * 0.0005  # the four figures are each rounded to 1 ms
    assert stats["decode_seconds"] < 0.5


def test_steps_over_power_of_two_slots_and_key_buckets_give_the_same_tokens(family_model):
    # What the GPU path does with CUDA graphs: steps over 4 slots while 3 or fewer rows live (dead rows
    # past them), and over the first 256 keys of a 320-token cache once the long prompt is done (key
    # buckets are the SDPA path's: the Triton kernel, the default on a GPU, has one).
    _, loaded = family_model
    prompts = prompts_for(loaded, lengths=(280, 40, 33, 25, 18, 30))
    free_running = hf(loaded, prompts, Decoding(max_new_tokens=16), batch_size=1)
    decoding = Decoding(max_new_tokens=16, stop_ids=stops_ending_rows_at_different_steps(free_running))
    got, stats = fast(loaded.model, prompts, decoding, slots=4, bucket_slots=True, decode_kernel="sdpa")
    assert got == hf(loaded, prompts, decoding, batch_size=1)
    assert stats["capacity"] == 320 and stats["slot_moves"] >= 1
    assert {keys for _, keys in stats["step_shapes"]} == {256, 320}
    assert {n for n, _ in stats["step_shapes"]} <= {1, 2, 4} and stats["padded_steps"] > 0


def test_dead_slots_in_a_step_are_at_position_minus_one_so_the_kernel_reads_none_of_their_keys(llama, monkeypatch):
    # A step over a power-of-two count of slots includes slots whose row ended (or moved down when
    # packing): the Triton kernel reads a slot's keys up to its position + 1, so a dead slot must be at -1,
    # not at the position its last row left (a third of a real run's KV reads were such stale keys).
    from reviewgpt.eval import engine_run

    seen = []
    launch = engine_run.Run._launch

    def checked(run, used):
        count = engine_run._power_of_two_at_least(used, len(run.rows))
        positions = run.step.positions.tolist()
        for slot in range(len(run.rows)):
            row = run.rows[slot]
            assert positions[slot] == (row.position if row else engine_run.DEAD), (slot, positions)
        seen.append((used, count))
        return launch(run, used)

    monkeypatch.setattr(engine_run.Run, "_launch", checked)
    prompts = prompts_for(llama, lengths=(23, 41, 17, 35, 29))
    free_running = hf(llama, prompts, Decoding(max_new_tokens=12), batch_size=1)
    decoding = Decoding(max_new_tokens=12, stop_ids=stops_ending_rows_at_different_steps(free_running))
    got, stats = fast(llama.model, prompts, decoding, slots=4, bucket_slots=True)
    assert got == hf(llama, prompts, decoding, batch_size=1)
    assert any(count > used for used, count in seen) and stats["slot_moves"] >= 1  # dead slots inside a step


def test_a_long_prompt_is_prefilled_in_chunks_with_the_same_tokens(family_model):
    _, loaded = family_model
    prompts = prompts_for(loaded, lengths=(45, 30))
    decoding = Decoding(max_new_tokens=10)
    got, stats = fast(loaded.model, prompts, decoding, slots=1, prefill_tokens=16)
    assert got == hf(loaded, prompts, decoding, batch_size=1)
    assert stats["prefill_passes"] == 2 and stats["prefill_tokens"] == 75


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_mistral_sliding_window_as_the_loaded_attention_does(tmp_path_factory, attention):
    # transformers 4.38.2's Mistral honours the window in eager attention and ignores it under SDPA.
    from reviewgpt.models.tiny import build_tiny_model

    path = build_tiny_model("mistral", tmp_path_factory.mktemp("mistral-window"), sliding_window=8)
    loaded = load_lively(path, attn_implementation=attention)
    prompts = prompts_for(loaded, lengths=(20, 13, 27))
    decoding = Decoding(max_new_tokens=12)
    got, _ = fast(loaded.model, prompts, decoding, slots=2)
    assert got == hf(loaded, prompts, decoding, batch_size=3)
    assert decoder_parts(loaded.model).window == (8 if attention == "eager" else None)


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return load_lively(tiny_llama)


def test_repetition_penalty_as_generate(llama):
    prompts = prompts_for(llama)
    plain = hf(llama, prompts, Decoding(max_new_tokens=14))
    decoding = Decoding(max_new_tokens=14, repetition_penalty=1.5)
    penalized = hf(llama, prompts, decoding)
    assert penalized != plain
    assert fast(llama.model, prompts, decoding, slots=3)[0] == penalized


@pytest.mark.parametrize("size", [2, 3])
def test_no_repeat_ngram_size_as_generate(tiny_llama, size):
    llama = load_lively(tiny_llama, scale=1.0)  # a model that repeats itself: something to ban
    prompts = prompts_for(llama, lengths=(12, 9, 15))
    plain = hf(llama, prompts, Decoding(max_new_tokens=20))
    decoding = Decoding(max_new_tokens=20, no_repeat_ngram_size=size)
    banned = hf(llama, prompts, decoding)
    assert banned != plain
    got = fast(llama.model, prompts, decoding, slots=2)[0]
    assert got == banned
    for index, tokens in got.items():
        row = prompts[index] + tokens
        grams = list(zip(*(row[i:] for i in range(size))))
        assert len(grams) == len(set(grams))


def test_ngram_table_bans_what_completes_a_seen_ngram():
    table = NgramTable(3, [1, 2, 3, 1, 2])
    assert table.banned() == [3]
    table.add(4)
    assert table.banned() == []
    assert NgramTable(3, [7]).banned() == []  # fewer than n - 1 tokens: nothing to complete
    assert NgramTable(1, [5, 6, 5]).banned() == [5, 6]


def test_sampling_is_reproducible_for_a_seed(llama):
    prompts = prompts_for(llama, lengths=(12, 20, 9))
    runs = [fast(llama.model, prompts, Decoding(max_new_tokens=12, temperature=0.9, top_p=0.9, seed=seed),
                 slots=2)[0] for seed in (3, 3, 4)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert runs[0] != fast(llama.model, prompts, Decoding(max_new_tokens=12), slots=2)[0]


def test_a_prompts_samples_depend_on_its_key_not_on_its_batch(llama):
    """Sampled reviews do not change with the batch size, the other papers or a resume that skips some."""
    prompts = prompts_for(llama, lengths=(12, 20, 9, 15))
    keys = [101, 7, 99999, 2**32 - 1]
    decoding = Decoding(max_new_tokens=10, temperature=0.9, top_p=0.9, seed=3)

    def sampled(order, slots):
        engine = Engine(llama.model, slots=slots)
        done = engine.generate([prompts[i] for i in order], decoding, keys=[keys[i] for i in order])
        return {keys[order[d.index]]: d.tokens for d in done}

    together = sampled([0, 1, 2, 3], slots=4)
    assert sampled([0, 1, 2, 3], slots=1) == together
    assert sampled([3, 1], slots=2) == {k: together[k] for k in (keys[3], keys[1])}
    assert len({tuple(t) for t in together.values()}) == 4


def test_the_draws_are_uniform_and_follow_the_probabilities():
    from reviewgpt.eval.engine_sampling import uniform

    keys = torch.arange(20000, dtype=torch.int64)
    u = uniform(0, keys, torch.zeros_like(keys))
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01
    assert not torch.equal(u, uniform(0, keys, torch.ones_like(keys)))  # a new number at each step
    assert not torch.equal(u, uniform(1, keys, torch.zeros_like(keys)))  # and for each seed
    chooser = TokenChooser(Decoding(max_new_tokens=1, temperature=1.0, top_k=0), slots=20000, vocab=3,
                           device="cpu")
    chooser.keys = keys.clone()
    logits = torch.log(torch.tensor([[0.2, 0.0, 0.8]])).expand(20000, 3)  # token 1 impossible
    counts = torch.bincount(chooser.choose(logits, torch.arange(20000), list(range(20000))), minlength=3)
    assert counts[1] == 0 and abs(counts[0].item() / 20000 - 0.2) < 0.015


def test_sampling_filters_logits_as_generates_warpers():
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    logits = torch.randn(4, 300) * 3
    decoding = Decoding(max_new_tokens=1, temperature=0.7, top_p=0.8, top_k=50)
    warpers = LogitsProcessorList([TemperatureLogitsWarper(0.7), TopKLogitsWarper(50), TopPLogitsWarper(0.8)])
    expected = warpers(None, logits.clone()).softmax(-1)
    chooser = TokenChooser(decoding, slots=4, vocab=300, device="cpu")
    counts = torch.zeros(4, 300)
    for _ in range(400):
        counts[torch.arange(4), chooser.choose(logits, torch.arange(4), [0, 1, 2, 3])] += 1
    assert (counts[expected == 0] == 0).all()  # never a token transformers filters out
    assert (counts.argmax(-1) == expected.argmax(-1)).all()


@pytest.fixture(scope="module")
def llama_run(tiny_llama, sample_file, tmp_path_factory):
    from reviewgpt.recipe import load_recipe
    from reviewgpt.train.loop import train

    run = tmp_path_factory.mktemp("engine-run")
    recipe = load_recipe("tiny", {"model": str(tiny_llama), "max_steps": 2, "save_steps": 2, "max_seq_length": 384,
                                  "template": "smollm2-chatml", "family": "llama"})
    train(recipe, sample_file, run)
    return run


def lively_run(run_dir):
    """The run on a livened base, its LoRA B drawn large enough to change the tokens."""
    loaded = load_lively(run_dir)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in loaded.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return loaded


@pytest.mark.parametrize("keep_adapter", [False, True])
def test_run_folder_tokens_equal_generate_on_base_plus_adapter(llama_run, tiny_llama, keep_adapter):
    loaded = lively_run(llama_run)
    loaded.model.float()  # on a GPU too: merged in bf16, W + BA rounds otherwise than x W + x B A
    assert loaded.kind == "run"
    prompts = prompts_for(loaded, lengths=(30, 18, 25))
    decoding = Decoding(max_new_tokens=12)
    expected = hf(loaded, prompts, decoding)
    base = load_lively(tiny_llama)
    base.model.float()
    assert hf(base, prompts, decoding) != expected, "the adapter changes nothing"
    got = {i: tokens for i, tokens, _ in generate_fast(loaded, prompts, decoding, slots=2, keep_adapter=keep_adapter)}
    assert got == expected
    assert any("lora_A" in name for name, _ in loaded.model.named_modules()) == keep_adapter  # merged in memory


def test_nf4_base_dequantized_and_merged_equals_the_4bit_model_with_its_adapter(tmp_path):
    skip_unless_bitsandbytes_quantizes_on_cpu()
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from reviewgpt.models.tiny import build_tiny_model

    path = build_tiny_model("llama", tmp_path / "llama", hidden=128)  # bitsandbytes' CPU kernels want N % 32 == 0
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    liven(model)
    head = model.get_output_embeddings()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and child is not head:  # what a 4-bit load quantizes
                quantized = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=False,
                                              compute_dtype=torch.float32, quant_type="nf4")
                quantized.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4",
                                                     compress_statistics=True, blocksize=64)
                setattr(parent, name, quantized.to("cpu"))
    adapted = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                               lora_dropout=0.0))
    for name, param in adapted.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    pristine = copy.deepcopy(adapted)
    ids = torch.tensor([[5, 60, 70, 80, 90, 100, 7]])
    with torch.no_grad():
        # Train mode (dropout 0) keeps bitsandbytes on its dequantize + matmul path: in eval mode on a CPU
        # with AVX512-BF16 it repacks the weights for a bf16 kernel, a CPU-only path no GPU run takes.
        expected = adapted.train()(ids).logits
        merged, lora_layers, dequantized = merge_adapter_in_memory(pristine)
        got = merged(ids).logits
    assert (lora_layers, dequantized) == (4, 14)  # q, v of 2 layers with LoRA; every other linear plain
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_kv_cache_bytes_and_slots_from_memory(tiny_llama):
    loaded = load_for_inference(tiny_llama)
    parts = decoder_parts(loaded.model)
    config = loaded.model.config
    head_dim = config.hidden_size // config.num_attention_heads
    width = torch.finfo(parts.dtype).bits // 8  # fp32 on a CPU, bf16 on a GPU
    assert kv_bytes_per_token(parts) == config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * width
    gib = 1024 ** 3
    assert slots_for_memory(100 * gib, 2 * gib, 10 * gib, wanted=256) == 40  # (90 - 10) / 2
    assert slots_for_memory(100 * gib, 2 * gib, 10 * gib, wanted=12) == 12
    assert slots_for_memory(5 * gib, 8 * gib, gib, wanted=4) == 0


def test_unsupported_models_are_named_and_review_falls_back_with_a_log_line(tiny_llama, sample_file, tmp_path,
                                                                            caplog):
    import shutil

    from reviewgpt.eval.generate import GenerationSettings, generate_reviews

    model_dir = tmp_path / "tp2"
    shutil.copytree(tiny_llama, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["pretraining_tp"] = 2
    (model_dir / "config.json").write_text(json.dumps(config))
    assert "pretraining_tp" in unsupported_reason(load_for_inference(model_dir).model)
    with caplog.at_level("WARNING", logger="reviewgpt"):
        result = generate_reviews(model_dir, sample_file, tmp_path / "r.jsonl",
                                  GenerationSettings(max_new_tokens=3, limit=2, template="smollm2-chatml"))
    assert result["engine"] == "hf" and result["written"] == 2
    assert "fast engine cannot run this model (Llama's pretraining_tp > 1" in caplog.text


def test_review_lines_are_the_same_with_either_engine_and_report_tokens_per_second(llama_run, sample_file,
                                                                                   tmp_path, capsys):
    from reviewgpt.cli import main

    lines, summaries = {}, {}
    for engine in ("hf", "fast"):
        out = tmp_path / f"{engine}.jsonl"
        assert main(["review", "--model", str(llama_run), "--papers", str(sample_file), "--output", str(out),
                     "--limit", "5", "--max-new-tokens", "12", "--batch-size", "2", "--engine", engine,
                     "--repetition-penalty", "1.3"]) == 0
        lines[engine] = sorted(line.replace(f"{engine}.jsonl", "") for line in out.read_text().splitlines())
        summaries[engine] = json.loads(capsys.readouterr().out)
    assert lines["hf"] == lines["fast"] and len(lines["fast"]) == 5
    for engine, summary in summaries.items():
        assert summary["engine"] == engine and summary["generated_tokens_per_s"] > 0
        assert summary["generated_tokens"] == sum(json.loads(line)["generated_tokens"] for line in lines[engine])


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["sdpa", "triton"])
def test_cuda_graphs_give_the_tokens_of_generate_on_a_gpu(tiny_llama, kernel):
    if kernel == "triton" and torch_support.triton_problem():
        pytest.skip(torch_support.triton_problem())
    loaded = load_lively(tiny_llama)
    loaded.model.float()  # fp32 on the GPU too: the comparison is of the engine, not of bf16 rounding
    prompts = prompts_for(loaded)
    free_running = hf(loaded, prompts, Decoding(max_new_tokens=24))
    decoding = Decoding(max_new_tokens=24, stop_ids=stops_ending_rows_at_different_steps(free_running))
    got, stats = fast(loaded.model, prompts, decoding, slots=4, decode_kernel=kernel)
    assert stats["cuda_graphs"] and stats["decode_kernel"] == kernel
    assert stats["graph_buckets"] == len(stats["step_shapes"]) >= 2  # 4 slots, then fewer as rows end
    assert got == hf(loaded, prompts, decoding)


def test_generation_speed_script_runs_every_row_on_a_tiny_model(tiny_mistral, tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import generation_speed

    assert generation_speed.main(["synthetic", "--family", "mistral", "--model", str(tiny_mistral), "--weights-dir",
                                  str(tmp_path), "--prompt-tokens", "24", "--new-tokens", "6", "--hf-new-tokens", "3",
                                  "--batches", "1", "max", "--engines", "hf", "fast", "fast-sdpa"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    measured = [r for r in rows if r["mode"] == "synthetic"]
    assert [(r["form"], r["engine"], r["largest"]) for r in measured] == [
        (form, engine, largest) for form in ("4bit", "bf16") for engine in ("hf", "fast", "fast-sdpa")
        for largest in (False, True)]
    assert all(r["engine_stats"]["decode_kernel"] == "sdpa" for r in measured if r["engine"] == "fast-sdpa")
    assert all("error" not in r and r["generated_tokens_per_s"] > 0 for r in measured), measured
    assert all(r["extrapolated_from"] == 3 and r["measured_tokens"] == 3 * r["batch"]  # no stop token either
               for r in measured if r["engine"] == "hf")
    assert all(r["generated_tokens"] == 6 * r["batch"] for r in measured if r["engine"] != "hf")  # no stop


def test_a_failing_or_slow_benchmark_row_prints_its_error_and_the_next_row_runs(capsys):
    import sys
    import time
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import generation_speed

    def out_of_memory():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")

    generation_speed.run_row({"row": 1}, 5, out_of_memory)
    generation_speed.run_row({"row": 2}, 1, lambda: time.sleep(3))
    generation_speed.run_row({"row": 3}, 5, lambda: {"generated_tokens_per_s": 1.0})
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 9 GiB"
    assert rows[1]["error"] == "TimeoutError: row ran past --row-seconds 1" and rows[1]["wall_seconds"] < 2.5
    assert rows[2]["generated_tokens_per_s"] == 1.0 and "error" not in rows[2]


def test_a_torch_without_sdpa_is_named_and_review_takes_generate(tiny_llama, monkeypatch, caplog):
    from reviewgpt import torch_support
    from reviewgpt.eval.generate import choose_engine

    loaded = load_for_inference(tiny_llama)
    assert unsupported_reason(loaded.model) is None
    monkeypatch.setattr(torch_support, "installed_torch_version", lambda: "1.13.1+cu117")
    with caplog.at_level("WARNING", logger="reviewgpt"):
        assert choose_engine("fast", loaded) == "hf"
    assert "torch 1.13.1+cu117 has no scaled_dot_product_attention" in caplog.text
