"""The schema of the single-process GSPO engine (`mmr/rl/local.py`): one dataclass per section.

Every field has a default and a comment saying what it does; `recipes/demo/tiny_gspo.yaml`
fills it in and `mmr rl local --config R.yaml key.sub=value` overrides it. Names follow
verl's keys where there is one (`rollout.n`, `algorithm.loss_agg_mode`, `clip_ratio_low`,
`ppo_mini_batch_size`, ...), so a recipe's numbers move between the two engines unchanged.
Algorithm and optimizer defaults are OpenMMReasoner's RL numbers (ARCHITECTURE.md §7); sizes
default small, for a CPU. The `reward` section is `mmr.rewards.RewardConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmr.config import (
    ConfigError,
    ModelSection,
    OptimSection,
    TrainerSection,
    check_choice,
    positive,
)
from mmr.metrics import WandbSection
from mmr.rewards.config import RewardConfig
from mmr.rl.filter_groups import FilterGroupsSection, check_gen_batch_size


@dataclass
class RLModel(ModelSection):
    attn_implementation: str | None = None  # null: transformers' choice (sdpa)


@dataclass
class DataSection:
    train_files: list[str] = field(default_factory=list)  # Sample parquet/JSONL files/folders
    format: str = "auto"  # auto | mmr | jsonl | mmfinereason | omr_sft (see mmr.data.io)
    image_root: str | None = None  # folder that relative image paths start from
    batch_size: int = 4  # prompts per step (verl: data.train_batch_size)
    # Prompts per generation batch under algorithm.filter_groups (DAPO's data.gen_batch_size;
    # verl: trainer.v1.sampler.sampler_kwargs.gen_batch_size); 0: data.batch_size. Above it,
    # one batch usually holds batch_size groups that differ, where batch_size prompts need
    # a second batch (the surplus is dropped, as in DAPO).
    gen_batch_size: int = 0
    max_prompt_length: int = 1024  # longer prompts (image tokens included) are dropped; 0: keep
    shuffle: bool = True  # shuffle prompts each epoch (seeded: resumes reproduce it)
    system_prompt: str | None = None  # prepended as a system turn to every prompt


@dataclass
class RolloutSection:
    n: int = 16  # responses sampled per prompt (the GRPO group)
    temperature: float = 1.0  # sampling temperature; log-probs use the same (as verl's actor)
    top_p: float = 1.0  # nucleus sampling
    top_k: int = -1  # -1: off (vLLM's convention; HF's default of 50 would cut the tail)
    max_new_tokens: int = 256  # response budget (verl: data.max_response_length; OMR: 28,696)


@dataclass
class AlgorithmSection:
    adv_estimator: str = "grpo"  # group-relative (verl's compute_grpo_outcome_advantage)
    norm_adv_by_std_in_grpo: bool = True  # divide by the group's std (False: Dr.GRPO)
    loss_mode: str = "gspo"  # verl policy loss by name (get_policy_loss_fn): gspo, vanilla, ...
    loss_agg_mode: str = "seq-mean-token-mean"  # verl's agg_loss mode
    clip_ratio_low: float = 3e-4  # lower clip of the (sequence) importance ratio
    clip_ratio_high: float = 4e-4  # upper clip of the (sequence) importance ratio
    ppo_epochs: int = 1  # passes over each rollout batch
    ppo_mini_batch_size: int = 0  # prompts per optimizer step; 0: the whole batch (on-policy)
    # Regularisers, as verl's actor adds them (its keys: actor.entropy_coeff, use_kl_loss,
    # kl_loss_coef, kl_loss_type; OpenMMReasoner uses neither). The KL reference is the
    # model at model.path (the SFT model), loaded once more, frozen.
    entropy_coeff: float = 0.0  # loss -= coeff x aggregated token entropy (keeps sampling spread)
    use_kl_loss: bool = False  # loss += kl_loss_coef x aggregated KL(policy || reference)
    kl_loss_coef: float = 0.001  # verl's default
    kl_loss_type: str = "low_var_kl"  # verl's kl_penalty names: kl/k1, abs, mse/k2, low_var_kl/k3
    # Rollouts per forward/backward inside a mini-batch (0: the whole mini-batch at once);
    # gradients accumulate to the same update, so this only trades speed for memory.
    ppo_micro_batch_size: int = 0
    # DAPO's dynamic sampling, verl's keys and defaults (mmr/rl/filter_groups.py): drop
    # groups whose `metric` is the same in every response, generate more prompts.
    filter_groups: FilterGroupsSection = field(default_factory=FilterGroupsSection)


@dataclass
class RLOptim(OptimSection):
    lr: float = 1e-6  # learning rate (OpenMMReasoner: 1e-6)
    weight_decay: float = 0.1  # AdamW weight decay (OpenMMReasoner: 0.1)
    warmup_steps: int = 25  # linear warmup, in RL steps (OpenMMReasoner: 25)
    scheduler: str = "constant"  # constant (verl's default) | cosine
    # (grad_clip: non-finite norms skip the step, as in verl)


@dataclass
class RLTrainer(TrainerSection):
    output_dir: str = "runs/rl_local"  # config.yaml, metrics.jsonl, rollouts.jsonl, checkpoints
    save_steps: int = 0  # checkpoint every N steps (0: only at the end)
    log_rollouts: bool = True  # write every rollout's text, score and parts to rollouts.jsonl


@dataclass
class LocalRLConfig:
    model: RLModel = field(default_factory=RLModel)
    data: DataSection = field(default_factory=DataSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    algorithm: AlgorithmSection = field(default_factory=AlgorithmSection)
    optim: RLOptim = field(default_factory=RLOptim)
    reward: RewardConfig = field(default_factory=RewardConfig)
    trainer: RLTrainer = field(default_factory=RLTrainer)
    wandb: WandbSection = field(default_factory=WandbSection)

    def __post_init__(self) -> None:
        check_choice("algorithm.adv_estimator", self.algorithm.adv_estimator, ("grpo",))
        check_choice(
            "algorithm.loss_agg_mode",
            self.algorithm.loss_agg_mode,
            ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean",
             "seq-mean-token-sum-norm"),
        )  # fmt: skip
        check_choice("optim.scheduler", self.optim.scheduler, ("constant", "cosine"))
        check_choice("algorithm.kl_loss_type", self.algorithm.kl_loss_type,
                     ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3"))  # fmt: skip
        positive("algorithm.entropy_coeff", self.algorithm.entropy_coeff, zero_ok=True)
        positive("algorithm.kl_loss_coef", self.algorithm.kl_loss_coef, zero_ok=True)
        positive("rollout.n", self.rollout.n)
        positive("data.batch_size", self.data.batch_size)
        positive("rollout.max_new_tokens", self.rollout.max_new_tokens)
        positive("algorithm.ppo_epochs", self.algorithm.ppo_epochs)
        if self.rollout.temperature <= 0:
            raise ConfigError(
                "config key 'rollout.temperature' must be > 0: GSPO needs sampled groups "
                "(a greedy group has no spread, so every advantage is 0)"
            )
        mini = self.algorithm.ppo_mini_batch_size
        if mini < 0 or (mini and self.data.batch_size % mini):
            raise ConfigError(
                f"config key 'algorithm.ppo_mini_batch_size' ({mini}) must divide "
                f"data.batch_size ({self.data.batch_size}), or be 0 (one mini-batch)"
            )
        if self.algorithm.ppo_micro_batch_size < 0:
            raise ConfigError(
                "config key 'algorithm.ppo_micro_batch_size' must be >= 0 "
                f"(0: the whole mini-batch), got {self.algorithm.ppo_micro_batch_size}"
            )
        positive("optim.warmup_steps", self.optim.warmup_steps, zero_ok=True)
        self.algorithm.filter_groups.check("algorithm.filter_groups")
        check_gen_batch_size(
            "data.gen_batch_size", self.data.gen_batch_size, self.data.batch_size,
            self.algorithm.filter_groups.enable, "algorithm.filter_groups.enable",
        )  # fmt: skip
