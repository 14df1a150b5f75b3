"""The bridge from verl 0.9.1 to mmr's reward (`mmr.rewards`): two hooks, both set by config.

verl 0.9.1's default trainer (`trainer.use_v1=true`, verl/trainer/ppo/v1) streams
rewards: each rollout is scored as soon as it is generated, one trajectory per
`RewardManagerBase.run_single` call on the reward-loop workers
(verl/experimental/reward_loop), while the rest of the batch is still generating, and
the trajectories of one prompt go to randomly chosen workers. So no reward manager sees
a whole rollout group, and verl logs a manager's `reward_extra_info` only in validation.
Whole groups first meet in the replay buffer the trainer samples each batch from
(`ReplayBuffer.sample`, verl/trainer/ppo/v1/replay_buffer.py): it hands out whole uid
groups only (a prompt's rollouts once all of them have ended), before rewards become
advantages; verl lets a config replace it (`trainer.v1.sampler.custom_sampler`) and logs
the metrics `sample` returns under their own names. `mmr rl train` sets both hooks, as
package paths that verl imports (`pkg://mmr.rl.reward`, through
`verl.utils.import_utils.load_module`), so every Ray node finds the installed package
(`--dry-run` shows them):

1. Stage 1, `MMRRewardManager` (`reward.reward_manager`, importlib source): per trajectory, while
   generation goes on, everything that needs only that trajectory, through
   `mmr.rewards.compute_score` (`reward.custom_reward_function`: `pkg://mmr.rewards`, the
   function itself): answer rules, math-verify in worker processes, the LLM
   judge (calls of concurrent trajectories overlap on the judge's async client), format
   and the budget length term, with the response's token count from the batch. The
   parts go back as `reward_extra_info` (`EXTRA_KEYS`, plus `judge` when the judge is on).
2. Stage 2, `MMRGroupSampler` (`trainer.v1.sampler.custom_sampler`): verl's own replay buffer does
   the sampling; on each sampled batch (whole groups, grouped by verl's `uid`) it adds the
   group-relative length term (`length.mode: group|both`) with
   `mmr.rewards.compose.add_group_length` to each response's last-token reward in
   TransferQueue, and returns the batch's reward metrics. With DAPO's dynamic sampling
   on (`algorithm.filter_groups`, verl's keys, `mmr.rl.filter_groups`), it then drops
   the groups whose `metric` is the same in every response (cleared from TransferQueue),
   has verl's trainer generate another batch of prompts (the `refill_fn` verl hands every
   sampler) and samples verl's buffer again, until the batch is full or
   `max_num_gen_batches` generation batches are spent (then all-same groups fill it,
   with a warning). verl's built-in buffer filters before stage 2 and ignores
   `max_num_gen_batches`; `max_inflight_gen_batches`, its bound on speculative refills,
   has no use here (one generation batch at a time).

The result equals `mmr.rewards.score_batch` on the same rollouts with `group=uid`
(tests/rl/test_reward.py checks it).

The reward config travels in one verl key, `REWARD_CONFIG_KEY`
(`reward.custom_reward_function.reward_kwargs.config`), as the nested mapping of
`RewardConfig`: verl binds it into `compute_score` on every reward worker, the manager
reads the same key, and the sampler (which verl hands only `trainer.v1.sampler.
sampler_kwargs`) gets it as `sampler_kwargs.reward_config`, an interpolation of that key
(`${...}`, resolved by verl), not a copy.

Metric names. Training: `reward/accuracy`, `reward/format`, `reward/length` (means over
the batch's responses; the length part includes the group term), `reward/judge_fallback`,
`reward/errors` and `reward/group_length_changed` (responses whose reward the in-group
length term changed), with filtering `reward/gen_batches` (generation batches the batch
took), `reward/groups_filtered` (all-same groups dropped) and `reward/groups_flat_kept`
(all-same groups trained on, when `max_num_gen_batches` ran out) (counts per sampled
batch; with `trainer.v1.trainer_mode: separate_async` and `parameter_sync_step` > 1 verl
averages them over the step's mini-batches), next to verl's own `critic/score/mean`
(the total); verl's wandb table of DAPO-filtered groups per shared value gets the
all-same groups' values. Validation (never filtered): verl drops the sampler's metrics
there and logs every `reward_extra_info` key as
`val-aux/<data_source>/<key>/mean@<n>` (with std/best/worst variants); `acc` (the
accuracy part) is its core metric, `val-core/<data_source>/acc/mean@<n>` (and `best@<n>`,
`maj@<n>`: majority vote over `pred`, the extracted answer).

A judge outage costs time, never the run: a failed or timed-out judge call falls back to
the rule result and a judge that keeps failing is skipped for a cool-down
(`mmr.rewards.judge`); a reward that raises scores 0 and counts in `errors`. Stage 2
makes no network calls. What the hooks cannot cover: verl's legacy trainer
(`trainer.use_v1=false`) has no sampler hook; verl hands `sync_refill_failed_groups`
to its built-in buffer only; a reward model (`reward.reward_model.enable`, unused by
mmr's reward) can move scoring after sampling. `mmr rl train` refuses those settings rather than lose the group term.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from omegaconf import OmegaConf
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from mmr.config import config_from_dict
from mmr.rewards.compose import add_group_length
from mmr.rewards.config import RewardConfig
from mmr.rl import advantage, filter_groups
from mmr.rl.train import POLL_INTERVAL_S, REWARD_CONFIG_KEY, poll_interval_of

logger = logging.getLogger(__name__)
# verl's trainer imports this module for mmr's sampler: the recipes' `mmr_grpo` estimator
# is registered here too, for a run with verl's external plugins off.
advantage.register()

# The keys every trajectory reports, in a fixed order (`judge` follows when the judge is
# on): verl builds its metric arrays from the first trajectory's keys, so they must never
# vary within a run. `acc` and `pred` are what verl's validation metrics read.
EXTRA_KEYS = (
    "acc",
    "pred",
    "accuracy",
    "format",
    "length",
    "judge_fallback",
    "errors",
    "response_tokens",
)
# What the sampler returns for verl to log: metric name -> (reward_extra_info key, how).
METRICS = {
    "reward/accuracy": ("accuracy", "mean"),
    "reward/format": ("format", "mean"),
    "reward/length": ("length", "mean"),
    "reward/judge_fallback": ("judge_fallback", "count"),
    "reward/errors": ("errors", "count"),
    # responses whose reward the in-group length term changed (length.mode group|both)
    "reward/group_length_changed": ("group_length_changed", "count"),
}


def reward_config_of(node: Any, origin: str = REWARD_CONFIG_KEY) -> RewardConfig:
    """The RewardConfig from the nested mapping verl carries (defaults when there is none)."""
    if node is None:
        return RewardConfig()
    if not isinstance(node, Mapping):
        raise TypeError(f"{origin} must be a mapping (RewardConfig's sections), got {node!r}")
    return config_from_dict(RewardConfig, OmegaConf.create(dict(node)), origin)


def extra_info_of(
    result: dict[str, Any] | None, error: str | None, response_tokens: int, judge: bool
) -> dict[str, Any]:
    """Fixed-key values for verl's metrics from one mmr reward result (`judge`: the judge is on)."""
    result = result or {}
    info = {
        "acc": float(result.get("acc", 0.0)),
        "pred": str(result.get("pred") or ""),
        "accuracy": float(result.get("accuracy", 0.0)),
        "format": float(result.get("format", 0.0)),
        "length": float(result.get("length", 0.0)),
        "judge_fallback": float(result.get("judge_fallback", 0.0)),
        "errors": 0.0 if error is None else 1.0,
        "response_tokens": float(response_tokens),
    }
    if judge:  # None where the judge gave no verdict (verl's validation metrics skip None)
        verdict = result.get("judge")
        info["judge"] = None if verdict is None else float(verdict)
    return info


