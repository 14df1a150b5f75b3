"""Collect: MMFineReason parquet, OpenMMReasoner JSONL, image folders and a local HF
dataset become Samples; subsets and max_samples; unreadable rows counted."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from mmr.data.io import read_samples
from mmr.data.pipeline.collect import run_collect
from mmr.data.pipeline.config import PipelineConfig
from mmr.data.schema import MMFINEREASON_SCHEMA


def _mfr_rows(png: bytes, n: int) -> list[dict]:
    return [
        {
            "source": ("BMMR", "Euclid30K", "Other")[i % 3],
            "id": f"m{i}",
            "image": {"bytes": png, "path": None},
            "question": f"Q{i}?",
            "answer": str(i),
            "qwen3vl_235b_thinking_response": f"<think>t</think><answer>{i}</answer>",
            "qwen3vl_235b_instruct_caption": "a caption",
            "qwen3vl_4b_pass_rate": 0.25,
            "is_consistent": True,
        }
        for i in range(n)
    ]


def test_collect_mmfinereason_with_subsets_and_max_samples(tmp_path, png):
    pq.write_table(
        pa.Table.from_pylist(_mfr_rows(png, 12), schema=MMFINEREASON_SCHEMA),
        tmp_path / "mfr.parquet",
    )
    cfg = PipelineConfig(shard_rows=3)
    cfg.collect.paths = [str(tmp_path / "mfr.parquet")]
    cfg.collect.subsets = ["BMMR", "Euclid30K"]
    cfg.collect.max_samples = 2
    report = run_collect(cfg, tmp_path / "out", quiet=True)
    out = list(read_samples(tmp_path / "out" / "collected"))
    assert [s.id for s in out] == ["m0", "m1", "m3", "m4"]
    assert out[0].images == [png] and out[0].pass_rate == 0.25 and out[0].caption == "a caption"
    # Both subsets full after m4: reading stops there.
    assert report["read"]["skipped"] == {"not_in_subsets": 1} and report["read"]["read"] == 5


def test_collect_omr_jsonl_and_image_folder(tmp_path, png):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png)
    records = [
        {"id": "o1", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "img/a.png"}},
                                         {"type": "text", "text": "How many?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "<think>x</think>\\boxed{2}"}]}]},
        {"id": "o2", "messages": [{"role": "user", "content": "no answer anywhere"}]},
    ]  # fmt: skip
    (tmp_path / "omr.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "x.png").write_bytes(png)
    (folder / "metadata.jsonl").write_text(
        json.dumps({"file_name": "x.png", "question": "Colour?", "answer": "red"})
        + "\n"
        + json.dumps({"file_name": "gone.png", "question": "Colour?", "answer": "red"})
        + "\n"
    )
    cfg = PipelineConfig()
    cfg.collect.paths = [str(tmp_path / "omr.jsonl"), str(folder)]
    report = run_collect(cfg, tmp_path / "out", quiet=True)
    out = list(read_samples(tmp_path / "out" / "collected"))
    assert (out[0].id, out[0].answer, len(out[0].images)) == ("o1", "2", 1)
    assert out[1].question == "Colour?" and out[1].images == [png] and out[1].source == "folder"
    assert report["read"]["skipped"] == {"missing_answer": 1, "missing_image": 1}


def test_collect_local_hf_dataset(tmp_path, png):
    data = tmp_path / "hf" / "data"
    data.mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(_mfr_rows(png, 4), schema=MMFINEREASON_SCHEMA),
        data / "train-0.parquet",
    )
    cfg = PipelineConfig()
    cfg.collect.dataset_id = str(tmp_path / "hf")
    cfg.collect.max_samples = 1
    run_collect(cfg, tmp_path / "out", quiet=True)
    out = list(read_samples(tmp_path / "out" / "collected"))
    assert [s.id for s in out] == ["m0", "m1", "m2"]
    assert out[0].images == [png] and out[0].response.endswith("<answer>0</answer>")
