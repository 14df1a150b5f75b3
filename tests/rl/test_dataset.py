"""mmr rl prepare: Samples -> verl RL parquet that verl's own RLHFDataset loads."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from omegaconf import OmegaConf
from transformers import AutoProcessor

from mmr.data.io import write_samples
from mmr.data.schema import Sample
from mmr.data.synthetic import generate_tasks
from mmr.rl.dataset import is_validation, main, prepare


def _samples(n: int = 24) -> list[Sample]:
    samples = generate_tasks(n, seed=3, with_response=False)
    samples.append(Sample(id="no-answer", source="t", question="what?", answer=""))
    samples.append(Sample(id="text-only", source="t", question="What is 2+2?", answer="4"))
    return samples


def test_prepare_writes_splits_and_counts_skips(tmp_path):
    src = tmp_path / "curated.parquet"
    write_samples(src, _samples())
    report = prepare(src, tmp_path / "rl", val_fraction=0.25)
    # The reader counts the row without an answer; nothing is lost silently.
    assert report["read"]["skipped"] == {"missing_answer": 1}
    assert report["skipped"] == {}
    assert report["written"]["train"] + report["written"]["val"] == 25
    assert report["written"]["val"] > 0
    train = pq.read_table(tmp_path / "rl" / "train.parquet").to_pylist()
    row = next(r for r in train if r["images"])
    assert row["prompt"][0]["role"] == "user"
    assert row["prompt"][0]["content"].count("<image>") == len(row["images"])
    assert row["reward_model"]["style"] == "rule" and row["reward_model"]["ground_truth"]
    assert "<image>" not in row["extra_info"]["question"]
    saved = json.loads((tmp_path / "rl" / "prepare_report.json").read_text())
    assert saved["written"] == report["written"]


def test_split_is_stable_by_id():
    assert is_validation("abc", 0.5) == is_validation("abc", 0.5)
    share = sum(is_validation(f"id{i}", 0.1) for i in range(5000)) / 5000
    assert 0.08 < share < 0.12


def test_verl_rlhf_dataset_loads_the_parquet(tmp_path, tiny_qwen2_5_vl):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    src = tmp_path / "curated.parquet"
    write_samples(src, _samples())
    prepare(src, tmp_path / "rl", val_fraction=0.0)
    processor = AutoProcessor.from_pretrained(tiny_qwen2_5_vl)
    config = OmegaConf.create(
        {
            "max_prompt_length": 512,
            "filter_overlong_prompts": True,  # needs torchvision to see images: installed
            "filter_overlong_prompts_workers": 1,
            "truncation": "error",
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    dataset = RLHFDataset(
        str(tmp_path / "rl" / "train.parquet"), processor.tokenizer, config, processor
    )
    assert len(dataset) == 25  # nothing silently dropped by the overlong filter
    item = next(dataset[i] for i in range(len(dataset)) if dataset[i]["data_source"] != "t")
    kinds = [part["type"] for part in item["raw_prompt"][0]["content"]]
    assert kinds[0] == "image" and "text" in kinds
    assert item["reward_model"]["ground_truth"]


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert main(["--input", str(tmp_path / "missing.parquet"), "--output", str(tmp_path)]) == 2
    assert "mmr rl prepare" in capsys.readouterr().out
