"""Run folders and checkpoints that resume exactly, for both trainers (SFT and `rl local`).

One layout, whoever writes the weights (DeepSpeed for SFT, `torch.save` for the local RL
engine):

    <output_dir>/checkpoints/step_<N>/
        trainer_state.json        step, epoch, position in the epoch, seed, the run's config
        rng_rank<R>.pt            python / numpy / torch (+ cuda) RNG of rank R
        ...                       the trainer's own files (DeepSpeed's, or state.pt)
        complete.json             written last: every file of the folder and its size
    <output_dir>/checkpoints/latest   the newest checkpoint's folder name

`complete.json` is what makes a checkpoint one: a run killed in the middle of a save, or a
file truncated since, fails the check, and `resume=auto` falls back to the previous
complete checkpoint with a warning naming both. With several nodes the checkpoint folder
must be on shared storage (as DeepSpeed's own `latest` assumes): rank 0 writes the list.

Nothing here unpickles code: every file loads with `torch.load(weights_only=True)`. The RNG
states are saved as lists and tensors (numpy's state is not a numpy array here), and
DeepSpeed's loader is pointed at `safe_load` (`allow_deepspeed_types`), so a crafted
folder passed as `trainer.resume=DIR` cannot run code.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
COMPLETE_FILE = "complete.json"
LATEST_FILE = "latest"

# Keys that legitimately differ between a run and its resume.
RESUME_KEYS = ("trainer.resume", "trainer.max_steps")

__all__ = [
    "CheckpointError",
    "TrainerState",
    "allow_deepspeed_types",
    "begin_save",
    "checkpoint_root",
    "find_resume_dir",
    "incomplete_reason",
    "load_rng",
    "mark_complete",
    "prune",
    "read_state",
    "rng_state",
    "safe_load",
    "save_rng",
    "set_rng_state",
    "step_dirs",
    "write_state",
]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message names the path and why."""


@dataclass
class TrainerState:
    """Where training stands: enough to continue the same data stream at the same point."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch the next batch comes from
    position: int = 0  # of that epoch, already used: micro-batches (SFT, this rank) or prompts
    seed: int = 0


# ---- the folder ---------------------------------------------------------------------


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def step_dirs(root: Path) -> list[Path]:
    """`step_<N>` folders, oldest first (complete or not; a save in progress is one too)."""
    found = []
    for path in Path(root).glob("step_*"):
        number = path.name.removeprefix("step_")
        if path.is_dir() and number.isdigit():
            found.append((int(number), path))
    return [path for _, path in sorted(found)]


def write_state(folder: Path, state: TrainerState, config: dict[str, Any]) -> None:
    """trainer_state.json: the state and the config it ran with (rank 0 writes it)."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = {**asdict(state), "config": config}
    (folder / STATE_FILE).write_text(json.dumps(payload, indent=2), encoding="utf-8")


def begin_save(root: Path, step: int) -> Path:
    """The folder for step `step`, emptied first: what an earlier, broken save left there
    must not mix with this one (with several ranks, rank 0 calls this before a barrier)."""
    folder = root / f"step_{step}"
    if folder.exists():
        (folder / COMPLETE_FILE).unlink(missing_ok=True)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def mark_complete(folder: Path) -> None:
    """Write complete.json (every file and its size), then point `latest` at the folder.

    Called once every file of the save is written. Both files are written to a temporary
    name and renamed, so neither is ever half a file.
    """
    files = {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != COMPLETE_FILE
    }
    _atomic_write(folder / COMPLETE_FILE, json.dumps({"files": files}, indent=1))
    _atomic_write(folder.parent / LATEST_FILE, folder.name)


def incomplete_reason(folder: Path) -> str | None:
    """Why `folder` is not a complete checkpoint, or None if it is one."""
    marker = folder / COMPLETE_FILE
    if not marker.is_file():
        return f"no {COMPLETE_FILE} (the save did not finish)"
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{COMPLETE_FILE} is unreadable ({err})"
    if STATE_FILE not in files:
        return f"no {STATE_FILE}"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    return None


