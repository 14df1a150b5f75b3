"""Pieces both training stages need (SFT and the local RL engine), kept out of either.

The stages may not import each other (ARCHITECTURE.md §2), so what they share lives
here: RNG state for exact resume, the config-change warning on resume, the dtype rule,
the tiny-model fallback when a recipe names no checkpoint, and the image pixel budget.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

# Keys that legitimately differ between a run and its resume.
RESUME_KEYS = ("trainer.resume", "trainer.max_steps")


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states, for a checkpoint."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def warn_on_config_change(saved: dict, current: dict, prefix: str = "") -> None:
    """Log every key whose value differs from the checkpoint's config (resume still runs)."""
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            warn_on_config_change(a, b, f"{prefix}{key}.")
        elif a != b and f"{prefix}{key}" not in RESUME_KEYS:
            logger.warning("resuming with %s%s=%r (the checkpoint had %r)", prefix, key, b, a)


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on GPU, fp32 on CPU; else the named dtype."""
    if choice == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[choice]


def tiny_model_if_unset(path: str | None, family: str, out: Path, seed: int) -> str:
    """`path`, or a tiny model of `family` built offline into `out/base_model` once."""
    if path:
        return path
    from mmr.models import tiny

    target = Path(out) / "base_model"
    if not (target / "config.json").is_file():
        tiny.build(family, target, seed=seed)
    return str(target)


def set_pixel_budget(processor: Any, min_pixels: int | None, max_pixels: int | None) -> None:
    """Override the image processor's pixel range (Qwen's `size` shortest/longest_edge)."""
    size = dict(processor.image_processor.size)
    if min_pixels is not None:
        size["shortest_edge"] = min_pixels
    if max_pixels is not None:
        size["longest_edge"] = max_pixels
    processor.image_processor.size = size
