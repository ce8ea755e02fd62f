"""`reviewgpt doctor`: recognise every known conflict of the pinned stack before a run does.

Two halves. `probe_environment()` (reviewgpt.env.probe) looks at this machine once (package versions,
torch's CUDA build, the driver, the GPUs, whether bitsandbytes / flash-attn / deepspeed load) and returns a
frozen `Environment`. The checks are pure functions `Environment -> Check`, so tests build a
broken `Environment` by hand instead of needing a GPU. Each conflict and its fix come from
what was seen on this project's machines with the pinned stack.
"""

from __future__ import annotations

import sys
from typing import Callable, List

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from reviewgpt import torch_support
from reviewgpt.env.gpu_checks import (
    check_bitsandbytes,
    check_flash_attn,
    check_gpu_memory,
    check_gpus,
    check_torch_cuda,
    check_triton,
)
from reviewgpt.env.probe import (
    LOCK_HINT,
    Check,
    Environment,
    parse_version,
)

# ----------------------------------------------------------------------------------- checks



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


_DS_LOG_BUG = "0.13.2"  # first deepspeed that returns grad_norm as a tensor
_DS_NEW_TORCH = "0.14.4"  # first deepspeed that imports on torch >= 2.6


def check_deepspeed_transformers(env: Environment) -> Check:
    """transformers 4.38.x logs grad_norm unconverted; deepspeed >= 0.13.2 makes it a tensor."""
    ds, tf = parse_version(env.deepspeed.version), parse_version(env.packages.get("transformers"))
    if ds is None:
        return Check("deepspeed-transformers", "OK", "deepspeed not installed (only for ZeRO across GPUs)")
    if tf is not None and tf < Version("4.39") and ds >= Version(_DS_LOG_BUG):
        return Check("deepspeed-transformers", "FAIL",
                     f"deepspeed {ds} with transformers {tf}: saving logs fails with 'Object of type Tensor "
                     "is not JSON serializable' (grad_norm, transformers#29207)",
                     "pip install deepspeed==0.13.1 (the locks' pin)")
    return Check("deepspeed-transformers", "OK", f"deepspeed {ds} with transformers {tf}")


def check_deepspeed_torch(env: Environment) -> Check:
    ds, torch = parse_version(env.deepspeed.version), parse_version(env.torch_version)
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
    ds = parse_version(env.packages.get("datasets"))
    numpy, pandas, pyarrow = (parse_version(env.packages.get(n)) for n in ("numpy", "pandas", "pyarrow"))
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


CHECKS: List[Callable[[Environment], Check]] = [
    check_versions,
    check_torch_cuda,
    check_torch_features,
    check_gpus,
    check_bitsandbytes,
    check_flash_attn,
    check_triton,
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
