"""Dedup: near-duplicate pairs found by text embedding plus image hash, the first kept,
clusters reported; the packaged MiniLM model finds paraphrases offline."""

from __future__ import annotations

import io
import json

from PIL import Image, ImageDraw

from mmr.data.io import read_samples, write_samples
from mmr.data.pipeline.config import DedupConfig, PipelineConfig
from mmr.data.pipeline.dedup import Deduper, image_hash, load_embedder, run_dedup
from mmr.data.pipeline.runner import ShardLog
from mmr.data.schema import Sample


def _picture(shift: int, noise: int = 0) -> bytes:
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.rectangle((10 + shift, 10, 40 + shift, 50), fill=(noise, 0, 0))
    draw.ellipse((5, 40, 25, 60), fill=(0, 0, 200))
    buf = io.BytesIO()
    image.save(buf, format="JPEG" if noise else "PNG")
    return buf.getvalue()


def test_image_hash_is_close_for_re_encodes_and_far_for_other_images():
    a, a_jpeg, b = (
        image_hash(_picture(0)),
        image_hash(_picture(0, noise=3)),
        image_hash(_picture(20)),
    )
    assert (a ^ a_jpeg).bit_count() <= 4
    assert (a ^ b).bit_count() > 4
    assert image_hash(b"not an image") is None


def test_dedup_pairs_keep_the_first_and_report_clusters(tmp_path):
    same = "How many red circles are in the picture?"
    rows = [
        Sample("a", "s", same, "3", images=[_picture(0)]),
        Sample("b", "s", same + "  ", "3", images=[_picture(0, noise=3)]),  # re-encoded copy
        Sample("c", "s", same, "5", images=[_picture(20)]),  # same text, other image
        Sample("d", "s", "What is the area of the triangle?", "6"),
        Sample("e", "s", "What is the area of the triangle ?", "6"),  # tiny edit, no image
        Sample("f", "s", same, "3"),  # no image: never a duplicate of an image sample
        Sample("g", "s", same, "3", images=[_picture(0)]),
    ]
    write_samples(tmp_path / "in.parquet", rows)
    cfg = PipelineConfig(shard_rows=3)
    cfg.dedup.embedder, cfg.dedup.threshold = "hashing", 0.9
    report = run_dedup(cfg, tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    assert [s.id for s in read_samples(tmp_path / "out" / "deduped")] == ["a", "c", "d", "f"]
    assert report["filters"] == {"dedup": {"near_duplicate": 3}}
    assert report["clusters"]["count"] == 2 and report["clusters"]["largest"][0]["kept"] == "a"
    lines = (tmp_path / "out" / "reports" / "dedup_clusters.jsonl").read_text().splitlines()
    clusters = {c["kept"]: [d[0] for d in c["duplicates"]] for c in map(json.loads, lines)}
    assert clusters == {"a": ["b", "g"], "d": ["e"]}


def test_minilm_finds_paraphrases_offline():
    cfg = DedupConfig(embedder="minilm", threshold=0.85, use_images=False)
    deduper = Deduper(cfg, load_embedder(cfg))
    rows = [
        Sample("1", "s", "How many red circles are there in the image?", "3"),
        Sample("2", "s", "How many red circles are in the picture?", "3"),
        Sample("3", "s", "What is the probability of rolling two sixes with two dice?", "1/36"),
        Sample("4", "s", "Compute the perimeter of the square shown.", "8"),
    ]
    log = ShardLog()
    assert [s.id for s in deduper(rows, log)] == ["1", "3", "4"]
    assert log.extra["pairs"][0][:2] == ["2", "1"]
