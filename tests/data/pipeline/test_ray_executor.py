"""`executor=ray` on a real two-node Ray cluster on 127.0.0.1 (tests/ray_cluster.py): the
same outputs as the local executor for collect -> clean -> distill -> select with the
demo's teacher server, and a driver killed mid-stage then run again accounts for every row."""

from __future__ import annotations

import base64
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
from mmr.data.pipeline.cli import main
from mmr.data.synthetic import generate_tasks, solve, teacher_response
from tests.data.pipeline.helpers import arithmetic, parse_question, solution
from tests.ray_cluster import ROOT, node_env, ray_cluster

pytest.importorskip("ray")

DEMO = ROOT / "recipes" / "data" / "demo.yaml"
FOLDERS = ("collected", "cleaned", "distilled", "selected")
RUN_DEPENDENT = ("elapsed_s", "rows_per_s", "output")  # what may differ between two runs


@pytest.fixture(scope="module")
def cluster() -> str:
    with ray_cluster(nodes=2) as address:
        yield address


def _table(folder: Path):
    return ds.dataset(folder, format="parquet").to_table()


def _reports(out: Path) -> dict[str, dict]:
    reports = {p.stem: json.loads(p.read_text()) for p in (out / "reports").glob("*.json")}
    return {
        stage: {k: v for k, v in r.items() if k not in RUN_DEPENDENT}
        for stage, r in reports.items()
    }


def test_local_and_ray_executors_write_the_same_outputs(tmp_path, server, cluster):
    tasks = generate_tasks(12, with_response=False)
    by_image = {base64.b64encode(t.images[0]).decode(): t for t in tasks}
    tasks[5].images = [b"corrupt"]  # dropped by clean

    def teacher(body):
        parts = body["messages"][-1]["content"]
        url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
        task = by_image[url.split(",", 1)[1]]
        answer = teacher_response(task.meta)
        # Always wrong for one task: dropped by distill's verification.
        return answer.replace(f"{{{solve(task.meta)}}}", "{999}") if task is tasks[3] else answer

    server.script = teacher
    write_samples(tmp_path / "tasks.parquet", tasks)

    def run(out: str, *overrides: str) -> Path:
        argv = ["run", "--config", str(DEMO), "--step", "all", "--quiet", "--input",
                str(tmp_path / "tasks.parquet"), "--output", str(tmp_path / out), "shard_rows=4",
                f"distill.cot.client.api_base={server.base_url}", *overrides]  # fmt: skip
        assert main(argv) == 0
        return tmp_path / out

    local = run("local")
    on_ray = run("ray", "executor=ray", f"ray.address={cluster}")
    for folder in FOLDERS:
        a, b = _table(local / folder), _table(on_ray / folder)
        assert a.schema == b.schema, folder
        assert a.to_pylist() == b.to_pylist(), folder  # same rows, same order
        parts = sorted(p.name for p in (on_ray / folder).glob("*.parquet"))
        assert parts == sorted(p.name for p in (local / folder).glob("*.parquet")), folder
    assert len(_table(on_ray / "selected")) == 20  # 10 questions x 2 paths survive
    reports = _reports(on_ray)
    assert reports == _reports(local)
    assert reports["clean"]["filters"] == {"image": {"corrupt_image": 1}}
    assert reports["distill"]["shards"] == 3 and reports["select"]["rows_in"] == 20
    assert not (on_ray / "_work").exists()


def _finished(manifest: Path) -> int:
    try:
        return len(json.loads(manifest.read_text())["shards"])
    except (OSError, ValueError):
        return 0


def test_ray_driver_killed_mid_stage_resumes_with_every_row(tmp_path, server, cluster):
    server.latency_s = 0.05
    server.script = lambda body: solution(parse_question(body)[1])
    write_samples(tmp_path / "in.parquet", arithmetic(60))
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "mmr.data.pipeline.cli", "run", "--step", "distill", "--quiet",
        "--input", str(tmp_path / "in.parquet"), "--output", str(out), "shard_rows=5",
        f"distill.cot.client.api_base={server.base_url}", "distill.cot.client.concurrency=1",
        "executor=ray", f"ray.address={cluster}",
    ]  # fmt: skip
    env = node_env()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    manifest = out / "distilled" / "_manifest.json"
    deadline = time.monotonic() + 60
    while _finished(manifest) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _finished(manifest)
    assert 3 <= done_before < 12, "the kill should land mid-run"

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, timeout=120)
    assert rerun.returncode == 0
    ids = _table(out / "distilled")["id"].to_pylist()
    assert ids == [f"q{i:03d}" for i in range(60)]  # every row, none twice, in input order
    report = json.loads((out / "reports" / "distill.json").read_text())
    assert report["rows_in"] == 60 and report["rows_out"] == 60 and report["shards"] == 12
    assert not (out / "_work").exists()
    # Only unfinished shards were asked again: those in flight when the driver died
    # (two running, one queued) and what its orphaned tasks sent before Ray stopped them.
    assert len(server.requests) - 60 <= 5 * 4
