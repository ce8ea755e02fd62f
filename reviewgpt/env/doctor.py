"""`reviewgpt doctor`: recognise every known conflict of the pinned stack before a run does.

Two halves. `probe_environment()` looks at this machine once (package versions, torch's CUDA
build, the driver, the GPUs, whether bitsandbytes / flash-attn / deepspeed load) and returns a
frozen `Environment`. The checks are pure functions `Environment -> Check`, so tests build a
broken `Environment` by hand instead of needing a GPU. Each conflict and its fix come from
shared/REFERENCE.md section 2 and what was seen on this project's machines.
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
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Literal, Optional, Tuple

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from reviewgpt import torch_support

Status = Literal["OK", "WARN", "FAIL"]
GIB = 1024**3
# Ask for this much headroom above the estimate: the reference Mistral run at 47 of 48 GB died
# of out-of-memory at 4 a.m. (REFERENCE.md 1b).
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


# ----------------------------------------------------------------------------------- probes

_PACKAGES = ("reviewgpt", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "numpy", "pandas",
             "pyarrow", "tokenizers", "safetensors", "huggingface-hub", "bitsandbytes", "flash-attn",
             "deepspeed")
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
                             "pyproject.toml")  # reviewgpt/env/doctor.py -> the checkout
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


# ----------------------------------------------------------------------------------- checks

def _v(text: Optional[str]) -> Optional[Version]:
    if text is None:
        return None
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _major_minor(text: str) -> Tuple[int, int]:
    major, minor = (text.split(".") + ["0"])[:2]
    return int(major), int(re.match(r"\d+", minor).group())


LOCK_HINT = "pip install --require-hashes -r envs/<target>/requirements.lock (docs/environments.md)"


def check_versions(env: Environment) -> Check:
    """Every package reviewgpt requires is installed and satisfies its requirement (`==` pins exactly,
    floors such as torch>=1.13 too)."""
    problems, matched = [], []
    for text in env.pins:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an optional extra (gpu, test): checked by its own check
        installed = env.packages.get(canonicalize_name(req.name))
        if installed is None:
            problems.append(f"{req.name} is not installed (needs {req.specifier})")
        elif not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req.name} {installed} installed, "
                            f"{'pinned' if str(req.specifier).startswith('==') else 'needs'} {req.specifier}")
        elif str(req.specifier).startswith("=="):
            matched.append(f"{req.name} {installed}")
    if not env.pins:
        return Check("versions", "WARN", "reviewgpt's metadata was not found (is the package installed?)",
                     "pip install --no-deps -e . after installing a lock")
    if problems:
        return Check("versions", "FAIL", "; ".join(problems),
                     f"install the pinned stack: {LOCK_HINT}")
    return Check("versions", "OK", "pins match: " + ", ".join(matched))


def _arch_supported(capability: Tuple[int, int], arch_list: Tuple[str, ...]) -> bool:
    """True when torch carries kernels for this GPU: same-major SASS or older PTX (JIT)."""
    major, minor = capability
    for arch in arch_list:
        kind, _, digits = arch.partition("_")
        if not digits.isdigit():
            continue
        a_major, a_minor = int(digits[:-1]), int(digits[-1])
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


def check_torch_cuda(env: Environment) -> Check:
    """torch's CUDA build against the driver and the GPUs it finds."""
    if env.torch_version is None:
        return Check("torch-cuda", "FAIL", f"torch does not import ({env.torch_error})", LOCK_HINT)
    build = f"torch {env.torch_version}"
    if env.torch_cuda is None:
        if env.driver_cuda:
            return Check("torch-cuda", "FAIL",
                         f"{build} is a CPU build, but an NVIDIA driver (CUDA {env.driver_cuda}) is here",
                         "install a CUDA build: the reviewgpt:cu118 image, or envs/cu118 "
                         "(torch from https://download.pytorch.org/whl/cu118)")
        return Check("torch-cuda", "WARN", f"{build} is a CPU build and no NVIDIA driver was found",
                     "fine for the tiny recipe and tests; QLoRA recipes need a CUDA GPU")
    build += f" (CUDA {env.torch_cuda})"
    if env.driver_cuda is None:
        return Check("torch-cuda", "WARN", f"{build}, but no NVIDIA driver (libcuda.so.1) was found",
                     "run on a GPU machine; in Docker pass --gpus all (NVIDIA Container Toolkit)")
    driver, built = _major_minor(env.driver_cuda), _major_minor(env.torch_cuda)
    driver_text = f"driver {env.driver_version or '?'} supports CUDA {env.driver_cuda}"
    if driver[0] < built[0]:
        return Check("torch-cuda", "FAIL", f"{build}, but the {driver_text}",
                     f"update the NVIDIA driver, or use a torch built for CUDA <= {env.driver_cuda} "
                     "(the reviewgpt:cu117 image)")
    if not env.cuda_available:
        return Check("torch-cuda", "FAIL", f"{build}, {driver_text}, yet torch sees no GPU "
                     f"({env.cuda_error or 'torch.cuda.is_available() is False'})",
                     "check CUDA_VISIBLE_DEVICES and `nvidia-smi`; in Docker pass --gpus all")
    unsupported = [g.name for g in env.gpus if not _arch_supported(g.capability, env.torch_arch_list)]
    if unsupported:
        caps = ", ".join(f"sm_{g.capability[0]}{g.capability[1]}" for g in env.gpus)
        return Check("torch-cuda", "FAIL",
                     f"{build} has no kernels for {', '.join(unsupported)} ({caps}; torch has "
                     f"{' '.join(env.torch_arch_list)})",
                     "use the reviewgpt:cu118 image (CUDA 11.8 is the first with sm_89/sm_90)")
    if driver < built:
        return Check("torch-cuda", "WARN", f"{build}, {driver_text} (older minor: minor-version compatibility)",
                     "works for most kernels; update the driver if a kernel fails to load (PTX JIT)")
    return Check("torch-cuda", "OK", f"{build}, {driver_text}, {len(env.gpus)} GPU(s)")


