"""GSPO in one process, on CPU: the debug engine. verl (`mmr rl train`) is the training engine.

    mmr rl local --config recipes/demo/tiny_gspo.yaml model.path=runs/demo/sft/final \
        data.train_files=[runs/demo/rl/train.parquet] trainer.output_dir=runs/demo/gspo

verl's trainer is the one that scales (vLLM rollouts, FSDP, Ray; it runs on CPU too, see
`recipes/demo/tiny_gspo_verl.yaml`). This file runs the same algorithm in one process, with
no servers, for the tests, the demo's fallback and reward debugging. A step:

1. a batch of prompts from the recipe's Sample files, each answered `rollout.n` times by HF
   `generate` (`mmr.models.generate`: sampling, seeded per step);
2. rewards through `mmr.rewards.score_batch`, the scorer verl's bridge and `mmr eval` use
   (group = the prompt, so the group-relative length term sees all n siblings);
3. group advantages from verl's `compute_grpo_outcome_advantage`, exactly 0 for a group
   whose rewards are all equal (`mmr.rl.advantage`, verl's float32 mean leaves ~-0.007);
4. old log-probs of the rollout policy (no grad, before the update), then the policy loss
   from verl's `get_policy_loss_fn(algorithm.loss_mode)` (GSPO by default) with the
   recipe's clip ratios and `loss_agg_mode`, and an AdamW step on the trainable parameters
   (the vision tower and projector are frozen by default, as in SFT).

With `algorithm.filter_groups` (DAPO's dynamic sampling, verl's keys), groups whose
responses are all the same on its `metric` are dropped after step 2 and more prompts are
generated until the batch is full (`mmr.rl.filter_groups`, `Rollouts.select` and `Rollouts.concat`).
Available as in verl's actor, off by default (OpenMMReasoner uses neither): an entropy
bonus (`algorithm.entropy_coeff`) and a KL loss to the model at model.path
(`algorithm.use_kl_loss`). Left out: vLLM, dynamic batches
(micro-batches are fixed-size), Ray, multi-device. Losses and advantages are verl's
functions, imported, never rewritten; checkpoints are `mmr.checkpoint`'s, as SFT's.

Outputs in `trainer.output_dir`: config.yaml, data_stats.json, metrics.jsonl (per step:
`reward`, `reward/<part>`, judge fallbacks, errors, `response/length`, `loss`, `clip_fraction`,
`lr`, `grad_norm`, timings, `reward/sampled` and `reward/sampled_accuracy` (over every
rollout generated, before the filter); with the filter `train/gen_batches`, `train/groups_filtered`,
`train/groups_flat_kept`), rollouts.jsonl (each response, its score, parts and advantage),
checkpoints/step_N (resume: `trainer.resume=auto`) and final/ (an HF folder).
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmr import launch
from mmr.checkpoint import (
    TrainerState,
    begin_save,
    checkpoint_root,
    find_resume_dir,
    load_rng,
    mark_complete,
    prune,
    read_state,
    safe_load,
    save_rng,
    write_state,
)
from mmr.config import config_to_dict, save_config
from mmr.data.chat import build_messages, decode_images
from mmr.data.io import read_samples
from mmr.data.schema import Sample
from mmr.metrics import MetricLogger, truncate_jsonl
from mmr.models import generate
from mmr.models.build import build_model
from mmr.models.export import save_hf_checkpoint
from mmr.rewards import RewardConfig, score_batch, summarize
from mmr.rl import filter_groups
from mmr.rl.advantage import grpo_advantages
from mmr.rl.local_config import LocalRLConfig

logger = logging.getLogger("mmr.rl.local")


def main(argv: Sequence[str] | None = None) -> int:
    return launch.main(
        "mmr rl local", LocalRLConfig, train, argv, __doc__, "recipes/demo/tiny_gspo.yaml"
    )


def train(cfg: LocalRLConfig) -> dict[str, Any]:
    """Run the recipe; returns the last step's metrics."""
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    logging.basicConfig(level=logging.INFO)
    launch.preflight(cfg)
    out = Path(cfg.trainer.output_dir)
    save_config(cfg, out / "config.yaml")

    # The model is both the rollout policy and the one trained: no separate inference engine.
    model, processor, device = build_policy(cfg)
    reference = build_reference(cfg, device) if cfg.algorithm.use_kl_loss else None
    prompts = load_prompts(cfg, processor, out)
    per_epoch = len(prompts) // cfg.data.batch_size
    total_steps = cfg.trainer.max_steps or cfg.trainer.epochs * per_epoch
    optimizer, scheduler = build_optimizer(cfg, model, total_steps)
    loss_fn, actor_cfg = get_policy_loss_fn(cfg.algorithm.loss_mode), build_actor_config(cfg)

    state = TrainerState(seed=cfg.trainer.seed)
    resume_dir = find_resume_dir(cfg.trainer.resume, out)
    if resume_dir is not None:
        state = load_checkpoint(resume_dir, model, optimizer, scheduler, config_to_dict(cfg))
        logger.info("resumed from %s at step %d (epoch %d)", resume_dir, state.step, state.epoch)
    saved_at = state.step
    log = MetricLogger(out, cfg.wandb, config_to_dict(cfg), total_steps, 0, resume_at=state.step)
    truncate_jsonl(out / "rollouts.jsonl", state.step)
    metrics: dict[str, Any] = {}
    while state.step < total_steps:
        step, times = state.step + 1, {"rollout": 0.0, "reward": 0.0}
        t0 = time.perf_counter()

        # 1-2. Rollouts, n samples per prompt from the current policy, and their rewards
        #    (the scorer of verl's bridge and of eval; a judge outage falls back); with
        #    algorithm.filter_groups, more prompts until the batch's groups differ. Sampling
        #    is seeded by (seed, step): a resumed run draws the responses an unbroken one does.
        torch.manual_seed(cfg.trainer.seed * 1_000_003 + step)
        rollouts, rows, filtered = collect_rollouts(model, processor, prompts, state, cfg,
                                                    device, times)  # fmt: skip
        t2 = time.perf_counter()

        # 3. Advantages: verl's GRPO estimator, one group per prompt.
        scores = torch.tensor([float(r["score"]) for r in rows])
        advantages = compute_advantages(
            scores, rollouts.response_mask, rollouts.groups, cfg.algorithm.norm_adv_by_std_in_grpo
        ).to(device)

        # 4. Update: old log-probs, verl's policy loss, AdamW. The lr logged is the one used.
        lr = scheduler.get_last_lr()[0]
        stats = update_policy(
            model, optimizer, rollouts, advantages, cfg, loss_fn, actor_cfg, reference
        )
        scheduler.step()
        state.step = step
        t3 = time.perf_counter()

        times.update(update=t3 - t2, step=t3 - t0)
        metrics = {**step_metrics(rows, rollouts, stats, lr, times), **filtered}
        if step % cfg.trainer.log_steps == 0 or step == total_steps:
            log.log(step, metrics)
        if cfg.trainer.log_rollouts:
            write_rollouts(out / "rollouts.jsonl", step, rollouts, rows, advantages)
        if cfg.trainer.save_steps > 0 and step % cfg.trainer.save_steps == 0:
            save_checkpoint(out, state, model, optimizer, scheduler, cfg)
            saved_at = step

    # The end: a last checkpoint (unless the periodic one has it) and the HF export.
    if saved_at != state.step:
        save_checkpoint(out, state, model, optimizer, scheduler, cfg)
    if cfg.trainer.export:
        save_hf_checkpoint(model, processor, out / "final")
        logger.info("exported the trained model to %s", out / "final")
    log.close()
    return metrics


