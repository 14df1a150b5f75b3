"""`executor=ray` on a real two-node Ray cluster on 127.0.0.1 (tests/ray_cluster.py): the
same outputs as the local executor for collect -> clean -> distill -> select with the
demo's teacher server, the Ray run sending distill's requests through ray.data.llm
(`engine: ray_llm`) to two endpoints, one failing request answered with HTTP 500 and one
hanging (each tried at both, the second in a failover pass), and dedup's embeddings
computed in Ray tasks; a driver killed mid-stage then run again, and a worker node killed
mid-stage, both end with every input row written once."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pyarrow.dataset as ds
import pytest

from mmr.data.io import read_samples, write_samples
from mmr.data.pipeline import ray_executor
from mmr.data.pipeline.cli import main
from mmr.data.pipeline.config import PipelineConfig
from mmr.data.pipeline.dedup import run_dedup
from mmr.data.schema import Sample
from mmr.data.synthetic import generate_tasks, solve, teacher_response
from mmr.llm.server import OpenAIServer
from tests.data.pipeline.helpers import arithmetic, parse_question, solution
from tests.ray_cluster import ROOT, RayCluster, node_env, ray_cluster

pytest.importorskip("ray")

DEMO = ROOT / "recipes" / "data" / "demo.yaml"
FOLDERS = ("collected", "cleaned", "distilled", "selected", "deduped")
RUN_DEPENDENT = ("elapsed_s", "rows_per_s", "output")  # what may differ between two runs
KEY_ENV, KEY = "MMR_RAY_TEST_KEY", "sk-ray-test-0123456789"  # the teacher's, on every node


@pytest.fixture(scope="module")
def ray_nodes() -> RayCluster:
    with mock.patch.dict(os.environ, {KEY_ENV: KEY}), ray_cluster(nodes=2) as running:
        yield running


@pytest.fixture
def cluster(ray_nodes: RayCluster) -> str:
    """The address of the module's cluster, with both nodes alive."""
    if any(node.poll() is not None for node in ray_nodes.nodes):
        pytest.skip("a node of the module's cluster was killed by an earlier test")
    return ray_nodes.address


def test_executor_is_local_or_ray(tmp_path, capsys):
    argv = ["run", "--step", "select", "--output", str(tmp_path), "executor=spark"]
    assert main(argv) == 2
    assert "config key 'executor' is 'spark'; choose one of local, ray" in capsys.readouterr().err
    assert main([*argv[:-1], "executor=ray", "ray.max_in_flight=0"]) == 2
    assert "'ray.max_in_flight' must be > 0" in capsys.readouterr().err
    assert main([*argv[:-1], "distill.cot.client.engine=sglang"]) == 2
    assert (
        "'client.engine' is 'sglang'; choose one of openai, ray_llm, vllm"
        in capsys.readouterr().err
    )
    assert main([*argv[:-1], "distill.cot.client.engine=vllm", "num_proc=2"]) == 2
    assert "'distill.cot.client.engine' is vllm with executor local" in capsys.readouterr().err
    assert main([*argv[:-1], "distill.cot.client.engine=ray_llm", "num_proc=2"]) == 2
    assert "'distill.cot.client.engine' is ray_llm with executor local" in capsys.readouterr().err


def test_a_ray_client_connection_is_tried_again_when_the_heads_server_fails_to_start(
    caplog, monkeypatch
):
    # On a busy head Ray Client's per-driver server process sometimes exits at once (Ray 2.60,
    # seen in CI: "Starting Ray client server failed"), and a second attempt connects. That
    # failure cannot be caused on demand, so ray.init is faked here: it fails twice, then
    # connects; a fourth failure would be raised.
    import ray

    monkeypatch.setattr(ray_executor, "_CONNECTED", False)  # nothing is really connected
    calls = []

    def init(address, **kwargs):
        calls.append(address)
        if len(calls) < 3:
            raise ConnectionAbortedError("Initialization failure from server:\nRuntimeError: "
                                         "Starting Ray client server failed.")  # fmt: skip

    with mock.patch.object(ray, "init", init), mock.patch.object(ray, "is_initialized",
                                                                 return_value=False):  # fmt: skip
        ray_executor.connect("ray://127.0.0.1:1")
        assert calls == ["ray://127.0.0.1:1"] * 3
        assert "Starting Ray client server failed.; connecting again (3 of 3)" in caplog.text
        calls.clear()
        monkeypatch.setattr(ray_executor, "_CLIENT_ATTEMPTS", 2)
        with pytest.raises(ConnectionAbortedError, match="client server failed"):
            ray_executor.connect("ray://127.0.0.1:1")
        assert len(calls) == 2