# ---- stage 1: one trajectory, on verl's reward-loop workers ----------------------------


class MMRRewardManager(RewardManagerBase):
    """verl reward manager: each trajectory's reward except the group-relative term."""

    def __init__(
        self,
        config: Any,
        tokenizer: Any,
        compute_score: Any,
        reward_router_address: str | None = None,
        reward_model_tokenizer: Any = None,
    ) -> None:
        super().__init__(config, tokenizer, compute_score)
        # verl hands over `mmr.rewards.compute_score` with its reward_kwargs (the config) bound.
        self.compute_score = compute_score
        node = None if config is None else OmegaConf.select(config, REWARD_CONFIG_KEY)
        self.judge_on = reward_config_of(node).judge.is_enabled()

    async def run_single(self, data: Any) -> dict[str, Any]:
        item = data[-1:][0]
        response_ids = item.batch["responses"]
        n_tokens = int(item.batch["attention_mask"][-response_ids.shape[-1] :].sum())
        response = await self.loop.run_in_executor(
            None,
            lambda: self.tokenizer.decode(response_ids[:n_tokens], skip_special_tokens=True),
        )
        info = dict(item.non_tensor_batch.get("extra_info") or {})
        info["response_tokens"] = n_tokens
        ground_truth = item.non_tensor_batch["reward_model"]["ground_truth"]
        data_source = item.non_tensor_batch.get("data_source", "mmr")
        try:
            result = await self.loop.run_in_executor(
                None,
                lambda: self.compute_score(
                    data_source=data_source,
                    solution_str=response,
                    ground_truth=ground_truth,
                    extra_info=info,
                    response_tokens=n_tokens,
                ),
            )
            error = None
        except Exception as err:  # a reward bug must cost one trajectory, not the run
            logger.exception("mmr reward failed on one trajectory; scoring it 0")
            result, error = None, f"{type(err).__name__}: {err}"
        score = float(result["score"]) if result else 0.0
        info = extra_info_of(result, error, n_tokens, self.judge_on)
        return {"reward_score": score, "reward_extra_info": info}


