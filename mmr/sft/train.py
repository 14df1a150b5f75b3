"""Supervised fine-tuning of a Qwen-VL model with DeepSpeed ZeRO-2, read top to bottom.

    torchrun --nproc_per_node 8 -m mmr.sft.train --config recipes/omr_7b_sft.yaml optim.lr=5e-6
    mmr sft --config recipes/demo/tiny_sft.yaml            # the same code, one process, CPU ok

The recipe: load the config -> set up ranks -> build model and processor -> freeze the
vision tower and projector -> stream, tokenize and pack the data -> wrap in DeepSpeed
(ZeRO-2, AdamW on trainable parameters only, cosine schedule with warmup, clipping,
accumulation) -> loop -> log -> checkpoint -> export an HF folder.

How it differs from the public recipes: OpenMMReasoner trained with lmms-engine (FSDP2)
and updated the vision tower; MMFineReason used LLaMA-Factory with DeepSpeed ZeRO-2 and a
frozen vision tower. mmr freezes it by default in both (`model.freeze=[]` unfreezes).
CPU and GPU run this same file; only the backend (gloo/nccl), dtype (fp32/bf16) and
attention kernel (sdpa/flash-attn varlen) differ.

Outputs in `trainer.output_dir`: config.yaml, metrics.jsonl (one line per optimizer
step: step, loss, lr, grad_norm, tokens_per_s, non_pad_fraction, mfu), data_stats.json,
checkpoints/step_N (resume with `trainer.resume=auto`), final/ (HF folder).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mmr import launch
from mmr.checkpoint import TrainerState, find_resume_dir
from mmr.config import config_to_dict, save_config
from mmr.data.io import count_rows
from mmr.data.packing import model_inputs
from mmr.metrics import MetricLogger
from mmr.models import attention
from mmr.models.build import build_model, resolve_dtype
from mmr.models.export import save_hf_checkpoint
from mmr.models.registry import parameter_groups
from mmr.sft.checkpoint import load_checkpoint, save_checkpoint
from mmr.sft.config import SFTConfig
from mmr.sft.data import SFTStream, prefetched
from mmr.sft.loss import CausalLMLoss, use_chunked
from mmr.sft.perf import count_params, peak_flops, sample_lengths, step_flops

logger = logging.getLogger("mmr.sft")


def main(argv: Sequence[str] | None = None) -> int:
    return launch.main("mmr sft", SFTConfig, train, argv, __doc__, "recipes/*_sft.yaml")


def train(cfg: SFTConfig) -> dict[str, Any]:
    """Run the recipe; returns the last step's metrics."""
    launch.preflight(cfg)
    rank, world_size, device = setup_distributed(cfg.trainer.device)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING)
    seed_everything(cfg.trainer.seed)
    out = Path(cfg.trainer.output_dir)
    if rank == 0:
        save_config(cfg, out / "config.yaml")

    # Model: dtype and attention kernel follow the device; the vision tower is frozen.
    dtype = resolve_dtype(cfg.model.dtype, device)
    model, processor = build_model(
        cfg.model, device, attn_implementation=resolve_attention(cfg.model, device)
    )
    # No KV cache in training (the packed attention mask needs it off, too).
    getattr(model.config, "text_config", model.config).use_cache = False
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # Data: a deterministic stream per (seed, epoch, rank), so resume can replay it.
    stream = SFTStream(
        cfg.data,
        processor,
        model.model.get_rope_index,
        seed=cfg.trainer.seed,
        rank=rank,
        world_size=world_size,
    )
    total_steps = plan_total_steps(cfg, stream, device)

    # DeepSpeed: ZeRO partitions optimizer states and gradients; only trainable
    # parameters reach AdamW, so frozen weights have no optimizer state at all.
    import deepspeed
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(
        parameter_groups(model, cfg.optim.lr, cfg.optim.lr_scale),
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
    )
    scheduler = get_scheduler(
        "cosine_with_min_lr" if cfg.optim.scheduler == "cosine" else cfg.optim.scheduler,
        optimizer,
        num_warmup_steps=math.ceil(cfg.optim.warmup_ratio * total_steps),
        num_training_steps=total_steps,
        **({"scheduler_specific_kwargs": {"min_lr_rate": cfg.optim.min_lr_ratio}}
           if cfg.optim.scheduler == "cosine" else {}),
    )  # fmt: skip
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, dtype),
    )

    state = TrainerState(seed=cfg.trainer.seed)
    resume_dir = find_resume_dir(cfg.trainer.resume, out)
    if resume_dir is not None:
        state = load_checkpoint(engine, resume_dir, config_to_dict(cfg))
        logger.info("resumed from %s at step %d (epoch %d)", resume_dir, state.step, state.epoch)

    # The loop: one micro-batch per engine.step(); DeepSpeed accumulates, clips and
    # steps the optimizer and scheduler at each accumulation boundary.
    log = MetricLogger(out, cfg.wandb, config_to_dict(cfg), total_steps, rank, resume_at=state.step)
    vision = VisionKeepalive(model, processor, device)
    # ZeRO-3 partitions lm_head.weight, which the chunked loss reads outside the head's
    # forward: there, transformers' loss (the head's forward gathers its weight).
    chunked = use_chunked(cfg.model.chunked_loss, device, cfg.deepspeed.zero_stage)
    if cfg.model.chunked_loss and not chunked:
        logger.info("model.chunked_loss: not with ZeRO-3; using transformers' loss")
    lm_loss = CausalLMLoss(model, chunked=chunked)
    perf = PerfMeter(model, device, world_size)
    window: list[dict[str, float]] = []
    metrics: dict[str, Any] = {}
    engine.train()
    while state.step < total_steps:
        trained_any = False
        batches = prefetched(
            stream.batches(state.epoch, skip=state.position),
            prefetch_depth(cfg.data.prefetch, device),
            pin=device.type == "cuda",
        )
        try:
            for batch in synced(batches, device):
                trained_any = True
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                inputs = model_inputs(batch)
                loss = lm_loss(engine, inputs) + vision.zero_term(batch)
                boundary = engine.is_gradient_accumulation_boundary()
                # The base rate this optimizer step uses (parts in optim.lr_scale: a multiple)
                lr = cfg.optim.lr * scheduler.get_last_lr()[-1] / scheduler.base_lrs[-1]
                engine.backward(loss)
                engine.step()
                state.position += 1
                window.append(perf.micro_stats(batch, loss))
                if not boundary:
                    continue
                state.step += 1
                metrics = perf.step_metrics(window, engine, lr)
                window = []
                if state.step % cfg.trainer.log_steps == 0 or state.step == total_steps:
                    log.log(state.step, {**metrics, "train/epoch": state.epoch})
                if cfg.trainer.save_steps > 0 and state.step % cfg.trainer.save_steps == 0:
                    save_checkpoint(
                        engine, out, state, config_to_dict(cfg), cfg.trainer.keep_checkpoints
                    )
                if state.step >= total_steps:
                    break
            else:
                if not trained_any:
                    raise RuntimeError(f"epoch {state.epoch} produced no batches on some rank")
                if rank == 0:
                    write_data_stats(out, stream, state.epoch, whole_epoch=True)
                state.epoch += 1
                state.position = 0
        finally:
            batches.close()  # stops the prefetch thread when the loop ends early
        if rank == 0 and state.step >= total_steps and state.position > 0:
            write_data_stats(out, stream, state.epoch, whole_epoch=False)

    # The end: a last checkpoint (if the periodic one missed it) and the HF export.
    if cfg.trainer.save_steps > 0 and state.step % cfg.trainer.save_steps != 0:
        save_checkpoint(engine, out, state, config_to_dict(cfg), cfg.trainer.keep_checkpoints)
    check_ranks_agree(engine, out, rank)
    if cfg.trainer.export:
        export_final(engine, processor, out / "final", cfg.deepspeed.zero_stage, rank)
    log.close()
    if dist.is_initialized():
        dist.barrier()
    return metrics


