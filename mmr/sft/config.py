"""The SFT recipe schema: one dataclass per section; YAML recipes fill it in.

Every field has a default and a comment saying what it does. `recipes/*_sft.yaml` set the
numbers of the public recipes; `mmr sft --config R.yaml key.sub=value` overrides them.
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
from mmr.models.registry import PART_NAMES


@dataclass
class SFTModel(ModelSection):
    attn_implementation: str | None = None  # null: flash_attention_2 if installed, else sdpa_varlen
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory
    # Loss from hidden states by torch's chunked linear_cross_entropy: no (tokens x vocab)
    # logits in memory (mmr/sft/loss.py). null: on GPU; off on CPU, where memory is not the
    # limit and it was 16% slower at a 152K vocabulary. false, or ZeRO-3: transformers' loss.
    chunked_loss: bool | None = None


@dataclass
class DataSection:
    train_files: list[str] = field(default_factory=list)  # Sample parquet/JSONL files/folders
    format: str = "auto"  # auto | mmr | jsonl | mmfinereason | omr_sft
    image_root: str | None = None  # folder that relative image paths start from
    max_length: int = 4096  # longest sample in tokens (<= packing_length when packing)
    truncation: str = "drop"  # drop | cut (image-safe) for samples over max_length
    packing: bool = True  # pack samples into rows of packing_length tokens
    packing_length: int = 4096  # tokens per packed row
    pack_buffer: int = 512  # samples bin-packed together (larger: fuller rows, more memory)
    batch_size: int = 1  # rows (packed) or samples (padded) per micro-batch per GPU
    shuffle: bool = True  # shuffle samples each epoch (seeded: resumes reproduce it)
    shuffle_buffer: int = 4096  # samples held for the streaming shuffle
    # Micro-batches prepared ahead in a background thread, overlapping the step; null: 2 on
    # GPU, 0 on CPU (where the thread competes with the step for the same cores).
    prefetch: int | None = None
    system_prompt: str | None = None  # prepended as a system turn to every sample


@dataclass
class SFTOptim(OptimSection):
    warmup_ratio: float = 0.1  # fraction of steps with linear warmup
    scheduler: str = "cosine"  # cosine | linear | constant
    # Per-part multipliers of lr ({vision_tower: 10.0, projector: 10.0}; parts as in
    # model.freeze): a new vision tower learns at a higher rate than a pretrained LM. The
    # schedule scales every part alike; a part not named keeps lr.
    lr_scale: dict[str, float] = field(default_factory=dict)


@dataclass
class DeepSpeedSection:
    zero_stage: int = 2  # 2 (the recipes) or 3
    overlap_comm: bool = True  # overlap gradient reduction with backward
    contiguous_gradients: bool = True  # copy gradients into one buffer (less fragmentation)
    reduce_bucket_size: int = 500_000_000  # elements per gradient reduction bucket
    allgather_bucket_size: int = 500_000_000  # elements per parameter all-gather bucket
    offload_optimizer: bool = False  # keep optimizer states on CPU (saves GPU memory)


@dataclass
class SFTTrainer(TrainerSection):
    output_dir: str = "runs/sft"  # run folder: config.yaml, metrics.jsonl, checkpoints, final/
    # How epochs become steps when max_steps is 0. exact: count epoch 0's micro-batches
    # (tokenizes the whole epoch once before step 1: minutes for 100K samples, hours for
    # millions). estimate: rows from file metadata / mean samples per micro-batch of the
    # first `plan_sample` micro-batches (seconds; the schedule still ends at that step).
    plan_steps: str = "exact"  # exact | estimate
    plan_sample: int = 256  # micro-batches tokenized for the estimate
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step


@dataclass
class SFTConfig:
    model: SFTModel = field(default_factory=SFTModel)
    data: DataSection = field(default_factory=DataSection)
    optim: SFTOptim = field(default_factory=SFTOptim)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    trainer: SFTTrainer = field(default_factory=SFTTrainer)
    wandb: WandbSection = field(default_factory=WandbSection)

    def __post_init__(self) -> None:
        check_choice("data.truncation", self.data.truncation, ("drop", "cut"))
        check_choice("optim.scheduler", self.optim.scheduler, ("cosine", "linear", "constant"))
        check_choice("deepspeed.zero_stage", self.deepspeed.zero_stage, (2, 3))
        check_choice("trainer.plan_steps", self.trainer.plan_steps, ("exact", "estimate"))
        if self.data.packing and self.data.max_length > self.data.packing_length:
            raise ConfigError(
                f"data.max_length ({self.data.max_length}) must be <= data.packing_length "
                f"({self.data.packing_length}) when packing"
            )
        positive("optim.warmup_ratio", self.optim.warmup_ratio, zero_ok=True)
        for part, scale in self.optim.lr_scale.items():
            if part not in PART_NAMES:
                raise ConfigError(
                    f"config key 'optim.lr_scale.{part}' names no model part; "
                    f"parts: {', '.join(PART_NAMES)}"
                )
            positive(f"optim.lr_scale.{part}", scale)
        positive("trainer.plan_sample", self.trainer.plan_sample)
        positive("trainer.gradient_accumulation_steps", self.trainer.gradient_accumulation_steps)
        positive("data.max_length", self.data.max_length)
        positive("data.packing_length", self.data.packing_length)
        positive("data.batch_size", self.data.batch_size)
        if self.data.prefetch is not None:
            positive("data.prefetch", self.data.prefetch, zero_ok=True)