def _table(folder: Path):
    return ds.dataset(folder, format="parquet").to_table()


def _reports(out: Path) -> dict[str, dict]:
    reports = {p.stem: json.loads(p.read_text()) for p in (out / "reports").glob("*.json")}
    return {
        stage: {k: v for k, v in r.items() if k not in RUN_DEPENDENT}
        for stage, r in reports.items()
    }


def _asked(requests: list[dict]) -> Counter:
    """How often each distinct request (its messages and sampling settings) was sent."""
    return Counter(json.dumps(r["body"], sort_keys=True) for r in requests)


def test_local_and_ray_executors_write_the_same_outputs(tmp_path, server, cluster):
    tasks = generate_tasks(12, with_response=False)
    by_image = {base64.b64encode(t.images[0]).decode(): t for t in tasks}
    tasks[5].images = [b"corrupt"]  # dropped by clean

    def teacher(body):
        parts = body["messages"][-1]["content"]
        url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
        task = by_image[url.split(",", 1)[1]]
        if task is tasks[7]:  # an endpoint error that echoes the request's key
            return ("status", 500, f"upstream refused Authorization: Bearer {KEY}")
        if task is tasks[9]:
            # Hung: far past timeout_s, since on a loaded machine a late timer lets a reply
            # that arrived by then through (asyncio.wait_for returns a finished result).
            return ("sleep", 60)
        answer = teacher_response(task.meta)
        # Always wrong for one task: dropped by distill's verification.
        return answer.replace(f"{{{solve(task.meta)}}}", "{999}") if task is tasks[3] else answer

    server.script = teacher
    replica = OpenAIServer(teacher).start()  # a second endpoint of the same model
    write_samples(tmp_path / "tasks.parquet", tasks)

    def run(out: str, *overrides: str) -> Path:
        argv = ["run", "--config", str(DEMO), "--step", "all", "--quiet", "--input",
                str(tmp_path / "tasks.parquet"), "--output", str(tmp_path / out), "shard_rows=6",
                f"distill.cot.client.api_base={server.base_url}",
                f"distill.cot.client.api_key_env={KEY_ENV}", "distill.cot.client.timeout_s=2",
                "distill.cot.client.retries=1", *overrides]  # fmt: skip
        assert main(argv) == 0
        dedup = ["dedup", "--config", str(DEMO), "--quiet", "--input",
                 str(tmp_path / out / "selected"), "--output", str(tmp_path / out), "shard_rows=6",
                 *overrides]  # fmt: skip
        assert main(dedup) == 0
        return tmp_path / out

    try:
        local = run("local")
        asked = _asked(server.requests)
        server.reset()
        server.script = teacher
        # Breakers off: four failing requests (two questions x 2 paths) would open them
        # (test_ray_llm.py tests that), and the counts below are of every retry.
        on_ray = run("ray", "executor=ray", f"ray.address={cluster}",
                     "distill.cot.client.engine=ray_llm", "distill.cot.client.breaker_failures=0",
                     f"distill.cot.client.api_bases=[{replica.base_url}]")  # fmt: skip
    finally:
        replica.stop()
    failing_images = [base64.b64encode(tasks[i].images[0]).decode() for i in (7, 9)]
    for folder in (*FOLDERS, "failed/distill"):
        a, b = _table(local / folder), _table(on_ray / folder)
        assert a.schema == b.schema, folder
        assert a.to_pylist() == b.to_pylist(), folder  # same rows, same order
        parts = sorted(p.name for p in (on_ray / folder).glob("*.parquet"))
        assert parts == sorted(p.name for p in (local / folder).glob("*.parquet")), folder
    assert len(_table(on_ray / "selected")) == 16  # 8 questions x 2 paths survive
    assert len(_table(on_ray / "deduped")) == 8  # a question's second path is its duplicate
    reports = _reports(on_ray)
    assert reports == _reports(local)
    assert reports["clean"]["filters"] == {"image": {"corrupt_image": 1}}
    assert reports["distill"]["failed_reasons"] == {"teacher_http_500": 1, "teacher_timeout": 1}
    assert reports["distill"]["shards"] == 2 and reports["select"]["rows_in"] == 16
    assert not (on_ray / "_work").exists()
    # engine ray_llm: the same requests under the same retry policy, dealt to both endpoints,
    # with the key read on the nodes and redacted from what is written. Counted per distinct
    # request (a question's 2 paths send the same body): on a loaded machine a good reply can
    # miss its timeout once and be asked again (what both executors write is still equal).
    on_ray_asked = _asked(server.requests + replica.requests)
    assert on_ray_asked.keys() == asked.keys() and len(asked) == 11  # 11 questions
    failing = [key for key in asked if any(image in key for image in failing_images)]
    assert len(failing) == 2  # the 500 and the hung question
    # 2 paths x (1 + retries=1), at the one endpoint; on Ray at both, the second in a
    # failover pass (an HTTP 500 and a timeout are the endpoint's fault).
    assert all(asked[key] == 2 * 2 for key in failing)
    assert all(on_ray_asked[key] == 2 * 2 * 2 for key in failing)
    for counts in (asked, on_ray_asked):  # 2 paths, each retried at most once
        assert all(2 <= counts[key] <= 2 * 2 for key in counts if key not in failing)
    assert len(server.requests) > 0 and len(replica.requests) > 0
    assert replica.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    for path in [*(on_ray / "reports").iterdir(), *(on_ray / "failed" / "distill").iterdir()]:
        assert KEY.encode() not in path.read_bytes(), path
    assert "Bearer [redacted]" in json.dumps(reports["distill"]["examples"])


