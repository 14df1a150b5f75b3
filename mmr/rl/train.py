"""GSPO on verl: compose verl's own `ppo_trainer` config with an mmr recipe, then run verl.

    python -m mmr.rl.train --config recipes/omr_7b_gspo.yaml [verl.a.b=value ...]
    mmr rl train --config recipes/omr_7b_gspo.yaml --dry-run     # print the verl config

verl owns the trainer, the GSPO loss, vLLM rollouts and Ray; mmr only supplies the
config, the data (`mmr rl prepare`) and the reward (`mmr.rl.reward`). A recipe has two
sections:

* `verl:` verl's own keys, nested as in verl's `ppo_trainer.yaml`, so verl's
  documentation applies unchanged. They are merged onto verl's composed config with
  verl's schema in struct mode: a key verl does not have fails at once, by name. A key
  written with a leading `+` (`+enable_sleep_mode: false`) is added instead, as Hydra's
  `+key=value` does on verl's own command line: for the settings verl reads but its
  schema does not list (its docs add them with `+`).
* `reward:` mmr's reward config (`mmr.rewards.RewardConfig`), written whole, as a nested
  mapping, into one verl key, `reward.custom_reward_function.reward_kwargs.config`
  (`REWARD_CONFIG_KEY`): verl passes it to `mmr.rewards.compute_score` on every reward
  worker; the sampler's `sampler_kwargs.reward_config` is an interpolation of that key.
  `judge.enabled` left unset is decided on the driver (USE_LLM_JUDGE) and written in.

mmr then sets the two verl hooks of its reward bridge (`mmr.rl.reward`), and
`--dry-run` shows them: verl 0.9.1's `reward.*` keys (the old top-level
`custom_reward_function` / `reward_model.reward_manager` keys are legacy) name mmr's
per-trajectory reward manager and `mmr.rewards.compute_score`, and
`trainer.v1.sampler.custom_sampler` names the sampler that adds the group-relative length
term to whole rollout groups and logs `reward/*`. All three are package paths
(`pkg://mmr.rl.reward`, verl's `load_module`), imported from the installed package on
whichever Ray node loads them.
Settings that would bypass that sampler are refused: verl's legacy trainer
(`trainer.use_v1=false`), `sync_refill_failed_groups` and a reward model (mmr's reward
uses none). DAPO's group filter (`algorithm.filter_groups`) runs in that sampler, on the
finished scores (`sampler_kwargs.filter_groups` refers to the section; its metric is
checked here, `mmr.rl.filter_groups`).
A resumed run continues its wandb run: verl's tracker starts wandb without a run id, so mmr
keeps one in the checkpoint folder (`trainer.default_local_dir/wandb_run_id`) and hands it to
verl's workers as `WANDB_RUN_ID` (`keep_wandb_run`). API keys may come from a file on shared
storage named by `MMR_SECRETS_FILE` (`mmr.env_secrets`), never from the job's runtime env.
Differences from OpenMMReasoner's public scripts, which target an older verl fork: reward
keys under `reward.*`, no `rollout.mode=sync` (removed), everything else as their recipe
(see the YAML comments).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from mmr.config import ConfigError, config_to_dict, load_config
from mmr.env_secrets import SECRETS_FILE_ENV, SecretsFileError, load_secrets
from mmr.metrics import wandb_run_id
from mmr.rewards.config import RewardConfig
from mmr.rl.filter_groups import FilterGroupsSection, check_gen_batch_size

PINNED_VERL = "0.9.1"
# The one verl key that carries mmr's reward config (RewardConfig as a nested mapping).
REWARD_CONFIG_KEY = "reward.custom_reward_function.reward_kwargs.config"
# verl's DAPO section, which mmr's sampler hook follows (mmr.rl.filter_groups).
FILTER_GROUPS_KEY = "algorithm.filter_groups"
SAMPLER_KWARGS_KEY = "trainer.v1.sampler.sampler_kwargs"
# DAPO's generation batch in prompts (mmr.rl.reward.MMRGroupSampler; rl local: data.gen_batch_size).
GEN_BATCH_SIZE_KEY = f"{SAMPLER_KWARGS_KEY}.gen_batch_size"
# How often verl's replay buffer looks for finished rollouts (`sampler_kwargs.
# poll_interval_s`). verl's default, 2 s, is a sleep between looks: every generation batch
# then ends on the next 2 s tick (1 s lost on average, per batch; two a step with
# filter_groups). A look is one status scan of TransferQueue's controller; 0.1 s costs
# nothing beside a rollout.
POLL_INTERVAL_S = 0.1


def poll_interval_of(value: Any) -> float:
    """`sampler_kwargs.poll_interval_s` as a positive float, or a ConfigError naming it."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0:
        raise ConfigError(
            f"config key 'verl.{SAMPLER_KWARGS_KEY}.poll_interval_s' must be a number "
            f"of seconds > 0, got {value!r}"
        )
    return seconds


