"""SFT throughput: packed vs padded batches, and mmr's DeepSpeed step vs transformers' Trainer.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sft_throughput.py [--steps 5] [--warmup 1]
    HF_HUB_OFFLINE=1 python benchmarks/sft_throughput.py --preset gpu3b --scale 1   # one GPU

Model: Qwen2.5-VL (a registered mmr family) with random weights, built offline around the
tiny builder's tokenizer and processor (`mmr.models.tiny`) with a bigger config. `--preset
cpu` (default): text hidden 512, 8 layers, 8 heads (2 KV), MLP 1376, vocab rows 8192, a
4-block vision tower; ~37M parameters (31M trainable), fp32, mmr's `sdpa_varlen`. `--preset gpu3b`: Qwen2.5-VL-3B's shape
(hidden 2048, 36 layers, 16 heads, 2 KV heads, MLP 11008, vocab 151936, tied embeddings;
vision depth 32, hidden 1280), bf16, flash-attn 2 when installed (else sdpa_varlen), gradient
checkpointing, one GPU. The vision tower and projector are frozen, as in mmr's recipes.

Data: 512 synthetic samples (one `data.pack_buffer` of mmr's SFT stream), each one image and
a chain of thought of random words, lengths shaped like the OpenMMReasoner SFT set at full
scale: 15% short (256-1K tokens), 75% typical (1K-4K, log-normal around 2K), 10% long (4K-8K),
all multiplied by `--scale` (default 1/8 on CPU; `--scale 1` on a GPU). They are tokenized by
`mmr.data.chat.tokenize_sample` through the real processor. Rows hold `packing_length` =
4x the longest sample (2x for gpu3b: the 152K-vocab logits of a longer row do not fit
next to ZeRO-2's states on one 80 GB GPU).

Measured in this one run, every variant from the same initial weights on the same samples:
1. packing efficiency of `pack_first_fit_decreasing` over the whole mix (goal >= 97%);
   real (non-pad) tokens/s of forward + backward + AdamW step over `--steps` packed rows
   (`collate_packed`) vs the same samples in padded batches (`collate_padded`, stream
   order, as many samples per batch as a packed row holds on average, so both take
   optimizer steps of about as many real tokens); one model and optimizer step through
   both, interleaved; goal packed/padded >= 2x. Padded batches need more memory than a
   packed row (their slot counts are printed); on a GPU one that does not fit is reported.
2. median time per optimizer step, after `--warmup` steps, on the same packed rows: mmr's
   step (a DeepSpeed ZeRO-2 engine built as `mmr.sft.train.train` builds it, its loop body
   with `PerfMeter`) vs transformers' `Trainer` (same AdamW, lr schedule, clipping and
   precision) given the same DeepSpeed config (`deepspeed=`, as LLaMA-Factory and TRL
   recipes run it): goal mmr/Trainer <= 1.0x. Also vs a plain `Trainer` (torch AdamW, no
   DeepSpeed), which shows what ZeRO-2's machinery costs on one process.
On a GPU it also prints tokens/s and MFU (`mmr.sft.perf`; goal >= 40%).
"""

from __future__ import annotations

import argparse
import copy
import gc
import io
import math
import os
import platform
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from transformers import Qwen2_5_VLConfig, TrainerCallback

from mmr.data.chat import TokenizedSample, tokenize_sample
from mmr.data.packing import (
    collate_packed,
    collate_padded,
    model_inputs,
    pack_first_fit_decreasing,
)
from mmr.data.schema import Sample
from mmr.models import freeze_modules, get_family, tiny
from mmr.models.attention import segment_lengths
from mmr.sft.config import SFTConfig
from mmr.sft.loss import CausalLMLoss, use_chunked
from mmr.sft.perf import count_params, peak_flops, step_flops
from mmr.sft.train import (
    PerfMeter,
    VisionKeepalive,
    deepspeed_config,
    resolve_attention,
    setup_distributed,
)

