"""mmr rl train: the composed verl config (dry run) carries the recipe and mmr's reward.

verl's trainer itself needs GPUs and vLLM, so these tests stop at the config verl would
run with and the hooks it would load; `tests/rl/test_reward.py` runs the reward manager
and the sampler hook verl would call.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from mmr.config import ConfigError, config_to_dict, load_config
from mmr.rl.train import (
    POLL_INTERVAL_S,
    REWARD_CONFIG_KEY,
    RLConfig,
    compose_verl_config,
    driver_resolved,
    main,
)

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture(scope="module")
def dry_run() -> dict:
    cfg = load_config(RLConfig, RECIPES / "omr_7b_gspo.yaml")
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose_verl_config(cfg), resolve=False)


def test_dry_run_has_the_gspo_recipe(dry_run):
    actor = dry_run["actor_rollout_ref"]["actor"]
    rollout = dry_run["actor_rollout_ref"]["rollout"]
    assert actor["policy_loss"]["loss_mode"] == "gspo"
    assert dry_run["algorithm"]["adv_estimator"] == "mmr_grpo"  # verl's grpo, exact on equal groups
    assert actor["loss_agg_mode"] == "seq-mean-token-mean"
    assert (actor["clip_ratio_low"], actor["clip_ratio_high"]) == (3e-4, 4e-4)
    assert actor["use_kl_loss"] is False and dry_run["algorithm"]["use_kl_in_reward"] is False
    assert actor["entropy_coeff"] == 0 and actor["grad_clip"] == 1.0
    assert actor["optim"]["lr"] == 1e-6 and actor["optim"]["lr_warmup_steps"] == 25
    assert actor["optim"]["weight_decay"] == 0.1
    assert actor["ppo_mini_batch_size"] == 128 and actor["use_dynamic_bsz"] is True
    assert actor["ppo_max_token_len_per_gpu"] == 33792
    assert rollout["n"] == 16 and rollout["name"] == "vllm"
    assert (rollout["temperature"], rollout["top_p"]) == (1.0, 1.0)
    assert rollout["tensor_model_parallel_size"] == 1
    assert rollout["gpu_memory_utilization"] == 0.8
    assert rollout["val_kwargs"]["top_p"] == 0.7
    data, trainer = dry_run["data"], dry_run["trainer"]
    assert data["train_batch_size"] == 128
    assert (data["max_prompt_length"], data["max_response_length"]) == (4096, 28696)
    assert data["filter_overlong_prompts"] is True and data["truncation"] == "error"
    assert (trainer["total_epochs"], trainer["save_freq"], trainer["test_freq"]) == (15, 16, 16)


def test_dry_run_has_openmmreasoners_operational_knobs(dry_run):
    """The knobs that matter at scale, read against OpenMMReasoner's gspo_n16.sh and verl
    0.9.1's units (the recipe's comments say where mmr differs and why)."""
    a = dry_run["actor_rollout_ref"]
    assert a["nccl_timeout"] == 7200  # seconds; OpenMMReasoner's 600000 s is ~7 days
    assert a["rollout"]["max_num_batched_tokens"] == 33792
    assert a["rollout"]["enable_chunked_prefill"] is True
    assert a["actor"]["entropy_checkpointing"] is True
    assert a["actor"]["fsdp_config"]["param_offload"] is True
    assert a["actor"]["fsdp_config"]["optimizer_offload"] is True


def test_dry_run_calls_mmrs_reward(dry_run):
    reward = dry_run["reward"]
    # Package paths (verl's `pkg://`), not files: every Ray node imports the installed mmr.
    bridge = "pkg://mmr.rl.reward"
    assert reward["custom_reward_function"]["path"] == "pkg://mmr.rewards"
    assert reward["custom_reward_function"]["name"] == "compute_score"
    assert reward["reward_manager"]["source"] == "importlib"
    assert reward["reward_manager"]["name"] == "MMRRewardManager"
    assert reward["reward_manager"]["module"]["path"] == bridge
    # The reward config, whole and nested, in one key.
    config = reward["custom_reward_function"]["reward_kwargs"]["config"]
    assert config["weights"]["accuracy"] == 0.9 and config["length"]["mode"] == "budget"
    assert reward["custom_reward_function"]["reward_kwargs"] == {"config": config}
    # The legacy top-level keys stay unset: verl 0.9.1 reads `reward.*`.
    assert all(v is None for v in dry_run["custom_reward_function"].values())
    # The group stage: verl's v1 trainer samples every batch through mmr's sampler hook.
    sampler = dry_run["trainer"]["v1"]["sampler"]
    assert dry_run["trainer"]["use_v1"] is True
    assert sampler["custom_sampler"] == {"path": bridge, "name": "MMRGroupSampler"}
    # The sampler refers to that key and to verl's DAPO section (interpolations), it
    # holds no copies of its own.
    assert sampler["sampler_kwargs"] == {"reward_config": f"${{{REWARD_CONFIG_KEY}}}",
                                         "filter_groups": "${algorithm.filter_groups}",
                                         "poll_interval_s": POLL_INTERVAL_S}  # fmt: skip


def test_verl_loads_the_reward_function_manager_and_sampler_we_point_at(dry_run):
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn, resolve_reward_manager_cls
    from verl.utils.import_utils import load_extern_type

    config = OmegaConf.create(dry_run)
    assert resolve_reward_manager_cls(config).__name__ == "MMRRewardManager"
    fn = get_custom_reward_fn(config)
    out = fn(data_source="t", solution_str="<think>1+1=2</think>\\boxed{2}", ground_truth="2")
    assert out["score"] == pytest.approx(1.0) and out["accuracy"] == 1.0
    # As verl's PPOTrainer._build_replay_buffer loads and builds a custom sampler.
    sampler_cfg = config.trainer.v1.sampler
    sampler = load_extern_type(sampler_cfg.custom_sampler.path, sampler_cfg.custom_sampler.name)(
        trainer_mode=config.trainer.v1.trainer_mode,
        trainer_config=config.trainer.v1.get(config.trainer.v1.trainer_mode, {}),
        max_off_policy_threshold=sampler_cfg.max_off_policy_threshold,
        max_off_policy_strategy=sampler_cfg.max_off_policy_strategy,
        sampler_kwargs=sampler_cfg.sampler_kwargs,
        refill_fn=lambda n: None,
    )
    recipe = load_config(RLConfig, RECIPES / "omr_7b_gspo.yaml").reward
    assert type(sampler).__name__ == "MMRGroupSampler"
    assert sampler.reward_config == driver_resolved(recipe)


def test_the_bridge_paths_resolve_to_the_installed_modules():
    """verl's loader imports `pkg://` paths: the module itself, not a second copy from a file."""
    import sys

    from verl.utils.import_utils import load_module

    import mmr.rewards
    import mmr.rl.reward

    assert load_module("pkg://mmr.rl.reward") is sys.modules["mmr.rl.reward"] is mmr.rl.reward
    assert load_module("pkg://mmr.rewards").compute_score is mmr.rewards.compute_score
    assert mmr.rewards.compute_score.__module__ == "mmr.rewards.compose"  # no wrapper
    assert not hasattr(mmr.rl.reward, "compute_score")


