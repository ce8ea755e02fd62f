"""Llama masks the size of the batch (reviewgpt.models.llama_mask) change nothing but the cost."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from reviewgpt.models.llama_mask import compact_causal_mask, patch_llama_causal_mask, unpatch_llama_causal_mask
from tests.util import needs_sdpa


@pytest.fixture()
def pair(tiny_llama):
    def load():
        return AutoModelForCausalLM.from_pretrained(tiny_llama, torch_dtype=torch.float32,
                                                    attn_implementation="sdpa")

    plain, patched = load(), load()
    assert patch_llama_causal_mask(patched)
    return plain, patched


def test_compact_mask_equals_the_rows_4_38_builds():
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    got = compact_causal_mask(mask, 2, torch.float32)[:, 0]
    low = torch.finfo(torch.float32).min
    assert got.shape == (2, 2, 4)
    assert got[0].tolist() == [[low, 0, 0, low], [low, 0, 0, 0]]
    assert got[1].tolist() == [[0, 0, 0, low], [0, 0, 0, 0]]
    first_row_of_left_padding = compact_causal_mask(mask, 4, torch.float32)[0, 0, 0]
    assert first_row_of_left_padding.tolist() == [0, 0, 0, 0]  # opened, as 4.38.2 does for SDPA


@needs_sdpa
@pytest.mark.parametrize("padded", [False, True])
def test_logits_and_gradients_equal_the_unpatched_model(pair, padded):
    plain, patched = pair
    torch.manual_seed(0)
    ids = torch.randint(3, 500, (2, 24))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 17:] = 0  # right padding, as in training batches
    for model in (plain, patched):
        model.train()
        out = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
        out.loss.backward()
    valid = mask.bool()
    torch.testing.assert_close(patched(input_ids=ids, attention_mask=mask).logits[valid],
                               plain(input_ids=ids, attention_mask=mask).logits[valid], atol=1e-5, rtol=1e-4)
    for (name, a), (_, b) in zip(plain.named_parameters(), patched.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)


@needs_sdpa
def test_batched_left_padded_generation_is_unchanged(pair):
    plain, patched = pair
    ids = torch.tensor([[0, 0, 0, 5, 9, 33, 41], [7, 8, 9, 10, 11, 12, 13]])
    mask = (torch.arange(7)[None] >= torch.tensor([[3], [0]])).long()
    outs = []
    for model in (plain, patched):
        model.eval()
        with torch.no_grad():
            outs.append(model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                                       pad_token_id=0))
    assert outs[0].tolist() == outs[1].tolist()


@needs_sdpa
def test_unpatch_restores_the_classes_methods(pair):
    _, patched = pair
    unpatch_llama_causal_mask(patched)
    assert not any("forward" in vars(m) or "_update_causal_mask" in vars(m) for m in patched.modules())
