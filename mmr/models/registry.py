"""Supported model families: their transformers classes, module layout and freeze rules.

A family is one `ModelFamily` in the `FAMILIES` dict, keyed by its HF `config.model_type`.
Everything else in mmr asks this module which classes load a checkpoint and which modules
form the vision tower, the projector, the language model and the LM head, so adding a
family means adding one entry here (and a tiny builder in `tiny.py`).

Parts are named by module paths as `model.named_modules()` spells them on the top-level
`*ForConditionalGeneration` model of transformers 5.x (`model.visual`,
`model.language_model`, `lm_head`). The projector lives inside the vision module
(`model.visual.merger`), so parts nest. The rule that makes them disjoint: a parameter
belongs to the part whose module path is the **longest** prefix of its name (a path is a
prefix when the name equals it or starts with it plus a dot). Hence `vision_tower` is
everything under `model.visual` that is not the projector: patch embedding, rotary
embedding, blocks and, for Qwen3-VL, the learned `pos_embed`, including any module a later
transformers release adds there.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    AutoConfig,
    PreTrainedModel,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)

from mmr.models import attention

PART_NAMES = ("vision_tower", "projector", "language_model", "lm_head")


@dataclass(frozen=True)
class ModelFamily:
    """One supported model family: how to load it and how its modules split into parts."""

    name: str
    """Short name used in recipes and on the command line (`qwen2_5_vl`)."""
    model_type: str
    """HF `config.model_type` of its checkpoints."""
    model_class: type
    """transformers model class that `from_pretrained` loads a checkpoint with."""
    processor_class: type
    """transformers processor class (tokenizer + image processor + video processor)."""
    parts: Mapping[str, tuple[str, ...]]
    """Part name -> module paths; a parameter belongs to the longest matching path."""


FAMILIES: dict[str, ModelFamily] = {
    "qwen2_5_vl": ModelFamily(
        name="qwen2_5_vl",
        model_type="qwen2_5_vl",
        model_class=Qwen2_5_VLForConditionalGeneration,
        processor_class=Qwen2_5_VLProcessor,
        parts={
            "vision_tower": ("model.visual",),
            "projector": ("model.visual.merger",),
            "language_model": ("model.language_model",),
            "lm_head": ("lm_head",),
        },
    ),
    "qwen3_vl": ModelFamily(
        name="qwen3_vl",
        model_type="qwen3_vl",
        model_class=Qwen3VLForConditionalGeneration,
        processor_class=Qwen3VLProcessor,
        parts={
            "vision_tower": ("model.visual",),
            # Deepstack mergers project intermediate vision features into early LM layers.
            "projector": ("model.visual.merger", "model.visual.deepstack_merger_list"),
            "language_model": ("model.language_model",),
            "lm_head": ("lm_head",),
        },
    ),
}


@dataclass(frozen=True)
class FreezeCounts:
    """Parameter counts (numel) of a model after freezing."""

    frozen: int
    trainable: int

    @property
    def total(self) -> int:
        return self.frozen + self.trainable


def _valid_families() -> str:
    return ", ".join(sorted(FAMILIES))


def get_family(name_or_model_type: str) -> ModelFamily:
    """The family named `name_or_model_type` (a family name or an HF model_type).

    Dots and dashes count as underscores, so `qwen2.5-vl` finds `qwen2_5_vl`.
    """
    key = name_or_model_type.strip().lower().replace("-", "_").replace(".", "_")
    for family in FAMILIES.values():
        if key in (family.name, family.model_type):
            return family
    raise ValueError(
        f"unknown model family {name_or_model_type!r}; supported families: {_valid_families()}"
    )


def family_of(model_or_config: Any) -> ModelFamily:
    """The family of a model or config, found by `config.model_type`."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES.values():
        if model_type == family.model_type:
            return family
    raise ValueError(
        f"model_type {model_type!r} is not supported; supported families: {_valid_families()}"
    )


