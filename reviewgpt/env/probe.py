"""What `reviewgpt doctor` looks at, once: package versions, torch's CUDA build, the driver, the
GPUs, whether bitsandbytes / flash-attn / deepspeed load. `probe_environment()` returns a frozen
`Environment`; the checks (reviewgpt.env.doctor, reviewgpt.env.gpu_checks) read only that and
return a `Check`, so tests build an Environment by hand.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib
import importlib.metadata as metadata
import io
import logging
import os
import platform
import re
import shutil
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from typing import Dict, Literal, Optional, Tuple

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

Status = Literal["OK", "WARN", "FAIL"]
GIB = 1024**3
# Ask for this much headroom above the estimate: the reference Mistral run at 47 of 48 GB died
# of out-of-memory at 4 a.m. (the reference recipe's Mistral run).
HEADROOM = 0.10


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""



@dataclass(frozen=True)
class Gpu:
    name: str
    capability: Tuple[int, int]
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class ImportProbe:
    """A package that may be installed, and what importing it (or using it) said."""

    version: Optional[str] = None  # None: not installed
    error: Optional[str] = None  # None: it loaded (or was not tried)


@dataclass(frozen=True)
class Environment:
    python: str
    packages: Dict[str, Optional[str]] = field(default_factory=dict)  # canonical name -> version
    pins: Tuple[str, ...] = ()  # reviewgpt's own requirements (its installed metadata)
    torch_version: Optional[str] = None
    torch_error: Optional[str] = None
    torch_cuda: Optional[str] = None  # CUDA version torch was built with; None: CPU build
    torch_cxx11_abi: Optional[bool] = None
    torch_arch_list: Tuple[str, ...] = ()
    cuda_available: bool = False
    cuda_error: Optional[str] = None
    driver_cuda: Optional[str] = None  # highest CUDA the driver supports ("12.2"); None: no driver
    driver_version: Optional[str] = None
    gpus: Tuple[Gpu, ...] = ()
    bitsandbytes: ImportProbe = ImportProbe()
    flash_attn: ImportProbe = ImportProbe()
    deepspeed: ImportProbe = ImportProbe()
    trl: ImportProbe = ImportProbe()  # the training stack: trl imports transformers, peft, accelerate, datasets
    env: Dict[str, str] = field(default_factory=dict)  # the variables that matter here

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_PACKAGES = ("reviewgpt", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "numpy", "pandas",
             "pyarrow", "tokenizers", "safetensors", "huggingface-hub", "bitsandbytes", "flash-attn",
             "deepspeed", "triton")
_ENV_VARS = ("HF_HUB_OFFLINE", "HF_HOME", "BNB_CUDA_VERSION", "CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH",
             "REVIEWGPT_IMAGE")


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _first_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _quiet_import(module: str):
    # bitsandbytes and deepspeed print banners and log warnings on import; keep doctor's report clean
    # (what matters from them is whether the import raised).
    logging.disable(logging.WARNING)
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            return importlib.import_module(module)
    finally:
        logging.disable(logging.NOTSET)


def _driver_cuda() -> Optional[str]:
    """The highest CUDA version the installed driver supports, read from libcuda itself."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def _driver_version() -> Optional[str]:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def _probe_torch() -> dict:
    try:
        torch = importlib.import_module("torch")
    except Exception as exc:  # noqa: BLE001 - any import failure is the finding
        return {"torch_error": _first_line(exc)}
    info = {
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_cxx11_abi": bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", False)),
    }
    if torch.version.cuda is None:
        return info
    info["torch_arch_list"] = tuple(torch.cuda.get_arch_list())
    try:
        info["cuda_available"] = torch.cuda.is_available()
        gpus = []
        for index in range(torch.cuda.device_count() if info["cuda_available"] else 0):
            free, total = torch.cuda.mem_get_info(index)
            gpus.append(Gpu(torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index),
                            int(total), int(free)))
        info["gpus"] = tuple(gpus)
    except Exception as exc:  # noqa: BLE001
        info["cuda_available"], info["cuda_error"] = False, _first_line(exc)
    return info


def _probe_bitsandbytes(cuda_available: bool) -> ImportProbe:
    version = _version("bitsandbytes")
    if version is None:
        return ImportProbe()
    try:
        bnb = _quiet_import("bitsandbytes")
        if cuda_available:
            # Importing succeeds even when the CUDA library did not load; quantizing does not.
            import torch

            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                bnb.functional.quantize_4bit(torch.ones(64, device="cuda", dtype=torch.float16))
    except Exception as exc:  # noqa: BLE001
        return ImportProbe(version, _first_line(exc))
    return ImportProbe(version)


def _probe_import(dist: str, module: str) -> ImportProbe:
    version = _version(dist)
    if version is None:
        return ImportProbe()
    try:
        _quiet_import(module)
    except Exception as exc:  # noqa: BLE001
        return ImportProbe(version, _first_line(exc))
    return ImportProbe(version)


def _reviewgpt_version() -> str:
    from reviewgpt import __version__

    return __version__


def _pins() -> Tuple[str, ...]:
    """reviewgpt's requirements: its installed metadata, else pyproject.toml of a source checkout
    run through PYTHONPATH (as on a machine where packages were installed with --target)."""
    if _version("reviewgpt"):
        return tuple(metadata.requires("reviewgpt") or ())
    pyproject = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                             "pyproject.toml")  # reviewgpt/env/probe.py -> the checkout
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        return ()
    try:
        with open(pyproject, "rb") as f:
            project = tomllib.load(f)["project"]
    except (OSError, KeyError, ValueError):
        return ()
    extras = project.get("optional-dependencies", {})
    return tuple(project.get("dependencies", [])) + tuple(
        f'{req}; extra == "{extra}"' for extra, reqs in extras.items() for req in reqs)


def probe_environment() -> Environment:
    """Look at this machine once; every check reads only what this returns."""
    torch_info = _probe_torch()
    flash = _probe_import("flash-attn", "flash_attn")
    if flash.version and flash.error is None:
        # The compiled kernels are a separate module; an ABI mismatch shows up only there.
        flash = _probe_import("flash-attn", "flash_attn_2_cuda")
    pins = _pins()
    names = set(_PACKAGES) | {canonicalize_name(Requirement(p).name) for p in pins}
    return Environment(
        python=platform.python_version(),
        packages={name: _version(name) for name in sorted(names)} | {"reviewgpt": _reviewgpt_version()},
        pins=pins,
        driver_cuda=_driver_cuda(),
        driver_version=_driver_version(),
        bitsandbytes=_probe_bitsandbytes(torch_info.get("cuda_available", False)),
        flash_attn=flash,
        deepspeed=_probe_import("deepspeed", "deepspeed"),
        trl=_probe_import("trl", "trl"),
        env={name: os.environ[name] for name in _ENV_VARS if name in os.environ},
        **torch_info,
    )


def parse_version(text: Optional[str]) -> Optional[Version]:
    """A version string as a Version; None when absent or not a version (a probe that failed)."""
    if text is None:
        return None
    try:
        return Version(text)
    except InvalidVersion:
        return None


def major_minor(text: str) -> Tuple[int, int]:
    """'12.1' -> (12, 1): CUDA versions of the driver and of torch's build, compared by the GPU checks."""
    major, minor = (text.split(".") + ["0"])[:2]
    return int(major), int(re.match(r"\d+", minor).group())


LOCK_HINT = "pip install --require-hashes -r envs/<target>/requirements.lock (docs/environments.md)"