def test_a_ray_client_address_runs_a_stage_as_a_cluster_address_does(tmp_path, ray_nodes):
    # `ray.address=ray://HOST:10001` (Ray Client: a driver outside the cluster's network) in a
    # process of its own, as a user runs it: the same kept rows and report as the local pool.
    import subprocess
    import sys

    from mmr.data.synthetic import write_synthetic

    if any(node.poll() is not None for node in ray_nodes.nodes):
        pytest.skip("a node of the module's cluster was killed by an earlier test")
    tasks = write_synthetic(tmp_path / "in.parquet", 40, split="train", seed=0, kinds=["colour"],
                            levels=[1], with_response=True)  # fmt: skip

    def clean(out: str, *overrides: str) -> dict:
        argv = [sys.executable, "-m", "mmr.cli", "data", "run", "--config", str(DEMO), "--step",
                "clean", "--quiet", "--input", str(tasks), "--output", str(tmp_path / out),
                "shard_rows=10", *overrides]  # fmt: skip
        done = subprocess.run(argv, env=node_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:] + ray_nodes.logs("ray_client_server*")
        report = json.loads((tmp_path / out / "reports" / "clean.json").read_text())
        return {k: v for k, v in report.items() if k not in RUN_DEPENDENT}

    local = clean("local")
    client = clean("client", "executor=ray", f"ray.address={ray_nodes.client_address}")
    assert client == local and client["rows_out"] == 40 and client["shards"] == 4
    assert (
        _table(tmp_path / "client" / "cleaned").to_pylist()
        == _table(tmp_path / "local" / "cleaned").to_pylist()
    )