@dataclass
class RLConfig:
    verl: dict[str, Any] = field(default_factory=dict)  # verl's own keys (ppo_trainer.yaml)
    reward: RewardConfig = field(default_factory=RewardConfig)  # mmr's reward


def compose_verl_config(cfg: RLConfig) -> DictConfig:
    """verl's `ppo_trainer` config + the recipe's `verl:` keys + mmr's reward wiring."""
    import verl
    from hydra import compose, initialize_config_dir

    if verl.__version__ != PINNED_VERL:
        raise RuntimeError(
            f"mmr's RL recipes use verl {PINNED_VERL}'s config keys; found verl "
            f"{verl.__version__}. Install verl=={PINNED_VERL}."
        )
    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        base = compose(config_name="ppo_trainer")
    OmegaConf.set_struct(base, True)  # unknown keys are errors, as in verl's own CLI
    schema_keys, additions = split_additions(cfg.verl)
    try:
        merged = OmegaConf.merge(base, schema_keys, _reward_wiring())
        for key, value in additions:
            OmegaConf.update(merged, key, value, merge=True, force_add=True)
        # verl reads reward_kwargs but its schema has no such key (its docs add it with `+`).
        with open_dict(merged.reward.custom_reward_function):
            merged.reward.custom_reward_function.reward_kwargs = {
                "config": config_to_dict(driver_resolved(cfg.reward))
            }
        # verl hands the sampler only its sampler_kwargs: references to the keys, not copies.
        with open_dict(merged.trainer.v1.sampler.sampler_kwargs):
            merged.trainer.v1.sampler.sampler_kwargs.reward_config = f"${{{REWARD_CONFIG_KEY}}}"
            merged.trainer.v1.sampler.sampler_kwargs.filter_groups = f"${{{FILTER_GROUPS_KEY}}}"
            if "poll_interval_s" not in merged.trainer.v1.sampler.sampler_kwargs:
                merged.trainer.v1.sampler.sampler_kwargs.poll_interval_s = POLL_INTERVAL_S
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(
            f"verl.{key}: {str(err).splitlines()[0]} (verl {PINNED_VERL}'s keys are in "
            "verl/trainer/config/_generated_ppo_trainer.yaml)"
        ) from None
    _check_sampler_hook(merged)
    _check_bypass_log_probs(merged)
    honour_fsdp_dtype(merged)
    return merged


BYPASS_KEY = "algorithm.rollout_correction.bypass_mode"
ROLLOUT_LOG_PROBS_KEY = "actor_rollout_ref.rollout.calculate_log_probs"


def _check_bypass_log_probs(config: DictConfig) -> None:
    """verl's bypass mode takes the old log-probs from the rollouts' own, which vLLM returns
    only when asked: without them verl 0.9.1's v1 trainer fails at its first step, in a
    TransferQueue read of a field no one wrote (trainer_base.py, _compute_old_log_prob)."""
    bypass = OmegaConf.select(config, BYPASS_KEY, default=False)
    if bypass and not OmegaConf.select(config, ROLLOUT_LOG_PROBS_KEY, default=False):
        raise ConfigError(
            f"verl.{BYPASS_KEY}=true takes the old log-probs from vLLM's rollouts: set "
            f"verl.{ROLLOUT_LOG_PROBS_KEY}=true too, or leave bypass_mode false (the actor "
            "recomputes them)"
        )


FSDP_ENGINE_TARGET = "verl.workers.config.FSDPEngineConfig"


