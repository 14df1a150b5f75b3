"""The Sample record and its pure mappings (no files): mmr rows, MMFineReason, OpenMMReasoner."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from mmr.data.schema import (
    MMFINEREASON_COLUMNS,
    MMFINEREASON_SCHEMA,
    SAMPLE_SCHEMA,
    MalformedRow,
    Sample,
    check_sample,
    extract_boxed,
    from_row,
    sample_from_mmfinereason,
    sample_from_mmr,
    sample_from_omr,
    sample_to_mmfinereason,
    sample_to_omr,
    to_row,
)


def png(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (6, 5), color).save(buf, "PNG")
    return buf.getvalue()


def test_check_sample_placeholder_convention():
    image = png()
    check_sample(Sample("a", "s", "What is shown?", "x", images=[image]))  # images first
    check_sample(Sample("a", "s", "<image> vs <image>?", "x", images=[image, image]))
    check_sample(Sample("a", "s", "Text only", "x"))
    with pytest.raises(MalformedRow) as err:
        check_sample(Sample("a", "s", "<image> vs <image>?", "x", images=[image]))
    assert err.value.reason == "placeholder_mismatch"
    with pytest.raises(MalformedRow) as err:
        check_sample(Sample("a", "s", "Q", " "))
    assert err.value.reason == "missing_answer"
    with pytest.raises(MalformedRow) as err:
        check_sample(Sample("a", "s", "", "x"))
    assert err.value.reason == "missing_question"
    check_sample(Sample("a", "s", "", "x", images=[image]))  # the question may be the image


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<think>so 3</think><answer>42</answer>", ("42", "answer_tag")),
        (
            "<think>x</think><answer>The area is \\boxed{\\frac{1}{2}}</answer>",
            ("\\frac{1}{2}", "boxed"),
        ),
        ("<think>x</think>Hence \\boxed{B}.", ("B", "boxed")),
        ("<think>x</think>The answer is 12.", ("12", "answer_phrase")),
    ],
)
def test_gold_from_the_response_is_the_answer_the_reward_reads(response, expected):
    # One answer policy: a record without an answer field gets the reward's final answer.
    from mmr.rewards.accuracy import extract_final_answer

    sample, _ = sample_from_omr(_omr_with_response(response))
    assert (sample.answer, sample.meta["answer_from"]) == expected
    assert sample.answer == extract_final_answer(response)[0]


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ("<think>\\boxed{7} maybe</think>I am not sure.", "missing_answer"),  # only in thinking
        ("<think>unfinished", "missing_answer"),
        ("<think>x</think>\\boxed{a} then \\boxed{{b}+c}", "ambiguous_answer"),  # a hedge
    ],
)
def test_no_gold_from_a_response_without_one_final_answer(response, reason):
    with pytest.raises(MalformedRow) as err:
        sample_from_omr(_omr_with_response(response))
    assert err.value.reason == reason


def _omr_with_response(response: str) -> dict:
    """An OpenMMReasoner SFT record with no answer field (the gold is in the response)."""
    return {
        "id": "r",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is x?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": response}]},
        ],
    }


def test_extract_boxed_unbalanced_is_none():
    assert extract_boxed("\\boxed{1 + {2}") is None


def test_mmr_row_round_trip_keeps_every_field():
    sample = Sample(
        id="x1",
        source="geo",
        question="Ünïcode ∑ <image> and <image>",
        answer="√2",
        images=[png(), png((1, 2, 3))],
        response="<think>…</think>\\boxed{√2}",
        caption=None,
        pass_rate=0.25,
        meta={"nested": {"a": [1, 2.5, None]}, "flag": True, "中文": "值"},
    )
    row = to_row(sample)
    assert set(row) == set(SAMPLE_SCHEMA.names)
    assert isinstance(row["meta"], str)
    assert from_row(row) == sample


def test_mmr_row_defaults_and_unknown_columns():
    sample, images = sample_from_mmr(
        {"question": "Q?", "answer": 3, "extra": "kept", "images": None}, default_source="file"
    )
    assert (sample.answer, sample.source, images) == ("3", "file", [])
    assert sample.meta == {"extra": "kept"}
    assert sample.id  # derived from the content
    again, _ = sample_from_mmr({"question": "Q?", "answer": 3})
    assert again.id == sample.id
    with pytest.raises(MalformedRow) as err:
        sample_from_mmr({"question": "Q?", "answer": "a", "pass_rate": "high"})
    assert err.value.reason == "bad_field"


def mfr_row(image: object) -> dict:
    return {
        "source": "BMMR",
        "id": "bmmr-17",
        "original_question": "原题",
        "original_answer": "B",
        "image": image,
        "question": "Which option is right?",
        "answer": "B",
        "qwen3vl_235b_instruct_caption": "A chart with two bars.",
        "qwen3vl_235b_thinking_response": "<think>compare</think><answer>B</answer>",
        "qwen3vl_4b_pass_rate": 0.5,
        "is_consistent": True,
        "consistency_analysis": "matches",
    }


@pytest.mark.parametrize("form", ["bytes", "hf_struct"])
def test_mmfinereason_maps_both_ways(form):
    image = png()
    cell = image if form == "bytes" else {"bytes": image, "path": "img/17.png"}
    sample, raw_images = sample_from_mmfinereason(mfr_row(cell))
    assert raw_images == [image]
    assert (sample.id, sample.source, sample.question, sample.answer) == (
        "bmmr-17",
        "BMMR",
        "Which option is right?",
        "B",
    )
    assert sample.caption == "A chart with two bars."
    assert sample.response.startswith("<think>")
    assert sample.pass_rate == 0.5
    assert sample.meta == {
        "original_question": "原题",
        "original_answer": "B",
        "is_consistent": True,
        "consistency_analysis": "matches",
    }
    sample.images = raw_images
    back = sample_to_mmfinereason(sample)
    assert tuple(back) == MMFINEREASON_COLUMNS == tuple(MMFINEREASON_SCHEMA.names)
    assert back == mfr_row({"bytes": image, "path": None})


def test_mmfinereason_path_only_image_and_multi_image_export():
    _, raw_images = sample_from_mmfinereason(mfr_row({"bytes": None, "path": "imgs/a.png"}))
    assert raw_images == ["imgs/a.png"]
    _, raw_images = sample_from_mmfinereason(mfr_row(None))
    assert raw_images == []
    with pytest.raises(MalformedRow) as err:
        sample_to_mmfinereason(Sample("a", "s", "<image><image>", "x", images=[png(), png()]))
    assert err.value.reason == "multi_image"
    hf = json.loads(MMFINEREASON_SCHEMA.metadata[b"huggingface"])
    assert hf["info"]["features"]["image"] == {"_type": "Image"}


def omr_record() -> dict:
    # The shape lmms-engine reads and OpenMMReasoner's distillation writes.
    return {
        "id": "omr-1",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Think, then answer."}]},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "imgs/a.jpg"}},
                    {"type": "text", "text": "What is x?"},
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "<think>x=2+2</think><answer>4</answer>"}],
            },
        ],
        "roll_id": 3,
    }


def test_omr_record_maps_to_sample():
    sample, raw_images = sample_from_omr(omr_record(), default_source="wemath")
    assert raw_images == ["imgs/a.jpg"]
    assert (sample.id, sample.source, sample.question, sample.answer) == (
        "omr-1",
        "wemath",
        "What is x?",
        "4",
    )
    assert sample.response == "<think>x=2+2</think><answer>4</answer>"
    assert sample.meta == {
        "roll_id": 3,
        "system": "Think, then answer.",
        "answer_from": "answer_tag",
    }


def test_omr_variants():
    # Parquet form: every struct field present, unused ones None; `image` parts; answer field.
    record = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare ", "image_url": None},
                    {"type": "image", "image": "a.png", "text": None},
                    {"type": "text", "text": " with ", "image_url": None},
                    {"type": "image_url", "image_url": {"url": "b.png"}, "text": None},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "<think>t</think>B"}]},
        ],
        "answer": "B",
        "data_source": "mix",
    }
    sample, raw_images = sample_from_omr(record)
    assert sample.question == "Compare <image> with <image>"
    assert raw_images == ["a.png", "b.png"]
    assert (sample.answer, sample.source, sample.meta["answer_from"]) == ("B", "mix", "field")
    # ShareGPT / LLaVA: `conversations` with from/value and a top-level image.
    record = {
        "image": "c.png",
        "conversations": [
            {"from": "human", "value": "<image>\nHow many?"},
            {"from": "gpt", "value": "<think>count</think>There are \\boxed{3}."},
        ],
    }
    sample, raw_images = sample_from_omr(record)
    assert (sample.question, raw_images, sample.answer) == ("<image>\nHow many?", ["c.png"], "3")


def test_omr_bare_image_parts_take_the_images_column_in_order():
    # Records that keep images in their own column and mark places with {"type": "image"}.
    record = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "text", "text": " is bigger than "},
                    {"type": "image", "image": None},
                    {"type": "text", "text": "?"},
                ],
            },
            {"role": "assistant", "content": "<think>t</think>\\boxed{yes}"},
        ],
        "images": [b"first", b"second"],
    }
    sample, raw_images = sample_from_omr(record)
    assert sample.question == "<image> is bigger than <image>?"
    assert raw_images == [b"first", b"second"]
    record["images"] = [b"first"]  # one image for two places: a clear, counted skip
    with pytest.raises(MalformedRow, match=r"2 image part.*1 image"):
        sample_from_omr(record)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            lambda r: r["messages"][2]["content"][0].update(text="<think>no answer</think>"),
            "missing_answer",
        ),
        (lambda r: r["messages"].pop(2), "missing_answer"),
        (lambda r: r["messages"].extend(r["messages"][1:3]), "multi_turn"),
        (
            lambda r: r["messages"][1]["content"].append({"type": "video_url"}),
            "unsupported_content",
        ),
        (lambda r: r["messages"].pop(1), "missing_question"),
        (lambda r: r.pop("messages"), "missing_question"),
    ],
)
def test_omr_malformed_records(change, reason):
    record = omr_record()
    change(record)
    with pytest.raises(MalformedRow) as err:
        sample_from_omr(record)
    assert err.value.reason == reason


@pytest.mark.parametrize(
    "question", ["Q about the figure", "Left <image> right <image>!", "<image>"]
)
def test_omr_export_reads_back(question):
    n = max(1, question.count("<image>"))
    sample = Sample("i", "src", question, "7", images=[png()] * n, response="<think>r</think>7")
    sample.meta = {"system": "sys"}
    paths = [f"p{i}.png" for i in range(n)]
    back, raw_images = sample_from_omr(sample_to_omr(sample, paths))
    assert raw_images == paths
    assert (back.id, back.source, back.answer, back.response) == ("i", "src", "7", sample.response)
    # "<image>" alone is an image-only question: it reads back as images-first, no text.
    assert back.question == ("" if question == "<image>" else question)
    assert back.meta == {"system": "sys", "answer_from": "field"}
