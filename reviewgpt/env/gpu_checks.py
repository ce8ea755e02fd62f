"""The doctor's GPU-side checks: torch's CUDA build against the driver and the GPUs, bitsandbytes'
and flash-attn's kernels, and the recipe's predicted memory against what the GPUs have free.
Pure functions `Environment -> Check` like the rest of reviewgpt.env.doctor.
"""

from __future__ import annotations

from typing import Tuple

from reviewgpt import torch_support
from reviewgpt.env.probe import GIB, HEADROOM, LOCK_HINT, Check, Environment, major_minor


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
    driver, built = major_minor(env.driver_cuda), major_minor(env.torch_cuda)
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


def check_triton(env: Environment) -> Check:
    """Whether the triton_* speed options (reviewgpt.train.speed.kernels) can run: triton >= 3.0."""
    version = env.packages.get("triton")
    problem = torch_support.triton_version_problem(version)
    if not problem:
        return Check("triton", "OK", f"triton {version}: the triton_* speed options run on a CUDA GPU")
    # OK, not WARN, like torch-features: a speed option that stays off is no conflict (the cu117/cu118
    # images' torch 1.13/2.2 cannot have triton 3, and their GPU runs are healthy).
    return Check("triton", "OK", f"{problem}: the triton_* speed options stay off (RMSNorm, RoPE, "
                 "GeGLU/SwiGLU in torch ops; gemma-7b 8K trained 14% slower without them on an H200)")


def estimate_training_bytes(recipe) -> int:
    """Peak GPU memory of one training process, as `reviewgpt plan` predicts it (reserved bytes, with
    the recipe's speed options; `checkpoint_skip_layers: auto` as no layer kept, its floor). A model the
    planner does not know is taken as its family's 7B."""
    from reviewgpt.train.memory import architecture_or_family_default, predict_recipe
    from reviewgpt.train.plan import at_auto_floor

    arch = architecture_or_family_default(recipe.model, recipe.family)
    predicted = predict_recipe(at_auto_floor(recipe), arch, recipe.max_seq_length, recipe.per_device_train_batch_size)
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
