"""mmr.data.packing: first-fit decreasing bins and loss equality of packed vs unpacked rows."""

from __future__ import annotations

import io
import random

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmr.data.chat import IGNORE_INDEX, tokenize_sample
from mmr.data.packing import (
    collate_packed,
    collate_padded,
    model_inputs,
    pack_first_fit_decreasing,
    rope_positions,
)
from mmr.data.schema import Sample


def test_first_fit_decreasing_fills_bins_and_keeps_every_item():
    lengths = [7, 3, 5, 2, 9, 1, 4, 6]
    bins = pack_first_fit_decreasing(lengths, capacity=10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 4  # 37 tokens need at least 4 bins of 10
    assert all(b == sorted(b) for b in bins)


def test_item_longer_than_capacity_is_an_error():
    with pytest.raises(ValueError, match="longer than the packing length 8"):
        pack_first_fit_decreasing([3, 9], capacity=8)


def test_seeded_packing_mixes_kinds_of_near_equal_length():
    # Three kinds, each with its own narrow length band (as the demo's traces have): strict
    # first-fit decreasing fills rows kind by kind; the seeded packer mixes them in each row
    # at the same fill, and the same seed gives the same rows.
    rng = random.Random(0)
    kinds = [k for _ in range(40) for k in range(3)]
    lengths = [rng.randint(60, 64) + 12 * k for k in kinds]
    strict = pack_first_fit_decreasing(lengths, capacity=1024)
    seeded = pack_first_fit_decreasing(lengths, capacity=1024, rng=random.Random(1))

    def kinds_per_row(bins: list[list[int]]) -> list[int]:
        return [len({kinds[i] for i in b}) for b in bins]

    assert kinds_per_row(strict).count(1) >= len(strict) // 2
    assert kinds_per_row(seeded) == [3] * len(seeded)
    assert sorted(i for b in seeded for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 1024 for b in seeded)
    assert len(seeded) == len(strict)
    assert pack_first_fit_decreasing(lengths, capacity=1024, rng=random.Random(1)) == seeded
    assert pack_first_fit_decreasing(lengths, capacity=1024, rng=random.Random(2)) != seeded


def test_seeded_packing_still_places_long_items_first():
    # Mixed lengths up to the capacity: length classes keep the fill of strict order.
    rng = random.Random(3)
    lengths = [rng.choice((rng.randint(20, 120), rng.randint(300, 1000))) for _ in range(300)]
    strict = pack_first_fit_decreasing(lengths, capacity=1024)
    seeded = pack_first_fit_decreasing(lengths, capacity=1024, rng=random.Random(0))
    assert len(seeded) <= len(strict) + 2
    assert sum(lengths) / (1024 * len(seeded)) > 0.95


def _png(seed: int, size: tuple[int, int]) -> bytes:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buf, format="PNG")
    return buf.getvalue()


SAMPLES = [
    Sample("a", "t", "<image>How many red squares?", "3", [_png(0, (56, 84))],
           "<think>I count one, two, three.</think>\\boxed{3}"),
    Sample("b", "t", "What is 7 times 6?", "42", [],
           "<think>7 times 6 is 42.</think>\\boxed{42}"),
    Sample("c", "t", "Compare <image> and <image>: which is larger?", "B",
           [_png(1, (56, 56)), _png(2, (112, 56))],
           "<think>The second one is wider.</think>\\boxed{B}"),
]  # fmt: skip


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def tiny(request):
    path = request.getfixturevalue(f"tiny_{request.param}")
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model, AutoProcessor.from_pretrained(path)


def _loss_sum_and_count(model, batch) -> tuple[torch.Tensor, int]:
    logits = model(**model_inputs(batch, with_labels=False)).logits.float()
    labels = batch["labels"]
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    loss = torch.nn.functional.cross_entropy(
        shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss, int((shift_labels != IGNORE_INDEX).sum())


def test_packed_loss_equals_unpacked_loss(tiny):
    model, processor = tiny
    items = [tokenize_sample(s, processor) for s in SAMPLES]
    pad_id = processor.tokenizer.pad_token_id
    total_tokens = sum(len(it) for it in items)

    with torch.no_grad():
        packed = collate_packed(
            items, model.model.get_rope_index, pad_token_id=pad_id, packing_length=total_tokens + 5
        )
        packed_sum, packed_n = _loss_sum_and_count(model, packed)
        one_by_one = [_loss_sum_and_count(model, collate_padded([it], pad_token_id=pad_id))
                      for it in items]  # fmt: skip
        padded_sum, padded_n = _loss_sum_and_count(
            model, collate_padded(items, pad_token_id=pad_id)
        )

    single_sum = sum(s for s, _ in one_by_one)
    single_n = sum(n for _, n in one_by_one)
    assert packed_n == single_n == padded_n == sum(it.num_label_tokens for it in items)
    torch.testing.assert_close(packed_sum / packed_n, single_sum / single_n, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded_sum / padded_n, single_sum / single_n, atol=1e-5, rtol=1e-5)

    # HF's own loss on the packed row agrees too (mean over the label tokens).
    with torch.no_grad():
        hf_loss = model(**model_inputs(packed)).loss
    torch.testing.assert_close(hf_loss, single_sum / single_n, atol=1e-5, rtol=1e-5)


def test_packed_positions_are_each_samples_own(tiny):
    model, processor = tiny
    items = [tokenize_sample(s, processor) for s in SAMPLES]
    packed = collate_packed(items, model.model.get_rope_index, pad_token_id=0, packing_length=None)
    pos = packed["position_ids"][:, 0]
    offset = 0
    for it in items:
        n = len(it)
        assert torch.equal(pos[0, offset : offset + n], torch.arange(n))  # text channel restarts
        expected = rope_positions(it, model.model.get_rope_index)
        assert torch.equal(pos[1:, offset : offset + n], expected)
        offset += n
    assert packed["input_ids"].shape == (1, offset)
    n_images = sum(it.num_images for it in items)
    assert packed["image_grid_thw"].shape[0] == n_images == 3
    assert packed["labels"][0, 0] == IGNORE_INDEX


def test_the_kv_cache_would_leak_attention_across_samples(tiny):
    """Why `model_inputs` turns the cache off: with it, the packed mask is not built."""
    model, processor = tiny
    items = [tokenize_sample(s, processor) for s in SAMPLES[:2]]
    packed = collate_packed(items, model.model.get_rope_index, pad_token_id=0)
    inputs = model_inputs(packed, with_labels=False)
    with torch.no_grad():
        isolated = model(**inputs).logits
        inputs["use_cache"] = True
        leaky = model(**inputs).logits
    second = slice(len(items[0]), None)
    assert not torch.allclose(isolated[:, second], leaky[:, second], atol=1e-3)


def test_too_many_tokens_for_the_row_is_an_error(tiny):
    model, processor = tiny
    items = [tokenize_sample(s, processor) for s in SAMPLES]
    with pytest.raises(ValueError, match="more than packing_length"):
        collate_packed(items, model.model.get_rope_index, pad_token_id=0, packing_length=10)
