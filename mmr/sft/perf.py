"""Throughput and MFU: model FLOPs from the config, peak FLOPs from the device name.

FLOPs per step follow the usual accounting (PaLM appendix B): 6 FLOPs per trainable-path
parameter per token (forward + backward) for the language model, plus causal attention
(6 * layers * hidden * sequence per token, i.e. 12·L·H·S halved for the causal mask),
plus the vision tower: 2 FLOPs per parameter per patch forward, 6 if it trains.
"""

from __future__ import annotations

import itertools

import torch

from mmr.models.attention import segment_lengths

# Dense bf16 peak FLOP/s (no sparsity) by device-name fragment, from the vendors' sheets.
_PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,
    "H800": 989e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
}


def peak_flops(device: torch.device) -> float | None:
    """bf16 dense peak of a known GPU; None where unknown (CPU: MFU is not reported)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in _PEAK_BF16.items() if k in name), None)


def count_params(model: torch.nn.Module, prefix: str) -> tuple[int, int]:
    """(all, trainable) parameter counts under a module path prefix."""
    total = trainable = 0
    for name, p in model.named_parameters():
        if name.startswith(prefix):
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def step_flops(
    model: torch.nn.Module,
    *,
    tokens: int,
    seq_len: int,
    vision_patches: int,
    lm_params: int,
    vision_params: int,
    vision_trains: bool,
    sample_lengths: list[int] | None = None,
) -> float:
    """Model FLOPs of one forward + backward over `tokens` tokens and `vision_patches`.

    Attention is counted per sample when `sample_lengths` is given (a packed row attends
    only inside each sample, so counting the whole row would overstate MFU), else as
    `tokens` tokens each attending over `seq_len`.
    """
    text = getattr(model.config, "text_config", model.config)
    per_layer_width = 6 * text.num_hidden_layers * text.hidden_size
    if sample_lengths is not None:
        attention = per_layer_width * sum(n * n for n in sample_lengths)
    else:
        attention = per_layer_width * tokens * seq_len
    vision = (6 if vision_trains else 2) * vision_params * vision_patches
    return tokens * 6 * lm_params + attention + vision


def sample_lengths(batch: dict[str, torch.Tensor]) -> list[int]:
    """Real lengths of the samples in a collated batch (packed: from the position restarts)."""
    positions = batch.get("position_ids")
    if positions is not None and positions.dim() == 3 and positions.shape[0] == 4:
        lengths = segment_lengths(positions[0].reshape(-1))
        starts = itertools.accumulate(lengths, initial=0)
        real = int(batch["num_tokens"])  # the padding tail is a segment starting here
        return [n for n, start in zip(lengths, starts) if start < real]
    return batch["attention_mask"].sum(-1).tolist()
