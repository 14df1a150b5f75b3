"""Config and path errors of `mmr sft` and `mmr rl local`: one line naming the key, exit 2,
before DeepSpeed or a model starts (the console scripts, as users run them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
STAGES = {
    "sft": ["sft", "--config", str(ROOT / "recipes/demo/tiny_sft.yaml")],
    "rl": ["rl", "local", "--config", str(ROOT / "recipes/demo/tiny_gspo.yaml")],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from mmr.data.synthetic import write_synthetic

    path = tmp_path_factory.mktemp("preflight") / "train.parquet"
    write_synthetic(path, 4, seed=0)
    return path


CASES = [
    # (overrides beyond a valid model and data, the key the message must name, its words)
    (["model.path=/no/such/model"], "model.path", "does not exist"),
    (["model.path=null"], "model.path", "is not set"),
    (["data.train_files=[/no/such/data.parquet]"], "data.train_files", "does not exist"),
    (["optim.lr=-1e-5"], "optim.lr", "> 0"),
    (["optim.lr_typo=1"], "optim.lr_typo", "unknown config key"),
    (["optim.betas=[0.9,1.5]"], "optim.betas", "in [0, 1)"),
    (["trainer.log_steps=0"], "trainer.log_steps", "> 0"),
    (["trainer.resume=/no/such/checkpoint"], "trainer.resume", "no such folder"),
]


def _cmd(stage: str, model: Path, data: Path, out: Path, overrides: list[str]) -> list[str]:
    return [*STAGES[stage], f"model.path={model}", f"data.train_files=[{data}]",
            f"trainer.output_dir={out}", *overrides]  # fmt: skip


@pytest.mark.parametrize("stage", sorted(STAGES))
@pytest.mark.parametrize(("overrides", "key", "words"), CASES)
def test_a_bad_config_is_one_line_naming_the_key(
    stage, overrides, key, words, data, tiny_qwen2_5_vl, tmp_path, capsys
):
    from mmr.cli import main

    rc = main(_cmd(stage, tiny_qwen2_5_vl, data, tmp_path / "out", overrides))
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(lines) == 1 and key in lines[0] and words in lines[0], lines
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_the_console_script_exits_2_without_a_traceback(stage, data, tmp_path):
    """A missing model path used to surface as "Repo id must be in the form..." from the
    hub client, inside a traceback, after DeepSpeed started."""
    cmd = [str(BIN / "mmr"), *_cmd(stage, tmp_path / "no_model", data, tmp_path / "out", [])]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"mmr {'sft' if stage == 'sft' else 'rl local'}: config key 'model.path': "
        f"{tmp_path / 'no_model'} does not exist"
    ]


def test_a_negative_reward_weight_is_refused_before_the_model_loads(
    data, tiny_qwen2_5_vl, tmp_path, capsys
):
    from mmr.cli import main

    rc = main(_cmd("rl", tiny_qwen2_5_vl, data, tmp_path / "out", ["reward.weights.accuracy=-0.9"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "weights.accuracy" in err[0] and ">= 0" in err[0]
