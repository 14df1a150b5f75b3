"""SFT checkpoints: DeepSpeed's own files in mmr's checkpoint folder (`mmr.checkpoint`).

DeepSpeed saves the module, the partitioned optimizer states and the LR scheduler
(`engine.save_checkpoint`, every rank its own partition); `mmr.checkpoint` adds the
trainer state, each rank's RNG and the `complete.json` written last, and chooses the
folder to resume from. DeepSpeed reads its files back through `safe_load`
(weights_only=True with DeepSpeed's own classes allowed), never through pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed as dist

from mmr.checkpoint import (
    TrainerState,
    allow_deepspeed_types,
    begin_save,
    checkpoint_root,
    load_rng,
    mark_complete,
    prune,
    read_state,
    save_rng,
    write_state,
)


def save_checkpoint(
    engine: Any, output_dir: str | Path, state: TrainerState, config: dict, keep: int
) -> Path:
    """Save on every rank (DeepSpeed needs all ranks); rank 0 marks it complete and prunes."""
    root = checkpoint_root(output_dir)
    rank = dist.get_rank() if dist.is_initialized() else 0
    folder = root / f"step_{state.step}"
    if rank == 0:
        begin_save(root, state.step)
        write_state(folder, state, config)
    _barrier()
    save_rng(folder, rank)
    engine.save_checkpoint(str(root), tag=folder.name, client_state={"trainer_state": vars(state)})
    _barrier()  # every rank's files are written
    if rank == 0:
        mark_complete(folder)
        prune(root, keep)
    _barrier()
    return folder


def load_checkpoint(engine: Any, folder: Path, config: dict) -> TrainerState:
    """Restore engine (module, optimizer, scheduler), RNG and the trainer state."""
    allow_deepspeed_types(engine)
    _, client = engine.load_checkpoint(str(folder.parent), tag=folder.name)
    if client is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {folder}")
    read_state(folder, config)  # warns on config changes; the rank's own state is DeepSpeed's
    load_rng(folder, dist.get_rank() if dist.is_initialized() else 0)
    return TrainerState(**client["trainer_state"])


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