# ---- setup --------------------------------------------------------------------------


def build_policy(cfg: LocalRLConfig) -> tuple[Any, Any, torch.device]:
    """Model (vision tower and projector frozen by default), processor and device."""
    choice = cfg.trainer.device
    use_cuda = choice == "cuda" or (choice == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    model, processor = build_model(cfg.model, device)
    return model, processor, device


def build_reference(cfg: LocalRLConfig, device: torch.device) -> Any:
    """The KL loss's reference: the model at model.path (the SFT model, also on resume),
    frozen, in eval mode."""
    reference, _ = build_model(cfg.model, device)
    reference.requires_grad_(False)
    return reference.eval()


@dataclass
class Prompt:
    """One question as the policy sees it: the Sample and its chat-templated prompt text."""

    sample: Sample
    text: str  # ends with the assistant header (add_generation_prompt)


def load_prompts(cfg: LocalRLConfig, processor: Any, out: Path) -> list[Prompt]:
    """Every usable prompt; unreadable and overlong ones are skipped and counted."""
    prompts, skipped = [], Counter()
    for file in cfg.data.train_files:
        for sample in read_samples(file, fmt=cfg.data.format, image_root=cfg.data.image_root):
            try:
                chat = build_messages(
                    sample, system_prompt=cfg.data.system_prompt, with_response=False
                )
                images = decode_images(sample)
            except (OSError, ValueError) as err:
                logger.warning("skipping prompt %r: %s", sample.id, err)
                skipped["bad_input"] += 1
                continue
            text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            tokens = len(processor(text=[text], images=images or None)["input_ids"][0])
            if 0 < cfg.data.max_prompt_length < tokens:  # as verl's filter_overlong_prompts
                skipped["too_long"] += 1
            else:
                prompts.append(Prompt(sample, text))
    (out / "data_stats.json").write_text(json.dumps({"prompts": len(prompts), "skipped": skipped}))
    if len(prompts) < max(cfg.data.batch_size, cfg.data.gen_batch_size):
        raise ValueError(
            f"{len(prompts)} usable prompts (skipped: {dict(skipped)}) is fewer than one "
            f"batch (data.batch_size={cfg.data.batch_size}, "
            f"data.gen_batch_size={cfg.data.gen_batch_size})"
        )
    return prompts


def build_optimizer(cfg: LocalRLConfig, model: Any, total_steps: int) -> tuple[Any, Any]:
    """AdamW on the trainable parameters only; the schedule steps once per RL step (as verl)."""
    from transformers import get_scheduler

    o = cfg.optim
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
    )
    cosine = o.scheduler == "cosine"
    scheduler = get_scheduler(
        "cosine_with_min_lr" if cosine else "constant_with_warmup",
        optimizer,
        num_warmup_steps=o.warmup_steps,
        num_training_steps=total_steps,
        scheduler_specific_kwargs={"min_lr_rate": o.min_lr_ratio} if cosine else None,
    )
    return optimizer, scheduler