FAMILY = "qwen2_5_vl"
MIX_SIZE = 512  # one `data.pack_buffer` (its default) of mmr's SFT stream
FREEZE = ["vision_tower", "projector"]  # the recipes' default
MERGED_PATCH = 28  # pixels per side of one image token (14-pixel patches, 2x2 merge)
WORDS = [  # the chains of thought are random words from this list
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "on", "be", "at",
    "by", "this", "we", "are", "from", "or", "an", "which", "so", "first", "then", "next",
    "area", "angle", "point", "line", "circle", "triangle", "square", "radius", "length",
    "width", "sum", "value", "equal", "total", "since", "because", "therefore", "check",
    "again", "wait", "hmm", "compute", "find", "given", "let", "us", "see", "figure", "image",
    "shows", "red", "blue", "two", "three", "four", "five", "half", "number", "answer",
]  # fmt: skip
Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Preset:
    """A model shape and how it is measured."""

    text: dict[str, Any]
    vision: dict[str, Any]
    device: str
    packing_factor: int  # packing_length = packing_factor x the longest sample
    gradient_checkpointing: bool


PRESETS = {
    "cpu": Preset(
        text=dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=2, intermediate_size=1376, vocab_size=8192,
                  tie_word_embeddings=False, mrope_section=[8, 12, 12]),
        vision=dict(depth=4, hidden_size=256, intermediate_size=1024, num_heads=4,
                    fullatt_block_indexes=[1, 3]),
        device="cpu", packing_factor=4, gradient_checkpointing=False,
    ),
    "gpu3b": Preset(  # Qwen/Qwen2.5-VL-3B-Instruct's config.json
        text=dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16,
                  num_key_value_heads=2, intermediate_size=11008, vocab_size=151936,
                  tie_word_embeddings=True, mrope_section=[16, 24, 24],
                  max_position_embeddings=128000, rms_norm_eps=1e-6),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                    fullatt_block_indexes=[7, 15, 23, 31]),
        device="cuda", packing_factor=2, gradient_checkpointing=True,
    ),
}  # fmt: skip


# ---- model ---------------------------------------------------------------------------


def model_config(preset: Preset, tokenizer: Any) -> Qwen2_5_VLConfig:
    """The tiny builder's config (token ids, rope type, vision layout), resized."""
    base = tiny.build_config(FAMILY, tokenizer).to_dict()
    text = {k: v for k, v in preset.text.items() if k != "mrope_section"}
    base["text_config"].pop("layer_types", None)  # rebuilt for the new depth
    base["text_config"].update(text)
    base["text_config"]["rope_parameters"]["mrope_section"] = preset.text["mrope_section"]
    base["vision_config"].update(preset.vision, out_hidden_size=text["hidden_size"])
    base["vocab_size"] = text["vocab_size"]
    base["tie_word_embeddings"] = text["tie_word_embeddings"]
    return Qwen2_5_VLConfig(**base)


def build_model(preset: Preset, seed: int, device: torch.device) -> tuple[Any, Any]:
    """(model on CPU with the tower frozen, processor); each variant trains a copy of it."""
    tokenizer = tiny.build_tokenizer(FAMILY)
    # Images of up to 768 tokens at full scale (see `image_tokens`).
    processor = tiny.build_processor(FAMILY, tokenizer, max_pixels=1024 * MERGED_PATCH**2)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    attn = resolve_attention(SFTConfig().model, device)
    torch.manual_seed(seed)
    model = get_family(FAMILY).model_class._from_config(
        model_config(preset, tokenizer), attn_implementation=attn, dtype=dtype
    )
    model.config.text_config.use_cache = False  # as mmr.sft.train does
    freeze_modules(model, FREEZE)
    return model, processor


def fresh_copy(base: torch.nn.Module, preset: Preset, device: torch.device) -> torch.nn.Module:
    model = copy.deepcopy(base).to(device)
    if preset.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- data ----------------------------------------------------------------------------


def target_length(rng: random.Random) -> float:
    """A full-scale sample length (tokens) drawn from the OpenMMReasoner-like mix."""
    u = rng.random()
    if u < 0.15:
        return rng.uniform(256, 1024)
    if u < 0.90:
        while not 1024 <= (n := rng.lognormvariate(math.log(2048), 0.4)) <= 4096:
            pass
        return n
    return math.exp(rng.uniform(math.log(4096), math.log(8192)))