def test_dedup_on_ray_resumes_with_the_same_kept_rows(tmp_path, cluster):
    q1, q2 = "How many red circles are there?", "What is the area of the triangle?"
    texts = [q1, q1 + " ", q2, "Which bar is tallest?", q1, q2 + " ?", q1]
    rows = [Sample(chr(97 + i), "s", text, "1") for i, text in enumerate(texts)]
    write_samples(tmp_path / "in.parquet", rows)
    cfg = PipelineConfig(shard_rows=3, executor="ray")
    cfg.ray.address, cfg.dedup.embedder, cfg.dedup.threshold = cluster, "hashing", 0.9
    out = tmp_path / "out"
    try:
        first = run_dedup(cfg, tmp_path / "in.parquet", out, quiet=True)
        manifest_path = out / "deduped" / "_manifest.json"
        manifest = json.loads(manifest_path.read_text())
        del manifest["shards"]["1"]  # as if the run had stopped before shard 1 was recorded
        manifest["complete"] = False
        manifest_path.write_text(json.dumps(manifest))
        again = run_dedup(cfg, tmp_path / "in.parquet", out, quiet=True)
    finally:
        ray_executor.shutdown()
    # Shard 1 was compared with the kept rows of shard 0 (remembered), shard 2 with both.
    assert [s.id for s in read_samples(out / "deduped")] == ["a", "c", "d"]
    assert again["filters"] == first["filters"] == {"dedup": {"near_duplicate": 4}}


def _finished(manifest: Path) -> int:
    try:
        return len(json.loads(manifest.read_text())["shards"])
    except (OSError, ValueError):
        return 0


def _distill_60(tmp_path: Path, server, address: str) -> tuple[list[str], Path]:
    """`mmr data` arguments of a slow distill of 60 questions in 12 shards on Ray."""
    server.latency_s = 0.05
    server.script = lambda body: solution(parse_question(body)[1])
    write_samples(tmp_path / "in.parquet", arithmetic(60))
    argv = [
        "run", "--step", "distill", "--quiet", "--input", str(tmp_path / "in.parquet"),
        "--output", str(tmp_path / "out"), "shard_rows=5",
        f"distill.cot.client.api_base={server.base_url}", "distill.cot.client.concurrency=1",
        "executor=ray", f"ray.address={address}",
    ]  # fmt: skip
    return argv, tmp_path / "out"


def _wait_for_shards(manifest: Path, running: Callable[[], bool], n: int) -> None:
    deadline = time.monotonic() + 60
    while _finished(manifest) < n and running() and time.monotonic() < deadline:
        time.sleep(0.01)


def _assert_every_row_once(out: Path) -> None:
    ids = _table(out / "distilled")["id"].to_pylist()
    assert ids == [f"q{i:03d}" for i in range(60)]  # every row, none twice, in input order
    report = json.loads((out / "reports" / "distill.json").read_text())
    assert report["rows_in"] == 60 and report["rows_out"] == 60 and report["shards"] == 12
    assert not (out / "_work").exists()


def test_ray_driver_killed_mid_stage_resumes_with_every_row(tmp_path, server, cluster):
    argv, out = _distill_60(tmp_path, server, cluster)
    cmd = [sys.executable, "-m", "mmr.data.pipeline.cli", *argv]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=node_env())
    manifest = out / "distilled" / "_manifest.json"
    _wait_for_shards(manifest, lambda: proc.poll() is None, 3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _finished(manifest)
    assert 3 <= done_before < 12, "the kill should land mid-run"

    assert main(argv) == 0  # the rerun, from this process
    _assert_every_row_once(out)
    # Only unfinished shards were asked again: those in flight when the driver died
    # (two running, one queued) and what its orphaned tasks sent before Ray stopped them.
    assert len(server.requests) - 60 <= 5 * 4


def test_worker_node_killed_mid_stage_still_writes_every_row(tmp_path, server, ray_nodes):
    # Last in the module: the cluster has one node left after it.
    argv, out = _distill_60(tmp_path, server, ray_nodes.address)
    codes: list[int] = []
    driver = threading.Thread(target=lambda: codes.append(main(argv)))
    driver.start()
    _wait_for_shards(out / "distilled" / "_manifest.json", driver.is_alive, 2)
    ray_nodes.kill_node(1)  # its shard task is run again on the head (ray.max_retries)
    driver.join(timeout=120)
    assert codes == [0]
    _assert_every_row_once(out)
