"""mmr rl prepare: Samples -> verl RL parquet that verl's own RLHFDataset loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq

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


def test_prepare_skips_an_unreadable_shard_and_reports_it(tmp_path):
    shards = tmp_path / "curated"
    write_samples(shards / "part-0.parquet", _samples())
    (shards / "part-1.parquet").write_bytes(b"")
    report = prepare(shards, tmp_path / "rl", val_fraction=0.25)
    assert report["written"]["train"] + report["written"]["val"] == 25  # every good row
    assert report["read"]["skipped_files"] == {
        str(shards / "part-1.parquet"): "empty file (0 bytes)"
    }


def test_an_empty_split_gets_an_empty_file_not_a_stale_one(tmp_path):
    src = tmp_path / "curated.parquet"
    write_samples(src, _samples())
    prepare(src, tmp_path / "rl", val_fraction=0.25)
    assert pq.read_table(tmp_path / "rl" / "val.parquet").num_rows > 0
    report = prepare(src, tmp_path / "rl", val_fraction=0.0)  # a rerun with no validation
    assert report["written"]["val"] == 0
    val = pq.read_table(tmp_path / "rl" / "val.parquet")
    assert val.num_rows == 0 and "reward_model" in val.schema.names


def test_split_is_stable_by_id():
    assert is_validation("abc", 0.5) == is_validation("abc", 0.5)
    share = sum(is_validation(f"id{i}", 0.1) for i in range(5000)) / 5000
    assert 0.08 < share < 0.12


# Run in a fresh process, as verl does (its TaskRunner is a new Ray actor): verl filters
# overlong prompts with a forked `datasets` pool, and a fork taken after this pytest
# process has run torch's thread pool can deadlock in the child.
RLHF_CHECK = """
import json, sys
from omegaconf import OmegaConf
from transformers import AutoProcessor
from verl.utils.dataset.rl_dataset import RLHFDataset
parquet, model, cache = sys.argv[1:4]
processor = AutoProcessor.from_pretrained(model)
config = OmegaConf.create({
    "max_prompt_length": 512,
    "filter_overlong_prompts": True,  # sizes image prompts with qwen-vl-utils + torchvision
    "filter_overlong_prompts_workers": 1,
    "truncation": "error",
    "cache_dir": cache,
})
dataset = RLHFDataset(parquet, processor.tokenizer, config, processor)
items = [dataset[i] for i in range(len(dataset))]
image_item = next(it for it in items if it["data_source"] != "t")
print(json.dumps({
    "n": len(dataset),
    "kinds": [part["type"] for part in image_item["raw_prompt"][0]["content"]],
    "ground_truth": image_item["reward_model"]["ground_truth"],
}))
"""


def test_verl_rlhf_dataset_loads_the_parquet(tmp_path, tiny_qwen2_5_vl):
    src = tmp_path / "curated.parquet"
    write_samples(src, _samples())
    prepare(src, tmp_path / "rl", val_fraction=0.0)
    proc = subprocess.run(
        [sys.executable, "-c", RLHF_CHECK, str(tmp_path / "rl" / "train.parquet"),
         str(tiny_qwen2_5_vl), str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n"] == 25  # nothing silently dropped by the overlong filter
    assert out["kinds"][0] == "image" and "text" in out["kinds"]
    assert out["ground_truth"]


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert main(["--input", str(tmp_path / "missing.parquet"), "--output", str(tmp_path)]) == 2
    assert "mmr rl prepare" in capsys.readouterr().out