def image_tokens(rng: random.Random, scale: float, length: int) -> tuple[int, int]:
    """(rows, cols) of merged patches: 128-768 tokens at full scale, <= a third of the sample."""
    tokens = math.exp(rng.uniform(math.log(128), math.log(768))) * scale
    tokens = max(4, min(int(tokens), length // 3))
    rows = max(2, round(math.sqrt(tokens) * rng.uniform(0.7, 1.3)))
    return rows, max(2, tokens // rows)


def synthetic_sample(i: int, rows: int, cols: int, words: list[str]) -> Sample:
    image = Image.effect_noise((cols * MERGED_PATCH, rows * MERGED_PATCH), 64).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return Sample(
        id=f"bench-{i}",
        source="bench",
        question=f"<image>Question {i}: what is the area of the shaded region?",
        answer="7",
        images=[buf.getvalue()],
        response="<think>" + "".join(" " + w for w in words) + "</think> \\boxed{7}",
    )


def make_mix(n: int, scale: float, seed: int, processor: Any) -> list[TokenizedSample]:
    """`n` tokenized samples whose lengths follow the mix, scaled by `scale`."""
    rng = random.Random(seed)
    tok = processor.tokenizer
    cost = {w: len(tok(" " + w, add_special_tokens=False)["input_ids"]) for w in WORDS}
    probe = tokenize_sample(synthetic_sample(-1, 2, 2, []), processor)
    overhead = len(probe) - 4  # everything but the words and the image's 2x2 tokens
    items = []
    for i in range(n):
        length = max(48, int(target_length(rng) * scale))
        rows, cols = image_tokens(rng, scale, length)
        words, budget = [], length - overhead - rows * cols
        while budget > 0:
            words.append(rng.choice(WORDS))
            budget -= cost[words[-1]]
        item = tokenize_sample(synthetic_sample(i, rows, cols, words), processor)
        if item is None:
            raise RuntimeError(f"synthetic sample {i} failed to tokenize")
        items.append(item)
    return items


@dataclass
class Workload:
    """The same samples as packed rows and as padded batches, plus warm-up batches of each."""

    packing_length: int
    efficiency: float  # FFD over the whole mix
    rows: int  # rows in the whole mix
    warm_rows: list[Batch]
    packed: list[Batch]
    warm_padded: list[Batch]
    padded: list[Batch]
    padded_batch_size: int
    measured_samples: int


def make_workload(
    items: list[TokenizedSample], preset: Preset, get_rope_index: Any, pad_id: int, args: Any
) -> Workload:
    """Pack the whole mix; pick warm-up + measured rows at random; pad the same samples."""
    lengths = [len(it) for it in items]
    packing_length = preset.packing_factor * max(lengths)
    bins = pack_first_fit_decreasing(lengths, packing_length)
    efficiency = sum(lengths) / (len(bins) * packing_length)
    if args.warmup + args.steps > len(bins):
        raise SystemExit(f"--warmup + --steps must be <= {len(bins)} (rows in the mix)")
    picked = random.Random(args.seed).sample(bins, args.warmup + args.steps)
    size = max(1, round(len(items) / len(bins)))  # samples per row: as many real tokens

    def packed(row_bins: list[list[int]]) -> list[Batch]:
        return [
            collate_packed([items[i] for i in b], get_rope_index, pad_token_id=pad_id,
                           packing_length=packing_length)
            for b in row_bins
        ]  # fmt: skip

    def padded(row_bins: list[list[int]]) -> list[Batch]:
        order = sorted(i for b in row_bins for i in b)  # the stream's order
        chunks = [order[k : k + size] for k in range(0, len(order), size)]
        return [collate_padded([items[i] for i in c], pad_token_id=pad_id) for c in chunks]

    warm, measured = picked[: args.warmup], picked[args.warmup :]
    return Workload(
        packing_length=packing_length,
        efficiency=efficiency,
        rows=len(bins),
        warm_rows=packed(warm),
        packed=packed(measured),
        warm_padded=padded(warm)[: args.warmup],
        padded=padded(measured),
        padded_batch_size=size,
        measured_samples=sum(len(b) for b in measured),
    )


def sample_sizes(batch: Batch) -> list[tuple[int, int]]:
    """(tokens, vision patches) of each sample in a packed row (positions restart at 0)."""
    lengths = segment_lengths(batch["position_ids"][0, 0])
    grid = batch["image_grid_thw"].prod(-1).tolist()  # one image per sample
    return list(zip(lengths[: len(grid)], grid))  # the last segment is padding


# ---- measurements --------------------------------------------------------------------
# The machine may be shared, so each comparison interleaves its two sides step by step:
# a burst of load from elsewhere slows both, not one.


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def adamw(model: torch.nn.Module, cfg: SFTConfig) -> torch.optim.AdamW:
    """AdamW on the trainable parameters with the recipe's settings, as mmr.sft.train."""
    return torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
    )


def interleave(a: list[Batch], b: list[Batch]) -> list[tuple[str, Batch]]:
    """Packed rows and padded batches merged by their position in their own list."""
    tagged = [(i / len(a), 0, "packed", x) for i, x in enumerate(a)]
    tagged += [(j / len(b), 1, "padded", y) for j, y in enumerate(b)]
    return [(kind, x) for _, _, kind, x in sorted(tagged, key=lambda t: t[:2])]


def packed_vs_padded(
    model: torch.nn.Module, work: Workload, cfg: SFTConfig, device: torch.device
) -> dict[str, float]:
    """Seconds of forward + backward + AdamW step over the measured packed rows and padded
    batches, one model and optimizer stepping through both, interleaved. A padded batch
    that runs out of GPU memory ends the padded side (its time becomes NaN)."""
    optimizer = adamw(model, cfg)
    spent = {"packed": 0.0, "padded": 0.0}
    warm = interleave(work.warm_rows, work.warm_padded)
    for i, (kind, batch) in enumerate(warm + interleave(work.packed, work.padded)):
        if math.isnan(spent[kind]):
            continue
        sync(device)
        start = time.perf_counter()
        try:
            loss = model(**to_device(model_inputs(batch), device)).loss
            loss.backward()
            optimizer.step()
        except torch.cuda.OutOfMemoryError:
            if kind == "packed":
                raise
            spent[kind], loss = math.nan, None
            release(device)
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if i >= len(warm):
            spent[kind] += time.perf_counter() - start
    return spent


class MmrStep:
    """mmr's optimizer step: the engine that mmr.sft.train.train builds, and its loop body."""

    def __init__(
        self, model: torch.nn.Module, cfg: SFTConfig, processor: Any, device: torch.device
    ) -> None:
        import deepspeed
        from transformers import get_scheduler

        dtype = next(model.parameters()).dtype
        total_steps = cfg.trainer.max_steps
        # As in mmr.sft.train.train, from the optimizer to deepspeed.initialize.
        optimizer = adamw(model, cfg)
        self.scheduler = get_scheduler(
            "cosine_with_min_lr" if cfg.optim.scheduler == "cosine" else cfg.optim.scheduler,
            optimizer,
            num_warmup_steps=math.ceil(cfg.optim.warmup_ratio * total_steps),
            num_training_steps=total_steps,
            **({"scheduler_specific_kwargs": {"min_lr_rate": cfg.optim.min_lr_ratio}}
               if cfg.optim.scheduler == "cosine" else {}),
        )  # fmt: skip
        self.engine, _, _, _ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=self.scheduler,
            config=deepspeed_config(cfg, dtype),
        )
        self.vision = VisionKeepalive(model, processor, device)
        chunked = use_chunked(cfg.model.chunked_loss, device, cfg.deepspeed.zero_stage)
        self.lm_loss = CausalLMLoss(model, chunked=chunked)
        self.perf = PerfMeter(model, device, world_size=1)
        self.device = device
        self.metrics: list[dict[str, Any]] = []
        self.engine.train()

    def __call__(self, batch: Batch) -> float:
        """One optimizer step on `batch` (accumulation 1); returns its seconds."""
        start = time.perf_counter()
        engine = self.engine
        batch = {k: v.to(self.device) for k, v in batch.items()}
        inputs = {k: v for k, v in batch.items() if k != "num_tokens"}
        loss = self.lm_loss(engine, inputs) + self.vision.zero_term(batch)
        lr = self.scheduler.get_last_lr()[0]
        engine.backward(loss)
        engine.step()
        self.perf.t0 = start  # PerfMeter times from the last step; here, this step alone
        micro = self.perf.micro_stats(batch, loss)
        self.metrics.append(self.perf.step_metrics([micro], engine, lr))
        sync(self.device)
        return time.perf_counter() - start


class StepTimer(TrainerCallback):
    """Times each Trainer step from when the Trainer has control until its step ends, and
    on CPU runs one mmr step after each (interleaved, timed apart)."""

    def __init__(self, device: torch.device, rows: list[Batch]) -> None:
        self.device, self.rows = device, rows
        self.mmr: MmrStep | None = None
        self.trainer_s: list[float] = []
        self.mmr_s: list[float] = []
        self.resumed = 0.0
        self.trainer_digest = self.mmr_digest = torch.zeros(0)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.resumed = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        sync(self.device)
        self.trainer_s.append(time.perf_counter() - self.resumed)
        if self.mmr is not None:
            self.mmr_s.append(self.mmr(self.rows[state.global_step - 1]))
        self.resumed = time.perf_counter()


def weights_digest(model: torch.nn.Module) -> torch.Tensor:
    """Per-parameter sums of the trainable weights: equal after equal training."""
    with torch.no_grad():
        return torch.stack([p.double().sum().cpu() for p in model.parameters() if p.requires_grad])


def relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| relative to |b| (to 1 where |b| < 1)."""
    return float(((a - b).abs() / b.abs().clamp(min=1)).max())


def first_item(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The Trainer's collator: each dataset item is already one collated packed row."""
    return items[0]


def make_trainer(
    model: torch.nn.Module, rows: list[Batch], cfg: SFTConfig, device: torch.device,
    seed: int, timer: StepTimer, out: str, with_deepspeed: bool,
) -> Any:  # fmt: skip
    """transformers' Trainer on the same rows with the same AdamW, schedule and clipping;
    `with_deepspeed`: given mmr's DeepSpeed JSON (the Trainer fills in its "auto" keys)."""
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    o, total = cfg.optim, cfg.trainer.max_steps
    args = TrainingArguments(
        output_dir=out, max_steps=total, per_device_train_batch_size=1, seed=seed,
        optim="adamw_torch", learning_rate=o.lr, adam_beta1=o.betas[0], adam_beta2=o.betas[1],
        adam_epsilon=o.eps, weight_decay=o.weight_decay, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": o.min_lr_ratio},
        warmup_steps=math.ceil(o.warmup_ratio * total), max_grad_norm=o.grad_clip,
        bf16=device.type == "cuda", use_cpu=device.type == "cpu",
        train_sampling_strategy="sequential", remove_unused_columns=False,
        dataloader_num_workers=0, logging_strategy="no", save_strategy="no",
        eval_strategy="no", report_to="none", disable_tqdm=True,
        deepspeed=trainer_deepspeed_config(cfg, device) if with_deepspeed else None,
    )  # fmt: skip
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=[model_inputs(r) for r in rows],  # use_cache=False in every row
        data_collator=first_item,
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)  # it prints the end-of-training summary
    return trainer