def find_resume_dir(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint folder to resume from, or None to start fresh.

    `auto`: the newest complete checkpoint of output_dir, from the one `latest` names
    down (a damaged or half-written one is skipped with a warning naming both); None when
    nothing was saved yet. A folder: it must be a complete checkpoint.
    """
    if resume in (None, "", "false", "False"):
        return None
    if resume not in ("auto", "true", "True"):
        folder = Path(resume)
        if not folder.is_dir():
            raise CheckpointError(f"trainer.resume={resume!r}: no such folder")
        reason = incomplete_reason(folder)
        if reason is not None:
            raise CheckpointError(
                f"trainer.resume={resume!r} is not a complete checkpoint: {reason}"
            )
        return folder
    root = checkpoint_root(output_dir)
    candidates = step_dirs(root)
    latest = root / LATEST_FILE
    if latest.is_file():
        named = root / latest.read_text(encoding="utf-8").strip()
        if not named.is_dir():
            raise CheckpointError(
                f"{latest} names {named}, which does not exist: restore that checkpoint, or "
                f"point {latest} at another step_<N> folder (or delete it to take the newest "
                "complete one)"
            )
        candidates = candidates[: candidates.index(named) + 1] if named in candidates else [named]
    if not candidates:
        return None  # nothing saved yet
    skipped: list[str] = []
    for folder in reversed(candidates):
        reason = incomplete_reason(folder)
        if reason is None:
            if skipped:
                logger.warning(
                    "resume: skipping %s; resuming from %s, the newest complete checkpoint",
                    "; ".join(skipped), folder,
                )  # fmt: skip
            return folder
        skipped.append(f"{folder} ({reason})")
    raise CheckpointError(
        f"no complete checkpoint in {root}: {'; '.join(skipped)}. Start fresh with "
        "trainer.resume=null (a new output_dir), or name a checkpoint folder"
    )


def read_state(folder: Path, config: dict[str, Any]) -> TrainerState:
    """The saved TrainerState; logs each config key that differs from the checkpoint's."""
    saved = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    warn_on_config_change(saved.pop("config", {}), config)
    return TrainerState(**{k: saved[k] for k in ("step", "epoch", "position", "seed")})


def prune(root: Path, keep: int) -> None:
    """Remove all but the newest `keep` checkpoints (0 keeps all); `latest`'s stays."""
    if keep <= 0:
        return
    latest = root / LATEST_FILE
    named = latest.read_text(encoding="utf-8").strip() if latest.is_file() else None
    for old in step_dirs(root)[:-keep]:
        if old.name != named:
            shutil.rmtree(old, ignore_errors=True)


def warn_on_config_change(saved: dict, current: dict, prefix: str = "") -> None:
    """Log every key whose value differs from the checkpoint's config (resume still runs)."""
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            warn_on_config_change(a, b, f"{prefix}{key}.")
        elif a != b and f"{prefix}{key}" not in RESUME_KEYS:
            logger.warning("resuming with %s%s=%r (the checkpoint had %r)", prefix, key, b, a)


# ---- safe loading -------------------------------------------------------------------


def safe_load(path: str | Path, map_location: Any = "cpu", allow: Iterable[Any] = ()) -> Any:
    """`torch.load(weights_only=True)`: tensors and plain containers only, plus the classes
    in `allow` (for example DeepSpeed's own). A file that needs anything else fails, naming
    the file, instead of running what it holds."""
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        if "Weights only load failed" not in str(err):
            raise
        raise CheckpointError(
            f"{path} holds objects mmr does not load (it loads checkpoints with "
            f"weights_only=True; see torch.load): {str(err).splitlines()[-1][:300]}"
        ) from None


def deepspeed_safe_types() -> list[Any]:
    """The classes DeepSpeed's ZeRO-2/3 checkpoints hold besides tensors and containers."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def allow_deepspeed_types(engine: Any) -> None:
    """Point a DeepSpeed engine's checkpoint loader at `safe_load` (DeepSpeed's own loader
    unpickles with weights_only=False; every file it reads goes through this one method)."""
    allowed = deepspeed_safe_types()

    def load(path: str, map_location: Any = None) -> Any:
        return safe_load(path, map_location=map_location, allow=allowed)

    engine.checkpoint_engine.load = load


# ---- RNG ----------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states, as lists and tensors (weights_only-safe)."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(words), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(folder: Path, rank: int) -> None:
    torch.save(rng_state(), folder / f"rng_rank{rank}.pt")


def load_rng(folder: Path, rank: int) -> None:
    """Restore rank's RNG from the checkpoint (a checkpoint of fewer ranks: a warning)."""
    path = folder / f"rng_rank{rank}.pt"
    if path.is_file():
        set_rng_state(safe_load(path))
    else:
        logger.warning("no RNG state for rank %d in %s; continuing with fresh RNG", rank, folder)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
