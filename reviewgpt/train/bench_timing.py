"""Timing a bench row: each optimizer step's wall time (CUDA-synchronised), an optional profile
of one step's costliest GPU kernels, and the versions a row was measured with."""

from __future__ import annotations

import logging
import time
from typing import List

import torch

log = logging.getLogger(__name__)


class StepTimer:
    def __init__(self):
        self.times: List[float] = []
        self._start = 0.0

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class _Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                timer._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                timer.times.append(time.perf_counter() - timer._start)

        return _Timer()


class StepProfiler:
    """torch.profiler over one optimizer step (after `skip` steps): where the GPU time goes."""

    def __init__(self, skip: int):
        from torch.profiler import ProfilerActivity, profile, schedule

        self.prof = profile(activities=[ProfilerActivity.CUDA],
                            schedule=schedule(wait=skip, warmup=0, active=1, repeat=1))

    def __enter__(self):
        self.prof.__enter__()
        return self

    def __exit__(self, *exc):
        return self.prof.__exit__(*exc)

    def callback(self):
        from transformers import TrainerCallback

        prof = self.prof

        class _Step(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                prof.step()

        return _Step()

    def top(self, n: int) -> List[dict]:
        def self_us(event):
            return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)

        try:
            events = sorted(self.prof.key_averages(), key=self_us, reverse=True)
        except Exception as exc:  # noqa: BLE001 - a profiler problem must not lose the measurement
            log.warning("no profile: %s", exc)
            return []
        total = sum(self_us(e) for e in events) or 1
        return [{"kernel": e.key[:100], "ms": round(self_us(e) / 1000, 2), "share": round(self_us(e) / total, 4),
                 "calls": e.count} for e in events[:n]]


def versions() -> dict:
    import accelerate
    import peft
    import transformers
    import trl

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
           "peft": peft.__version__, "accelerate": accelerate.__version__}
    try:
        import bitsandbytes

        out["bitsandbytes"] = bitsandbytes.__version__
    except Exception:  # noqa: BLE001 - absent or broken on CPU machines
        out["bitsandbytes"] = None
    return out
