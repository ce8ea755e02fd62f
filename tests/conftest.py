"""Shared fixtures: tiny models and data built locally, once per session; no network."""

from __future__ import annotations

import os

import pytest
import torch

# Without a CUDA GPU the Triton kernels (reviewgpt.train.speed.triton_kernels) run in triton's
# interpreter. Triton reads TRITON_INTERPRET when it defines a kernel, and defines its own library
# (tl.sum) when first imported, which trl and bitsandbytes do: so it is set here, before anything,
# and stays set while the test modules are imported (tests/test_triton_kernels.py imports the kernels).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# urllib3 probes IPv6 support with a socket when first imported; import it before pytest-socket
# blocks sockets so that probe is not reported as a test's network use.
import urllib3  # noqa: E402,F401


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def no_triton_interpreter_once_collected():
    """Tests run as on a CPU without the interpreter, the triton_* options off (reviewgpt.train.speed.kernels
    wants TRITON_INTERPRET=1 on a CPU), in this process and in the `reviewgpt` processes they start:
    interpreted kernels take minutes at the tiny recipe's length. Tests marked `triton` get it back.
    Session-scoped and autouse, so it comes before the fixtures that train runs for a module."""
    os.environ.pop("TRITON_INTERPRET", None)
    yield
    if TRITON_INTERPRET is not None:
        os.environ["TRITON_INTERPRET"] = TRITON_INTERPRET


@pytest.fixture(autouse=True)
def triton_interpreter_where_marked(request, monkeypatch):
    if TRITON_INTERPRET is not None and request.node.get_closest_marker("triton") is not None:
        monkeypatch.setenv("TRITON_INTERPRET", TRITON_INTERPRET)


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory):
    from reviewgpt.models.tiny import build_tiny_model

    return build_tiny_model("gemma", tmp_path_factory.mktemp("tiny-gemma"))


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory):
    from reviewgpt.models.tiny import build_tiny_model

    return build_tiny_model("mistral", tmp_path_factory.mktemp("tiny-mistral"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    from reviewgpt.models.tiny import build_tiny_model

    return build_tiny_model("llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_models(tiny_gemma, tiny_mistral, tiny_llama):
    return {"gemma": tiny_gemma, "mistral": tiny_mistral, "llama": tiny_llama}


@pytest.fixture(scope="session")
def gemma_tokenizer(tiny_gemma):
    from reviewgpt.models import load_tokenizer

    return load_tokenizer(str(tiny_gemma), "gemma")


@pytest.fixture(scope="session")
def mistral_tokenizer(tiny_mistral):
    from reviewgpt.models import load_tokenizer

    return load_tokenizer(str(tiny_mistral), "mistral")


@pytest.fixture(scope="session")
def llama_tokenizer(tiny_llama):
    from reviewgpt.models import load_tokenizer

    return load_tokenizer(str(tiny_llama), "llama")


@pytest.fixture(scope="session")
def sample_file(tmp_path_factory):
    from reviewgpt.data.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("data") / "sample.jsonl", n_papers=8, reviews_per_paper=2)
