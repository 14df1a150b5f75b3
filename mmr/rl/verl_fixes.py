"""Fixes for three bugs in verl 0.9.1's Qwen2.5-VL actor update, on GPU and CPU alike.

Loaded on `import verl` by mmr's verl plugin (`mmr.rl.verl_plugin`), in every verl
process (the driver and each Ray worker import verl before they build a model). Each
fix replaces one verl function through its module attribute, is installed only on the
verl release it was written against (`FIXED_IN`), and can be dropped when verl fixes
the bug upstream. tests/rl/test_verl_fixes.py reproduces each bug with verl's own
function first, then shows the fix.

A. Text-only micro-batches. `verl/models/transformers/qwen2_vl.py:388-394`: when a
   micro-batch has no image and no video, `_get_input_embeds` runs the vision tower on a
   dummy image (so that every FSDP rank joins the same collectives) and calls `.mean()` on
   its result, which every transformers in verl's range (>=5.5.3) returns as an output
   object: "'BaseModelOutputWithPooling' object has no attribute 'mean'". The image and
   video branches of the same function already unpack it (`unpack_visual_output`, :354,
   :372). The fix handles the text-only case the same way and hands every other case to
   verl's function. No upstream issue found (2026-12-01).
B. Equal-length batches with 3-D (mrope) position ids. verl stacks a text row on the
   (3, L) mrope ids, so each sample's `position_ids` is (4, L)
   (verl/experimental/agent_loop/agent_loop.py:953-964), and TransferQueue stores a batch
   of them as a jagged nested tensor. When all L are equal (always with one sample), torch
   makes the 4 rows the ragged dimension (values (4B, L), offsets 0, 4, 8, ...);
   `maybe_fix_3d_position_ids` (verl/utils/tensordict_utils.py:910-915) then sets
   `_ragged_idx = 2` without looking, so `unbind()` splits the wrong dimension:
   "split_with_sizes expects split_sizes to sum exactly to ..." in `update_actor`, and in
   the log-prob pass `chunk_tensordict` falls back to `to_padded_tensor`, silently
   giving old log-probs wrong positions. The fix rebuilds that layout with the sequence as
   the ragged dimension and leaves every other layout to verl's function (the case it was
   written for: a batch of differing lengths whose ragged index a pickle round trip reset).
   Upstream: verl issue #7899, PR #7901 (both open, 2026-12-01).
   `engine_workers.py:45` and `engine/base.py:27` import the function by name; they are
   imported after `import verl` has run this plugin, so they bind the fixed one.
C. `actor_rollout_ref.actor.freeze_vision_tower` does nothing. verl 0.9.1's actor config
   has the key (verl/workers/config/actor.py:161) but no code reads it: its FSDP engine
   (verl/workers/engine/fsdp/transformer_impl.py, `_build_module`) trains the vision tower
   whatever it says, silently. `mmr rl train` reads the key on the driver and hands it to
   every worker as `FREEZE_ENV` (in Ray's runtime env, as it does wandb's run id); the fix
   wraps `FSDPEngine._build_module` and, where it is set, freezes the vision tower and
   the projector (Qwen-VL's `visual`, merger included: `mmr.models.freeze_modules`,
   the parts SFT's `model.freeze` names) before FSDP wraps the model, so the optimizer
   steps nothing there and the rollout weights of those parts stay the SFT model's.
   No upstream issue found (2026-12-07).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

logger = logging.getLogger(__name__)

FIXED_IN = "0.9.1"  # the verl release whose code these fixes were checked against
# Fix C: "1" where verl's `actor.freeze_vision_tower` is true (`mmr rl train` sets it).
FREEZE_ENV = "MMR_VERL_FREEZE_VISION_TOWER"
FROZEN_PARTS = ("vision_tower", "projector")


def text_only_input_embeds(original: Any) -> Any:
    """Fix A around verl's `qwen2_vl._get_input_embeds` (`original`)."""
    from verl.utils.transformers_compat import unpack_visual_output

    def _get_input_embeds(
        model: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
    ):
        if pixel_values is not None or pixel_values_videos is not None:
            return original(
                model,
                input_ids,
                attention_mask,
                pixel_values,
                pixel_values_videos,
                image_grid_thw,
                video_grid_thw,
            )
        inputs_embeds = model.get_input_embeddings()(input_ids)
        # The vision tower still runs, on one blank 4x4-patch image whose features count
        # zero, so that ranks with and without images run the same FSDP collectives.
        config = model.config.vision_config
        patch_dim = config.in_channels * config.temporal_patch_size * config.patch_size**2
        blank = torch.zeros((16, patch_dim), dtype=inputs_embeds.dtype, device=inputs_embeds.device)
        grid = torch.tensor([[1, 4, 4]], dtype=torch.long, device=inputs_embeds.device)
        features, _ = unpack_visual_output(model.visual(blank, grid_thw=grid))
        inputs_embeds = inputs_embeds + 0.0 * features.mean()
        if attention_mask is not None:
            attention_mask = attention_mask.to(inputs_embeds.device)
        return inputs_embeds, attention_mask

    _get_input_embeds._mmr_fix = "A"
    _get_input_embeds._mmr_original = original
    return _get_input_embeds


