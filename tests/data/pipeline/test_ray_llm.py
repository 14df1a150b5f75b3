"""`engine: ray_llm` (ray.data.llm's HTTP processor) on a local Ray instance, one per module,
against two of mmr's local servers running the demo's rule teacher: the same distilled
rows, failed/ rows and reports as mmr's own client, with an endpoint error that echoes the
API key redacted, a hanging request counted as a timeout, and both endpoints used."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from unittest import mock

import pyarrow.dataset as ds
import pytest

from mmr.data.io import write_samples
from mmr.data.pipeline.cli import main
from mmr.data.synthetic import generate_tasks
from mmr.data.teacher_server import RuleTeacher
from mmr.llm.server import OpenAIServer
from tests.ray_cluster import ROOT, node_env

ray = pytest.importorskip("ray")

DEMO = ROOT / "recipes" / "data" / "demo.yaml"
KEY_ENV, KEY = "MMR_RAY_LLM_TEST_KEY", "sk-ray-llm-test-0123456789"
RUN_DEPENDENT = ("elapsed_s", "rows_per_s", "output")


@pytest.fixture(scope="module")
def ray_local() -> str:
    """A local Ray instance for the module (its workers see this checkout and the key)."""
    with mock.patch.dict(os.environ, {**node_env(), KEY_ENV: KEY}):
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def test_engine_and_api_bases_are_checked(tmp_path, capsys):
    argv = ["run", "--step", "select", "--output", str(tmp_path)]
    assert main([*argv, "distill.cot.client.engine=vllm"]) == 2
    assert "'client.engine' is 'vllm'; choose one of openai, ray_llm" in capsys.readouterr().err
    assert main([*argv, "distill.cot.client.api_bases=[http://127.0.0.1:1/v1]"]) == 2
    assert "'client.api_bases' needs client.engine: ray_llm" in capsys.readouterr().err


def _folder(path: Path) -> list[dict]:
    return ds.dataset(path, format="parquet").to_table().to_pylist()


def _report(out: Path) -> dict:
    report = json.loads((out / "reports" / "distill.json").read_text())
    return {k: v for k, v in report.items() if k not in RUN_DEPENDENT}


def test_ray_llm_engine_writes_what_the_openai_client_writes(tmp_path, ray_local, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)  # the driver's client (engine openai) reads it here
    tasks = generate_tasks(8, with_response=False)
    write_samples(tmp_path / "tasks.parquet", tasks)
    teacher = RuleTeacher([tmp_path / "tasks.parquet"])
    by_image = {base64.b64encode(t.images[0]).decode(): t for t in tasks}

    def script(body):
        parts = body["messages"][-1]["content"]
        url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
        task = by_image[url.split(",", 1)[1]]
        if task is tasks[2]:  # an endpoint error that echoes the request's key
            return ("status", 500, f"upstream refused Authorization: Bearer {KEY}")
        if task is tasks[5]:
            return ("sleep", 5)  # past timeout_s: a hung request
        return teacher(body)

    servers = [OpenAIServer(script).start() for _ in range(2)]
    try:

        def run(out: str, *overrides: str) -> Path:
            argv = ["run", "--config", str(DEMO), "--step", "distill", "--quiet",
                    "--input", str(tmp_path / "tasks.parquet"), "--output", str(tmp_path / out),
                    f"distill.cot.client.api_base={servers[0].base_url}",
                    f"distill.cot.client.api_key_env={KEY_ENV}", "distill.cot.client.timeout_s=1",
                    "distill.cot.client.retries=1", "distill.cot.client.backoff_s=0.01",
                    *overrides]  # fmt: skip
            assert main(argv) == 0
            return tmp_path / out

        local = run("openai")
        asked = len(servers[0].requests)
        servers[0].reset()
        on_ray = run("ray_llm", "distill.cot.client.engine=ray_llm",
                     f"distill.cot.client.api_bases=[{servers[1].base_url}]")  # fmt: skip
    finally:
        for server in servers:
            server.stop()

    assert _folder(on_ray / "distilled") == _folder(local / "distilled")
    assert len(_folder(on_ray / "distilled")) == 12  # 6 questions x 2 verified paths
    failed = _folder(on_ray / "failed" / "distill")
    assert failed == _folder(local / "failed" / "distill")
    assert [row["id"] for row in failed] == [tasks[2].id, tasks[5].id]
    report = _report(on_ray)
    assert report == _report(local)
    assert report["failed_reasons"] == {"teacher_http_500": 1, "teacher_timeout": 1}
    # The same retry policy: as many requests, dealt to both endpoints in turn.
    assert [len(s.requests) for s in servers] == [asked // 2, asked // 2]
    assert asked == 6 * 2 + 2 * 2 * 2  # 6 answered, 2 questions failing twice per path
    assert servers[1].requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    for path in [*(on_ray / "reports").iterdir(), *(on_ray / "failed" / "distill").iterdir()]:
        assert KEY.encode() not in path.read_bytes(), path
    assert "Bearer [redacted]" in json.dumps(report["examples"])