def _matches(name: str, path: str) -> bool:
    return name == path or name.startswith(path + ".")


def part_of(param_name: str, family: ModelFamily) -> str | None:
    """The part a parameter (or module) name belongs to: the longest matching module path."""
    best, best_len = None, -1
    for part, paths in family.parts.items():
        for path in paths:
            if _matches(param_name, path) and len(path) > best_len:
                best, best_len = part, len(path)
    return best


def _check_parts(parts: Iterable[str]) -> list[str]:
    parts = list(parts)
    unknown = [p for p in parts if p not in PART_NAMES]
    if unknown:
        raise ValueError(f"unknown model part(s) {unknown}; valid parts: {', '.join(PART_NAMES)}")
    return parts


def freeze_modules(model: torch.nn.Module, parts: Iterable[str]) -> FreezeCounts:
    """Set `requires_grad=False` on every parameter of the named parts; count the result.

    Parts are those of `PART_NAMES`; the family comes from `model.config`. Parameters outside
    the named parts keep their `requires_grad`. Works on meta-device models (only flags
    change). A tied `lm_head` shares its tensor with the input embeddings, so freezing one
    freezes both.
    """
    to_freeze = set(_check_parts(parts))
    family = family_of(model)
    frozen = trainable = 0
    for name, param in model.named_parameters():
        if part_of(name, family) in to_freeze:
            param.requires_grad_(False)
        if param.requires_grad:
            trainable += param.numel()
        else:
            frozen += param.numel()
    return FreezeCounts(frozen=frozen, trainable=trainable)


def parameter_groups(
    model: torch.nn.Module, lr: float, lr_scale: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """The trainable parameters as optimizer groups, one per part with its own rate.

    `lr_scale` maps part names (`PART_NAMES`) to a multiplier of `lr` (ms-swift's `vit_lr`
    and `aligner_lr`, as factors): a part not named keeps `lr`. Groups come in `PART_NAMES`
    order, each with `name` (the part, or "other" for parameters outside every part) and
    `lr`; a schedule that scales rates (transformers' `get_scheduler`) scales every group
    by the same factor, so the ratio holds for the whole run. Parts without trainable
    parameters give no group; naming one in `lr_scale` is an error (a scale that would
    silently do nothing: the part is frozen or absent).
    """
    scales = dict(lr_scale or {})
    _check_parts(scales)
    family = family_of(model)
    by_part: dict[str, list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            by_part.setdefault(part_of(name, family) or "other", []).append(param)
    idle = [p for p in scales if p not in by_part]
    if idle:
        raise ValueError(
            f"optim.lr_scale names {idle}, which has no trainable parameters "
            f"(frozen by model.freeze, or not in this model); trainable parts: {sorted(by_part)}"
        )
    order = [*PART_NAMES, "other"]
    return [
        {"name": part, "params": by_part[part], "lr": lr * scales.get(part, 1.0)}
        for part in order
        if part in by_part
    ]


def load_model(
    path: str | os.PathLike,
    dtype: torch.dtype | str = "auto",
    attn_implementation: str | None = None,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load the checkpoint at `path` with its family's model class.

    `dtype="auto"` keeps the checkpoint's dtype; `attn_implementation=None` lets
    transformers choose (sdpa on CPU), `"sdpa_varlen"` is mmr's per-sample sdpa for packed
    rows (`mmr.models.attention`); extra kwargs go to `from_pretrained`.
    """
    family = family_of(AutoConfig.from_pretrained(path))
    if attn_implementation == attention.NAME:
        attention.register()
    return family.model_class.from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation, **kwargs
    )


def load_processor(path: str | os.PathLike, **kwargs: Any) -> Any:
    """Load the processor (tokenizer + image and video processors) saved at `path`."""
    family = family_of(AutoConfig.from_pretrained(path))
    return family.processor_class.from_pretrained(path, **kwargs)