# ---- setup --------------------------------------------------------------------------


def setup_distributed(device_choice: str) -> tuple[int, int, torch.device]:
    """Join the torchrun group (or make a group of one): nccl on GPU, gloo on CPU."""
    import deepspeed

    use_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    # A plain `python -m mmr.sft.train` is a group of one; torchrun sets these itself.
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if not dist.is_initialized():
        deepspeed.init_distributed(
            dist_backend="nccl" if use_cuda else "gloo", auto_mpi_discovery=False, verbose=False
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prefetch_depth(prefetch: int | None, device: torch.device) -> int:
    return prefetch if prefetch is not None else (2 if device.type == "cuda" else 0)


def resolve_attention(model_cfg: Any, device: torch.device) -> str:
    """flash-attn 2 on CUDA when installed; else mmr's `sdpa_varlen` (sdpa per packed sample,
    transformers' sdpa for everything else: `mmr.models.attention`)."""
    if model_cfg.attn_implementation:
        return model_cfg.attn_implementation
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return attention.register()


def plan_total_steps(cfg: SFTConfig, stream: SFTStream, device: torch.device) -> int:
    """`trainer.max_steps`, else epochs x (micro-batches per epoch on the shortest rank)."""
    if cfg.trainer.max_steps > 0:
        return cfg.trainer.max_steps
    if cfg.trainer.plan_steps == "estimate":
        n = torch.tensor(estimate_micro_batches(cfg, stream), device=device)
    else:
        n = torch.tensor(sum(1 for _ in stream.micro_batch_sizes(0)), device=device)
    if dist.is_initialized():
        dist.all_reduce(n, op=dist.ReduceOp.MIN)
    steps = cfg.trainer.epochs * int(n) // cfg.trainer.gradient_accumulation_steps
    if steps <= 0:
        raise RuntimeError(
            f"the data gives {int(n)} micro-batches per epoch on the smallest rank, fewer than "
            f"gradient_accumulation_steps={cfg.trainer.gradient_accumulation_steps}"
        )
    return steps


def estimate_micro_batches(cfg: SFTConfig, stream: SFTStream) -> int:
    """Micro-batches per epoch on this rank, from row counts and a sample of micro-batches.

    This rank's rows come from file metadata (`count_rows`), split as `SFTStream` splits
    them (row j of each file goes to rank j % world_size); the mean samples per
    micro-batch from the first `trainer.plan_sample` micro-batches of epoch 0. When the
    sample is the whole epoch, or a file's rows cannot be counted cheaply, the count is exact.
    """
    groups = stream.micro_batch_sizes(0)
    sizes = list(itertools.islice(groups, cfg.trainer.plan_sample))
    if len(sizes) < cfg.trainer.plan_sample:
        return len(sizes)  # the whole epoch was seen
    counts = [count_rows(path) for path in cfg.data.train_files]
    if any(c is None for c in counts):
        logger.warning("plan_steps=estimate: a JSON list has no cheap row count; counting exactly")
        return len(sizes) + sum(1 for _ in groups)  # the sample plus the rest of the epoch
    rows = sum(max(0, -(-(c - stream.rank) // stream.world_size)) for c in counts)
    estimate = max(1, math.ceil(rows * len(sizes) / sum(sizes)))
    logger.info(
        "plan_steps=estimate: %d rows on this rank / %.2f samples per micro-batch (first %d) "
        "-> %d micro-batches per epoch",
        rows, sum(sizes) / len(sizes), len(sizes), estimate,
    )  # fmt: skip
    return estimate


def deepspeed_config(cfg: SFTConfig, dtype: torch.dtype) -> dict[str, Any]:
    """DeepSpeed's JSON, built from the recipe (micro-batches are assembled by mmr)."""
    ds = cfg.deepspeed
    zero: dict[str, Any] = {
        "stage": ds.zero_stage,
        "overlap_comm": ds.overlap_comm,
        "contiguous_gradients": ds.contiguous_gradients,
        "reduce_bucket_size": ds.reduce_bucket_size,
        "allgather_bucket_size": ds.allgather_bucket_size,
    }
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": cfg.trainer.gradient_accumulation_steps,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "zero_allow_untested_optimizer": True,  # torch AdamW: no CPU-Adam build needed
        "steps_per_print": 2**31 - 1,  # mmr logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }


# ---- loop helpers -------------------------------------------------------------------


def synced(batches: Iterator[dict], device: torch.device) -> Iterator[dict]:
    """Yield batches while *every* rank has one, so no rank waits in a collective alone.

    Ranks hold different shares of the data and pack them into different numbers of
    rows; the epoch ends for all when the first rank runs out.
    """
    for batch in _with_end_marker(batches):
        has = torch.tensor(0 if batch is None else 1, device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(has, op=dist.ReduceOp.MIN)
        if int(has) == 0:
            return
        yield batch


def _with_end_marker(it: Iterator[dict]) -> Iterator[dict | None]:
    yield from it
    yield None


class VisionKeepalive:
    """Run the vision tower on a blank image when a micro-batch has none, times zero.

    With a trainable vision tower under ZeRO, a rank whose batch is text-only would skip
    the vision parameters' gradient hooks while other ranks wait for them: a hang. A zero
    term keeps every rank's graph the same. A frozen tower needs no such care.
    """

    def __init__(self, model: torch.nn.Module, processor: Any, device: torch.device) -> None:
        self.visual = model.model.visual
        self.active = any(p.requires_grad for p in self.visual.parameters())
        if self.active:
            from PIL import Image

            side = processor.image_processor.patch_size * processor.image_processor.merge_size
            blank = processor.image_processor(
                images=[Image.new("RGB", (side, side))], return_tensors="pt"
            )
            self.pixels = blank["pixel_values"].to(device)
            self.grid = blank["image_grid_thw"].to(device)

    def zero_term(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | float:
        if not self.active or "pixel_values" in batch:
            return 0.0
        out = self.visual(self.pixels.to(next(self.visual.parameters()).dtype), grid_thw=self.grid)
        tensors = [t for t in _flatten(out) if torch.is_tensor(t) and t.is_floating_point()]
        return sum(t.sum() for t in tensors) * 0.0


def _flatten(obj: Any) -> Iterator[Any]:
    """Every leaf of a nested output (ModelOutput is a dict; deepstack features a list)."""
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _flatten(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _flatten(x)


class PerfMeter:
    """Per-step loss, lr, grad norm, tokens/s, non-pad fraction and MFU."""

    def __init__(self, model: torch.nn.Module, device: torch.device, world_size: int) -> None:
        self.model = model
        self.device = device
        self.world_size = world_size
        self.peak = peak_flops(device)
        self.lm_params = sum(count_params(model, p)[0] for p in ("model.language_model", "lm_head"))
        self.vision_params, vision_trainable = count_params(model, "model.visual")
        self.vision_trains = vision_trainable > 0
        self.t0 = time.perf_counter()

    def micro_stats(self, batch: dict[str, torch.Tensor], loss: torch.Tensor) -> dict[str, Any]:
        tokens = int(batch["num_tokens"])
        seq = int(batch["input_ids"].shape[-1])
        patches = int(batch["pixel_values"].shape[0]) if "pixel_values" in batch else 0
        flops = step_flops(
            self.model,
            tokens=tokens,
            seq_len=seq,
            vision_patches=patches,
            lm_params=self.lm_params,
            vision_params=self.vision_params,
            vision_trains=self.vision_trains,
            sample_lengths=sample_lengths(batch),
        )
        return {
            "loss": loss.detach(),  # a tensor: no device sync per micro-step
            "tokens": tokens,
            "slots": int(batch["input_ids"].numel()),
            "flops": flops,
        }

    def step_metrics(self, window: list[dict], engine: Any, lr: float) -> dict[str, Any]:
        mean_loss = torch.stack([w["loss"].float() for w in window]).mean()
        totals = torch.tensor(
            [0.0] + [float(sum(w[k] for w in window)) for k in ("tokens", "slots", "flops")],
            dtype=torch.float64,
            device=self.device,
        )
        totals[0] = mean_loss.to(torch.float64)  # the one device sync of the step
        if dist.is_initialized() and self.world_size > 1:
            dist.all_reduce(totals)
        loss, tokens, slots, flops = totals.tolist()
        now = time.perf_counter()
        dt, self.t0 = now - self.t0, now
        grad_norm = engine.get_global_grad_norm()
        return {
            "train/loss": loss / self.world_size,
            "train/lr": lr,
            "train/grad_norm": None if grad_norm is None else float(grad_norm),
            "perf/tokens_per_s": tokens / dt,
            "perf/non_pad_fraction": tokens / slots,
            "perf/mfu": None if self.peak is None else flops / (dt * self.peak * self.world_size),
            "perf/step_s": dt,
        }


def write_data_stats(out: Path, stream: SFTStream, epoch: int, *, whole_epoch: bool) -> None:
    """data_stats.json: what rank 0's stream read, dropped, cut and packed in `epoch` (a run
    that stops inside an epoch reports what it read of that epoch, `whole_epoch` false)."""
    stats = {"epoch": epoch, "whole_epoch": whole_epoch, **stream.stats.as_dict()}
    (out / "data_stats.json").write_text(json.dumps(stats, indent=2))


def check_ranks_agree(engine: Any, out: Path, rank: int) -> None:
    """All ranks must hold the same weights after training; a mismatch means desync.

    Writes every rank's weight checksum to rank_checksums.json and raises if they differ.
    Under ZeRO-3 each rank holds a shard, so there is nothing to compare.
    """
    if engine.zero_optimization_stage() == 3:
        return
    with torch.no_grad():
        total = sum(p.double().sum() for p in engine.module.parameters())
    checksum = torch.tensor([float(total)], dtype=torch.float64, device=engine.device)
    sums = [checksum]
    if dist.is_initialized() and dist.get_world_size() > 1:
        sums = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
        dist.all_gather(sums, checksum)
    values = [float(s) for s in sums]
    if rank == 0:
        (out / "rank_checksums.json").write_text(json.dumps(values))
    if any(v != values[0] for v in values):
        raise RuntimeError(f"ranks hold different weights after training: {values}")


def export_final(engine: Any, processor: Any, out: Path, zero_stage: int, rank: int) -> None:
    """HF folder of the trained model; ZeRO-3 gathers the partitioned weights first."""
    state_dict = engine._zero3_consolidated_16bit_state_dict() if zero_stage == 3 else None
    if rank == 0:
        save_hf_checkpoint(engine.module, processor, out, state_dict=state_dict)
        logger.info("exported the trained model to %s", out)


if __name__ == "__main__":
    sys.exit(main())
