"""verl actor checkpoint -> HF folder, through verl's own model merger, then checked.

    mmr rl merge --checkpoint runs/omr_7b_gspo/checkpoints/global_step_64/actor --out runs/rl_final

verl's FSDP checkpoints hold sharded weights (`model_world_size_W_rank_R.pt`) plus the HF
config, tokenizer and processor under `huggingface/`. verl's `FSDPModelMerger` merges the
shards and saves the model with its tokenizer and processor; mmr then checks what users
need from the result before they evaluate or serve it: the model loads with its family's
`from_pretrained`, the processor loads as the family's processor (not a bare tokenizer),
and the chat template is there. A missing piece fails with what is missing.

Two parts of verl's merger are replaced, by a subclass (`dtype_keeping_merger()`):
- it unpickles the rank shards with `weights_only=False`
  (verl/model_merger/fsdp_model_merger.py, `_load_rank_zero_state_dict` and
  `_load_and_merge_state_dicts`), so a crafted checkpoint could run code. mmr loads them with
  `weights_only=True` (`load_shard`) and refuses, by name, a shard that holds anything but
  tensors;
- it casts every weight to bf16, whatever model was trained: an fp32 model (the CPU recipes)
  came out rounded. mmr saves the weights in the dtype of the model that went in (the
  checkpoint's `huggingface/config.json`: bf16 for the GPU recipes, as verl does, whose
  FSDP master weights are fp32 either way; fp32 for an fp32 model), or in the shards' own
  dtype where that config names none, and writes it into config.json.
The placement rules (`_merge_by_placement`, `merge_non_dtensor_shards`) stay verl's own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def merge_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Merge a verl FSDP actor checkpoint into an HF folder and verify it loads."""
    from verl.model_merger.base_model_merger import ModelMergerConfig

    ckpt, out = Path(checkpoint), Path(out_dir)
    hf_dir = ckpt / "huggingface"
    if not (ckpt / "fsdp_config.json").is_file() or not hf_dir.is_dir():
        raise FileNotFoundError(
            f"{ckpt} is not a verl FSDP actor checkpoint (expected fsdp_config.json and "
            "huggingface/ inside, e.g. .../global_step_N/actor)"
        )
    check_shards_are_tensors(ckpt)
    config = ModelMergerConfig(
        operation="merge",
        backend="fsdp",
        local_dir=str(ckpt),
        target_dir=str(out),
        hf_model_config_path=str(hf_dir),
    )
    merger = dtype_keeping_merger()(config)
    merger.merge_and_save()
    merger.cleanup()
    # verl saves the processor; the chat template file may sit only in huggingface/.
    for name in CHAT_TEMPLATE_FILES:
        if (hf_dir / name).is_file() and not (out / name).is_file():
            shutil.copy2(hf_dir / name, out / name)
    record_dtype(out, merger.dtype)
    verify_hf_folder(out)
    # transformers 5 saved one processor_config.json; pre-5 transformers and older vLLM read
    # the image processor from its own file, as mmr's exported folders carry it.
    from mmr.models import load_processor
    from mmr.models.export import write_preprocessor_config

    write_preprocessor_config(load_processor(out), out)
    return out