def build_actor_config(cfg: LocalRLConfig) -> Any:
    """verl's ActorConfig, where its losses read the clip ratios, `loss_agg_mode`,
    `policy_loss` and the entropy and KL terms; `strategy` and the micro-batch size are
    required fields with no use here."""
    from verl.workers.config import ActorConfig
    from verl.workers.config.actor import PolicyLossConfig

    a = cfg.algorithm
    return ActorConfig(
        strategy="fsdp",
        rollout_n=cfg.rollout.n,
        ppo_micro_batch_size_per_gpu=cfg.data.batch_size * cfg.rollout.n,
        clip_ratio_low=a.clip_ratio_low,
        clip_ratio_high=a.clip_ratio_high,
        loss_agg_mode=a.loss_agg_mode,
        policy_loss=PolicyLossConfig(loss_mode=a.loss_mode),
        entropy_coeff=a.entropy_coeff,
        use_kl_loss=a.use_kl_loss,
        kl_loss_coef=a.kl_loss_coef,
        kl_loss_type=a.kl_loss_type,
    )


def next_batch(
    prompts: list[Prompt], state: TrainerState, cfg: LocalRLConfig, size: int = 0
) -> list[Prompt]:
    """The next `size` (default `data.batch_size`) prompts of a seeded per-epoch order (a
    short tail is skipped)."""
    size = size or cfg.data.batch_size
    if state.position + size > len(prompts):
        state.epoch, state.position = state.epoch + 1, 0
    order = list(range(len(prompts)))
    if cfg.data.shuffle:
        random.Random(f"{cfg.trainer.seed}/{state.epoch}").shuffle(order)
    state.position += size
    return [prompts[i] for i in order[state.position - size : state.position]]


# ---- rollouts -----------------------------------------------------------------------