def trainer_deepspeed_config(cfg: SFTConfig, device: torch.device) -> dict[str, Any]:
    """mmr's DeepSpeed JSON with the keys the Trainer sets from its own arguments on "auto"."""
    ds = deepspeed_config(cfg, torch.bfloat16 if device.type == "cuda" else torch.float32)
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):  # fmt: skip
        ds[key] = "auto"
    return ds


def mmr_vs_trainer(
    base: torch.nn.Module, preset: Preset, work: Workload, processor: Any, seed: int,
    device: torch.device, with_deepspeed: bool,
) -> StepTimer:  # fmt: skip
    """Step times of both on the same rows, from fresh copies of the same weights.

    The plain Trainer is built before mmr's one-process gloo group exists, so it runs as a
    plain single-process script (with the group, it would wrap the model in DDP). On a GPU the
    two run one after the other (both models and optimizers do not fit at once), and the
    Trainer's bf16 autocast updates bf16 weights while DeepSpeed keeps fp32 master weights:
    mmr does a little more work there.
    """
    rows = [*work.warm_rows, *work.packed]
    cfg = SFTConfig()
    cfg.trainer.max_steps = len(rows)
    timer = StepTimer(device, rows)
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(
            fresh_copy(base, preset, device), rows, cfg, device, seed, timer, out,
            with_deepspeed,
        )  # fmt: skip
        _, world_size, _ = setup_distributed(preset.device)
        if world_size != 1:
            raise SystemExit("run this benchmark as one process (python, not torchrun)")
        if device.type == "cpu":
            timer.mmr = MmrStep(fresh_copy(base, preset, device), cfg, processor, device)
        trainer.train()
        timer.trainer_digest = weights_digest(trainer.model)
        if with_deepspeed:
            trainer.model_wrapped.destroy()
        del trainer
        release(device)
        if timer.mmr is None:
            timer.mmr = MmrStep(fresh_copy(base, preset, device), cfg, processor, device)
            timer.mmr_s = [timer.mmr(row) for row in rows]
    timer.mmr_digest = weights_digest(timer.mmr.engine.module)
    timer.mmr.engine.destroy()
    return timer