# ---- stage 2: whole groups, where verl's trainer samples its batch ----------------------


def session_rows(keys: Sequence[str]) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Each session's rows (`{uid}_{session}`: one of a prompt's n rollouts) and the row
    of its last output, which carries the reward."""
    sessions: dict[str, list[int]] = {}
    finals: dict[str, tuple[int, int]] = {}  # session -> (output index, row) of its last output
    for row, key in enumerate(keys):
        uid, session, index = key.rsplit("_", 2)
        name = f"{uid}_{session}"
        sessions.setdefault(name, []).append(row)
        if name not in finals or finals[name][0] < int(index):
            finals[name] = (int(index), row)
    return sessions, {name: row for name, (_, row) in finals.items()}


def finish_groups(
    keys: Sequence[str],
    rm_scores: Sequence[torch.Tensor],
    infos: Sequence[dict[str, Any]],
    cfg: RewardConfig,
) -> tuple[list[torch.Tensor], list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Add the group-relative length term to a sampled batch: its new `rm_scores` and
    `infos`, and one reward row per session with the session's uid (its last output: the
    total `score` and the parts of its `reward_extra_info`), what the metrics
    (`batch_metrics`) and DAPO's filter (`mmr.rl.filter_groups`) read.

    `keys` are verl's TransferQueue keys `{uid}_{session}_{index}` (one session is one of
    the n rollouts of prompt `uid`; an agent loop may write several outputs per session,
    the last one carrying the reward), `rm_scores` each output's per-token rewards (its
    response length, the score on the last token) and `infos` its `reward_extra_info`.
    """
    sessions, finals = session_rows(keys)
    final_rows = list(finals.values())
    scored = [
        {
            "score": float(rm_scores[i].sum()),
            "length": float(infos[i].get("length", 0.0)),
            "accuracy": float(infos[i].get("accuracy", 0.0)),
            "response_tokens": int(infos[i].get("response_tokens", rm_scores[i].numel())),
        }
        for i in final_rows
    ]
    uids = [keys[i].rsplit("_", 2)[0] for i in final_rows]
    done = add_group_length(scored, uids, cfg)

    new_scores = [t.clone() for t in rm_scores]
    new_infos = [dict(info) for info in infos]
    for name, before, after in zip(finals, scored, done):
        changed = float(after["score"] != before["score"])
        for i in sessions[name]:  # verl gives every output of a session the final reward
            if new_scores[i].numel():
                new_scores[i][-1] += after["score"] - before["score"]
            new_infos[i]["length"] = after["length"]
            new_infos[i]["group_length_changed"] = changed
    rows = [{**new_infos[i], "score": float(new_scores[i].sum())} for i in final_rows]
    return new_scores, new_infos, rows, uids


