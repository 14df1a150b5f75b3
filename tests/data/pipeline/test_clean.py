"""Clean: corrupt images dropped, large ones resized, modes made RGB, text noise removed,
and the LLM cleaner's verdicts (suitable, unsuitable, malformed, failing) applied."""

from __future__ import annotations

import io
import json

from PIL import Image

from mmr.data.io import read_samples, write_samples
from mmr.data.pipeline.clean import clean_image, clean_text, run_clean
from mmr.data.pipeline.config import PipelineConfig
from mmr.data.schema import Sample
from tests.fake_openai import prompt_text


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def test_clean_text_rules():
    assert clean_text("3. Find x. (5 points) See https://ex.com/q?id=3 now") == "Find x. See now"
    assert clean_text("Question 12: What is 1.5 + 2?") == "What is 1.5 + 2?"
    assert clean_text("1.5 + 2 = ?") == "1.5 + 2 = ?"  # a number, not a question number
    assert clean_text("（2）求角A的大小（本小题满分12分）") == "（2）求角A的大小"
    assert clean_text("第3题 求x\ufffd的值 [4 marks]") == "求x的值"
    assert clean_text("(2) Solve <image> for x\u200b") == "Solve <image> for x"


def test_clean_image_resizes_converts_and_keeps_untouched_bytes(png):
    assert clean_image(png, 2048) == (png, [])
    big = _encode(Image.new("RGB", (3000, 1000), (1, 2, 3)), "JPEG")
    data, changes = clean_image(big, 2048)
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (2048, 683) and image.format == "JPEG"
    assert changes == ["resized"]
    rgba = _encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), "PNG")
    data, changes = clean_image(rgba, 2048)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)
    assert changes == ["rgb"]


def test_clean_stage_drops_corrupt_images_and_counts(tmp_path, png):
    truncated = _encode(Image.new("RGB", (64, 64), (9, 9, 9)), "PNG")[:-40]
    grey = _encode(Image.new("L", (2500, 100), 128), "PNG")
    rows = [
        Sample("ok", "s", "1. What is shown?", "1", images=[png]),
        Sample("corrupt", "s", "What?", "1", images=[b"not an image at all"]),
        Sample("truncated", "s", "What?", "1", images=[png, truncated]),
        Sample("grey", "s", "What?", "1", images=[grey]),
        Sample("text", "s", "(3 points) 2+2?", "4"),
    ]
    write_samples(tmp_path / "in.parquet", rows)
    report = run_clean(PipelineConfig(), tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    out = {s.id: s for s in read_samples(tmp_path / "out" / "cleaned")}
    assert sorted(out) == ["grey", "ok", "text"]
    assert report["filters"] == {"image": {"corrupt_image": 2}}
    assert out["ok"].question == "What is shown?"
    assert out["ok"].meta["original_question"] == "1. What is shown?"
    assert out["text"].question == "2+2?"
    with Image.open(io.BytesIO(out["grey"].images[0])) as image:
        assert image.mode == "RGB" and max(image.size) == 2048
    assert report["info"] == {"image_resized": 1, "image_rgb": 1, "text_cleaned": 2}


def llm_clean_rows(png: bytes) -> list[Sample]:
    """One row per verdict a scripted cleaner gives (the scripts key on these texts): a
    rewrite, unsuitable, unparsable, a rewrite losing `<image>`, a server error, suitable."""
    return [
        Sample("zh", "s", "求 <image> x 的值", "3", images=[png]),
        Sample("draw", "s", "Zeichne ein Haus", "-"),
        Sample("bad", "s", "broken question", "1"),
        Sample("lost", "s", "lost <image> here", "1", images=[png]),
        Sample("down", "s", "server down", "1"),
        Sample("en", "s", "2+2? just give the answer", "4"),
    ]


def test_llm_cleaner_verdicts(tmp_path, server, png):
    def cleaner(body):
        text = prompt_text(body).split("Question:")[1].split("Reference answer:")[0]
        if "Zeichne" in text:
            return json.dumps({"suitable": False, "reason": "drawing task", "question": ""})
        if "求" in text:
            return '<think>translate</think> {"suitable": true, "reason": "ok", "question": "Find <image> x."}'
        if "broken" in text:
            return "I think it is fine."  # no JSON: malformed, retried, then failed
        if "lost" in text:
            return json.dumps({"suitable": True, "reason": "", "question": "no placeholder"})
        if "down" in text:
            return ("status", 503)
        return json.dumps({"suitable": True, "reason": "ok", "question": "Just reason: 2+2?"})

    server.script = cleaner
    write_samples(tmp_path / "in.parquet", llm_clean_rows(png))
    cfg = PipelineConfig()
    cfg.clean.llm.enabled = True
    cfg.clean.llm.client.api_base = server.base_url
    cfg.clean.llm.client.backoff_s = 0.01
    cfg.clean.llm.client.retries = 1
    report = run_clean(cfg, tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    out = {s.id: s for s in read_samples(tmp_path / "out" / "cleaned")}
    assert sorted(out) == ["en", "zh"]
    assert out["zh"].question == "Find <image> x." and out["zh"].meta["original_question"]
    assert report["filters"] == {"llm": {"unsuitable": 1}}
    assert report["failed_reasons"] == {"cleaner_http_503": 1, "cleaner_malformed_reply": 2}
    failed = sorted(s.id for s in read_samples(tmp_path / "out" / "failed" / "clean"))
    assert failed == ["bad", "down", "lost"]
