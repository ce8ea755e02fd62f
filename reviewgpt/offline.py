"""Offline unless the user allows the network: the CLI's choice, and one call for scripts.

Models and tokenizers are local directories here. peft 0.9.0 asks the hub whether the base model's
config exists on every adapter save (five retries, ~23 s without a network) unless HF_HUB_OFFLINE
is set, and transformers and datasets reach the hub for any name that looks like a repo id. So the
`reviewgpt` command sets HF_HUB_OFFLINE=1 (and HF_DATASETS_OFFLINE) unless the environment already
says otherwise: HF_HUB_OFFLINE=0 lets hub ids download.

Importing reviewgpt changes nothing in the process. A script that uses the library the way the CLI
does calls the same function first:

    import reviewgpt
    reviewgpt.offline_by_default()   # HF_HUB_OFFLINE=1 unless the environment set it
"""

from __future__ import annotations

import os
import sys


def offline_by_default() -> bool:
    """Set HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE (to the same value) unless the environment has them,
    and tell an already imported huggingface_hub; returns True when the process is now offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", os.environ["HF_HUB_OFFLINE"])
    offline = os.environ["HF_HUB_OFFLINE"].strip().upper() in ("1", "ON", "YES", "TRUE")
    constants = sys.modules.get("huggingface_hub.constants")
    if offline and constants is not None:
        # huggingface_hub read the environment when it was imported (a script that imported
        # transformers first): tell it too.
        constants.HF_HUB_OFFLINE = True
    return offline
