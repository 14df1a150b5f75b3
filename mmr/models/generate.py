"""HF `generate` for a batch of prompts: sampling or greedy, no image tokens in a response,
each row cut at its first end token. The local RL engine's rollouts and HF evaluation.

    out = sample(model, inputs, max_new_tokens=256, temperature=1.0)
    texts = decode(processor.tokenizer, out)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Sampled", "cut_at_end", "decode", "sample", "vision_token_ids"]

_VISION_TOKENS = ("image_token_id", "video_token_id", "vision_start_token_id",
                  "vision_end_token_id")  # fmt: skip


@dataclass
class Sampled:
    """New tokens of each row, and where each response ends."""

    tokens: torch.Tensor  # (rows, R) new token ids, padding after the end token
    mask: torch.Tensor  # (rows, R) 1 up to and including the first end token
    truncated: torch.Tensor  # (rows,) True where no end token came within max_new_tokens

    @property
    def lengths(self) -> list[int]:
        """Response tokens per row, the end token excluded."""
        return (self.mask.sum(-1) - (~self.truncated).long()).tolist()


def vision_token_ids(config: Any) -> list[int]:
    """Image/video placeholder and boundary ids of a VL model's config."""
    return [i for i in (getattr(config, name, None) for name in _VISION_TOKENS) if i is not None]


def sample(
    model: Any,
    inputs: dict[str, torch.Tensor],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = -1,
) -> Sampled:
    """One `generate` call over left-padded `inputs`; temperature 0 decodes greedily.
    `top_k` < 1 is off (vLLM's -1; HF's own default of 50 would cut the tail)."""
    # A response never holds image placeholders: a sampled `<|image_pad|>` would ask the next
    # forward for image features that do not exist (tiny random models do sample them).
    if temperature > 0:
        how = {"do_sample": True, "temperature": temperature, "top_p": top_p,
               "top_k": max(top_k, 0)}  # fmt: skip
    else:
        how = {"do_sample": False}
    model.eval()
    with torch.no_grad():
        out = model.generate(
            **inputs,
            **how,
            max_new_tokens=max_new_tokens,
            suppress_tokens=vision_token_ids(model.config),
            use_cache=True,
        )
    return cut_at_end(out[:, inputs["input_ids"].shape[1] :], model.generation_config.eos_token_id)


def cut_at_end(tokens: torch.Tensor, end_ids: int | list[int]) -> Sampled:
    """Where each row of new tokens ends: at its first token among `end_ids`."""
    ends = torch.tensor(end_ids if isinstance(end_ids, list) else [end_ids], device=tokens.device)
    is_end = torch.isin(tokens, ends).long()
    mask = (is_end.cumsum(-1) - is_end == 0).long()  # up to and including the first end
    return Sampled(tokens=tokens, mask=mask, truncated=is_end.sum(-1) == 0)


def decode(tokenizer: Any, sampled: Sampled) -> list[str]:
    """Each row's response text (special tokens, the end token among them, dropped)."""
    rows = [row[m.bool()].tolist() for row, m in zip(sampled.tokens, sampled.mask)]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)