# ---- report --------------------------------------------------------------------------


def machine(device: torch.device) -> str:
    import deepspeed
    import transformers

    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = names[0] if names else platform.processor()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores (torch threads {torch.get_num_threads()}), {gpu}; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"deepspeed {deepspeed.__version__}"
    )


def verdict(value: float, target: float, higher: bool = True) -> str:
    if math.isnan(value):
        return "n/a"
    return "met" if (value >= target if higher else value <= target) else "NOT met"


@dataclass
class Results:
    packed_s: float
    padded_s: float
    mmr_steps: list[float]  # interleaved with the Trainer + DeepSpeed steps
    trainer_steps: list[float]  # Trainer with mmr's DeepSpeed config
    plain_mmr_steps: list[float]  # interleaved with the plain Trainer steps
    plain_trainer_steps: list[float]  # Trainer with torch AdamW, no DeepSpeed
    mmr_metrics: list[dict[str, Any]]
    row_flops: float  # mean model FLOPs of a measured row, attention per sample
    weights_diff: float  # max relative difference of mmr's and the Trainer's final weights
    plain_weights_diff: float


def describe(args: Any, preset: Preset, base: Any, items: list, work: Workload) -> list[str]:
    """The header: machine, model, data, packing and what was measured."""
    total = sum(p.numel() for p in base.parameters())
    trainable = sum(p.numel() for p in base.parameters() if p.requires_grad)
    text = base.config.text_config
    lengths = sorted(len(it) for it in items)
    img = statistics.mean(int(it.image_grid_thw.prod()) // 4 for it in items)
    real = sum(int(b["num_tokens"]) for b in work.packed)
    slots = [b["input_ids"].numel() for b in work.padded]
    s = args.scale
    return [
        f"model    : {FAMILY} preset {args.preset}: {total / 1e6:.1f}M parameters "
        f"({trainable / 1e6:.1f}M trainable, vision tower + projector frozen); text hidden "
        f"{text.hidden_size} x {text.num_hidden_layers} layers, vocab rows {text.vocab_size}; "
        f"{next(base.parameters()).dtype}, {base.config._attn_implementation}"
        + (", gradient checkpointing" if preset.gradient_checkpointing else ""),
        f"data     : {len(items)} samples, lengths x{s:g} of the full-scale mix (short "
        f"{256 * s:.0f}-{1024 * s:.0f}, typical {1024 * s:.0f}-{4096 * s:.0f}, long "
        f"{4096 * s:.0f}-{8192 * s:.0f} tokens); min/median/mean/max "
        f"{lengths[0]}/{lengths[len(lengths) // 2]}/{statistics.mean(lengths):.0f}/"
        f"{lengths[-1]}; one image each, {img:.0f} image tokens on average",
        f"packing  : length {work.packing_length} ({preset.packing_factor}x the longest "
        f"sample), {work.rows} rows for the mix",
        f"measured : {len(work.packed)} random rows = {work.measured_samples} samples, {real:,} "
        f"real tokens; the same samples padded: batch size {work.padded_batch_size}, "
        f"{len(work.padded)} batches of {statistics.mean(slots):,.0f} slots on average "
        f"(max {max(slots):,}; a packed row: {work.packing_length:,}); warm-up {args.warmup} "
        "rows/batches/steps before each side, not timed",
    ]


def figures(preset: Preset, work: Workload, r: Results, device: torch.device) -> list[str]:
    """The table of figures and goals."""
    real = sum(int(b["num_tokens"]) for b in work.packed)
    packed_slots = sum(b["input_ids"].numel() for b in work.packed)
    padded_slots = sum(b["input_ids"].numel() for b in work.padded)
    packed_tps, padded_tps = real / r.packed_s, real / r.padded_s  # NaN: out of memory
    mmr, hf = statistics.median(r.mmr_steps), statistics.median(r.trainer_steps)
    mmr2, plain = statistics.median(r.plain_mmr_steps), statistics.median(r.plain_trainer_steps)
    rows = [
        ("packing efficiency, FFD over the mix", f"{work.efficiency:.1%}", ">= 97%",
         verdict(work.efficiency, 0.97)),
        ("  non-pad fraction, measured packed rows", f"{real / packed_slots:.1%}", "", ""),
        ("  non-pad fraction, same samples padded", f"{real / padded_slots:.1%}", "", ""),
        ("packed tokens/s (fwd+bwd+AdamW)", f"{packed_tps:,.0f}", "", ""),
        ("padded tokens/s (same samples)", f"{padded_tps:,.0f}", "",
         "out of GPU memory" if math.isnan(padded_tps) else ""),
        ("packed / padded", f"{packed_tps / padded_tps:.2f}x", ">= 2x",
         verdict(packed_tps / padded_tps, 2.0)),
        ("  padded slots / packed slots", f"{padded_slots / packed_slots:.2f}x", "", ""),
        ("mmr step (DeepSpeed ZeRO-2), median s", f"{mmr:.3f}",
         f"{min(r.mmr_steps):.3f}-{max(r.mmr_steps):.3f}", ""),
        ("Trainer step, same DeepSpeed config, median s", f"{hf:.3f}",
         f"{min(r.trainer_steps):.3f}-{max(r.trainer_steps):.3f}", ""),
        ("mmr / Trainer step time", f"{mmr / hf:.3f}x", "<= 1.0x", verdict(mmr / hf, 1.0, False)),
        ("  final weights, mmr vs Trainer (rel.)", f"{r.weights_diff:.0e}", "same work", ""),
        ("plain Trainer step (torch AdamW), median s", f"{plain:.3f}",
         f"{min(r.plain_trainer_steps):.3f}-{max(r.plain_trainer_steps):.3f}", ""),
        ("  mmr step beside it, median s", f"{mmr2:.3f}",
         f"{min(r.plain_mmr_steps):.3f}-{max(r.plain_mmr_steps):.3f}", ""),
        ("  mmr / plain Trainer step time", f"{mmr2 / plain:.3f}x", "", ""),
        ("  final weights, mmr vs plain Trainer", f"{r.plain_weights_diff:.0e}", "same work", ""),
    ]  # fmt: skip
    peak = peak_flops(device)
    if peak is not None:
        logged = statistics.median(m["perf/mfu"] for m in r.mmr_metrics)
        tps = statistics.median(m["perf/tokens_per_s"] for m in r.mmr_metrics)
        mfu = r.row_flops / (mmr * peak)
        rows += [
            ("mmr tokens/s (PerfMeter, median)", f"{tps:,.0f}", "", ""),
            ("mmr MFU, attention per sample", f"{mfu:.1%}", ">= 40%", verdict(mfu, 0.40)),
            ("  MFU as PerfMeter logs it (whole row)", f"{logged:.1%}", "", ""),
            ("packed fwd+bwd+AdamW MFU",
             f"{r.row_flops * len(work.packed) / (r.packed_s * peak):.1%}", "", ""),
        ]  # fmt: skip
    width = max(len(name) for name, *_ in rows)
    lines = [f"{'figure':<{width}}  {'value':>10}  {'goal/range':<12} result"]
    lines += [f"{n:<{width}}  {v:>10}  {g:<12} {ok}".rstrip() for n, v, g, ok in rows]
    return lines


# ---- main ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--scale", type=float, default=None,
                        help="length factor (default 1/8 on CPU, 1 for gpu3b)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=5, help="timed rows / optimizer steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")
    preset = PRESETS[args.preset]
    if preset.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"--preset {args.preset} trains a Qwen2.5-VL-3B-shaped model in bf16 and needs a "
            "CUDA GPU; none is visible. Run the default CPU preset here."
        )
    if args.scale is None:
        args.scale = 1.0 if preset.device == "cuda" else 0.125
    return args