def batch_metrics(infos: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The `reward/*` metrics of a batch from its responses' `reward_extra_info`."""
    if not infos:
        return {}
    out = {}
    for name, (key, how) in METRICS.items():
        total = sum(float(info.get(key, 0.0)) for info in infos)
        out[name] = total / len(infos) if how == "mean" else total
    return out


class MMRGroupSampler:
    """verl's replay buffer for `trainer.v1.sampler.custom_sampler`, plus mmr's stage 2.

    verl builds it with keyword arguments (trainer mode, off-policy settings,
    `sampler_kwargs`, refill function); it builds verl's own buffer for the trainer mode
    with them and wraps it. `sampler_kwargs.reward_config` is the reward config and
    `sampler_kwargs.filter_groups` verl's `algorithm.filter_groups` (`mmr rl train`
    points both at their keys). With filtering on, a training batch's all-same groups
    (after stage 2) are cleared from TransferQueue and verl's refill function (the
    trainer's `_add_prompts_to_generate`) generates another batch of prompts, which
    verl's buffer samples again, until the batch is full or `max_num_gen_batches` is
    reached (`mmr.rl.filter_groups.Collector`). `sampler_kwargs.gen_batch_size` (DAPO's
    generation batch, in prompts; default the step's batch size) makes each generation
    batch larger: the surplus of each step's first batch (over the prompts the trainer
    submitted) is submitted as soon as the step samples, so vLLM generates it beside them.
    """

    def __init__(
        self, trainer_mode: str, sampler_kwargs: Any = None, refill_fn: Any = None, **kwargs: Any
    ) -> None:
        from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync

        kwargs_of = sampler_kwargs or {}
        buffer_cls = ReplayBuffer if trainer_mode == "sync" else ReplayBufferAsync
        self.buffer = buffer_cls(
            trainer_mode=trainer_mode,
            sampler_kwargs=sampler_kwargs,
            refill_fn=refill_fn,
            poll_interval=poll_interval_of(kwargs_of.get("poll_interval_s", POLL_INTERVAL_S)),
            **kwargs,
        )
        self.refill_fn = refill_fn
        self.reward_config = reward_config_of(
            kwargs_of.get("reward_config"), "trainer.v1.sampler.sampler_kwargs.reward_config"
        )
        self.filter = filter_groups.FilterGroupsSection.of(kwargs_of.get("filter_groups"))
        self.filter.check("algorithm.filter_groups")
        if self.filter.enable and refill_fn is None:
            raise ValueError("algorithm.filter_groups needs verl's refill_fn to generate more")
        self.gen_batch_size = kwargs_of.get("gen_batch_size") or 0
        self._surplus_step: int | None = None  # the step whose surplus prompts were submitted

    def sample(self, global_steps: int, partition_id: str, batch_size: int) -> tuple[Any, dict]:
        gen_size = batch_size
        if self.filter.enable and partition_id != "val" and self.gen_batch_size:
            filter_groups.check_gen_batch_size(  # `mmr rl train` checked it; verl's own CLI not
                "trainer.v1.sampler.sampler_kwargs.gen_batch_size", self.gen_batch_size,
                batch_size, True, "algorithm.filter_groups.enable",
            )  # fmt: skip
            gen_size = self.gen_batch_size
            # The trainer submitted batch_size prompts; the surplus once a step (a sample
            # that finds nothing ready, as the async buffers' can, is called again).
            if gen_size > batch_size and self._surplus_step != global_steps:
                self._surplus_step = global_steps
                self.refill_fn(gen_size - batch_size)
        batch, metrics = self.buffer.sample(
            global_steps=global_steps, partition_id=partition_id, batch_size=gen_size
        )
        if not batch.keys:
            return batch, metrics
        if not self.filter.enable or partition_id == "val":
            rows, _ = self._finish(batch)
            metrics.update(batch_metrics(rows), **filter_groups.sampled_metrics(rows))
            return batch, metrics
        return self._sample_informative(global_steps, batch, metrics, batch_size, gen_size)

    def _sample_informative(
        self, global_steps: int, batch: Any, metrics: dict, batch_size: int, gen_size: int
    ) -> tuple[Any, dict]:
        """DAPO's dynamic sampling on stage 2's scores (see the class docstring)."""
        import transfer_queue as tq
        from transfer_queue import KVBatchMeta
        from verl.trainer.ppo.v1.replay_buffer import DAPO_FILTERED_REWARD_COUNTS_KEY

        collector = filter_groups.Collector(self.filter, batch_size)
        batches: list[tuple[Any, list[dict[str, Any]], list[str]]] = []
        while True:
            rows, uids = self._finish(batch)
            batches.append((batch, rows, uids))
            collector.add(rows, uids)
            if not collector.wants_more():
                break
            self.refill_fn(gen_size)  # verl's trainer: the next prompts, to generate now
            batch, more = self.buffer.sample(
                global_steps=global_steps, partition_id=batch.partition_id, batch_size=gen_size
            )
            for key, value in more.items():  # verl's eviction counts, if any
                if isinstance(value, int | float):
                    metrics[key] = metrics.get(key, 0) + value

        chosen = set(collector.chosen())
        keys, tags, drop, final_rows = [], [], [], []
        for number, (part, rows, uids) in enumerate(batches):
            for key, tag in zip(part.keys, part.tags):
                if (number, key.rsplit("_", 2)[0]) in chosen:
                    keys.append(key)
                    tags.append(tag)
                else:
                    drop.append(key)
            final_rows += [row for row, uid in zip(rows, uids) if (number, uid) in chosen]
        if drop:
            tq.kv_clear(partition_id=batch.partition_id, keys=drop)
        tally = collector.metrics("reward/")
        every = [row for _, rows, _ in batches for row in rows]
        metrics.update(batch_metrics(final_rows), **tally, **filter_groups.sampled_metrics(every))
        if collector.flat_values:  # verl logs it as its DAPO table (wandb)
            metrics[DAPO_FILTERED_REWARD_COUNTS_KEY] = dict(collector.flat_values)
        return KVBatchMeta(partition_id=batch.partition_id, keys=keys, tags=tags), metrics

    def _finish(self, batch: Any) -> tuple[list[dict[str, Any]], list[str]]:
        """Stage 2 on a sampled batch, written back to TransferQueue; its reward rows and
        their uids (`finish_groups`)."""
        import transfer_queue as tq
        from verl.utils.tensordict_utils import get_tensordict

        data = tq.kv_batch_get(
            keys=batch.keys,
            partition_id=batch.partition_id,
            select_fields=["rm_scores", "extra_fields"],
        )
        rm_scores = list(data["rm_scores"].unbind(0))
        extra = [dict(getattr(e, "data", e) or {}) for e in data["extra_fields"]]
        infos = [dict(e.get("reward_extra_info") or {}) for e in extra]
        rm_scores, infos, rows, uids = finish_groups(
            batch.keys, rm_scores, infos, self.reward_config
        )
        if self.reward_config.length.mode in ("group", "both"):
            for e, info in zip(extra, infos):
                e["reward_extra_info"] = info
            nested = torch.nested.as_nested_tensor(rm_scores, layout=torch.jagged)
            tq.kv_batch_put(
                keys=batch.keys,
                partition_id=batch.partition_id,
                fields=get_tensordict({"rm_scores": nested, "extra_fields": extra}),
            )
        return rows, uids

    def __getattr__(self, name: str) -> Any:
        # Everything else is verl's buffer (the async trainers poll it between samples).
        if name == "buffer":
            raise AttributeError(name)
        return getattr(self.buffer, name)
