"""mmr.data.chat on tiny Qwen-VL processors: labels, image placement, image-safe truncation."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmr.data.chat import (
    IGNORE_INDEX,
    ChatStats,
    assistant_mask,
    build_messages,
    cut_image_safe,
    image_spans,
    tokenize_sample,
)
from mmr.data.schema import Sample

RESPONSE = "<think>2 plus 3 is 5</think>The answer is \\boxed{5}"


def _png(color: tuple[int, int, int], size: tuple[int, int] = (56, 56)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _sample(question: str, n_images: int, response: str | None = RESPONSE) -> Sample:
    colors = [(255, 0, 0), (0, 128, 255), (20, 200, 20)]
    return Sample(
        id="s1",
        source="unit",
        question=question,
        answer="5",
        images=[_png(colors[i % 3]) for i in range(n_images)],
        response=response,
        caption=None,
        pass_rate=None,
        meta={},
    )


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def tiny(request):
    path = request.getfixturevalue(f"tiny_{request.param}")
    return path, AutoProcessor.from_pretrained(path)


def test_labels_are_exactly_the_assistant_reply(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    item = tokenize_sample(_sample("<image>What is 2+3?", 1), processor)
    assert item is not None and item.num_images == 1

    trained = item.input_ids[item.labels != IGNORE_INDEX]
    assert tok.decode(trained) == RESPONSE + "<|im_end|>"
    # Trained tokens form one contiguous run that starts right after "assistant\n".
    positions = (item.labels != IGNORE_INDEX).nonzero().flatten()
    assert positions.tolist() == list(range(int(positions[0]), int(positions[-1]) + 1))
    assert tok.decode(item.input_ids[: positions[0]]).endswith("<|im_start|>assistant\n")
    # Labels equal the ids where trained; image tokens are never trained.
    assert torch.equal(item.labels[positions], item.input_ids[positions])
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    assert (item.labels == image_id).sum() == 0
    assert (item.input_ids == image_id).sum() > 0


def test_every_assistant_turn_is_labelled_and_nothing_else(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "one"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "first reply"}]},
        {"role": "user", "content": [{"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "second reply"}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    ids = torch.tensor(tok(text)["input_ids"])
    mask = assistant_mask(ids, tok)
    assert tok.decode(ids[mask]) == "first reply<|im_end|>second reply<|im_end|>"


def test_images_follow_placeholders_or_go_first():
    sample = _sample("Compare <image> with <image>.", 2)
    parts = build_messages(sample)[0]["content"]
    assert [p["type"] for p in parts] == ["text", "image", "text", "image", "text"]
    parts = build_messages(_sample("How many?", 2))[0]["content"]
    assert [p["type"] for p in parts] == ["image", "image", "text"]
    with pytest.raises(ValueError, match="placeholders"):
        build_messages(_sample("<image> and <image>", 1))


def test_text_only_sample_has_no_pixels(tiny):
    _, processor = tiny
    item = tokenize_sample(_sample("What is 2+3?", 0), processor)
    assert item.pixel_values is None and item.image_grid_thw is None
    assert item.num_label_tokens > 0


def test_bad_samples_are_counted_not_raised(tiny):
    _, processor = tiny
    stats = ChatStats()
    corrupt = _sample("<image>q", 1)
    corrupt.images = [b"\x89PNG not really"]
    assert tokenize_sample(corrupt, processor, stats=stats) is None
    mismatch = _sample("<image><image>q", 1)
    assert tokenize_sample(mismatch, processor, stats=stats) is None
    empty = _sample("q", 0, response=None)
    empty.answer = ""
    assert tokenize_sample(empty, processor, stats=stats) is None
    assert stats.skipped == {"bad_input": 2, "no_target": 1}
    assert stats.kept == 0


def test_too_long_is_dropped_by_default(tiny):
    _, processor = tiny
    stats = ChatStats()
    full = tokenize_sample(_sample("<image>What is 2+3?", 1), processor)
    assert (
        tokenize_sample(
            _sample("<image>What is 2+3?", 1), processor, max_length=len(full) - 1, stats=stats
        )
        is None
    )
    assert stats.skipped == {"too_long": 1}


def test_cut_in_the_response_keeps_images(tiny):
    _, processor = tiny
    stats = ChatStats()
    full = tokenize_sample(_sample("<image>What is 2+3?", 1), processor)
    item = tokenize_sample(
        _sample("<image>What is 2+3?", 1),
        processor,
        max_length=len(full) - 3,
        truncation="cut",
        stats=stats,
    )
    assert len(item) == len(full) - 3 and item.truncated_tokens == 3
    assert torch.equal(item.pixel_values, full.pixel_values)
    assert stats.cut == 1 and stats.cut_tokens == 3 and stats.kept == 1


def test_no_cut_point_splits_an_image(tiny):
    """For every possible limit, image tokens and image features still match."""
    _, processor = tiny
    tok = processor.tokenizer
    merge = processor.image_processor.merge_size**2
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    full = tokenize_sample(_sample("Look: <image> then <image>. Sum?", 2), processor)
    assert full.num_images == 2
    for limit in range(1, len(full) + 1):
        item = cut_image_safe(full, limit, tok)
        assert len(item) <= limit
        n_image_tokens = int((item.input_ids == image_id).sum())
        if item.image_grid_thw is None:
            assert n_image_tokens == 0 and item.pixel_values is None
            continue
        assert n_image_tokens == int(item.image_grid_thw.prod(-1).sum()) // merge
        assert item.pixel_values.shape[0] == int(item.image_grid_thw.prod(-1).sum())
        for _start, end in image_spans(item.input_ids, tok):
            assert end < len(item)  # every span in the cut sequence is whole


def test_cut_inside_second_image_runs_in_the_model(tiny):
    path, processor = tiny
    tok = processor.tokenizer
    full = tokenize_sample(_sample("Look: <image> then <image>. Sum?", 2), processor)
    (_, _), (second_start, second_end) = image_spans(full.input_ids, tok)
    item = cut_image_safe(full, (second_start + second_end) // 2, tok)
    assert item.num_images == 1 and len(item) == second_start
    model = AutoModelForImageTextToText.from_pretrained(path)
    inputs = {
        "input_ids": item.input_ids[None],
        "attention_mask": item.attention_mask[None],
        "pixel_values": item.pixel_values,
        "image_grid_thw": item.image_grid_thw,
    }
    if item.mm_token_type_ids is not None:
        inputs["mm_token_type_ids"] = item.mm_token_type_ids[None]
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[1] == len(item) and torch.isfinite(logits).all()