def honour_fsdp_dtype(config: DictConfig, path: str = "") -> None:
    """Make every FSDP engine's `dtype` the compute dtype it is documented to be.

    verl 0.9.1 documents `fsdp_config.dtype` as the mixed-precision param dtype, but its FSDP
    engine reads only `fsdp_config.mixed_precision` and, where that is unset, computes in
    bf16 (verl/workers/engine/fsdp/transformer_impl.py, `_build_fsdp_module`, and the
    autocast of `forward_step`): `dtype: float32` changed nothing. mmr writes the section's
    `dtype` into `mixed_precision.param_dtype` (reduce and buffer fp32, verl's defaults)
    where the recipe sets no `mixed_precision`; verl's default `dtype` (bfloat16) gives
    verl's own behaviour. A `mixed_precision.param_dtype` that contradicts `dtype` is a
    ConfigError naming both keys."""
    from verl.utils.torch_dtypes import PrecisionType

    for key in list(config.keys()):
        node = config.get(key)
        if not isinstance(node, DictConfig):
            continue
        where = f"{path}{key}"
        if node.get("_target_") == FSDP_ENGINE_TARGET and node.get("dtype") is not None:
            try:
                want = PrecisionType.to_dtype(node.dtype)
            except RuntimeError:
                raise ConfigError(
                    f"verl.{where}.dtype={node.dtype} is not a dtype verl's FSDP engine "
                    "computes in (bfloat16, float16, float32)"
                ) from None
            mixed = node.get("mixed_precision")
            if mixed is None:
                with open_dict(node):
                    node.mixed_precision = {
                        "param_dtype": str(node.dtype),
                        "reduce_dtype": "fp32",
                        "buffer_dtype": "fp32",
                    }
            elif PrecisionType.to_dtype(mixed.get("param_dtype", "bf16")) != want:
                raise ConfigError(
                    f"verl.{where}.dtype={node.dtype} contradicts verl.{where}.mixed_precision."
                    f"param_dtype={mixed.get('param_dtype', 'bf16')} (verl's FSDP engine "
                    "computes in the latter; set one)"
                )
        else:
            honour_fsdp_dtype(node, f"{where}.")


def driver_resolved(reward: RewardConfig) -> RewardConfig:
    """The reward config with `judge.enabled` decided here, once, from USE_LLM_JUDGE when the
    recipe leaves it unset: reward workers on other nodes do not share the driver's
    environment, and one of them deciding differently would score (and log) a different
    reward in the same run. The endpoint and key stay per node (OPENAI_BASE_URL, the key's
    variable), where the judge is reached from."""
    judge = replace(reward.judge, enabled=reward.judge.is_enabled())
    return replace(reward, judge=judge)


def split_additions(
    node: dict[str, Any], prefix: str = ""
) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """Split `+key` entries (added to verl's schema) from the keys verl's schema has."""
    kept: dict[str, Any] = {}
    added: list[tuple[str, Any]] = []
    for key, value in node.items():
        key = str(key)
        if key.startswith("+"):
            added.append((prefix + key[1:], value))
        elif isinstance(value, dict):
            kept[key], inner = split_additions(value, f"{prefix}{key}.")
            added.extend(inner)
        else:
            kept[key] = value
    return kept, added


def _check_sampler_hook(config: DictConfig) -> None:
    """Refuse verl settings under which mmr's sampler hook would not run in full, and a
    DAPO section it could not follow."""
    refused = {  # setting -> the value that bypasses the hook
        "trainer.use_v1": False,
        "trainer.v1.sampler.sync_refill_failed_groups": True,
        "reward.reward_model.enable": True,  # a colocated one scores after sampling
    }
    for key, bad in refused.items():
        if bool(OmegaConf.select(config, key, default=not bad)) is bad:
            setting = f"{key}={str(bad).lower()}"
            raise ConfigError(
                f"verl.{setting} is not supported: mmr's reward adds the group length term and "
                "logs reward/* in verl's v1 sampler hook (trainer.v1.sampler.custom_sampler), "
                "which this setting bypasses (see mmr/rl/reward.py)"
            )
    section = FilterGroupsSection.of(OmegaConf.select(config, FILTER_GROUPS_KEY))
    section.check(f"verl.{FILTER_GROUPS_KEY}")
    poll_interval_of(OmegaConf.select(config, f"{SAMPLER_KWARGS_KEY}.poll_interval_s"))
    check_gen_batch_size(
        f"verl.{GEN_BATCH_SIZE_KEY}", OmegaConf.select(config, GEN_BATCH_SIZE_KEY),
        int(config.data.train_batch_size), section.enable, f"verl.{FILTER_GROUPS_KEY}.enable",
    )  # fmt: skip
    verl_gen = OmegaConf.select(config, "data.gen_batch_size")
    if section.enable and verl_gen not in (None, 1):
        # verl 0.9.1's v1 trainer sets it to 1 under DAPO (its dataloader's fetch size,
        # trainer_base.py), with only a log line: DAPO's meaning is the sampler's key.
        raise ConfigError(
            f"verl.data.gen_batch_size={verl_gen} would be set to 1 by verl {PINNED_VERL} with "
            f"{FILTER_GROUPS_KEY} on (it is the dataloader's fetch size there); DAPO's "
            f"generation batch is verl.{GEN_BATCH_SIZE_KEY}"
        )


