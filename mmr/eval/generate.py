"""Responses for evaluation: Samples -> chat prompts -> `n` responses each, vLLM or HF.

    gens = generate(samples, "runs/demo/sft/final", backend="hf", n=1, max_new_tokens=64)

Both backends see the same prompt text: the checkpoint's own chat template applied to
`mmr.data.chat.build_messages` (the SFT and RL prompt), ending with the assistant header.
n=1 decodes greedily unless a temperature is given; n>1 samples (temperature 1.0 by
default). vLLM (GPU) batches and pages the KV cache itself; HF `generate` runs fixed
batches with left padding, so it is slow but runs anywhere, CPU included.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from mmr.data.chat import build_messages, decode_images
from mmr.data.schema import Sample
from mmr.models import generate as sampling

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "hf", "vllm")


@dataclass
class Generation:
    """One response to one sample."""

    index: int  # the sample's position in the evaluated list
    text: str  # decoded response, special tokens dropped
    tokens: int  # response tokens, the end token excluded
    truncated: bool  # no end token within max_new_tokens


def resolve_backend(backend: str) -> str:
    """`auto`: vLLM when it is installed and a GPU is visible, else HF."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "hf"
    return "vllm" if torch.cuda.is_available() else "hf"


def resolve_temperature(n: int, temperature: float | None) -> float:
    """Greedy (0) for a single response unless told otherwise; 1.0 for n > 1."""
    if temperature is not None:
        return temperature
    return 0.0 if n == 1 else 1.0


def build_prompts(
    samples: Sequence[Sample], processor: Any, system_prompt: str | None = None
) -> list[str]:
    """Each sample's chat-templated prompt text, ending with the assistant header."""
    return [
        processor.apply_chat_template(
            build_messages(s, system_prompt=system_prompt, with_response=False),
            add_generation_prompt=True,
            tokenize=False,
        )
        for s in samples
    ]


def generate(
    samples: Sequence[Sample],
    model_path: str,
    *,
    backend: str = "auto",
    n: int = 1,
    max_new_tokens: int = 1024,
    temperature: float | None = None,
    top_p: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
    system_prompt: str | None = None,
    dtype: str = "auto",
) -> list[Generation]:
    """`n` responses per sample, sample-major (sample i's are rows i*n .. i*n+n-1).
    `dtype`: mmr's rule (`auto`: bf16 on GPU, fp32 on CPU), or float32 / bfloat16."""
    backend = resolve_backend(backend)
    temperature = resolve_temperature(n, temperature)
    kw = dict(n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
              seed=seed, system_prompt=system_prompt, dtype=dtype)  # fmt: skip
    if backend == "vllm":
        return vllm_generate(samples, model_path, **kw)
    return hf_generate(samples, model_path, batch_size=batch_size, **kw)


def hf_generate(
    samples: Sequence[Sample],
    model_path: str,
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    batch_size: int = 16,
    system_prompt: str | None = None,
    dtype: str = "auto",
) -> list[Generation]:
    """HF `generate` in batches of `batch_size` rows (a sample repeated n times is n rows)."""
    from mmr.config import ModelSection
    from mmr.models.build import build_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = build_model(ModelSection(path=model_path, freeze=[], dtype=dtype), device)
    prompts = build_prompts(samples, processor, system_prompt)
    rows = [(i, k) for i in range(len(samples)) for k in range(n)]
    torch.manual_seed(seed)
    out: list[Generation] = []
    batches = range(0, len(rows), batch_size)
    for start in tqdm(batches, desc=f"generate ({len(rows)} responses)", dynamic_ncols=True):
        chunk = [i for i, _ in rows[start : start + batch_size]]
        images = [img for i in chunk for img in decode_images(samples[i])]
        inputs = processor(text=[prompts[i] for i in chunk], images=images or None,
                           padding=True, padding_side="left", return_tensors="pt")  # fmt: skip
        inputs = {k: v.to(device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        new = sampling.sample(model, inputs, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_p=top_p)  # fmt: skip
        texts = sampling.decode(processor.tokenizer, new)
        out.extend(Generation(i, text, tokens, bool(cut))
                   for i, text, tokens, cut in zip(chunk, texts, new.lengths, new.truncated))  # fmt: skip
    return out


def vllm_generate(
    samples: Sequence[Sample],
    model_path: str,
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    system_prompt: str | None = None,
    dtype: str = "auto",
) -> list[Generation]:
    """vLLM offline inference: one `LLM.generate` call, `SamplingParams(n=...)`."""
    from vllm import LLM, SamplingParams

    from mmr.models import load_processor

    processor = load_processor(model_path)
    prompts = build_prompts(samples, processor, system_prompt)
    most_images = max((len(s.images) for s in samples), default=0)
    llm = LLM(model=model_path, seed=seed, dtype=dtype,  # vLLM's auto: the checkpoint's
              limit_mm_per_prompt={"image": max(most_images, 1)})  # fmt: skip
    params = SamplingParams(
        n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed
    )
    requests = []
    for sample, prompt in zip(samples, prompts):
        request: dict[str, Any] = {"prompt": prompt}
        if sample.images:
            request["multi_modal_data"] = {"image": decode_images(sample)}
        requests.append(request)
    results = llm.generate(requests, params, use_tqdm=True)
    out = []
    for index, result in enumerate(results):
        for completion in result.outputs:
            tokens = len(completion.token_ids)
            truncated = completion.finish_reason == "length"
            # vLLM counts the stop token in token_ids when it stopped on EOS.
            tokens -= 0 if truncated or tokens == 0 else 1
            out.append(Generation(index, completion.text, tokens, truncated))
    return out