def rows_are_ragged(position_ids: torch.Tensor) -> bool:
    """A jagged (B, R, L) nested tensor whose R rows, not its L positions, are ragged.

    torch builds that layout from equal-length (R, L) components: values (B*R, L), offsets
    0, R, 2R, ... A batch of differing lengths gets the sequence as ragged dimension
    (values (R, sum L)), which torch never builds for equal lengths.
    """
    if not (position_ids.is_nested and position_ids.dim() == 3):
        return False
    if position_ids._ragged_idx != 1:
        return False
    values, offsets = position_ids.values(), position_ids.offsets()
    steps = offsets.diff()
    return bool(values.shape[0] == int(offsets[-1]) and (steps == steps[0]).all())


def sequence_ragged(position_ids: torch.Tensor) -> torch.Tensor:
    """The same (B, R, L) position ids with L as the ragged dimension (ragged index 2)."""
    values, offsets = position_ids.values(), position_ids.offsets()
    rows = int(offsets[1] - offsets[0])
    batch, length = len(offsets) - 1, values.shape[1]
    per_sample = values.split(rows)  # B tensors of (R, L)
    new_offsets = torch.arange(0, batch * length + 1, length, dtype=offsets.dtype)
    return torch.nested.nested_tensor_from_jagged(
        torch.cat(per_sample, dim=1), new_offsets.to(values.device), jagged_dim=2
    )


def equal_length_position_ids(original: Any) -> Any:
    """Fix B around verl's `tensordict_utils.maybe_fix_3d_position_ids` (`original`)."""

    def maybe_fix_3d_position_ids(data: Any) -> None:
        # TensorDict refuses `key in td`; its keys() view answers.
        if "position_ids" in data.keys() and rows_are_ragged(data["position_ids"]):  # noqa: SIM118
            data["position_ids"] = sequence_ragged(data["position_ids"])
            return
        original(data)

    maybe_fix_3d_position_ids._mmr_fix = "B"
    maybe_fix_3d_position_ids._mmr_original = original
    return maybe_fix_3d_position_ids


def frozen_vision_tower(original: Any) -> Any:
    """Fix C: verl's `FSDPEngine._build_module`, then (where `FREEZE_ENV` is "1") the vision
    tower and projector frozen, before FSDP wraps the module."""

    def _build_module(self: Any, *args: Any, **kwargs: Any) -> Any:
        module = original(self, *args, **kwargs)
        if os.environ.get(FREEZE_ENV) == "1":
            from mmr.models.registry import freeze_modules

            counts = freeze_modules(module, FROZEN_PARTS)
            logger.info(
                "actor.freeze_vision_tower: %s frozen (%d parameters; %d trainable)",
                ", ".join(FROZEN_PARTS), counts.frozen, counts.trainable,
            )  # fmt: skip
        return module

    _build_module._mmr_fix = "C"
    _build_module._mmr_original = original
    return _build_module


def install() -> list[str]:
    """Install fixes A, B and C into verl's modules; return the names of those installed."""
    import verl

    if verl.__version__ != FIXED_IN:
        logger.warning(
            "mmr's fixes for verl %s's Qwen2.5-VL actor update are not installed on verl %s; "
            "check whether that release still needs them (mmr/rl/verl_fixes.py)",
            FIXED_IN,
            verl.__version__,
        )
        return []
    import verl.models.transformers.qwen2_vl as qwen2_vl
    import verl.utils.tensordict_utils as tensordict_utils

    installed = []
    if not hasattr(qwen2_vl._get_input_embeds, "_mmr_fix"):
        qwen2_vl._get_input_embeds = text_only_input_embeds(qwen2_vl._get_input_embeds)
    installed.append("A")
    fix_b = tensordict_utils.maybe_fix_3d_position_ids
    if not hasattr(fix_b, "_mmr_fix"):
        tensordict_utils.maybe_fix_3d_position_ids = equal_length_position_ids(fix_b)
    installed.append("B")
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

    if not hasattr(FSDPEngine._build_module, "_mmr_fix"):
        FSDPEngine._build_module = frozen_vision_tower(FSDPEngine._build_module)
    installed.append("C")
    return installed
