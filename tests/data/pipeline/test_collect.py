"""Collect: MMFineReason parquet, OpenMMReasoner JSONL, image folders and HF datasets
(offline: `save_to_disk` folders and local parquet folders, both schemas) become Samples;
subsets and max_samples; unreadable rows counted; errors name the subset or column."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmr.data.io import read_samples
from mmr.data.pipeline.cli import main
from mmr.data.pipeline.collect import run_collect
from mmr.data.pipeline.config import PipelineConfig
from mmr.data.pipeline.runner import StageError
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


# ---------------------------------------------------------------------------------------
# HF `datasets` offline: `save_to_disk` folders and local parquet folders take the same code
# path as the hub (load, stream, keep images encoded, map the schema).


def _hf_mfr(png: bytes, n: int):
    import datasets

    features = datasets.Features(
        {
            "source": datasets.Value("string"),
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "qwen3vl_235b_thinking_response": datasets.Value("string"),
            "qwen3vl_235b_instruct_caption": datasets.Value("string"),
            "qwen3vl_4b_pass_rate": datasets.Value("float64"),
            "is_consistent": datasets.Value("bool"),
        }
    )
    return datasets.Dataset.from_list(_mfr_rows(png, n), features=features)


def _omr_records(png: bytes, n: int) -> list[dict]:
    """LLaVA-style OpenMMReasoner records: images in their own column, `<image>` in the text."""
    return [
        {
            "id": f"o{i}",
            "data_source": ("geo", "chart")[i % 2],
            "images": [{"bytes": png, "path": None}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": f"<image>\nQ{i}: sides?"}]},
                {"role": "assistant",
                 "content": [{"type": "text", "text": f"<think>count</think>\\boxed{{{i}}}"}]},
            ],
        }
        for i in range(n)
    ]  # fmt: skip


def _collect(tmp_path, **collect):
    cfg = PipelineConfig(shard_rows=2)
    for key, value in collect.items():
        setattr(cfg.collect, key, value)
    report = run_collect(cfg, tmp_path / "out", quiet=True)
    return report, list(read_samples(tmp_path / "out" / "collected"))


def test_collect_saved_dataset_in_the_mmfinereason_schema(tmp_path, png):
    _hf_mfr(png, 12).save_to_disk(str(tmp_path / "saved"))
    report, out = _collect(
        tmp_path, dataset_id=str(tmp_path / "saved"), subsets=["BMMR", "Euclid30K"], max_samples=2
    )
    assert [s.id for s in out] == ["m0", "m1", "m3", "m4"]
    assert [s.source for s in out] == ["BMMR", "Euclid30K", "BMMR", "Euclid30K"]
    first = out[0]
    assert first.images == [png] and first.pass_rate == 0.25 and first.caption == "a caption"
    assert first.response == "<think>t</think><answer>0</answer>"
    assert first.meta == {"is_consistent": True}
    assert report["read"]["read"] == 5 and report["read"]["skipped"] == {"not_in_subsets": 1}


def test_collect_saved_dataset_dict_in_the_openmmreasoner_schema(tmp_path, png):
    import datasets

    records = _omr_records(png, 6)
    splits = {"train": records[:2], "test": records}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).cast_column(
        "images", datasets.List(datasets.Image())
    ).save_to_disk(str(tmp_path / "omr"))
    # Nested image lists arrive as encoded bytes too (decoded PIL images were a bad_field).
    report, out = _collect(
        tmp_path, dataset_id=str(tmp_path / "omr"), split="test", subsets=["chart"], max_samples=2
    )
    assert [(s.id, s.source, s.answer) for s in out] == [("o1", "chart", "1"), ("o3", "chart", "3")]
    assert out[0].images == [png] and out[0].question == "<image>\nQ1: sides?"
    assert out[0].response.endswith("\\boxed{1}") and out[0].meta["answer_from"] == "boxed"
    assert report["read"]["skipped"] == {"not_in_subsets": 2}
    message = _error(tmp_path, dataset_id=str(tmp_path / "omr"), split="validation")
    assert (
        message == "collect.split 'validation': " + f"{tmp_path / 'omr'} has the splits train, test"
    )


def test_collect_local_parquet_dataset_resolves_image_paths_in_its_folder(tmp_path, png):
    folder = tmp_path / "omr_parquet"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "a.png").write_bytes(png)
    records = [
        {"id": f"p{i}", "source": "s", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "img/a.png"}},
                                         {"type": "text", "text": f"Q{i}?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": f"<think>x</think><answer>{i}</answer>"}]},
        ]}
        for i in range(3)
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(records), folder / "train-00000.parquet")
    report, out = _collect(tmp_path, dataset_id=str(folder), max_samples=2)
    assert [s.id for s in out] == ["p0", "p1"]
    assert out[0].images == [png] and out[0].question == "Q0?" and out[0].answer == "0"
    assert report["read"]["skipped"] == {"over_max_samples": 1}


def _error(tmp_path, **collect) -> str:
    with pytest.raises(StageError) as err:
        _collect(tmp_path, **collect)
    return str(err.value)


def test_collect_errors_name_what_is_wrong(tmp_path, png):
    saved = str(tmp_path / "saved")
    _hf_mfr(png, 6).save_to_disk(saved)
    # Unknown subset: found from the `source` column before a row is written.
    message = _error(tmp_path, dataset_id=saved, subsets=["BMMR", "Nope"])
    assert "'Nope'" in message and "BMMR, Euclid30K, Other" in message
    assert not (tmp_path / "out" / "collected").exists()
    no_answer = tmp_path / "no_answer"
    _hf_mfr(png, 2).remove_columns("answer").save_to_disk(str(no_answer))
    message = _error(tmp_path, dataset_id=str(no_answer))
    assert "no column 'answer'" in message and "mmfinereason" in message
    no_source = tmp_path / "no_source"
    _hf_mfr(png, 2).remove_columns("source").save_to_disk(str(no_source))
    assert "'source' column" in _error(tmp_path, dataset_id=str(no_source), subsets=["BMMR"])
    assert "no such local folder" in _error(tmp_path, dataset_id=str(tmp_path / "gone"))
    # A parquet folder read through `load_dataset`: its sources are only known at the end.
    data = tmp_path / "hf" / "data"
    data.mkdir(parents=True)
    table = pa.Table.from_pylist(_mfr_rows(png, 4), schema=MMFINEREASON_SCHEMA)
    pq.write_table(table, data / "train-0.parquet")
    message = _error(tmp_path, dataset_id=str(tmp_path / "hf"), subsets=["Nope"], overwrite=True)
    assert "'Nope'" in message and "BMMR, Euclid30K, Other" in message
    # Plain parquet paths are checked the same way, before reading.
    message = _error(tmp_path, paths=[str(data / "train-0.parquet")], subsets=["Nope"])
    assert "'Nope'" in message


def test_collect_hub_failure_is_a_stage_error(tmp_path, monkeypatch):
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'owner/name' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    message = _error(tmp_path, dataset_id="owner/name")
    assert message.startswith("collect.dataset_id 'owner/name' (split 'train') cannot be loaded")
    assert "ConnectionError" in message


def test_collect_cli_exit_2_names_the_unknown_subset(tmp_path, png, capsys):
    _hf_mfr(png, 3).save_to_disk(str(tmp_path / "saved"))
    argv = ["run", "--step", "collect", "--output", str(tmp_path / "out"), "--quiet",
            f"collect.dataset_id={tmp_path / 'saved'}", "collect.subsets=[Nope]"]  # fmt: skip
    assert main(argv) == 2
    assert "collect.subsets: no row has the source 'Nope'" in capsys.readouterr().err
