"""mmr.metrics: a resumed run keeps its wandb run (offline wandb, no network)."""

from pathlib import Path

import pytest

from mmr.metrics import MetricLogger, WandbSection


@pytest.fixture
def offline_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def _run(out: Path, resume_at: int) -> str:
    log = MetricLogger(out, WandbSection(enabled=True), {"a": 1}, 4, 0, resume_at=resume_at)
    log.log(resume_at + 1, {"train/loss": 1.0})
    run_id = log.wandb.id
    log.close()
    return run_id


def test_resume_keeps_the_wandb_run_and_a_fresh_start_gets_a_new_one(
    tmp_path: Path, offline_wandb: None
) -> None:
    first = _run(tmp_path, resume_at=0)
    assert (tmp_path / "wandb_run_id").read_text().strip() == first
    assert _run(tmp_path, resume_at=1) == first  # resumed from a checkpoint at step 1
    fresh = _run(tmp_path, resume_at=0)
    assert fresh != first
    assert (tmp_path / "wandb_run_id").read_text().strip() == fresh


def test_peak_tree_rss_counts_the_children_of_the_process():
    import subprocess
    import sys

    from mmr.metrics import PeakTreeRSS

    # A parent holding 64 MB starts a child holding 128 MB: the peak is the tree's sum.
    child = "b = bytearray(128 * 2**20); import time; time.sleep(1.0)"
    parent = f"import subprocess, sys; a = bytearray(64 * 2**20); subprocess.run([sys.executable, '-c', {child!r}])"
    proc = subprocess.Popen([sys.executable, "-c", parent])
    rss = PeakTreeRSS(proc.pid, interval_s=0.05)
    assert proc.wait(timeout=60) == 0
    assert rss.stop() >= (64 + 128) * 2**20
