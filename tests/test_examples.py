"""The example launch scripts produce the configs they promise (dry runs, no GPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_gspo_n16_is_openmmreasoners_recipe_at_one_node_scale():
    """gspo_n16.sh = recipes/omr_7b_gspo.yaml + scale overrides (no copied recipe)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "examples/gspo_n16.sh", "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = yaml.safe_load(proc.stdout)
    full = subprocess.run([str(BIN / "mmr"), "rl", "train", "--config",
                           "recipes/omr_7b_gspo.yaml", "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert full.returncode == 0, full.stderr[-3000:]
    recipe = yaml.safe_load(full.stdout)
    assert (cfg["trainer"]["nnodes"], cfg["trainer"]["n_gpus_per_node"]) == (1, 8)
    assert cfg["data"]["train_batch_size"] == 32
    assert cfg["actor_rollout_ref"]["actor"]["ppo_mini_batch_size"] == 32  # one mini-batch
    # Every algorithm number is the full recipe's.
    for section in ("algorithm",):
        assert cfg[section] == recipe[section]
    actor, full_actor = cfg["actor_rollout_ref"]["actor"], recipe["actor_rollout_ref"]["actor"]
    for key in ("policy_loss", "clip_ratio_low", "clip_ratio_high", "loss_agg_mode", "optim"):
        assert actor[key] == full_actor[key], key
    assert (
        cfg["actor_rollout_ref"]["rollout"]["n"]
        == recipe["actor_rollout_ref"]["rollout"]["n"]
        == 16
    )