@pytest.mark.parametrize(
    "setting",
    [
        "verl.trainer.use_v1=false",
        "verl.trainer.v1.sampler.sync_refill_failed_groups=true",
        "verl.reward.reward_model.enable=true",
    ],
)
def test_settings_that_bypass_the_sampler_hook_are_refused(setting):
    cfg = load_config(RLConfig, RECIPES / "omr_7b_gspo.yaml", [setting])
    with pytest.raises(ConfigError, match=setting.removeprefix("verl.")):
        compose_verl_config(cfg)


def test_bypass_mode_needs_the_rollouts_log_probs():
    # verl's bypass mode reads vLLM's log-probs as the old ones; without them verl fails at
    # its first step deep in TransferQueue, so composing refuses it, naming both keys.
    bypass = "verl.algorithm.rollout_correction.bypass_mode=true"
    off = "verl.actor_rollout_ref.rollout.calculate_log_probs=false"
    cfg = load_config(RLConfig, RECIPES / "omr_7b_gspo.yaml", [bypass, off])
    with pytest.raises(ConfigError, match=r"bypass_mode=true.*calculate_log_probs=true"):
        compose_verl_config(cfg)
    # verl's own default computes them (its rollout_probs_diff metrics compare them)
    config = compose_verl_config(load_config(RLConfig, RECIPES / "omr_7b_gspo.yaml", [bypass]))
    assert config.algorithm.rollout_correction.bypass_mode is True
    assert config.actor_rollout_ref.rollout.calculate_log_probs is True


