"""What a torch release can do for the pinned stack, decided from its version in one place.

The images pin torch 1.13.1 (cu117: the reference recipe's own) and 2.2.1 (cu118); the CPU tests
run 2.13. Code that needs one of these features asks `has(...)` and, where the torch lacks it,
turns the option off or takes the replacement with one log line; `reviewgpt doctor` prints the
same table. Every function takes the torch version as an argument (default: the installed torch),
so tests decide for torch 1.13 while running on any torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from packaging.version import Version


@dataclass(frozen=True)
class Feature:
    what: str
    since: str  # the first torch release that has it
    without: str  # what happens on an older torch


FEATURES = {
    # transformers 4.38.2's Trainer always passes DataLoader(prefetch_factor=args.dataloader_prefetch_factor),
    # None by default; torch 1.x refuses anything but 2 without worker processes ("prefetch_factor option
    # could only be specified in multiprocessing").
    "dataloader_prefetch_none": Feature("DataLoader(prefetch_factor=None), which transformers 4.38.2 passes",
                                        "2.0", "reviewgpt passes prefetch_factor=2, torch 1.x's default"),
    # transformers 4.38.2's is_torch_sdpa_available(): "PyTorch SDPA requirements in Transformers are not met".
    "sdpa": Feature("scaled_dot_product_attention for transformers 4.38.2", "2.1.1",
                    "attention 'auto' and 'sdpa' load as eager (more memory at long context)"),
    "rms_norm": Feature("torch.nn.functional.rms_norm", "2.4", "fused_rmsnorm stays off"),
    # torch 1.13's non-reentrant checkpoint keeps its inputs under its own saved-tensor hooks, so
    # reviewgpt's hooks around it see nothing (the cu117 stand-in: 0 tensors moved).
    "checkpoint_saved_inputs": Feature("non-reentrant checkpoint saving its inputs through outer saved-tensor hooks",
                                       "2.1", "checkpoint_offload stays off"),
    # bitsandbytes 0.50.2 registers its ops with torch.library.register_fake when imported (and declares
    # torch >= 2.4); on torch 2.2.1 training failed at that import.
    "register_fake": Feature("torch.library.register_fake", "2.4",
                             "a bitsandbytes that needs it (0.50.2) does not import; the locks' 0.43.1 does"),
}


def installed_torch_version() -> str:
    import torch

    return torch.__version__


def has(feature: str, torch_version: Optional[str] = None) -> bool:
    """Whether torch `torch_version` (default: the installed one) has FEATURES[feature]."""
    release = Version(torch_version or installed_torch_version()).release  # "1.13.1+cu117" -> (1, 13, 1)
    return release >= Version(FEATURES[feature].since).release


def missing(torch_version: Optional[str] = None) -> List[Feature]:
    """The features of FEATURES that torch `torch_version` lacks."""
    return [feature for name, feature in FEATURES.items() if not has(name, torch_version)]


def dataloader_prefetch_factor(torch_version: Optional[str] = None) -> Optional[int]:
    """The prefetch_factor a DataLoader without worker processes accepts: None, or 2 on torch 1.x."""
    return None if has("dataloader_prefetch_none", torch_version) else 2


MIN_TRITON = "3.0"


def triton_version_problem(version: Optional[str]) -> str:
    """Why triton `version` (None: not installed) cannot run the triton_* speed options ('' when it can):
    they need triton >= 3.0 (torch >= 2.4 ships it; torch 2.2's triton 2.2 lacks what the kernels use)."""
    if version is None:
        return "triton is not installed"
    if Version(version).release < Version(MIN_TRITON).release:
        return f"triton {version} is older than {MIN_TRITON}"
    return ""


def triton_problem() -> str:
    """`triton_version_problem` of the installed triton."""
    try:
        import triton
    except ImportError:
        return triton_version_problem(None)
    return triton_version_problem(triton.__version__)
