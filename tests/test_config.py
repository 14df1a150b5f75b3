"""mmr.config: YAML + overrides -> dataclasses, with errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from mmr.config import ConfigError, config_to_dict, load_config, parse_overrides, save_config


@dataclass
class OptimSection:
    lr: float = 1e-5  # peak learning rate
    warmup_ratio: float = 0.1  # fraction of steps spent warming up
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW betas


@dataclass
class ModelSection:
    path: str | None = None  # HF id or local folder
    freeze: list[str] = field(default_factory=lambda: ["vision_tower", "projector"])


@dataclass
class RecipeConfig:
    output_dir: str = "runs/x"  # where everything of the run goes
    log_file: str = "${output_dir}/metrics.jsonl"  # interpolated from output_dir
    seed: int = 0  # global seed
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    verl: dict[str, Any] = field(default_factory=dict)  # free-form: verl's own keys


def test_defaults_yaml_and_overrides_merge_in_order(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "seed: 3\noptim:\n  lr: 2.0e-5\nmodel:\n  path: Qwen/Qwen2.5-VL-7B-Instruct\n"
    )
    cfg = load_config(RecipeConfig, recipe, ["optim.lr=5e-6", "output_dir=/tmp/run1"])
    assert cfg.seed == 3
    assert cfg.optim.lr == pytest.approx(5e-6)  # override beats YAML
    assert cfg.optim.warmup_ratio == 0.1  # default kept
    assert cfg.model.path == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert cfg.log_file == "/tmp/run1/metrics.jsonl"  # interpolation sees the override


def test_override_values_are_typed():
    cfg = load_config(
        RecipeConfig,
        None,
        ["model.freeze=[vision_tower]", "model.path=null", "verl.trainer.total_epochs=15"],
    )
    assert cfg.model.freeze == ["vision_tower"]
    assert cfg.model.path is None
    assert cfg.verl == {"trainer": {"total_epochs": 15}}


def test_unknown_key_names_the_key_and_close_matches():
    with pytest.raises(ConfigError) as err:
        load_config(RecipeConfig, None, ["optim.lrr=1e-5"])
    msg = str(err.value)
    assert "'optim.lrr'" in msg
    assert "optim.lr" in msg and "warmup_ratio" in msg


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("modle:\n  path: x\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'modle' \(from .*bad.yaml\).*model"):
        load_config(RecipeConfig, recipe)


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(ConfigError, match=r"'optim.lr' expects float"):
        load_config(RecipeConfig, None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"'seed' expects int"):
        load_config(RecipeConfig, None, ["seed=1.5"])


def test_scalar_given_for_a_section_is_rejected():
    with pytest.raises(ConfigError, match=r"'model' .* is a section"):
        load_config(RecipeConfig, None, ["model=qwen"])


@pytest.mark.parametrize("bad", ["optim.lr", "=3", "optim..lr=3"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        parse_overrides([bad])


def test_missing_or_non_mapping_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(RecipeConfig, tmp_path / "nope.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(RecipeConfig, listy)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(RecipeConfig, None, ["optim.lr=3e-6", "verl.a.b=[1,2]"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    saved = yaml.safe_load(path.read_text())
    assert saved == config_to_dict(cfg)
    assert saved["log_file"] == "runs/x/metrics.jsonl"  # resolved, not "${...}"
    assert load_config(RecipeConfig, path) == cfg
