"""SFT checkpoints that resume exactly.

A checkpoint is DeepSpeed's own (`engine.save_checkpoint`: module, partitioned optimizer
states, LR scheduler) plus what DeepSpeed does not keep:

    <output_dir>/checkpoints/step_<N>/      DeepSpeed's files for tag step_<N>
        trainer_state.json                  step, epoch, micro-batch position, seed, config
        rng_rank<R>.pt                      python / numpy / torch (+ cuda) RNG of rank R
    <output_dir>/checkpoints/latest         written by DeepSpeed after a complete save

DeepSpeed writes `latest` only once a save is complete, so a run killed in the middle of
a save resumes from the previous checkpoint. Old checkpoints beyond `keep` are removed.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mmr.training import rng_state, set_rng_state, warn_on_config_change

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    """Where training stands: enough to continue the same data stream at the same point."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch the next micro-batch comes from
    batches_in_epoch: int = 0  # micro-batches of that epoch already trained on (this rank)
    seed: int = 0


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save_checkpoint(
    engine: Any, output_dir: str | Path, state: TrainerState, config: dict, keep: int
) -> Path:
    """Save on every rank (DeepSpeed needs all ranks); rank 0 prunes old checkpoints."""
    root = checkpoint_root(output_dir)
    tag = f"step_{state.step}"
    rank = dist.get_rank() if dist.is_initialized() else 0
    folder = root / tag
    folder.mkdir(parents=True, exist_ok=True)
    # Our files first: DeepSpeed's `latest` (written last) then only points at whole saves.
    torch.save(rng_state(), folder / f"rng_rank{rank}.pt")
    if rank == 0:
        payload = {**state.__dict__, "config": config}
        (folder / STATE_FILE).write_text(json.dumps(payload, indent=2))
    engine.save_checkpoint(str(root), tag=tag, client_state={"trainer_state": state.__dict__})
    if rank == 0 and keep > 0:
        _prune(root, keep)
    if dist.is_initialized():
        dist.barrier()
    return folder


def find_resume_dir(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint folder to resume from: `auto` = the latest one in output_dir."""
    if resume in (None, "", "false", "False"):
        return None
    if resume in ("auto", "true", "True"):
        latest = checkpoint_root(output_dir) / "latest"
        if not latest.is_file():
            return None  # nothing saved yet: start fresh
        return checkpoint_root(output_dir) / latest.read_text().strip()
    folder = Path(resume)
    if not (folder / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"trainer.resume={resume!r} is not a checkpoint ({STATE_FILE} missing)"
        )
    return folder


def load_checkpoint(engine: Any, folder: Path, config: dict) -> TrainerState:
    """Restore engine (module, optimizer, scheduler), RNG and the trainer state."""
    _, client = engine.load_checkpoint(str(folder.parent), tag=folder.name)
    if client is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {folder}")
    saved = json.loads((folder / STATE_FILE).read_text())
    warn_on_config_change(saved.get("config", {}), config)
    state = TrainerState(**client["trainer_state"])
    rank = dist.get_rank() if dist.is_initialized() else 0
    rng_file = folder / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:
        logger.warning("no RNG state for rank %d in %s; continuing with fresh RNG", rank, folder)
    return state


def _prune(root: Path, keep: int) -> None:
    tags = sorted(
        (p for p in root.glob("step_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1])
    )
    for old in tags[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