def check_gpus(env: Environment) -> Check:
    """Compute capability and bf16: the recipes train in bf16 (fp16 gives NaN losses on Gemma)."""
    if not env.gpus:
        return Check("gpu", "WARN", "no CUDA GPU visible", "the tiny recipe runs on the CPU; QLoRA needs a GPU")
    described = ", ".join(f"{g.name} (sm_{g.capability[0]}{g.capability[1]}, {g.total_bytes / GIB:.0f} GiB)"
                          for g in env.gpus)
    no_bf16 = [g.name for g in env.gpus if g.capability < (8, 0)]
    if no_bf16:
        return Check("gpu", "FAIL", f"{described}: {', '.join(no_bf16)} has no bf16 (needs sm_80+)",
                     "use an Ampere or newer GPU (A10, A100, L4, RTX 30xx+, H100); fp16 gives NaN losses on Gemma")
    return Check("gpu", "OK", f"{described}; bf16 and flash-attn 2 supported")


def check_bitsandbytes(env: Environment) -> Check:
    bnb = env.bitsandbytes
    if bnb.version is None:
        if env.gpus:
            return Check("bitsandbytes", "FAIL", "not installed; the QLoRA recipes load the base in 4-bit",
                         "pip install bitsandbytes==0.43.1 (in the cu117/cu118 locks)")
        return Check("bitsandbytes", "OK", "not installed (only needed for 4-bit on a GPU)")
    if bnb.error and "register_fake" in bnb.error:
        # Not a CUDA lookup problem: this bitsandbytes registers its ops with an API this torch lacks,
        # so importing it fails (and training with it), GPU or not.
        since = torch_support.FEATURES["register_fake"].since
        return Check("bitsandbytes", "FAIL",
                     f"bitsandbytes {bnb.version} needs torch >= {since}, this is torch {env.torch_version} "
                     f"({bnb.error})",
                     "pip install bitsandbytes==0.43.1 (the cu117/cu118 locks' pin), or use a torch >= " + since)
    if bnb.error:
        cuda = (env.torch_cuda or "").replace(".", "")
        return Check("bitsandbytes", "FAIL", f"bitsandbytes {bnb.version} did not load its CUDA library ({bnb.error})",
                     f"set BNB_CUDA_VERSION={cuda or '<torch CUDA, e.g. 118>'} to pick "
                     f"libbitsandbytes_cuda{cuda or 'XXX'}.so, put the CUDA runtime on LD_LIBRARY_PATH, "
                     "and run `python -m bitsandbytes` for its own diagnosis")
    if not env.cuda_available:
        return Check("bitsandbytes", "OK", f"bitsandbytes {bnb.version} installed; 4-bit needs a CUDA GPU")
    return Check("bitsandbytes", "OK", f"bitsandbytes {bnb.version} quantizes on the GPU")


def check_flash_attn(env: Environment) -> Check:
    fa = env.flash_attn
    ampere = bool(env.gpus) and all(g.capability >= (8, 0) for g in env.gpus)
    if fa.version is None:
        if ampere:
            return Check("flash-attn", "WARN", "not installed; attention falls back to sdpa (more memory at 8K+)",
                         "use the reviewgpt:cu118 image, or install the flash-attn wheel for this "
                         "torch/CUDA/ABI (docs/environments.md)")
        return Check("flash-attn", "OK", "not installed (needs an Ampere+ GPU anyway)")
    if fa.error and "undefined symbol" in fa.error:
        abi = "TRUE" if env.torch_cxx11_abi else "FALSE"
        return Check("flash-attn", "FAIL",
                     f"flash-attn {fa.version} was built for another torch or C++ ABI ({fa.error})",
                     f"install the wheel built for torch {env.torch_version}, CUDA {env.torch_cuda}, "
                     f"cxx11abi{abi}, or rebuild: pip install --no-build-isolation flash-attn=={fa.version}")
    if fa.error:
        return Check("flash-attn", "FAIL", f"flash-attn {fa.version} does not import ({fa.error})",
                     "pip uninstall flash-attn, or install the wheel for this torch/CUDA (docs/environments.md)")
    return Check("flash-attn", "OK", f"flash-attn {fa.version} imports")


