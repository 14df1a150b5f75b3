"""The SFT loss without the (tokens x vocab) logits: torch's chunked `linear_cross_entropy`.

transformers computes the loss from full logits, upcast to fp32: for one packed row of
OpenMMReasoner's 61,440 tokens and Qwen2.5-VL's 152K vocabulary that is 18.7 GB of bf16
logits plus 37 GB in fp32, more than the rest of a 7B ZeRO-2 step. `CausalLMLoss` runs the
same model forward with `logits_to_keep` empty (no logits at all), takes the final hidden
states from the base model's output, and hands them with `lm_head.weight` to
`torch.nn.functional.linear_cross_entropy` with chunking options, which never holds more
than a chunk of logits (forward and backward). The value is transformers' loss: the mean
next-token cross-entropy over label tokens (labels shifted by one, -100 ignored),
accumulated in fp32 (`tests/sft/test_loss.py`).

`model.chunked_loss` (null: on GPU, off on CPU; never under ZeRO-3) picks it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from mmr.data.chat import IGNORE_INDEX


def use_chunked(setting: bool | None, device: torch.device, zero_stage: int) -> bool:
    """`model.chunked_loss`: null means on GPU only; never under ZeRO-3, which partitions
    `lm_head.weight` (the chunked loss reads it outside the head's forward)."""
    wanted = setting if setting is not None else device.type == "cuda"
    return wanted and zero_stage != 3


class CausalLMLoss:
    """`loss(forward, inputs)`: `forward` is the model or the DeepSpeed engine wrapping it."""

    def __init__(self, model: torch.nn.Module, chunked: bool = True) -> None:
        self.model = model
        self.chunked = chunked

    def __call__(self, forward: Callable[..., Any], inputs: dict[str, Any]) -> torch.Tensor:
        inputs = {**inputs, "use_cache": False}  # `packing.model_inputs` sets it too
        if not self.chunked:
            return forward(**inputs).loss
        labels = inputs["labels"]
        rest = {k: v for k, v in inputs.items() if k != "labels"}
        no_logits = torch.zeros(0, dtype=torch.long, device=labels.device)
        # The base model's output is the final (normed) hidden states the head reads.
        kept: list[torch.Tensor] = []
        hook = self.model.model.register_forward_hook(lambda m, a, out: kept.append(out[0]))
        try:
            forward(**rest, logits_to_keep=no_logits)
        finally:
            hook.remove()
        if len(kept) != 1:
            raise RuntimeError(f"expected one base-model forward, saw {len(kept)}")
        hidden = kept[0]
        head = self.model.lm_head
        return F.linear_cross_entropy(
            hidden[:, :-1].reshape(-1, hidden.shape[-1]),
            head.weight,
            labels[:, 1:].reshape(-1),
            linear_bias=head.bias,
            ignore_index=IGNORE_INDEX,
            options=torch.nn.LinearCrossEntropyOptions(acc_policy="accurate"),
        )