def _reward_wiring() -> dict[str, Any]:
    """Point verl 0.9.1's reward loop and v1 sampler at mmr's reward bridge."""
    bridge = "pkg://mmr.rl.reward"
    return {
        "trainer": {
            "v1": {"sampler": {"custom_sampler": {"path": bridge, "name": "MMRGroupSampler"}}}
        },
        "reward": {
            "reward_manager": {
                "source": "importlib",
                "name": "MMRRewardManager",
                "module": {"path": bridge},
            },
            "custom_reward_function": {"path": "pkg://mmr.rewards", "name": "compute_score"},
        },
    }


def keep_wandb_run(verl_config: DictConfig) -> str | None:
    """Give verl's wandb the run id kept in the checkpoint folder; return it (None: no wandb).

    verl's tracker calls `wandb.init` without an id (verl/utils/tracking.py:85), so every
    start would be a new wandb run; wandb then reads `WANDB_RUN_ID` and `WANDB_RESUME` from
    the environment. The id is the saved one when verl will resume (`resume_mode: auto` with
    a checkpoint in `default_local_dir`, or `resume_path`), else a new one, saved for the next
    resume (as `mmr.metrics.wandb_run_id` does for mmr's trainers). wandb runs in verl's
    TaskRunner, a Ray worker that on a running cluster does not inherit this process's
    environment, so the variables go into `ray_kwargs.ray_init.runtime_env.env_vars` (verl
    merges that into its workers' runtime env). A WANDB_RUN_ID already set is left alone.
    """
    trainer = verl_config.trainer
    loggers = trainer.logger if OmegaConf.is_list(trainer.logger) else [trainer.logger]
    if not {"wandb", "tracking"} & {str(x) for x in loggers} or os.environ.get("WANDB_RUN_ID"):
        return None
    from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path

    ckpt_dir = os.path.abspath(trainer.default_local_dir)  # relative: to the cwd, as verl does
    resuming = trainer.resume_mode == "resume_path" or (
        trainer.resume_mode == "auto" and find_latest_ckpt_path(ckpt_dir) is not None
    )
    run_id = wandb_run_id(ckpt_dir, resuming=resuming)
    to_workers(verl_config, {"WANDB_RUN_ID": run_id, "WANDB_RESUME": "allow"})
    return run_id


def to_workers(verl_config: DictConfig, env: dict[str, str]) -> None:
    """Environment variables for every verl worker: into `ray_kwargs.ray_init.runtime_env.
    env_vars` (verl merges it into its workers' runtime env; on a running cluster they do
    not inherit this process's environment) and into this process's (a local Ray started
    here inherits it)."""
    ray_init = verl_config.ray_kwargs.ray_init
    with open_dict(ray_init):
        if ray_init.get("runtime_env") is None:
            ray_init.runtime_env = {}
    with open_dict(ray_init.runtime_env):
        env_vars = ray_init.runtime_env.get("env_vars") or {}
        ray_init.runtime_env.env_vars = {**env_vars, **env}
    os.environ.update(env)


def pass_freeze_vision_tower(verl_config: DictConfig) -> bool:
    """verl's `actor_rollout_ref.actor.freeze_vision_tower`, which verl 0.9.1 reads nowhere,
    handed to the workers, where mmr's fix C (`mmr.rl.verl_fixes`) freezes the vision
    tower and projector; "0" when false, so a value left in the shell does not leak in."""
    from mmr.rl.verl_fixes import FREEZE_ENV

    on = bool(OmegaConf.select(verl_config, "actor_rollout_ref.actor.freeze_vision_tower"))
    to_workers(verl_config, {FREEZE_ENV: "1" if on else "0"})
    return on


def run(verl_config: DictConfig) -> None:
    """Hand the composed config to verl's own entry (GPUs and vLLM required)."""
    from verl.trainer.main_ppo import main as verl_main

    # verl's main is a Hydra entry; Hydra passes a given config straight through.
    verl_main(verl_config)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmr rl train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="RL recipe YAML (recipes/*_gspo.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print the verl config and exit")
    parser.add_argument("overrides", nargs="*", help="verl.key=value or reward.key=value")
    args = parser.parse_args(argv)
    try:  # before verl is imported: its plugin reads the file too, silently
        names = load_secrets()
    except SecretsFileError as err:
        print(f"mmr rl train: {err}", file=sys.stderr)
        return 2
    if names:
        print(f"mmr rl train: {', '.join(names)} read from ${SECRETS_FILE_ENV}", file=sys.stderr)
    try:
        cfg = load_config(RLConfig, args.config, args.overrides)
        verl_config = compose_verl_config(cfg)
    except ConfigError as err:
        print(f"mmr rl train: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(OmegaConf.to_yaml(verl_config, resolve=False))
        return 0
    keep_wandb_run(verl_config)
    pass_freeze_vision_tower(verl_config)
    run(verl_config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
