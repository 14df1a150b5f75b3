"""The SFT recipe schema: one dataclass per section; YAML recipes fill it in.

Every field has a default and a comment saying what it does. `recipes/*_sft.yaml` set the
numbers of the public recipes; `mmr sft --config R.yaml key.sub=value` overrides them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmr.config import ConfigError, check_choice
from mmr.metrics import WandbSection


@dataclass
class ModelSection:
    path: str | None = None  # HF id or local folder; null builds a tiny model (CPU demo/tests)
    tiny_family: str = "qwen2_5_vl"  # family of the tiny model built when path is null
    freeze: list[str] = field(default_factory=lambda: ["vision_tower", "projector"])
    attn_implementation: str | None = None  # null: flash_attention_2 if installed, else sdpa_varlen
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory
    # Loss from hidden states by torch's chunked linear_cross_entropy: no (tokens x vocab)
    # logits in memory (mmr/sft/loss.py). null: on GPU; off on CPU, where memory is not the
    # limit and it was 16% slower at a 152K vocabulary. false, or ZeRO-3: transformers' loss.
    chunked_loss: bool | None = None
    dtype: str = "auto"  # auto: bf16 on GPU, fp32 on CPU; or float32 / bfloat16
    max_pixels: int | None = None  # image processor budget per image (null: the checkpoint's)
    min_pixels: int | None = None  # lower image budget (null: the checkpoint's)


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
    synthetic: int = 0  # >0: generate this many synthetic visual tasks when train_files is empty


@dataclass
class OptimSection:
    lr: float = 1e-5  # peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    warmup_ratio: float = 0.1  # fraction of steps with linear warmup
    scheduler: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    grad_clip: float = 1.0  # max global grad norm (0: off)


@dataclass
class DeepSpeedSection:
    zero_stage: int = 2  # 2 (the recipes) or 3
    overlap_comm: bool = True  # overlap gradient reduction with backward
    contiguous_gradients: bool = True  # copy gradients into one buffer (less fragmentation)
    reduce_bucket_size: int = 500_000_000  # elements per gradient reduction bucket
    allgather_bucket_size: int = 500_000_000  # elements per parameter all-gather bucket
    offload_optimizer: bool = False  # keep optimizer states on CPU (saves GPU memory)


@dataclass
class TrainerSection:
    output_dir: str = "runs/sft"  # run folder: config.yaml, metrics.jsonl, checkpoints, final/
    seed: int = 42  # seeds data order and any randomness in the model
    epochs: int = 1  # passes over the data (max_steps wins when > 0)
    max_steps: int = 0  # optimizer steps in all; 0: epochs x rows per epoch
    # How epochs become steps when max_steps is 0. exact: count epoch 0's micro-batches
    # (tokenizes the whole epoch once before step 1: minutes for 100K samples, hours for
    # millions). estimate: rows from file metadata / mean samples per micro-batch of the
    # first `plan_sample` micro-batches (seconds; the schedule still ends at that step).
    plan_steps: str = "exact"  # exact | estimate
    plan_sample: int = 256  # micro-batches tokenized for the estimate
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    save_steps: int = 500  # checkpoint every N optimizer steps (0: only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    resume: str | None = None  # null | "auto" (latest in output_dir) | a checkpoint folder
    log_steps: int = 1  # metrics every N optimizer steps
    export: bool = True  # write an HF folder to output_dir/final at the end
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class SFTConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    wandb: WandbSection = field(default_factory=WandbSection)

    def __post_init__(self) -> None:
        check_choice("data.truncation", self.data.truncation, ("drop", "cut"))
        check_choice("optim.scheduler", self.optim.scheduler, ("cosine", "linear", "constant"))
        check_choice("deepspeed.zero_stage", self.deepspeed.zero_stage, (2, 3))
        check_choice("trainer.device", self.trainer.device, ("auto", "cpu", "cuda"))
        check_choice("trainer.plan_steps", self.trainer.plan_steps, ("exact", "estimate"))
        check_choice("model.dtype", self.model.dtype, ("auto", "float32", "bfloat16"))
        if self.data.packing and self.data.max_length > self.data.packing_length:
            raise ConfigError(
                f"data.max_length ({self.data.max_length}) must be <= data.packing_length "
                f"({self.data.packing_length}) when packing"
            )
        if self.trainer.max_steps <= 0 and self.trainer.epochs <= 0:
            raise ConfigError("set trainer.max_steps or trainer.epochs to a positive number")
        if self.data.prefetch is not None and self.data.prefetch < 0:
            raise ConfigError("config key 'data.prefetch' must be >= 0 (or null)")