def measure(
    base: Any, preset: Preset, work: Workload, processor: Any, args: Any, device: torch.device
) -> Results:
    """Packed vs padded on one fresh copy of `base`, then mmr vs Trainer on two more."""
    model = fresh_copy(base, preset, device)
    cfg = SFTConfig()
    spent = packed_vs_padded(model, work, cfg, device)
    del model
    release(device)
    plain = mmr_vs_trainer(base, preset, work, processor, args.seed, device, False)
    timer = mmr_vs_trainer(base, preset, work, processor, args.seed, device, True)
    warmup = len(work.warm_rows)
    lm = sum(count_params(base, p)[0] for p in ("model.language_model", "lm_head"))
    vision = count_params(base, "model.visual")[0]
    flops = [
        step_flops(base, tokens=n, seq_len=n, vision_patches=p, lm_params=lm,
                   vision_params=vision, vision_trains=False)
        for row in work.packed for n, p in sample_sizes(row)
    ]  # fmt: skip
    return Results(
        packed_s=spent["packed"],
        padded_s=spent["padded"],
        mmr_steps=timer.mmr_s[warmup:],
        trainer_steps=timer.trainer_s[warmup:],
        plain_mmr_steps=plain.mmr_s[warmup:],
        plain_trainer_steps=plain.trainer_s[warmup:],
        mmr_metrics=timer.mmr.metrics[warmup:],
        row_flops=sum(flops) / len(work.packed),
        weights_diff=relative_diff(timer.mmr_digest, timer.trainer_digest),
        plain_weights_diff=relative_diff(plain.mmr_digest, plain.trainer_digest),
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    load = os.getloadavg()[0]
    preset = PRESETS[args.preset]
    device = torch.device("cuda", 0) if preset.device == "cuda" else torch.device("cpu")
    quiet()
    base, processor = build_model(preset, args.seed, device)
    items = make_mix(MIX_SIZE, args.scale, args.seed, processor)
    work = make_workload(
        items, preset, base.model.get_rope_index, processor.tokenizer.pad_token_id, args
    )
    results = measure(base, preset, work, processor, args, device)
    print(f"\nSFT throughput, {time.strftime('%Y-%m-%d')}")
    print(f"machine  : {machine(device)}; load average {load:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end")  # fmt: skip
    print("\n".join(describe(args, preset, base, items, work)))
    print("\n".join(figures(preset, work, results, device)))
    print(f"wall time: {time.perf_counter() - start:.0f} s")


def quiet() -> None:
    """DeepSpeed's and transformers' info logs would bury the table."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


if __name__ == "__main__":
    main()
