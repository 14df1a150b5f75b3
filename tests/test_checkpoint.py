"""The shared checkpoint floor (`mmr.checkpoint`): which folder a run resumes from, what
counts as complete, and loading that runs no code from a crafted file."""

from __future__ import annotations

import logging
import os
import pickle
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmr.checkpoint import (
    CheckpointError,
    TrainerState,
    allow_deepspeed_types,
    begin_save,
    checkpoint_root,
    find_resume_dir,
    load_rng,
    mark_complete,
    prune,
    read_state,
    safe_load,
    save_rng,
    write_state,
)


def _save(out: Path, step: int) -> Path:
    root = checkpoint_root(out)
    folder = begin_save(root, step)
    torch.save({"w": torch.full((4,), float(step))}, folder / "state.pt")
    save_rng(folder, rank=0)
    write_state(folder, TrainerState(step=step, epoch=1, position=3, seed=7), {"a": 1})
    mark_complete(folder)
    return folder


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_auto_takes_the_newest_complete_checkpoint(tmp_path):
    assert find_resume_dir("auto", tmp_path) is None  # nothing saved yet: start fresh
    assert find_resume_dir(None, tmp_path) is None
    for step in (2, 4):
        _save(tmp_path, step)
    assert find_resume_dir("auto", tmp_path) == checkpoint_root(tmp_path) / "step_4"
    assert (checkpoint_root(tmp_path) / "latest").read_text() == "step_4"
    state = read_state(find_resume_dir("auto", tmp_path), {"a": 1})
    assert state == TrainerState(step=4, epoch=1, position=3, seed=7)


@pytest.mark.parametrize("damage", ["no_marker", "truncated", "missing_file"])
def test_a_damaged_latest_falls_back_with_a_warning_naming_both(tmp_path, caplog, damage):
    _save(tmp_path, 2)
    newest = _save(tmp_path, 4)
    if damage == "no_marker":  # killed in the middle of the save
        (newest / "complete.json").unlink()
    elif damage == "truncated":
        data = (newest / "state.pt").read_bytes()
        (newest / "state.pt").write_bytes(data[: len(data) // 2])
    else:
        (newest / "rng_rank0.pt").unlink()
    with caplog.at_level(logging.WARNING, logger="mmr.checkpoint"):
        chosen = find_resume_dir("auto", tmp_path)
    assert chosen == checkpoint_root(tmp_path) / "step_2"
    assert "step_4" in caplog.text and "step_2" in caplog.text


def test_latest_pointing_nowhere_is_an_error_naming_the_path(tmp_path):
    _save(tmp_path, 2)
    (checkpoint_root(tmp_path) / "latest").write_text("step_9")
    with pytest.raises(CheckpointError, match=r"latest names .*step_9, which does not exist"):
        find_resume_dir("auto", tmp_path)


def test_only_incomplete_checkpoints_is_an_error_not_a_fresh_start(tmp_path):
    folder = _save(tmp_path, 2)
    (folder / "complete.json").unlink()
    (checkpoint_root(tmp_path) / "latest").unlink()
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        find_resume_dir("auto", tmp_path)


def test_a_named_folder_must_be_a_complete_checkpoint(tmp_path):
    folder = _save(tmp_path, 2)
    assert find_resume_dir(str(folder), tmp_path / "elsewhere") == folder
    with pytest.raises(CheckpointError, match="no such folder"):
        find_resume_dir(str(tmp_path / "nope"), tmp_path)
    (folder / "complete.json").unlink()
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        find_resume_dir(str(folder), tmp_path)


def test_a_crafted_file_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    bad = tmp_path / "state.pt"
    torch.save({"model": _Exploit()}, bad)
    ran = []
    monkeypatch.setattr(os, "system", lambda cmd: ran.append(cmd))
    with pytest.raises(CheckpointError, match="weights_only=True"):
        safe_load(bad)
    # DeepSpeed's loader, pointed at safe_load, refuses it the same way.
    engine = SimpleNamespace(checkpoint_engine=SimpleNamespace(load=pickle.load))
    allow_deepspeed_types(engine)
    with pytest.raises(CheckpointError):
        engine.checkpoint_engine.load(str(bad), map_location="cpu")
    assert ran == []


def test_rng_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_rng(tmp_path, rank=0)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    load_rng(tmp_path, rank=0)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    torch.load(tmp_path / "rng_rank0.pt", weights_only=True)  # no pickle needed


def test_prune_keeps_the_newest_and_latests_folder(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step)
    root = checkpoint_root(tmp_path)
    (root / "latest").write_text("step_1")  # say a user pointed it back
    prune(root, keep=2)
    assert sorted(p.name for p in root.glob("step_*")) == ["step_1", "step_3", "step_4"]