_DS_LOG_BUG = "0.13.2"  # first deepspeed that returns grad_norm as a tensor
_DS_NEW_TORCH = "0.14.4"  # first deepspeed that imports on torch >= 2.6


def check_deepspeed_transformers(env: Environment) -> Check:
    """transformers 4.38.x logs grad_norm unconverted; deepspeed >= 0.13.2 makes it a tensor."""
    ds, tf = _v(env.deepspeed.version), _v(env.packages.get("transformers"))
    if ds is None:
        return Check("deepspeed-transformers", "OK", "deepspeed not installed (only for ZeRO across GPUs)")
    if tf is not None and tf < Version("4.39") and ds >= Version(_DS_LOG_BUG):
        return Check("deepspeed-transformers", "FAIL",
                     f"deepspeed {ds} with transformers {tf}: saving logs fails with 'Object of type Tensor "
                     "is not JSON serializable' (grad_norm, transformers#29207)",
                     "pip install deepspeed==0.13.1 (the locks' pin)")
    return Check("deepspeed-transformers", "OK", f"deepspeed {ds} with transformers {tf}")


def check_deepspeed_torch(env: Environment) -> Check:
    ds, torch = _v(env.deepspeed.version), _v(env.torch_version)
    if ds is None:
        return Check("deepspeed-torch", "OK", "deepspeed not installed")
    too_old = torch is not None and torch.release >= (2, 6) and ds < Version(_DS_NEW_TORCH)
    if env.deepspeed.error or too_old:
        said = env.deepspeed.error or "cannot import name 'log' from 'torch.distributed.elastic.agent.server.api'"
        return Check("deepspeed-torch", "FAIL",
                     f"deepspeed {ds} does not import on torch {env.torch_version} ({said}); while it is "
                     "installed, `import trl` fails too",
                     "pip uninstall deepspeed (one GPU and DDP do not need it), or use the reviewgpt:cu118 "
                     f"image (torch 2.2); deepspeed >= {_DS_NEW_TORCH} imports but has the grad_norm bug")
    return Check("deepspeed-torch", "OK", f"deepspeed {ds} imports on torch {env.torch_version}")


def check_datasets_stack(env: Environment) -> Check:
    """datasets 2.16 needs numpy 1.x; pyarrow >= 26 and pandas >= 3 need numpy 2."""
    ds = _v(env.packages.get("datasets"))
    numpy, pandas, pyarrow = (_v(env.packages.get(n)) for n in ("numpy", "pandas", "pyarrow"))
    if ds is None:
        return Check("datasets-stack", "FAIL", "datasets is not installed", LOCK_HINT)
    problems = []
    if ds < Version("2.20") and numpy is not None and numpy.major >= 2:
        problems.append(f"numpy {numpy} (datasets {ds} calls np.array(copy=False))")
    if pyarrow is not None and pyarrow.major >= 26:
        problems.append(f"pyarrow {pyarrow} (refuses to import with numpy 1.x)")
    if pandas is not None and pandas.major >= 3:
        problems.append(f"pandas {pandas} (needs numpy >= 2.0.2)")
    found = f"datasets {ds}, numpy {numpy}, pandas {pandas}, pyarrow {pyarrow}"
    if problems:
        return Check("datasets-stack", "FAIL", f"{found}: " + "; ".join(problems),
                     'pip install "numpy<2" "pandas<3" "pyarrow<26" (the locks: numpy 1.26.4, pandas 2.3.3, '
                     "pyarrow 25.0.1)")
    return Check("datasets-stack", "OK", found)


def check_hf_offline(env: Environment) -> Check:
    value = env.env.get("HF_HUB_OFFLINE")
    if value is None or value.lower() in ("1", "true", "yes", "on"):
        return Check("hf-offline", "OK", f"HF_HUB_OFFLINE={value or '1 (reviewgpt default)'}: models load from "
                     "local directories", "")
    return Check("hf-offline", "WARN", f"HF_HUB_OFFLINE={value}: hub calls are on; peft 0.9.0 calls the hub on "
                 "every adapter save (23.5 s each where the hub is unreachable)",
                 "set HF_HUB_OFFLINE=1 once the model is downloaded")