@dataclass
class Rollouts:
    """n responses per prompt, prompt-major: rows i*n .. i*n+n-1 are prompt i's group."""

    inputs: dict[str, torch.Tensor]  # processor output for every row's prompt (left-padded)
    image_offsets: list[int]  # row r's images are image_offsets[r] .. image_offsets[r+1]
    responses: torch.Tensor  # (rows, R) sampled token ids, padded after the end token
    response_mask: torch.Tensor  # (rows, R) 1 on response tokens, the end token included
    truncated: torch.Tensor  # (rows,) True where no end token came within max_new_tokens
    samples: list[Sample]  # each row's question
    groups: list[str]  # each row's group id
    texts: list[str]  # decoded responses (special tokens dropped)
    pad_token_id: int  # what pads input_ids and responses (`concat` pads to a common width)

    def model_inputs(self, rows: slice) -> dict[str, torch.Tensor]:
        """Prompt inputs of a contiguous row range, with exactly those rows' image patches."""
        image_keys = ("pixel_values", "image_grid_thw")
        out = {k: v[rows] for k, v in self.inputs.items() if k not in image_keys}
        a, b = self.image_offsets[rows.start], self.image_offsets[rows.stop]
        if b > a:
            grid = self.inputs["image_grid_thw"]
            patches = [0, *grid.prod(dim=-1).cumsum(0).tolist()]
            out["image_grid_thw"] = grid[a:b]
            out["pixel_values"] = self.inputs["pixel_values"][patches[a] : patches[b]]
        return out

    def select(self, rows: Sequence[int]) -> Rollouts:
        """These rows, in this order, with exactly their images (by `image_offsets`)."""
        rows = [int(r) for r in rows]
        image_keys = ("pixel_values", "image_grid_thw")
        index = torch.tensor(rows, dtype=torch.long)
        inputs = {k: v[index.to(v.device)] for k, v in self.inputs.items() if k not in image_keys}
        offsets = self.image_offsets
        images = [i for r in rows for i in range(offsets[r], offsets[r + 1])]
        if "image_grid_thw" in self.inputs:
            grid, pixels = self.inputs["image_grid_thw"], self.inputs["pixel_values"]
            patches = [0, *grid.prod(dim=-1).cumsum(0).tolist()]
            inputs["image_grid_thw"] = grid[images]
            inputs["pixel_values"] = torch.cat(
                [pixels[patches[i] : patches[i + 1]] for i in images]
            ) if images else pixels[:0]  # fmt: skip
        counts = [offsets[r + 1] - offsets[r] for r in rows]
        return Rollouts(
            inputs=inputs,
            image_offsets=[0, *np.cumsum(counts, dtype=int).tolist()],
            responses=self.responses[index.to(self.responses.device)],
            response_mask=self.response_mask[index.to(self.response_mask.device)],
            truncated=self.truncated[index.to(self.truncated.device)],
            samples=[self.samples[r] for r in rows],
            groups=[self.groups[r] for r in rows],
            texts=[self.texts[r] for r in rows],
            pad_token_id=self.pad_token_id,
        )

    @staticmethod
    def concat(parts: Sequence[Rollouts]) -> Rollouts:
        """Rollout batches one after another; prompts stay left-padded and responses
        right-padded, to the widest of the parts. Group ids must differ between parts."""
        seen: set[str] = set()
        for part in parts:
            if repeated := seen & set(part.groups):
                raise ValueError(f"Rollouts.concat: group ids repeat: {sorted(repeated)}")
            seen |= set(part.groups)
        first, image_keys = parts[0], ("pixel_values", "image_grid_thw")

        def pad(t: torch.Tensor, width: int, value: int, left: bool) -> torch.Tensor:
            fill = t.new_full((t.shape[0], width - t.shape[1]), value)
            return torch.cat([fill, t] if left else [t, fill], dim=1)

        inputs = {}
        for key in first.inputs:
            tensors = [part.inputs[key] for part in parts]
            if key not in image_keys:  # (rows, prompt length), left-padded
                width = max(t.shape[1] for t in tensors)
                value = first.pad_token_id if key == "input_ids" else 0
                tensors = [pad(t, width, value, left=True) for t in tensors]
            inputs[key] = torch.cat(tensors)
        width = max(part.responses.shape[1] for part in parts)
        offsets = [0]
        for part in parts:
            offsets += [offsets[-1] + o for o in part.image_offsets[1:]]
        return Rollouts(
            inputs=inputs,
            image_offsets=offsets,
            responses=torch.cat([pad(p.responses, width, p.pad_token_id, False) for p in parts]),
            response_mask=torch.cat([pad(p.response_mask, width, 0, False) for p in parts]),
            truncated=torch.cat([p.truncated for p in parts]),
            samples=[s for p in parts for s in p.samples],
            groups=[g for p in parts for g in p.groups],
            texts=[t for p in parts for t in p.texts],
            pad_token_id=first.pad_token_id,
        )


