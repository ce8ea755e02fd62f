"""`checkpoint_offload`: the hidden states saved at checkpoint boundaries wait in pinned host memory.

With gradient checkpointing every decoder layer keeps one tensor on the GPU from forward to
backward: its input, sequence x hidden (gemma-7b: 192 MiB per layer at 32K tokens in bf16, 5.25 GiB
for 28 layers; 10.5 GiB at 64K). Everything else inside the layer is recomputed in backward.

torch's non-reentrant checkpoint saves a layer's inputs as saved tensors *outside* its own
saved-tensor hooks (the hooks that drop the layer's internals apply only inside the layer), so
`torch.autograd.graph.saved_tensors_hooks` put around the checkpoint call sees exactly these inputs:
`pack` copies the hidden states into pinned host memory (a non-blocking copy on the current
stream: the GPU block is reused only after the copy, stream order guarantees it) and `unpack`
copies them back when backward recomputes that layer. torch's own `save_on_cpu` does the same
around a whole forward, where it would also move the activations of layers that are not
checkpointed; and it copies synchronously.

Only floating tensors that require grad (the residual stream) and are at least `MIN_BYTES` are
moved: the attention mask and position ids are shared by every layer, and small. PCIe traffic is
two copies of each layer input per step (~4 ms per gemma-7b layer at 32K on PCIe 5), which costs a
few percent of a step; the host needs the same amount of pinned memory (`reviewgpt plan` says how
much). A torch whose checkpoint keeps its inputs some other way (before 2.1) moves nothing: the
first checkpointed layer that packs nothing logs it once.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Optional

import torch

log = logging.getLogger(__name__)

MIN_BYTES = 1 << 20  # smaller tensors stay where they are: a copy is not worth it


class HostOffload:
    """saved-tensor hooks that keep large grad-requiring tensors in (pinned) host memory."""

    def __init__(self, min_bytes: Optional[int] = None):
        self.min_bytes = MIN_BYTES if min_bytes is None else min_bytes
        self.packed = 0  # tensors moved to the host so far
        self.packed_bytes = 0
        self._checked = False

    def wanted(self, tensor: torch.Tensor) -> bool:
        return (tensor.requires_grad and tensor.is_floating_point() and not tensor.is_sparse
                and tensor.numel() * tensor.element_size() >= self.min_bytes)

    def pack(self, tensor: torch.Tensor):
        if not self.wanted(tensor):
            return tensor
        host = torch.empty(tensor.size(), dtype=tensor.dtype, layout=tensor.layout,
                           pin_memory=tensor.device.type == "cuda")
        host.copy_(tensor, non_blocking=tensor.device.type == "cuda")
        self.packed += 1
        self.packed_bytes += host.numel() * host.element_size()
        return tensor.device, host

    @staticmethod
    def unpack(packed):
        if isinstance(packed, torch.Tensor):
            return packed
        device, host = packed
        return host.to(device, non_blocking=device.type == "cuda")

    @contextlib.contextmanager
    def hooks(self, args=()):
        """Offload what a checkpoint call saves of its inputs; check once that this torch lets us."""
        before = self.packed
        with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
            yield
        if not self._checked and torch.is_grad_enabled() and any(
                isinstance(a, torch.Tensor) and self.wanted(a) for a in args):
            self._checked = True
            if self.packed == before:
                log.warning("checkpoint_offload: torch %s's checkpoint did not hand its inputs to saved-tensor "
                            "hooks; nothing is offloaded", torch.__version__)


def offload_supported() -> bool:
    """A checkpoint that saves its inputs through saved-tensor hooks (reviewgpt.torch_support)."""
    from reviewgpt.torch_support import has

    return has("checkpoint_saved_inputs")
