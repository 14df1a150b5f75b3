"""Supported model families (Qwen2.5-VL, Qwen3-VL): classes, parts, freezing, loading.

`mmr.models.tiny` builds tiny offline checkpoints of each family for tests and the demo.
"""

from mmr.models.registry import (
    FAMILIES,
    PART_NAMES,
    FreezeCounts,
    ModelFamily,
    family_of,
    freeze_modules,
    get_family,
    load_model,
    load_processor,
    parameter_groups,
    part_of,
)

__all__ = [
    "FAMILIES",
    "PART_NAMES",
    "FreezeCounts",
    "ModelFamily",
    "family_of",
    "freeze_modules",
    "get_family",
    "load_model",
    "load_processor",
    "parameter_groups",
    "part_of",
]
