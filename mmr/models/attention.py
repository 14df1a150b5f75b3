"""`sdpa_varlen`: torch sdpa run once per packed sample, for machines without flash-attn.

transformers' `sdpa` reads a packed row (text positions restarting at 0 for each sample,
see `mmr.data.packing`) by building a dense block-diagonal causal mask over the whole
row, so attention costs grow with the row length squared: on a 4K-token row of ~300-token
samples that is ~14x the work the samples need, and the masked sdpa kernel cannot skip
the empty blocks. flash-attn varlen avoids this on GPU with `cu_seqlens`; this
implementation is its exact equivalent on top of `torch.nn.functional.scaled_dot_product_attention`:
no mask is built for a packed row, and the attention call is split at the restarts of the
text positions, each sample attending causally to itself only.

Registered with transformers' own `AttentionInterface` / `AttentionMaskInterface` under
the name `sdpa_varlen` (`register()` is idempotent); load a model with
`attn_implementation="sdpa_varlen"` after calling it. Anything that is not a packed row
(a padded batch with an attention mask, a vision tower's per-image chunks, generation
with a KV cache) goes to transformers' `sdpa` unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "sdpa_varlen"


# Every layer of a forward (and its checkpointed recompute) gets the same position_ids
# tensor: its segments are read once (one device-to-host sync per forward, not per layer).
_LAST: tuple[torch.Tensor | None, list[list[int]]] = (None, [])


def _row_segments(position_ids: torch.Tensor) -> list[list[int]]:
    global _LAST
    if _LAST[0] is not position_ids:
        _LAST = (position_ids, [segment_lengths(row) for row in position_ids])
    return _LAST[1]


def segment_lengths(position_ids: torch.Tensor) -> list[int]:
    """Lengths of the samples of one packed row, from text positions restarting at 0."""
    starts = (position_ids == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    return [b - a for a, b in zip(starts, [*starts[1:], position_ids.numel()], strict=True)]


def _is_packed_call(query: torch.Tensor, key: torch.Tensor, mask: Any, position_ids: Any) -> bool:
    """A packed training row: no mask, no cache (q and k the same length), positions given."""
    return (
        mask is None
        and isinstance(position_ids, torch.Tensor)
        and position_ids.dim() == 2
        and query.shape[2] == key.shape[2] == position_ids.shape[1]
        and query.shape[2] > 1
    )


def sdpa_varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; (B, H, L, D) in, (B, L, H, D) out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.pop("position_ids", None)
    if not _is_packed_call(query, key, attention_mask, position_ids):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    rows = []
    segments = _row_segments(position_ids)
    for b, lengths in enumerate(segments):
        parts = zip(*(t[b : b + 1].split(lengths, dim=2) for t in (query, key, value)), strict=True)
        outs = [sdpa_attention_forward(module, q, k, v, None, **kwargs)[0] for q, k, v in parts]
        rows.append(torch.cat(outs, dim=1))
    return torch.cat(rows, dim=0), None


def sdpa_varlen_mask(
    *,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    attention_mask: torch.Tensor | None = None,
    local_size: int | None = None,
    **kwargs: Any,
) -> Any:
    """No mask for a full, unpadded, uncached causal pass (the attention splits packed rows
    itself); anything else (padding, a KV cache, sliding windows) gets sdpa's own mask.

    This relies on the text model asking only for causal masks (plus packing and padding),
    true of the registered Qwen-VL families; models that add or/and masks (e.g. bidirectional
    image blocks) must not use this implementation.
    """
    from transformers.masking_utils import sdpa_mask

    full_causal = q_length == kv_length and q_offset == 0 and kv_offset == 0
    unpadded = attention_mask is None or bool(attention_mask.all())
    if full_causal and unpadded and local_size is None:
        return None
    return sdpa_mask(
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        attention_mask=attention_mask,
        local_size=local_size,
        **kwargs,
    )


def register() -> str:
    """Make `attn_implementation="sdpa_varlen"` loadable; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, sdpa_varlen_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_varlen_mask)
    return NAME
