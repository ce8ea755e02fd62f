"""GPU checks of the chunked loss, offload and the lean MLP in bf16 under autocast (skipped on CPU)."""

import time

import pytest
import torch

from reviewgpt.train.speed.loss import causal_lm_loss


def _reference(hidden, weight, labels):
    logits = (hidden @ weight.t()).float()
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, weight.shape[0]),
                                             labels[:, 1:].reshape(-1))


@pytest.mark.gpu
@pytest.mark.parametrize("vocab,hidden_size,seq", [(256000, 3072, 8192), (32000, 4096, 12288)])
def test_chunked_loss_matches_and_is_not_slower_on_gpu(vocab, hidden_size, seq):
    torch.manual_seed(0)
    hidden = torch.randn(1, seq, hidden_size, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(vocab, hidden_size, device="cuda") * 0.02).bfloat16()
    labels = torch.randint(0, vocab, (1, seq), device="cuda")
    results = {}
    for name, fn in (("reference", _reference), ("chunked", causal_lm_loss)) * 2:
        hidden.grad = None
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fn(hidden, weight, labels)
        loss.backward()
        torch.cuda.synchronize()
        results[name] = (loss.item(), hidden.grad.float().clone(), time.perf_counter() - start)
    (ref_loss, ref_grad, ref_s), (loss, grad, s) = results["reference"], results["chunked"]
    print(f"\nloss V={vocab} T={seq}: reference {ref_s * 1e3:.1f} ms, chunked {s * 1e3:.1f} ms")
    assert abs(loss - ref_loss) <= 1e-3 * abs(ref_loss)
    assert torch.linalg.vector_norm(grad - ref_grad) <= 1e-2 * torch.linalg.vector_norm(ref_grad)
    assert s <= 1.5 * ref_s + 0.02


@pytest.mark.gpu
def test_offload_and_lean_mlp_on_cuda_keep_the_grads(tiny_mistral):
    """Pinned host copies with non-blocking transfers, and the lean MLP under bf16 autocast, on a GPU."""
    from reviewgpt.train.speed.checkpointing import checkpoint_layers, recompute_all_layers
    from reviewgpt.train.speed.mlp import patch_lean_mlp, unpatch_lean_mlp
    from reviewgpt.train.speed.offload import HostOffload
    from tests.test_speed import assert_close, batch, load, loss_and_grads

    model = load(tiny_mistral).cuda().train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids, labels = (t.cuda() for t in batch(model.config.vocab_size))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref_loss, ref_grads = loss_and_grads(model, ids, labels)
    packed = []

    class Recording(HostOffload):
        def pack(self, tensor):
            out = super().pack(tensor)
            packed.append(out)
            return out

    checkpoint_layers(model, offload=Recording(min_bytes=1))
    patch_lean_mlp(model)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, grads = loss_and_grads(model, ids, labels)
    unpatch_lean_mlp(model)
    recompute_all_layers(model)
    hosted = [p[1] for p in packed if isinstance(p, tuple)]
    assert hosted and all(t.device.type == "cpu" and t.is_pinned() for t in hosted)
    assert abs(loss.item() - ref_loss.item()) <= 1e-2 * abs(ref_loss.item())
    for name in ref_grads:
        assert_close(grads[name], ref_grads[name], 5e-2)