def check_torch_features(env: Environment) -> Check:
    """What this torch cannot do for the pinned stack (reviewgpt.torch_support) and what runs instead.
    Only a missing SDPA costs much (eager attention at long context), so only it warns."""
    if env.torch_version is None:
        return Check("torch-features", "FAIL", f"torch does not import ({env.torch_error})", LOCK_HINT)
    missing = torch_support.missing(env.torch_version)
    if not missing:
        return Check("torch-features", "OK", f"torch {env.torch_version} has every feature reviewgpt uses")
    detail = f"torch {env.torch_version} lacks " + "; ".join(
        f"{f.what} (torch >= {f.since}): {f.without}" for f in missing)
    if torch_support.FEATURES["sdpa"] in missing:
        return Check("torch-features", "WARN", detail,
                     "trains as is; on a GPU the flash-attn wheel (the image's) or the reviewgpt:cu118 image "
                     "(torch 2.2.1) avoids eager attention")
    return Check("torch-features", "OK", detail)


def check_training_stack(env: Environment) -> Check:
    """The last word on whether this stack can train: trl, and through it transformers, peft,
    accelerate and datasets (and deepspeed where installed), imports."""
    if env.trl.version is None:
        return Check("training-stack", "FAIL", "trl is not installed", LOCK_HINT)
    if env.trl.error:
        return Check("training-stack", "FAIL", f"trl {env.trl.version} does not import ({env.trl.error})",
                     f"the FAIL lines above name the cause; else reinstall the lock: {LOCK_HINT}")
    return Check("training-stack", "OK", f"trl {env.trl.version} and the packages it loads import")


def estimate_training_bytes(recipe) -> int:
    """Peak GPU memory of one training process, as `reviewgpt plan` predicts it (reserved bytes, with
    the recipe's speed options). A model the planner does not know is taken as its family's 7B."""
    from reviewgpt.memory import architecture_or_family_default, predict_recipe

    arch = architecture_or_family_default(recipe.model, recipe.family)
    predicted = predict_recipe(recipe, arch, recipe.max_seq_length, recipe.per_device_train_batch_size)
    return int(predicted["reserved_gib"] * GIB)


def check_gpu_memory(env: Environment, recipe=None) -> Check:
    if not env.gpus:
        return Check("gpu-memory", "OK", "no GPU: nothing to compare")
    free = min(g.free_bytes for g in env.gpus)
    if recipe is None:
        return Check("gpu-memory", "OK", f"{free / GIB:.1f} GiB free on the fullest GPU; pass --recipe to compare")
    if recipe.model is None:
        return Check("gpu-memory", "OK", f"recipe {recipe.name!r} names no base model; {free / GIB:.1f} GiB free")
    need = estimate_training_bytes(recipe)
    detail = (f"recipe {recipe.name} needs about {need / GIB:.1f} GiB per GPU (batch "
              f"{recipe.per_device_train_batch_size} x {recipe.max_seq_length} tokens); {free / GIB:.1f} GiB free")
    fix = ("lower --per-device-train-batch-size or --max-seq-length (more --gradient-accumulation-steps keeps "
           "the effective batch), or use a larger GPU")
    if need > free:
        return Check("gpu-memory", "FAIL", detail, fix)
    if need > free * (1 - HEADROOM):
        return Check("gpu-memory", "WARN", detail + f" (less than {HEADROOM:.0%} headroom)", fix)
    return Check("gpu-memory", "OK", detail)


CHECKS: List[Callable[[Environment], Check]] = [
    check_versions,
    check_torch_cuda,
    check_torch_features,
    check_gpus,
    check_bitsandbytes,
    check_flash_attn,
    check_deepspeed_transformers,
    check_deepspeed_torch,
    check_datasets_stack,
    check_hf_offline,
    check_training_stack,
]


def run_checks(env: Environment, recipe=None) -> List[Check]:
    return [check(env) for check in CHECKS] + [check_gpu_memory(env, recipe)]


def exit_code(checks: List[Check]) -> int:
    return 1 if any(c.status == "FAIL" for c in checks) else 0


def format_report(env: Environment, checks: List[Check]) -> str:
    image = env.env.get("REVIEWGPT_IMAGE")
    header = (f"reviewgpt doctor: reviewgpt {env.packages.get('reviewgpt')}, Python {env.python}, "
              f"{sys.platform}" + (f", image reviewgpt:{image}" if image else ""))
    lines = [header]
    width = max(len(c.name) for c in checks)
    for c in checks:
        lines.append(f"{c.status:4s}  {c.name:{width}s}  {c.detail}")
        if c.fix and c.status != "OK":
            lines.append(f"{'':4s}  {'':{width}s}  fix: {c.fix}")
    counts = {s: sum(c.status == s for c in checks) for s in ("OK", "WARN", "FAIL")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)
