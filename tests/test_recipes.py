"""Every recipe in recipes/ loads against its stage's schema, opens with its command,
and carries the public recipe numbers (ARCHITECTURE.md §7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmr.config import ConfigError, load_config
from mmr.sft.config import SFTConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _schema_for(path: Path):
    """The schema a recipe is written for: by where it lives and what it runs."""
    from mmr.data.pipeline.config import PipelineConfig
    from mmr.rl.local_config import LocalRLConfig
    from mmr.rl.train import RLConfig

    if path.parent.name == "demo" and path.stem == "demo":
        from mmr.demo import DemoConfig

        return DemoConfig
    if path.parent.name == "data":
        return PipelineConfig
    if path.stem.endswith(("_sft", "_pretrain")):  # the demo's pretraining is an `mmr sft` run
        return SFTConfig
    if path.parent.name == "demo" and path.stem.endswith("_gspo"):
        return LocalRLConfig
    if path.stem.endswith(("_gspo", "_gspo_verl")):
        return RLConfig
    return None


ALL = sorted(RECIPES.rglob("*.yaml"))


def test_recipes_exist_and_each_has_a_schema():
    names = {p.relative_to(RECIPES).as_posix() for p in ALL}
    assert {"omr_7b_sft.yaml", "mfr_8b_sft.yaml", "demo/tiny_sft.yaml", "omr_7b_gspo.yaml",
            "demo/tiny_gspo.yaml", "demo/tiny_gspo_verl.yaml",
            "demo/tiny_pretrain.yaml"} <= names  # fmt: skip
    assert [p.name for p in ALL if _schema_for(p) is None] == []


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.relative_to(RECIPES).as_posix())
def test_recipe_loads_and_opens_with_its_command(path):
    load_config(_schema_for(path), path)
    first_lines = path.read_text().splitlines()[:4]
    assert first_lines[0].startswith("# ")
    assert any("mmr" in line or "torchrun" in line for line in first_lines)


def test_openmmreasoner_sft_numbers():
    cfg = load_config(SFTConfig, RECIPES / "omr_7b_sft.yaml")
    assert cfg.model.path == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert cfg.optim.lr == 5e-5 and cfg.optim.scheduler == "cosine"
    assert cfg.optim.warmup_ratio == 0.1 and cfg.optim.weight_decay == 0.0
    assert cfg.trainer.max_steps == 4300 and cfg.trainer.epochs == 1
    assert cfg.data.packing and cfg.data.packing_length == 61440 and cfg.data.batch_size == 1
    assert cfg.model.max_pixels == 4194304 and cfg.model.gradient_checkpointing
    assert cfg.model.freeze == ["vision_tower", "projector"]  # the design's default
    assert cfg.deepspeed.zero_stage == 2


def test_mmfinereason_sft_numbers():
    cfg = load_config(SFTConfig, RECIPES / "mfr_8b_sft.yaml")
    assert cfg.model.path == "Qwen/Qwen3-VL-8B-Instruct"
    assert cfg.optim.lr == 1e-5 and cfg.optim.warmup_ratio == 0.1
    assert cfg.trainer.epochs == 3 and cfg.trainer.gradient_accumulation_steps == 4
    assert cfg.data.max_length == 32768 and cfg.data.packing
    assert cfg.model.max_pixels == 589824
    assert cfg.model.freeze == ["vision_tower", "projector"]
    assert cfg.deepspeed.zero_stage == 2 and cfg.data.format == "mmfinereason"


def test_recipe_override_and_bad_key():
    cfg = load_config(SFTConfig, RECIPES / "omr_7b_sft.yaml", ["optim.lr=5e-6", "model.freeze=[]"])
    assert cfg.optim.lr == 5e-6 and cfg.model.freeze == []

    with pytest.raises(ConfigError, match=r"'trainer\.max_step'.*trainer\.max_steps"):
        load_config(SFTConfig, RECIPES / "omr_7b_sft.yaml", ["trainer.max_step=3"])
    with pytest.raises(ConfigError, match=r"data\.truncation"):
        load_config(SFTConfig, RECIPES / "omr_7b_sft.yaml", ["data.truncation=left"])
