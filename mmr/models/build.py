"""A model ready to train or sample: loaded, on its device, parts frozen, pixel budget set.

    model, processor = build_model(cfg.model, device)                  # SFT, rl local
    model, processor = build_model(ModelSection(path=p, freeze=[]), device)   # eval

One function for the SFT trainer, the local RL engine and HF evaluation, so the dtype
rule, the freezing and the one log line saying what trains are the same everywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from mmr.config import ConfigError, ModelSection
from mmr.models.registry import freeze_modules, load_model, load_processor

logger = logging.getLogger(__name__)

__all__ = ["build_model", "check_model_path", "resolve_dtype", "set_pixel_budget"]


def build_model(
    m: ModelSection, device: torch.device, *, attn_implementation: str | None = None
) -> tuple[Any, Any]:
    """Model (on `device`, `m.freeze` frozen) and processor (with `m`'s pixel budget)."""
    dtype = resolve_dtype(m.dtype, device)
    attn = attn_implementation or m.attn_implementation
    model = load_model(m.path, dtype=dtype, attn_implementation=attn)
    model.to(device)
    counts = freeze_modules(model, m.freeze)
    processor = load_processor(m.path)
    set_pixel_budget(processor, m.min_pixels, m.max_pixels)
    logger.info(
        "model %s: %s trainable / %s frozen parameters (freeze=%s), dtype %s, attention %s, %s",
        m.path, f"{counts.trainable:,}", f"{counts.frozen:,}", m.freeze, dtype,
        model.config._attn_implementation, device,
    )  # fmt: skip
    return model, processor


def check_model_path(key: str, path: str | None) -> None:
    """Fail early, naming the key, when a model path is neither a checkpoint folder nor
    something that can be a Hugging Face hub id (`org/name`)."""
    if not path:
        raise ConfigError(f"config key '{key}' is not set: name a checkpoint folder or hub id")
    p = Path(path)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ConfigError(f"config key '{key}': {path} has no config.json (not a checkpoint)")
        return
    parts = path.split("/")
    if p.exists() or path.startswith((".", "/", "~")) or len(parts) != 2 or not all(parts):
        raise ConfigError(f"config key '{key}': {path} does not exist")


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on GPU, fp32 on CPU; else the named dtype."""
    if choice == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[choice]


def set_pixel_budget(processor: Any, min_pixels: int | None, max_pixels: int | None) -> None:
    """Override the image processor's pixel range (Qwen's `size` shortest/longest_edge)."""
    size = dict(processor.image_processor.size)
    if min_pixels is not None:
        size["shortest_edge"] = min_pixels
    if max_pixels is not None:
        size["longest_edge"] = max_pixels
    processor.image_processor.size = size
