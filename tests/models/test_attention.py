"""mmr.models.attention: `sdpa_varlen` equals transformers' sdpa, without the dense packed mask."""

from __future__ import annotations

import json

import pytest
import torch

from mmr.data.chat import tokenize_sample
from mmr.data.packing import collate_packed, collate_padded, model_inputs
from mmr.models import load_model, load_processor
from mmr.models.attention import NAME, segment_lengths
from tests.data.test_packing import SAMPLES


def test_segment_lengths_split_at_position_restarts():
    assert segment_lengths(torch.tensor([0, 1, 2, 0, 1, 0, 1, 2, 3])) == [3, 2, 4]
    assert segment_lengths(torch.arange(5)) == [5]
    # A row that does not start at 0 (a continuation) is one segment up to the first restart.
    assert segment_lengths(torch.tensor([4, 5, 0, 1])) == [2, 2]


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def models(request):
    path = request.getfixturevalue(f"tiny_{request.param}")
    pair = {
        impl: load_model(path, dtype=torch.float32, attn_implementation=impl)
        for impl in ("sdpa", NAME)
    }
    assert pair[NAME].config._attn_implementation == NAME
    return pair, load_processor(path), path


def _packed(model, processor, pad: int = 7):
    items = [tokenize_sample(s, processor) for s in SAMPLES]
    total = sum(len(it) for it in items)
    row = collate_packed(
        items, model.model.get_rope_index, pad_token_id=0, packing_length=total + pad
    )
    return items, row


def test_packed_loss_and_gradients_equal_sdpa(models):
    pair, processor, _ = models
    _, row = _packed(pair["sdpa"], processor)
    losses, grads = {}, {}
    for impl, model in pair.items():
        model.zero_grad()
        loss = model(**model_inputs(row)).loss
        loss.backward()
        losses[impl] = loss.detach()
        grads[impl] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(losses[NAME], losses["sdpa"], atol=1e-5, rtol=1e-5)
    assert grads[NAME].keys() == grads["sdpa"].keys()
    for name, g in grads["sdpa"].items():
        torch.testing.assert_close(grads[NAME][name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_packed_row_runs_one_unmasked_causal_call_per_sample(models, monkeypatch):
    pair, processor, _ = models
    model = pair[NAME]
    items, row = _packed(model, processor, pad=7)
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        calls.append((q.shape[2], attn_mask is None, kw.get("is_causal")))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        model(**model_inputs(row, with_labels=False))
    text_layers = model.config.get_text_config().num_hidden_layers
    causal = [c for c in calls if c[2]]  # the vision tower's calls are bidirectional
    expected = [len(it) for it in items] + [7]  # each sample, then the padding tail
    assert [q for q, _, _ in causal] == expected * text_layers
    assert all(unmasked for _, unmasked, _ in causal)


def test_padded_batches_and_generation_match_sdpa(models):
    pair, processor, _ = models
    items = [tokenize_sample(s, processor) for s in SAMPLES]
    batch = model_inputs(collate_padded(items, pad_token_id=0), with_labels=False)
    with torch.no_grad():
        logits = {impl: m(**batch).logits for impl, m in pair.items()}
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(logits[NAME][mask], logits["sdpa"][mask], atol=1e-5, rtol=1e-5)

    # Generation uses the KV cache (prefill, then one query at a time): same tokens.
    prompt = processor.tokenizer("What is 7 times 6?", return_tensors="pt")
    outs = {
        impl: m.generate(**prompt, max_new_tokens=8, do_sample=False, use_cache=True)
        for impl, m in pair.items()
    }
    assert torch.equal(outs[NAME], outs["sdpa"])


def test_saved_config_does_not_name_the_implementation(models, tmp_path):
    """Exports stay loadable where mmr is not imported (vLLM, plain transformers)."""
    pair, _, _ = models
    pair[NAME].save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert NAME not in json.dumps(config)


def test_gradient_checkpointing_recompute_gives_the_same_gradients(models):
    """The checkpointed recompute runs the attention again on the same packed row."""
    pair, processor, path = models
    _, row = _packed(pair["sdpa"], processor)
    model = load_model(path, dtype=torch.float32, attn_implementation=NAME)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    reference = pair[NAME]
    reference.train()
    grads = []
    try:
        for m in (model, reference):
            m.zero_grad()
            m(**model_inputs(row)).loss.backward()
            grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    finally:
        reference.eval()
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[1].items():
        torch.testing.assert_close(grads[0][name], g, atol=1e-5, rtol=1e-4, msg=name)
