"""Sequence packing for Qwen-VL: many samples in one row, attention kept inside each.

A packed row concatenates tokenized samples up to `packing_length` tokens. Each sample
keeps its own positions, computed by the model's own `get_rope_index` on that sample
alone (3-D mrope for text, height and width), and the row carries a fourth, text-only
position channel that restarts at 0 for every sample. transformers' Qwen-VL models read
that `(4, 1, L)` layout: with no `attention_mask`, they run flash-attn varlen with
`cu_seqlens` derived from the restarts (flash_attention_2 on GPU) or build a dense
block-diagonal causal mask from them (sdpa/eager). mmr's trainer uses `sdpa_varlen` where
flash-attn is missing: one sdpa call per sample, no mask (`mmr.models.attention`). So a
packed row gives the same loss as its samples run one by one, which
`tests/data/test_packing.py` checks.

transformers only derives that mask when the forward has no KV cache: with the default
`use_cache=True` it silently attends across samples. `model_inputs(batch)` sets
`use_cache=False`; always forward packed rows through it.

Rows are filled first-fit decreasing, so little is lost to padding, with near-equal
lengths in a seeded random order so that rows mix kinds (`pack_first_fit_decreasing`); the
tail of a row is padding as one more segment with labels -100.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mmr.data.chat import IGNORE_INDEX, TokenizedSample

# (input_ids (1, L), mm_token_type_ids (1, L), image_grid_thw) -> positions (3, 1, L)
RopeIndexFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass
class PackStats:
    rows: int = 0
    tokens: int = 0  # real (non-pad) tokens
    capacity: int = 0  # rows * packing_length

    @property
    def efficiency(self) -> float:
        return self.tokens / self.capacity if self.capacity else 0.0


LENGTH_CLASSES = 4  # a seeded packer orders items by length class: capacity // 4 wide


def pack_first_fit_decreasing(
    lengths: Sequence[int], capacity: int, *, rng: random.Random | None = None
) -> list[list[int]]:
    """Group item indices into bins of total length <= capacity, first fit decreasing.

    Strictly longest first, unless `rng` is given: then "decreasing" is by length class
    (`capacity // LENGTH_CLASSES` tokens wide) and the items of one class come in a seeded
    random order. Strict order fills rows with runs of near-equal lengths, and lengths
    follow the task kind (a short colour trace, a longer multiple-choice one), so whole rows
    hold one kind; within a class the order then mixes kinds, and the long items still go
    first, so rows stay almost as full. Within a bin, indices keep their original order
    (packing does not reorder the data stream beyond grouping). An item longer than
    `capacity` is an error: chat tokenization drops or cuts such samples before they get
    here.
    """
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(
            f"{len(too_long)} items are longer than the packing length {capacity} "
            f"(first: index {too_long[0]}, {lengths[too_long[0]]} tokens); "
            "tokenize with max_length <= packing_length"
        )
    if rng is None:
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    else:
        width = max(capacity // LENGTH_CLASSES, 1)
        ties = [rng.random() for _ in lengths]
        order = sorted(range(len(lengths)), key=lambda i: (-(lengths[i] // width), ties[i]))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        for b, room in enumerate(free):
            if lengths[i] <= room:
                bins[b].append(i)
                free[b] -= lengths[i]
                break
        else:
            bins.append([i])
            free.append(capacity - lengths[i])
    return [sorted(b) for b in bins]


def rope_positions(item: TokenizedSample, get_rope_index: RopeIndexFn) -> torch.Tensor:
    """(3, L) mrope positions of one sample, from the model's own rope-index function."""
    ids = item.input_ids[None]
    mm_types = item.mm_token_type_ids
    if mm_types is None:
        mm_types = torch.zeros_like(item.input_ids)
    positions, _ = get_rope_index(
        input_ids=ids,
        mm_token_type_ids=mm_types[None],
        image_grid_thw=item.image_grid_thw,
        attention_mask=None,
    )
    return positions[:, 0, :]


