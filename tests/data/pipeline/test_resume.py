"""Resume: a stage killed with SIGKILL mid-run and run again ends with exactly the rows of
an uninterrupted run (no duplicates, none lost), redoing at most the shard in flight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from mmr.data.io import write_samples
from mmr.data.pipeline.config import PipelineConfig
from mmr.data.pipeline.runner import StageError, run_stage
from mmr.data.pipeline.select import run_select
from tests.data.pipeline.helpers import arithmetic, parse_question, sample, solution

ROOT = Path(__file__).resolve().parents[3]


def _ids(folder: Path) -> list[str]:
    return ds.dataset(folder, format="parquet").to_table(columns=["id"])["id"].to_pylist()


def _finished(manifest: Path) -> int:
    try:
        return len(json.loads(manifest.read_text())["shards"])
    except (OSError, ValueError):
        return 0


def test_distill_killed_with_sigkill_resumes_exactly(tmp_path, server):
    server.latency_s = 0.03
    server.script = lambda body: solution(parse_question(body)[1])
    write_samples(tmp_path / "in.parquet", arithmetic(60))
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "mmr.data.pipeline.cli", "run", "--step", "distill", "--quiet",
        "--input", str(tmp_path / "in.parquet"), "--output", str(out), "shard_rows=5",
        f"distill.cot.client.api_base={server.base_url}", "distill.cot.client.concurrency=1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    manifest = out / "distilled" / "_manifest.json"
    deadline = time.monotonic() + 60
    while _finished(manifest) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _finished(manifest)
    assert 3 <= done_before < 12, "the kill should land mid-run"

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, timeout=120)
    assert rerun.returncode == 0
    assert _ids(out / "distilled") == [f"q{i:03d}" for i in range(60)]
    report = json.loads((out / "reports" / "distill.json").read_text())
    assert report["rows_in"] == 60 and report["rows_out"] == 60 and report["shards"] == 12
    # The second run asked only for the unfinished shards: at most one shard was redone.
    redone = len(server.requests) - 60
    assert 0 <= redone <= 5
    assert not (out / "_work").exists()


def _crash_after(n: int):
    calls = {"n": 0}

    def process(samples, log):
        calls["n"] += 1
        if calls["n"] > n:
            raise RuntimeError("simulated crash")
        return samples

    return process


def test_partial_files_of_an_unfinished_shard_are_removed(tmp_path):
    rows = [sample(i) for i in range(20)]
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        run_stage(
            "t", "tested", out, iter(rows), _crash_after(2), key="k", shard_rows=4, quiet=True
        )
    stray = out / "tested" / "part-00003.parquet"  # as if killed between rename and manifest
    write_samples(stray, rows[12:16])
    report = run_stage(
        "t", "tested", out, iter(rows), _crash_after(99), key="k", shard_rows=4, quiet=True
    )
    assert _ids(out / "tested") == [s.id for s in rows]
    assert report["rows_out"] == 20 and report["shards"] == 5


def test_another_config_is_refused_unless_overwrite(tmp_path):
    write_samples(tmp_path / "in.parquet", [sample(i) for i in range(3)])
    run_select(PipelineConfig(), tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    other = PipelineConfig()
    other.select.content.min_response_words = 10
    with pytest.raises(StageError, match="overwrite"):
        run_select(other, tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    report = run_select(
        other, tmp_path / "in.parquet", tmp_path / "out", overwrite=True, quiet=True
    )
    assert report["rows_out"] == 3
    faster = PipelineConfig(num_proc=2)  # speed settings may change on resume
    faster.select.content.min_response_words = 10
    assert (
        run_select(faster, tmp_path / "in.parquet", tmp_path / "out", quiet=True)["rows_out"] == 3
    )
