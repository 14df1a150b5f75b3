"""Metric logging shared by the training stages: a progress bar, metrics.jsonl and wandb.

Only rank 0 logs. `metrics.jsonl` holds one JSON object per logged step with `step` and
the namespaced metrics (`train/loss`, `perf/tokens_per_s`, ...) plus short aliases
(`loss`, `lr`) for quick `jq` use. On resume the file is cut back to the resumed step,
so a killed-and-resumed run has exactly one line per step, as an uninterrupted run does.
wandb is used when enabled (`WANDB_MODE=offline` works without a network). The run's wandb id
is kept in the output folder (`wandb_run_id`), so a resumed run continues the same wandb run.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


@dataclass
class WandbSection:
    """The `wandb:` section every training recipe has."""

    enabled: bool = False  # log to Weights & Biases (WANDB_MODE=offline works)
    project: str = "mmr"  # wandb project
    run_name: str | None = None  # wandb run name (null: the output folder's name)


class MetricLogger:
    def __init__(
        self,
        out_dir: str | Path,
        wandb_cfg: WandbSection,
        config: dict[str, Any],
        total_steps: int,
        rank: int,
        *,
        resume_at: int = 0,
    ) -> None:
        self.active = rank == 0
        self.path = Path(out_dir) / "metrics.jsonl"
        self.wandb = None
        self.bar = None
        if not self.active:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_jsonl(self.path, resume_at)
        self.file = self.path.open("a", encoding="utf-8")
        self.bar = tqdm(total=total_steps, initial=resume_at, desc="train", dynamic_ncols=True)
        if wandb_cfg.enabled:
            import wandb

            from mmr.env_secrets import load_secrets

            load_secrets()  # WANDB_API_KEY from $MMR_SECRETS_FILE, where the node lacks it

            self.wandb = wandb.init(
                project=wandb_cfg.project,
                name=wandb_cfg.run_name or Path(out_dir).name,
                dir=str(out_dir),
                config=config,
                id=wandb_run_id(out_dir, resuming=resume_at > 0),
                resume="allow",
            )

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.active:
            return
        clean = {k: _jsonable(v) for k, v in metrics.items()}
        record = {"step": step, **clean, "time": round(time.time(), 3)}
        for short in ("loss", "lr", "grad_norm"):
            if f"train/{short}" in clean:
                record[short] = clean[f"train/{short}"]
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in clean.items() if v is not None}, step=step)
        self.bar.n = step
        self.bar.set_postfix(
            {k.split("/")[-1]: f"{v:.4g}" for k, v in clean.items() if isinstance(v, float)},
            refresh=False,
        )
        self.bar.refresh()

    def close(self) -> None:
        if not self.active:
            return
        self.bar.close()
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def wandb_run_id(out_dir: str | Path, *, resuming: bool) -> str:
    """The wandb run id of the run in `out_dir`: the saved one on resume, else a new one (saved).

    A fresh start in an old folder gets a new id: its steps restart at 1, which the old wandb
    run would refuse (wandb drops steps below its last). Steps logged after the resumed
    checkpoint but before the kill stay in wandb as first logged; metrics.jsonl is exact.
    """
    path = Path(out_dir) / "wandb_run_id"
    if resuming and path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def truncate_jsonl(path: Path, step: int) -> None:
    """Keep only the records of steps <= `step` (all of them when starting fresh: none)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            logger.warning("dropping an unreadable line of %s", path)
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


class PeakTreeRSS:
    """The peak resident memory of a process and all its children (Ray workers, vLLM
    engines, pool workers), sampled every `interval_s` on a thread until `stop()`.

    The sum over the tree counts pages shared between processes once per process, so it
    overstates; it is the figure `ps` gives, and what grows when a stage leaks. Needs psutil.
    """

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        import threading

        import psutil

        self.peak = 0  # bytes
        self._root, self._psutil = psutil.Process(pid), psutil
        self._done = threading.Event()
        self._interval = interval_s
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.is_set():
            try:
                tree = [self._root, *self._root.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in tree if p.is_running())
                self.peak = max(self.peak, rss)
            except self._psutil.Error:
                pass  # a process of the tree ended between listing and reading it
            self._done.wait(self._interval)

    def stop(self) -> int:
        """Stop sampling; the peak in bytes."""
        self._done.set()
        self._thread.join()
        return self.peak