def collate_packed(
    items: Sequence[TokenizedSample],
    get_rope_index: RopeIndexFn,
    *,
    pad_token_id: int,
    packing_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """One packed row (batch size 1) from `items`, padded to `packing_length` if given."""
    total = sum(len(it) for it in items)
    if packing_length is not None and total > packing_length:
        raise ValueError(f"items hold {total} tokens, more than packing_length {packing_length}")
    ids, labels, mm_types, text_pos, mrope = [], [], [], [], []
    for it in items:
        n = len(it)
        ids.append(it.input_ids)
        lab = it.labels.clone()
        lab[0] = IGNORE_INDEX  # never predict a sample's first token from the previous one
        labels.append(lab)
        mm_types.append(
            it.mm_token_type_ids if it.mm_token_type_ids is not None else torch.zeros(n).long()
        )
        text_pos.append(torch.arange(n))
        mrope.append(rope_positions(it, get_rope_index))
    pad = (packing_length or total) - total
    if pad:
        ids.append(torch.full((pad,), pad_token_id, dtype=torch.long))
        labels.append(torch.full((pad,), IGNORE_INDEX, dtype=torch.long))
        mm_types.append(torch.zeros(pad, dtype=torch.long))
        text_pos.append(torch.arange(pad))
        mrope.append(torch.arange(pad).expand(3, -1))
    position_ids = torch.cat([torch.cat(text_pos)[None], torch.cat(mrope, dim=1)], dim=0)
    batch = {
        "input_ids": torch.cat(ids)[None],
        "labels": torch.cat(labels)[None],
        "position_ids": position_ids[:, None, :].long(),
        "mm_token_type_ids": torch.cat(mm_types)[None].long(),
    }
    batch.update(_vision_inputs(items))
    batch["num_tokens"] = torch.tensor(total)
    return batch


def collate_padded(
    items: Sequence[TokenizedSample], *, pad_token_id: int
) -> dict[str, torch.Tensor]:
    """A right-padded batch with an attention mask; the model computes positions itself."""
    width = max(len(it) for it in items)
    batch_ids, batch_labels, batch_mask, batch_mm = [], [], [], []
    for it in items:
        pad = width - len(it)
        mm = it.mm_token_type_ids if it.mm_token_type_ids is not None else torch.zeros(len(it))
        batch_ids.append(torch.nn.functional.pad(it.input_ids, (0, pad), value=pad_token_id))
        batch_labels.append(torch.nn.functional.pad(it.labels, (0, pad), value=IGNORE_INDEX))
        batch_mask.append(torch.nn.functional.pad(it.attention_mask, (0, pad), value=0))
        batch_mm.append(torch.nn.functional.pad(mm.long(), (0, pad), value=0))
    batch = {
        "input_ids": torch.stack(batch_ids),
        "labels": torch.stack(batch_labels),
        "attention_mask": torch.stack(batch_mask),
        "mm_token_type_ids": torch.stack(batch_mm),
    }
    batch.update(_vision_inputs(items))
    batch["num_tokens"] = torch.tensor(sum(len(it) for it in items))
    return batch


# Keys of a collated batch that are bookkeeping, not model arguments.
_NOT_MODEL_INPUTS = ("num_tokens",)


def model_inputs(batch: dict[str, torch.Tensor], *, with_labels: bool = True) -> dict:
    """Forward kwargs for a collated batch: bookkeeping removed, KV cache off (see above)."""
    drop = (*_NOT_MODEL_INPUTS, *(() if with_labels else ("labels",)))
    inputs: dict = {k: v for k, v in batch.items() if k not in drop}
    inputs["use_cache"] = False
    return inputs


def _vision_inputs(items: Sequence[TokenizedSample]) -> dict[str, torch.Tensor]:
    with_images = [it for it in items if it.pixel_values is not None]
    if not with_images:
        return {}
    return {
        "pixel_values": torch.cat([it.pixel_values for it in with_images]),
        "image_grid_thw": torch.cat([it.image_grid_thw for it in with_images]),
    }