def dtype_keeping_merger() -> type:
    """`DtypeKeepingMerger`, built on first use: verl is imported where a merge runs."""
    import torch
    from torch.distributed.tensor import DTensor
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger, merge_non_dtensor_shards

    class DtypeKeepingMerger(FSDPModelMerger):
        """verl's FSDP merger, loading shards as plain tensors and keeping their dtype."""

        dtype: torch.dtype | None = None

        def _shard(self, world_size: int, rank: int) -> dict:
            return load_shard(
                Path(self.config.local_dir) / f"model_world_size_{world_size}_rank_{rank}.pt"
            )

        def _load_rank_zero_state_dict(self, world_size: int) -> dict:
            return self._shard(world_size, 0)

        def _load_and_merge_state_dicts(
            self, world_size: int, total_shards: int, mesh_shape: tuple, mesh_dim_names: tuple
        ) -> dict[str, torch.Tensor]:
            if len(mesh_shape) != 1:
                raise NotImplementedError("FSDP + TP checkpoints are not supported (nor by verl)")
            shards = [self._shard(world_size, rank) for rank in range(total_shards)]
            merged: dict[str, torch.Tensor] = {}
            for key in list(shards[0]):
                parts = [shard.pop(key) for shard in shards]
                if isinstance(parts[0], DTensor):
                    placements = tuple(parts[0].placements)
                    if mesh_dim_names[0] in ("dp", "ddp"):  # replicated over dp: dropped
                        placements = placements[1:]
                    local = [part._local_tensor for part in parts]
                    merged[key] = self._merge_by_placement(local, placements[0])
                else:
                    merged[key] = merge_non_dtensor_shards(key, parts)
            self.dtype = model_dtype(self.model_config)
            if self.dtype is None:  # the config names none: the shards' own
                floats = {t.dtype for t in merged.values() if t.is_floating_point()}
                self.dtype = max(floats, key=lambda d: torch.finfo(d).bits) if floats else None
            return {
                k: t.to(self.dtype) if t.is_floating_point() and self.dtype else t
                for k, t in merged.items()
            }

    return DtypeKeepingMerger


def model_dtype(config: Any) -> Any:
    """The torch dtype an HF config names (`dtype`, or `torch_dtype` before transformers 5),
    or None."""
    import torch

    named = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(named, str):
        named = getattr(torch, named, None)
    return named if isinstance(named, torch.dtype) and named.is_floating_point else None


def record_dtype(out: Path, dtype: Any) -> None:
    """config.json names the dtype the weights were saved in (verl's merger writes
    bfloat16 there, the dtype it builds the model in), so `dtype="auto"` loads them as
    saved."""
    if dtype is None:
        return
    name = str(dtype).removeprefix("torch.")
    path = out / "config.json"
    config = json.loads(path.read_text())

    def put(node: dict) -> None:
        for key in ("dtype", "torch_dtype"):
            if key in node:
                node[key] = name
        for value in node.values():
            if isinstance(value, dict):
                put(value)

    put(config)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def check_shards_are_tensors(ckpt: Path) -> None:
    """The checkpoint has `model_world_size_*_rank_*.pt` shards (each is loaded, with
    `weights_only=True`, by `load_shard` when the merger reads it)."""
    if not any(ckpt.glob("model_world_size_*_rank_*.pt")):
        raise FileNotFoundError(f"{ckpt}: no model_world_size_*_rank_*.pt shards")


def load_shard(path: Path) -> dict:
    """One rank shard as plain tensors (`weights_only=True`, memory-mapped), or a
    RuntimeError naming it: a shard holding anything else is refused, never unpickled."""
    import torch
    import torch.distributed.tensor  # DTensor among the allowed globals

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise RuntimeError(
            f"{path}: does not load as plain tensors (weights_only=True), refusing to "
            f"unpickle it: {str(err).splitlines()[0]}"
        ) from None


def verify_hf_folder(path: str | Path) -> None:
    """The folder loads as its family's model and processor and has a chat template."""
    from mmr.models import family_of, load_model, load_processor

    path = Path(path)
    model = load_model(path)
    family = family_of(model)
    processor = load_processor(path)
    if not isinstance(processor, family.processor_class):
        raise RuntimeError(
            f"{path}: the processor loads as {type(processor).__name__}, not "
            f"{family.processor_class.__name__}; image inputs would fail"
        )
    if not getattr(processor, "chat_template", None):
        raise RuntimeError(
            f"{path}: no chat template (looked for {', '.join(CHAT_TEMPLATE_FILES)})"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mmr rl merge", description="verl FSDP actor checkpoint -> checked HF folder."
    )
    parser.add_argument("--checkpoint", required=True, help=".../global_step_N/actor")
    parser.add_argument("--out", required=True, help="HF folder to write")
    args = parser.parse_args(argv)
    try:
        out = merge_checkpoint(args.checkpoint, args.out)
    except (FileNotFoundError, RuntimeError) as err:
        print(f"mmr rl merge: {err}", file=sys.stderr)
        return 2
    print(f"merged {args.checkpoint} into {out} (loads with from_pretrained)")
    return 0