def generate_rollouts(
    model: Any, processor: Any, batch: list[Prompt], cfg: LocalRLConfig, device: torch.device,
    first_group: int = 0,
) -> Rollouts:  # fmt: skip
    """Sample `rollout.n` responses for each prompt of the batch in one `generate` call;
    prompt i's group is `first_group + i`."""
    n = cfg.rollout.n
    rows = [p for p in batch for _ in range(n)]
    images = [decode_images(p.sample) for p in rows]
    flat = [img for imgs in images for img in imgs]
    inputs = processor(text=[p.text for p in rows], images=flat or None, padding=True,
                       padding_side="left", return_tensors="pt")  # fmt: skip
    inputs = {k: v.to(device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    r = cfg.rollout
    out = generate.sample(model, inputs, max_new_tokens=r.max_new_tokens,
                          temperature=r.temperature, top_p=r.top_p, top_k=r.top_k)  # fmt: skip
    return Rollouts(
        inputs=inputs,
        image_offsets=[0, *np.cumsum([len(imgs) for imgs in images]).tolist()],
        responses=out.tokens,
        response_mask=out.mask,
        truncated=out.truncated,
        samples=[p.sample for p in rows],
        groups=[str(first_group + i // n) for i in range(len(rows))],
        texts=generate.decode(processor.tokenizer, out),
        pad_token_id=int(processor.tokenizer.pad_token_id),
    )


def collect_rollouts(
    model: Any, processor: Any, prompts: list[Prompt], state: TrainerState, cfg: LocalRLConfig,
    device: torch.device, times: dict[str, float],
) -> tuple[Rollouts, list[dict[str, Any]], dict[str, float]]:  # fmt: skip
    """The step's rollouts, their reward rows and the step's sampling metrics: the
    reward of every rollout generated (`reward/sampled`, `reward/sampled_accuracy`:
    `filter_groups.sampled_metrics`) and the filter's (`train/gen_batches`,
    `train/groups_filtered`, `train/groups_flat_kept`; none when it is off). With
    `algorithm.filter_groups` each generation batch is the next `data.gen_batch_size`
    prompts (default `data.batch_size`), until the step has `data.batch_size` groups that
    differ (`mmr.rl.filter_groups`); `times` adds up the generation and scoring seconds."""
    size, section = cfg.data.batch_size, cfg.algorithm.filter_groups
    gen_size = (cfg.data.gen_batch_size or size) if section.enable else size
    parts: list[tuple[Rollouts, list[dict[str, Any]]]] = []
    collector = filter_groups.Collector(section, size) if section.enable else None
    while not parts or (collector is not None and collector.wants_more()):
        t0 = time.perf_counter()
        batch = next_batch(prompts, state, cfg, gen_size)
        rollouts = generate_rollouts(model, processor, batch, cfg, device, len(parts) * gen_size)
        t1 = time.perf_counter()
        rows = score_rollouts(rollouts, cfg.reward)
        times["rollout"] += t1 - t0
        times["reward"] += time.perf_counter() - t1
        parts.append((rollouts, rows))
        if collector is not None:
            collector.add(rows, rollouts.groups)
    all_rows = [row for _, rows in parts for row in rows]
    if collector is None:
        return parts[0][0], parts[0][1], filter_groups.sampled_metrics(all_rows)
    metrics = {**collector.metrics("train/"), **filter_groups.sampled_metrics(all_rows)}
    every = Rollouts.concat([r for r, _ in parts])
    keep = [i for _, g in collector.chosen() for i, h in enumerate(every.groups) if h == g]
    return every.select(keep), [all_rows[i] for i in keep], metrics


# ---- rewards and advantages ---------------------------------------------------------


def score_rollouts(rollouts: Rollouts, reward_cfg: RewardConfig) -> list[dict[str, Any]]:
    """Every response through `mmr.rewards.score_batch`, with its group and token count."""
    lengths = rollouts.response_mask.sum(-1).tolist()
    rows = zip(rollouts.samples, rollouts.texts, rollouts.groups, lengths)
    items = [
        {"response": text, "ground_truth": s.answer, "question": s.question,
         "data_source": s.source, "extra_info": {"id": s.id, "question": s.question},
         "group": group, "response_tokens": int(tokens)}
        for s, text, group, tokens in rows
    ]  # fmt: skip
    return score_batch(items, reward_cfg)


def compute_advantages(
    scores: torch.Tensor, response_mask: torch.Tensor, groups: Sequence[str], norm_by_std: bool
) -> torch.Tensor:
    """verl's GRPO advantages (exactly 0 on all-equal groups: `mmr.rl.advantage`), each
    response's score relative to its group on every token (verl takes token-level rewards:
    the outcome score on each response's last token)."""

    mask = response_mask.detach().cpu()
    token_rewards = torch.zeros(mask.shape, dtype=torch.float32)
    last = (mask.sum(-1).long() - 1).clamp(min=0)  # the mask is a prefix of each row
    token_rewards[torch.arange(len(scores)), last] = scores.float()
    advantages, _ = grpo_advantages(
        token_level_rewards=token_rewards,
        response_mask=mask,
        index=np.array(list(groups), dtype=object),
        norm_adv_by_std_in_grpo=norm_by_std,
    )
    return advantages


# ---- the policy update --------------------------------------------------------------


def response_log_probs(
    model: Any, rollouts: Rollouts, rows: slice, temp: float, entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(rows, R) log-probs of the sampled tokens under `model`, logits / temperature as verl,
    and (with `entropy`) each position's token entropy (verl's `entropy_from_logits`)."""
    from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits

    inputs = rollouts.model_inputs(rows)
    responses, mask = rollouts.responses[rows], rollouts.response_mask[rows]
    inputs["input_ids"] = torch.cat([inputs["input_ids"], responses], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], mask], dim=1)
    if "mm_token_type_ids" in inputs:  # response tokens are text (type 0)
        mm = inputs["mm_token_type_ids"]
        inputs["mm_token_type_ids"] = torch.cat([mm, torch.zeros_like(responses)], dim=1)
    # Only the positions that predict response tokens need logits (the last R + 1, minus one).
    logits = model(**inputs, use_cache=False, logits_to_keep=responses.shape[1] + 1).logits
    scaled = logits[:, :-1].float() / temp
    return logprobs_from_logits(scaled, responses), entropy_from_logits(scaled) if entropy else None


def policy_loss(
    loss_fn: Any, actor_cfg: Any, log_prob: torch.Tensor, old_log_prob: torch.Tensor,
    advantages: torch.Tensor, response_mask: torch.Tensor, entropy: torch.Tensor | None = None,
    ref_log_prob: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:  # fmt: skip
    """verl's policy loss (GSPO: `compute_policy_loss_gspo`) and its metrics, called as
    verl's actor calls it (per micro-batch, normalised by `config.global_batch_info`), with
    the entropy bonus and KL loss added as verl's `workers/utils/losses.py` adds them."""
    from verl.trainer.ppo.core_algos import agg_loss, kl_penalty

    loss, metrics = loss_fn(old_log_prob=old_log_prob, log_prob=log_prob, advantages=advantages,
                            response_mask=response_mask, loss_agg_mode=actor_cfg.loss_agg_mode,
                            config=actor_cfg)  # fmt: skip
    mask, mode, info = response_mask.bool(), actor_cfg.loss_agg_mode, actor_cfg.global_batch_info
    if entropy is not None:
        entropy_loss = agg_loss(loss_mat=entropy, loss_mask=mask, loss_agg_mode=mode, **info)
        loss = loss - actor_cfg.entropy_coeff * entropy_loss
        metrics["actor/entropy"] = float(entropy[mask].mean()) if mask.any() else 0.0
    if ref_log_prob is not None:
        kld = kl_penalty(logprob=log_prob, ref_logprob=ref_log_prob,
                         kl_penalty=actor_cfg.kl_loss_type)  # fmt: skip
        kl_loss = agg_loss(loss_mat=kld, loss_mask=mask, loss_agg_mode=mode, **info)
        loss = loss + actor_cfg.kl_loss_coef * kl_loss
        metrics["actor/kl_loss"] = float(kl_loss.detach())
    return loss, metrics


def update_policy(
    model: Any, optimizer: Any, rollouts: Rollouts, advantages: torch.Tensor,
    cfg: LocalRLConfig, loss_fn: Any, actor_cfg: Any, reference: Any = None,
) -> dict[str, float]:  # fmt: skip
    """ppo_epochs x mini-batches of verl's policy loss, one AdamW step per mini-batch, each
    mini-batch in micro-batches of `algorithm.ppo_micro_batch_size` rollouts (0: one).
    `reference`: the frozen model of the KL loss (`algorithm.use_kl_loss`)."""
    alg, temperature, mask = cfg.algorithm, cfg.rollout.temperature, rollouts.response_mask
    rows = len(rollouts.samples)
    size = alg.ppo_mini_batch_size * cfg.rollout.n or rows
    minis = [slice(b, min(b + size, rows)) for b in range(0, rows, size)]
    # Old log-probs: the rollout policy's, before any update, computed on the very same
    # mini-batches as the update's, so the first pass starts at an importance ratio of 1.
    model.eval()
    with torch.no_grad():
        old = torch.cat([response_log_probs(model, rollouts, s, temperature)[0] for s in minis])
        ref = None
        if reference is not None:
            ref = torch.cat(
                [response_log_probs(reference, rollouts, s, temperature)[0] for s in minis]
            )
    trainable = [p for p in model.parameters() if p.requires_grad]
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
    seen: dict[str, list[float]] = {"loss": [], "clip_fraction": [], "ppo_kl": [], "grad_norm": []}
    extra: dict[str, list[float]] = {}  # the entropy and KL terms' metrics, when on
    skipped = 0
    model.train()
    for _ in range(alg.ppo_epochs):
        for s in minis:
            optimizer.zero_grad(set_to_none=True)
            # Micro-batches accumulate gradients; verl's global batch info makes each micro
            # loss its share of the mini-batch loss (as verl's actor sets it), so the summed
            # gradient is the whole mini-batch's for every loss_agg_mode.
            actor_cfg.global_batch_info.update(
                dp_size=1,
                batch_num_tokens=int(mask[s].sum()),
                global_batch_size=int((mask[s].sum(-1) > 0).sum()),
                loss_scale_factor=getattr(actor_cfg, "loss_scale_factor", None),
            )
            micro = alg.ppo_micro_batch_size or (s.stop - s.start)
            loss_sum, clips, kls = 0.0, [], []
            for b in range(s.start, s.stop, micro):
                m_slice = slice(b, min(b + micro, s.stop))
                log_prob, entropy = response_log_probs(model, rollouts, m_slice, temperature,
                                                       entropy=alg.entropy_coeff > 0)  # fmt: skip
                loss, m = policy_loss(loss_fn, actor_cfg, log_prob, old[m_slice],
                                      advantages[m_slice], mask[m_slice], entropy,
                                      None if ref is None else ref[m_slice])  # fmt: skip
                for key in ("actor/entropy", "actor/kl_loss"):
                    if key in m:
                        extra.setdefault(key.removeprefix("actor/"), []).append(m[key])
                loss.backward()
                loss_sum += float(loss.detach())
                clips.append(m.get("actor/pg_clipfrac", math.nan))
                kls.append(m.get("actor/ppo_kl", math.nan))
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, max_norm))
            if math.isfinite(grad_norm):
                optimizer.step()
            else:  # as verl: a non-finite gradient skips the step instead of ruining the weights
                skipped += 1
                logger.warning("grad norm is %s: optimizer step skipped", grad_norm)
            clip, kl = float(np.mean(clips)), float(np.mean(kls))
            for key, value in zip(seen, (loss_sum, clip, kl, grad_norm)):
                seen[key].append(value)
    optimizer.zero_grad(set_to_none=True)
    means = {k: float(np.mean(v)) for k, v in {**seen, **extra}.items()}
    return {**means, "skipped_steps": skipped}


# ---- metrics and the rollout log ----------------------------------------------------


def step_metrics(
    rows: list[dict[str, Any]], rollouts: Rollouts, stats: dict[str, float], lr: float,
    times: dict[str, float],
) -> dict[str, Any]:  # fmt: skip
    """One metrics.jsonl record: reward parts, response lengths, loss, clipping, timings."""
    s = summarize(rows)
    lengths = rollouts.response_mask.sum(-1).float()
    groups = {
        g: {r["score"] for r, h in zip(rows, rollouts.groups) if h == g} for g in rollouts.groups
    }
    counts = ("judged", "judge_fallback", "errors", "timeouts", "no_answer", "plugin_errors")
    metrics = {
        "reward": s["mean_score"],
        **{f"reward/{k}": s[f"mean_{k}"] for k in ("accuracy", "format", "length")},
        **{f"reward/{k}": s[k] for k in counts if k in s},
        # Groups whose responses all scored the same teach nothing (advantage exactly 0):
        # a reward-debugging signal.
        "reward/flat_groups": sum(len(v) == 1 for v in groups.values()) / len(groups),
        "response/length": float(lengths.mean()),
        "response/truncated": float(rollouts.truncated.float().mean()),
        **{f"train/{k}": v for k, v in stats.items()},
        "train/lr": lr,
        **{f"perf/{k}_s": v for k, v in times.items()},
    }
    # Short names for quick `jq` (MetricLogger adds loss, lr and grad_norm).
    metrics.update(clip_fraction=stats["clip_fraction"], response_length=float(lengths.mean()))
    return metrics


def write_rollouts(
    path: Path, step: int, rollouts: Rollouts, rows: list[dict[str, Any]], advantages: torch.Tensor
) -> None:
    """Append every response of the step with its score, parts and advantage."""
    keys = ("score", "accuracy", "format", "length", "judge", "judge_fallback",
            "extracted_answer", "decided_by", "error", "response_tokens")  # fmt: skip
    with path.open("a", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            record = {"step": step, "group": rollouts.groups[i], "id": rollouts.samples[i].id,
                      "answer": rollouts.samples[i].answer, "response": rollouts.texts[i],
                      **{k: row.get(k) for k in keys}, "advantage": float(advantages[i, 0]),
                      "truncated": bool(rollouts.truncated[i])}  # fmt: skip
            f.write(json.dumps(record, default=str) + "\n")


# ---- checkpoints --------------------------------------------------------------------


def save_checkpoint(
    out: Path, state: TrainerState, model: Any, optimizer: Any, scheduler: Any, cfg: LocalRLConfig
) -> Path:
    """checkpoints/step_N (`mmr.checkpoint`'s layout): state.pt (model, optimizer,
    scheduler), the RNG and trainer_state.json; complete.json last, so a run killed in the
    middle of a save resumes from the previous checkpoint."""
    root = checkpoint_root(out)
    folder = begin_save(root, state.step)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, folder / "state.pt")  # fmt: skip
    save_rng(folder, rank=0)
    write_state(folder, state, config_to_dict(cfg))
    mark_complete(folder)
    prune(root, cfg.trainer.keep_checkpoints)
    return folder


def load_checkpoint(
    folder: Path, model: Any, optimizer: Any, scheduler: Any, config: dict[str, Any]
) -> TrainerState:
    """Restore model, optimizer, scheduler and RNG (weights_only); warn where the config differs."""
    saved = safe_load(folder / "state.pt")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    load_rng(folder, rank=0)
    return read_state(folder, config)


if __name__ == "__main__":  # the reward's math-verify workers start with forkserver
    sys.exit(main())