def test_filter_groups_reaches_the_sampler_hook_and_its_metric_is_checked():
    from omegaconf import OmegaConf

    from mmr.rl import train

    on = ["verl.algorithm.filter_groups.enable=true", "verl.algorithm.filter_groups.metric=acc",
          "verl.algorithm.filter_groups.max_num_gen_batches=3"]  # fmt: skip
    config = compose_verl_config(load_config(RLConfig, RECIPES / "omr_7b_gspo.yaml", on))
    section = config.trainer.v1.sampler.sampler_kwargs.filter_groups  # verl resolves the ${...}
    assert (section.enable, section.metric, section.max_num_gen_batches) == (True, "acc", 3)
    for key, bad, match in [
        ("metric", "seq_final", r"verl\.algorithm\.filter_groups\.metric.*seq_final"),
        ("metric", None, r"verl\.algorithm\.filter_groups\.metric.*None"),
        ("max_num_gen_batches", -2, r"verl\.algorithm\.filter_groups\.max_num_gen_batches"),
    ]:
        changed = OmegaConf.merge(config, {"algorithm": {"filter_groups": {key: bad}}})
        with pytest.raises(ConfigError, match=match):
            train._check_sampler_hook(changed)  # what compose_verl_config runs last


def test_dapos_generation_batch_is_the_sampler_key_and_verls_data_key_is_refused():
    # DAPO's gen_batch_size (prompts per generation batch) is the sampler's key: verl 0.9.1's
    # v1 trainer sets its own data.gen_batch_size to 1 under the filter, with a log line.
    on = ["verl.algorithm.filter_groups.enable=true", "verl.algorithm.filter_groups.metric=acc"]
    key = "verl.trainer.v1.sampler.sampler_kwargs.+gen_batch_size"
    recipe = RECIPES / "omr_7b_gspo.yaml"  # 128 prompts a step
    config = compose_verl_config(load_config(RLConfig, recipe, [*on, f"{key}=192"]))
    assert config.trainer.v1.sampler.sampler_kwargs.gen_batch_size == 192
    for given, match in [
        ([*on, f"{key}=64"], r"sampler_kwargs\.gen_batch_size'.*>= the step's batch size \(128"),
        ([f"{key}=192"], r"gen_batch_size' \(192\) needs verl\.algorithm\.filter_groups\.enable"),
        ([*on, "verl.data.gen_batch_size=192"], r"verl\.data\.gen_batch_size=192 would be set to 1"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            compose_verl_config(load_config(RLConfig, recipe, given))
    compose_verl_config(load_config(RLConfig, recipe, ["verl.data.gen_batch_size=192"]))  # no DAPO


def test_the_replay_buffers_poll_interval_is_mmrs_unless_set_and_must_be_positive():
    # verl's replay buffer sleeps poll_interval between looks for finished rollouts (its
    # default 2 s ends every generation batch on a 2 s tick); mmr's sampler passes 0.1 s.
    key = "verl.trainer.v1.sampler.sampler_kwargs.+poll_interval_s"
    config = compose_verl_config(load_config(RLConfig, RECIPES / "omr_7b_gspo.yaml"))
    assert POLL_INTERVAL_S == 0.1
    assert config.trainer.v1.sampler.sampler_kwargs.poll_interval_s == POLL_INTERVAL_S
    given = load_config(RLConfig, RECIPES / "omr_7b_gspo.yaml", [f"{key}=0.5"])
    assert compose_verl_config(given).trainer.v1.sampler.sampler_kwargs.poll_interval_s == 0.5
    for bad in ("0", "-1", "soon"):
        cfg = load_config(RLConfig, RECIPES / "omr_7b_gspo.yaml", [f"{key}={bad}"])
        with pytest.raises(ConfigError, match=r"sampler_kwargs\.poll_interval_s.*> 0"):
            compose_verl_config(cfg)


def test_the_config_key_rebuilds_the_same_config_before_and_after_verl_resolves_it():
    from omegaconf import OmegaConf

    from mmr.rl.reward import reward_config_of

    overrides = ["reward.length.mode=both", "reward.judge.timeout_s=7",
                 "reward.plugin.kwargs={a: [1, 2]}"]  # fmt: skip
    cfg = load_config(RLConfig, RECIPES / "omr_7b_gspo.yaml", overrides)
    config = compose_verl_config(cfg)
    node = OmegaConf.select(config, REWARD_CONFIG_KEY)
    expected = driver_resolved(cfg.reward)  # the same config, judge.enabled decided
    assert OmegaConf.to_container(node) == config_to_dict(expected)
    assert reward_config_of(node) == expected
    sampler_node = config.trainer.v1.sampler.sampler_kwargs.reward_config
    assert reward_config_of(sampler_node) == expected
    OmegaConf.resolve(config)  # as verl's TaskRunner does before building the trainer
    assert reward_config_of(config.trainer.v1.sampler.sampler_kwargs.reward_config) == expected


@pytest.mark.parametrize(
    ("recipe_value", "env", "written"),
    [(None, "1", True), (None, None, False), (False, "1", False), (True, None, True)],
)
def test_the_driver_decides_whether_the_judge_is_on(
    monkeypatch: pytest.MonkeyPatch, recipe_value: bool | None, env: str | None, written: bool
) -> None:
    # Reward workers on other Ray nodes do not see the driver's USE_LLM_JUDGE: the decision
    # travels in the config, so every worker scores the same reward.
    from omegaconf import OmegaConf

    from mmr.rl.reward import reward_config_of

    if env is None:
        monkeypatch.delenv("USE_LLM_JUDGE", raising=False)
    else:
        monkeypatch.setenv("USE_LLM_JUDGE", env)
    overrides = (
        [] if recipe_value is None else [f"reward.judge.enabled={str(recipe_value).lower()}"]
    )
    cfg = load_config(RLConfig, RECIPES / "omr_7b_gspo.yaml", overrides)
    node = OmegaConf.select(compose_verl_config(cfg), REWARD_CONFIG_KEY)
    assert node.judge.enabled is written
    monkeypatch.setenv("USE_LLM_JUDGE", "0" if written else "1")  # a worker's other environment
    assert reward_config_of(node).judge.is_enabled() is written


def test_unknown_verl_key_fails_by_name(tmp_path):
    with pytest.raises(ConfigError, match=r"verl\.actor_rollout_ref\.rollout\.nn"):
        cfg = load_config(
            RLConfig, RECIPES / "omr_7b_gspo.yaml", ["verl.actor_rollout_ref.rollout.nn=8"]
        )
        compose_verl_config(cfg)


def test_cli_dry_run_prints_yaml_and_overrides_apply(capsys):
    argv = ["--config", str(RECIPES / "omr_7b_gspo.yaml"), "--dry-run",
            "verl.actor_rollout_ref.rollout.n=8"]  # fmt: skip
    assert main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["actor_rollout_ref"]["rollout"]["n"] == 8
    assert main(["--config", str(RECIPES / "omr_7b_gspo.yaml"), "verl.nope=1"]) == 2


def test_tiny_verl_recipe_composes_with_verls_schema():
    # The recipe verl's real trainer runs on CPU (tests/rl/test_verl_train.py).
    from omegaconf import OmegaConf

    cfg = load_config(RLConfig, RECIPES / "demo" / "tiny_gspo_verl.yaml")
    verl = OmegaConf.to_container(compose_verl_config(cfg), resolve=False)
    actor, rollout = verl["actor_rollout_ref"]["actor"], verl["actor_rollout_ref"]["rollout"]
    assert (
        actor["policy_loss"]["loss_mode"] == "gspo"
        and verl["algorithm"]["adv_estimator"] == "mmr_grpo"
    )
    assert actor["loss_agg_mode"] == "seq-mean-token-mean"
    assert (actor["clip_ratio_low"], actor["clip_ratio_high"]) == (3e-4, 4e-4)
    assert rollout["n"] >= 4 and rollout["name"] == "vllm"
    # `+key` entries are added to verl's schema (Hydra's `+`), the rest merged in struct mode.
    assert rollout["enable_sleep_mode"] is False
    assert verl["ray_kwargs"]["ray_init"]["num_gpus"] == 1
    model = verl["actor_rollout_ref"]["model"]
    assert model["override_config"]["attn_implementation"] == "sdpa"
    extension = rollout["engine_kwargs"]["vllm"]["worker_extension_cls"]
    assert extension == "mmr.rl.vllm_cpu_worker.CPUColocateWorkerExtension"
    assert verl["trainer"]["device"] == "cpu"
    assert cfg.reward.length.mode == "both"


def test_plus_keys_are_added_and_plain_unknown_keys_still_fail():
    cfg = load_config(RLConfig, RECIPES / "omr_7b_gspo.yaml", ["verl.trainer.+my_knob=3"])
    assert compose_verl_config(cfg).trainer.my_knob == 3
    bad = load_config(RLConfig, RECIPES / "omr_7b_gspo.yaml", ["verl.trainer.my_knob=3"])
    with pytest.raises(ConfigError, match="my_knob"):
        compose_verl_config(bad)


def _wandb_config(ckpts: Path, *overrides: str):
    cfg = load_config(RLConfig, RECIPES / "demo" / "tiny_gspo_verl.yaml",
                      [f"verl.trainer.default_local_dir={ckpts}",
                       "verl.trainer.logger=[console,wandb]", *overrides])  # fmt: skip
    return compose_verl_config(cfg)


def test_a_resumed_verl_run_keeps_its_wandb_run(tmp_path, monkeypatch):
    """keep_wandb_run: the id saved in the checkpoint folder, reused when verl resumes."""
    import os

    from mmr.rl.train import keep_wandb_run

    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items()
                                        if not k.startswith("WANDB_")})  # fmt: skip
    ckpts = tmp_path / "checkpoints"
    config = _wandb_config(ckpts)
    first = keep_wandb_run(config)  # a fresh start: a new id, saved
    assert (ckpts / "wandb_run_id").read_text().strip() == first
    env_vars = config.ray_kwargs.ray_init.runtime_env.env_vars  # verl's workers get them
    assert env_vars["WANDB_RUN_ID"] == first and env_vars["WANDB_RESUME"] == "allow"
    assert os.environ["WANDB_RUN_ID"] == first and os.environ["WANDB_RESUME"] == "allow"
    assert config.ray_kwargs.ray_init.runtime_env.py_executable is None  # verl's key kept

    os.environ.pop("WANDB_RUN_ID")
    (ckpts / "global_step_2").mkdir()  # as verl saves it
    (ckpts / "latest_checkpointed_iteration.txt").write_text("2")
    assert keep_wandb_run(_wandb_config(ckpts)) == first  # resume_mode auto resumes
    os.environ.pop("WANDB_RUN_ID")
    path = f"verl.trainer.resume_from_path={ckpts / 'global_step_2'}"
    assert (
        keep_wandb_run(_wandb_config(ckpts, "verl.trainer.resume_mode=resume_path", path)) == first
    )
    os.environ.pop("WANDB_RUN_ID")
    fresh = keep_wandb_run(_wandb_config(ckpts, "verl.trainer.resume_mode=disable"))
    assert fresh != first and (ckpts / "wandb_run_id").read_text().strip() == fresh

    # wandb, called as verl's tracker calls it (no id), continues the run those variables
    # name. In a new process, as verl's TaskRunner is: wandb reads its environment once per
    # process, so an earlier wandb.init in this one (tests/test_metrics.py) would shadow it.
    import subprocess
    import sys

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_DIR": str(tmp_path)}  # fmt: skip
    code = ("import wandb; run = wandb.init(project='mmr', name='tiny', config={'a': 1}); "
            "print(run.id); run.finish()")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == fresh


