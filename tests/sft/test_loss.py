"""mmr.sft.loss: the chunked loss equals transformers' loss, value and gradients."""

from __future__ import annotations

import pytest
import torch

from mmr.data.chat import tokenize_sample
from mmr.data.packing import collate_packed, collate_padded, model_inputs
from mmr.models import load_model, load_processor
from mmr.sft.loss import CausalLMLoss
from tests.data.test_packing import SAMPLES


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def tiny(request):
    path = request.getfixturevalue(f"tiny_{request.param}")
    return load_model(path, dtype=torch.float32), load_processor(path)


def _batches(model, processor):
    items = [tokenize_sample(s, processor) for s in SAMPLES]
    total = sum(len(it) for it in items)
    packed = collate_packed(
        items, model.model.get_rope_index, pad_token_id=0, packing_length=total + 3
    )
    return {"packed": packed, "padded": collate_padded(items, pad_token_id=0)}


@pytest.mark.parametrize("kind", ["packed", "padded"])
def test_chunked_loss_equals_transformers_loss(tiny, kind):
    model, processor = tiny
    inputs = {k: v for k, v in _batches(model, processor)[kind].items() if k != "num_tokens"}
    results = []
    for chunked in (False, True):
        model.zero_grad()
        loss = CausalLMLoss(model, chunked=chunked)(model, inputs)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    (hf_loss, hf_grads), (loss, grads) = results
    torch.testing.assert_close(loss, hf_loss, atol=1e-6, rtol=1e-6)
    assert grads.keys() == hf_grads.keys()
    for name, g in hf_grads.items():
        torch.testing.assert_close(grads[name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_no_logits_are_computed(tiny):
    model, processor = tiny
    inputs = model_inputs(_batches(model, processor)["packed"])
    shapes = []
    handle = model.lm_head.register_forward_hook(lambda m, a, out: shapes.append(out.shape))
    try:
        CausalLMLoss(model)(model, {k: v for k, v in inputs.items() if k != "use_cache"})
    finally:
        handle.remove()
    assert shapes == [torch.Size([1, 0, model.lm_head.out_features])]