def test_keep_wandb_run_leaves_runs_without_wandb_and_a_given_id_alone(tmp_path, monkeypatch):
    import os

    from mmr.rl.train import keep_wandb_run

    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    ckpts = tmp_path / "checkpoints"
    config = _wandb_config(ckpts, "verl.trainer.logger=[console]")
    assert keep_wandb_run(config) is None and not ckpts.exists()
    monkeypatch.setenv("WANDB_RUN_ID", "given")
    assert keep_wandb_run(_wandb_config(ckpts)) is None and not ckpts.exists()
    assert os.environ["WANDB_RUN_ID"] == "given"


def test_freeze_vision_tower_reaches_the_workers_environment(monkeypatch):
    # verl 0.9.1 reads actor.freeze_vision_tower nowhere; mmr's fix C reads FREEZE_ENV.
    from mmr.rl.train import pass_freeze_vision_tower
    from mmr.rl.verl_fixes import FREEZE_ENV

    key = "verl.actor_rollout_ref.actor.freeze_vision_tower"
    for value, want in (("true", "1"), ("false", "0")):
        monkeypatch.setenv(FREEZE_ENV, "stale")
        cfg = load_config(RLConfig, RECIPES / "omr_7b_gspo.yaml", [f"{key}={value}"])
        config = compose_verl_config(cfg)
        assert pass_freeze_vision_tower(config) is (want == "1")
        assert config.ray_kwargs.ray_init.runtime_env.env_vars[FREEZE_ENV] == want
        assert os.environ[FREEZE_ENV] == want
    tiny = load_config(RLConfig, RECIPES / "demo" / "tiny_gspo_verl.yaml")
    assert tiny.verl["actor_rollout_ref"]["actor"]["freeze_vision_tower"] is True  # as SFT


def test_fsdp_dtype_becomes_verls_mixed_precision_param_dtype():
    # verl 0.9.1's FSDP engine reads only fsdp_config.mixed_precision (None: bf16 compute),
    # never the documented fsdp_config.dtype: mmr writes the one into the other.
    from omegaconf import OmegaConf
    from verl.workers.engine.fsdp import transformer_impl

    source = Path(transformer_impl.__file__).read_text()
    assert "self.engine_config.mixed_precision" in source
    assert "engine_config.dtype" not in source  # the bug mmr works around

    def sections(recipe: str, *overrides: str) -> dict:
        cfg = load_config(RLConfig, RECIPES / recipe, list(overrides))
        verl = OmegaConf.to_container(compose_verl_config(cfg), resolve=False)
        role = verl["actor_rollout_ref"]
        return {name: role[name]["fsdp_config"]["mixed_precision"] for name in ("actor", "ref")}

    tiny = sections("demo/tiny_gspo_verl.yaml")
    assert {mp["param_dtype"] for mp in tiny.values()} == {"float32"}
    assert tiny["actor"]["reduce_dtype"] == tiny["actor"]["buffer_dtype"] == "fp32"
    # verl's default dtype gives verl's own behaviour: bf16 compute on the 7B recipe.
    assert {mp["param_dtype"] for mp in sections("omr_7b_gspo.yaml").values()} == {"bfloat16"}
    # a mixed_precision given by the recipe is kept, if it agrees with dtype ...
    given = sections("demo/tiny_gspo_verl.yaml",
                     "verl.actor_rollout_ref.actor.fsdp_config.+mixed_precision.param_dtype=fp32",
                     "verl.actor_rollout_ref.actor.fsdp_config.+mixed_precision.reduce_dtype=bf16")  # fmt: skip
    assert given["actor"] == {"param_dtype": "fp32", "reduce_dtype": "bf16"}
    # ... and refused, naming both keys, if not.
    with pytest.raises(ConfigError, match=r"actor\.fsdp_config\.dtype=float32 .*mixed_precision"):
        sections("demo/tiny_gspo_verl.yaml",
                 "verl.actor_rollout_ref.actor.fsdp_config.+mixed_precision.param_dtype=bf16")  # fmt: skip
    with pytest.raises(ConfigError, match=r"ref\.fsdp_config\.dtype=float64 is not a dtype"):
        sections("demo/tiny_gspo_verl.yaml", "verl.actor_rollout_ref.ref.fsdp_config.dtype=float64")
