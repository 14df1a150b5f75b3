"""The verl reward bridge on hand-built verl batches: mmr's reward, the group term, every part logged.

Stage 1 runs in verl's own reward-loop worker class (`RewardLoopWorker`, which verl wraps
in a Ray actor; here it runs in this process), stage 2 is the sampler hook's function on
the rows verl stores in TransferQueue; the slow test runs the hook itself on a real
TransferQueue with verl's replay buffer. No mocks.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer
from verl import DataProto
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

from mmr.config import ConfigError, config_to_dict, load_config
from mmr.rewards import compute_score, score_batch
from mmr.rl.reward import (
    EXTRA_KEYS,
    METRICS,
    MMRGroupSampler,
    MMRRewardManager,
    batch_metrics,
    finish_groups,
)
from mmr.rl.train import POLL_INTERVAL_S, RLConfig, compose_verl_config

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

RESPONSES = [
    ("<think>2 and 2 make 4.</think>\\boxed{4}", "4"),  # right, well formed
    ("The answer is 5", "4"),  # wrong, no think block
    ("<think>half</think>\\boxed{\\frac{1}{2}}", "0.5"),  # right via math-verify
]

# Three prompts (uid groups) with responses of different lengths, right and wrong.
LONG = "then I check it again, step by step, " * 4
GROUPS = [
    ("g0", "<think>2+2=4</think>\\boxed{4}", "4"),
    ("g0", f"<think>2+2: {LONG}so 4</think>\\boxed{{4}}", "4"),
    ("g0", f"<think>{LONG}{LONG}</think>\\boxed{{5}}", "4"),
    ("g0", "<think>guess</think>\\boxed{3}", "4"),
    ("g1", "<think>half</think>\\boxed{\\frac{1}{2}}", "0.5"),
    ("g1", f"<think>{LONG}it is a half</think>\\boxed{{0.5}}", "0.5"),
    ("g1", "The answer is 7", "0.5"),
    ("g2", f"<think>{LONG}</think>\\boxed{{9}}", "9"),  # a group of one: no group term
]
LENGTH = ["reward.length.mode=both", "reward.length.weight=0.5",
          "reward.length.budget_tokens=40", "reward.length.max_tokens=200"]  # fmt: skip


def _batch(tokenizer, rows: list[tuple[str, str, str]]) -> DataProto:
    """A verl batch: left-padded prompts, right-padded responses, as verl's rollout lays it out."""
    prompt = tokenizer("<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    ids = [tokenizer(text)["input_ids"] for _, text, _ in rows]
    width = max(map(len, ids))
    responses = [r + [tokenizer.pad_token_id] * (width - len(r)) for r in ids]
    masks = [[1] * (len(prompt) + len(r)) + [0] * (width - len(r)) for r in ids]
    return DataProto.from_dict(
        tensors={
            "prompts": torch.tensor([prompt] * len(rows)),
            "responses": torch.tensor(responses),
            "input_ids": torch.tensor([prompt + r for r in responses]),
            "attention_mask": torch.tensor(masks),
        },
        non_tensors={
            "data_source": np.array(["t"] * len(rows), dtype=object),
            "reward_model": np.array(
                [{"ground_truth": gold, "style": "rule"} for _, _, gold in rows], dtype=object
            ),
            "extra_info": np.array([{"question": "q"}] * len(rows), dtype=object),
            "uid": np.array([uid for uid, _, _ in rows], dtype=object),
        },
    )


def _keys(data: DataProto) -> list[str]:
    """verl's TransferQueue keys `{uid}_{session}_{output}`: session i of its prompt."""
    seen: dict[str, int] = {}
    keys = []
    for uid in data.non_tensor_batch["uid"]:
        keys.append(f"{uid}_{seen.get(uid, 0)}_0")
        seen[uid] = seen.get(uid, 0) + 1
    return keys


def _verl_config(tiny_model, *overrides: str):
    cfg = load_config(
        RLConfig,
        RECIPES / "omr_7b_gspo.yaml",
        [f"verl.actor_rollout_ref.model.path={tiny_model}", "reward.judge.enabled=false",
         *overrides],
    )  # fmt: skip
    return compose_verl_config(cfg)


def _sampler(config) -> MMRGroupSampler:
    """The sampler hook, built with the keyword arguments verl's v1 trainer passes."""
    sampler = config.trainer.v1.sampler
    return MMRGroupSampler(
        trainer_mode="sync",
        trainer_config={},
        max_off_policy_threshold=sampler.max_off_policy_threshold,
        max_off_policy_strategy=sampler.max_off_policy_strategy,
        sampler_kwargs=sampler.sampler_kwargs,
        refill_fn=lambda n: None,
    )


def _stage_one(config, data: DataProto) -> tuple[list[dict], list[torch.Tensor]]:
    """verl's reward-loop worker on the batch; the per-token rewards as TransferQueue holds them."""
    worker = RewardLoopWorker(config)  # verl's class; verl wraps it in a Ray actor
    outs = worker.loop.run_until_complete(worker.compute_score_batch(data))
    padded = MMRRewardManager.assemble_rm_scores(data, [o["reward_score"] for o in outs])
    prompt_len = data.batch["prompts"].shape[1]
    lengths = data.batch["attention_mask"][:, prompt_len:].sum(-1).tolist()
    return outs, [padded[i, :n] for i, n in enumerate(lengths)]  # as verl writes TQ rows


@pytest.fixture(scope="module")
def tokenizer(tiny_qwen2_5_vl):
    return AutoTokenizer.from_pretrained(tiny_qwen2_5_vl)


@pytest.fixture(scope="module")
def manager(tokenizer):
    return MMRRewardManager(config=None, tokenizer=tokenizer, compute_score=compute_score)


@pytest.fixture(scope="module")
def grouped(tiny_qwen2_5_vl, tokenizer):
    """The grouped batch through stage 1, with the config that scored it."""
    config = _verl_config(tiny_qwen2_5_vl, *LENGTH)
    data = _batch(tokenizer, GROUPS)
    outs, rows = _stage_one(config, data)
    return config, data, outs, rows


def _expected(data: DataProto, config) -> list[dict]:
    """`score_batch` on the same rollouts scored together, grouped by verl's uid."""
    prompt_len = data.batch["prompts"].shape[1]
    tokens = data.batch["attention_mask"][:, prompt_len:].sum(-1).tolist()
    items = [
        {"response": text, "ground_truth": gold, "question": "q", "group": uid,
         "response_tokens": n}
        for (uid, text, gold), n in zip(GROUPS, tokens)
    ]  # fmt: skip
    return score_batch(items, _sampler(config).reward_config)


def test_run_single_scores_each_trajectory_with_every_part(manager):
    rows = [("g0", text, gold) for text, gold in RESPONSES]
    data = _batch(manager.tokenizer, rows)
    outs = [manager.loop.run_until_complete(manager.run_single(data[i : i + 1]))
            for i in range(len(data))]  # fmt: skip
    scores = [o["reward_score"] for o in outs]
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == pytest.approx(0.0)
    assert scores[2] == pytest.approx(1.0)
    for out in outs:
        assert tuple(out["reward_extra_info"]) == EXTRA_KEYS
        assert out["reward_extra_info"]["errors"] == 0.0
    assert outs[1]["reward_extra_info"]["format"] == 0.0
    n_tokens = int(data.batch["attention_mask"][0, data.batch["prompts"].shape[1] :].sum())
    assert outs[0]["reward_extra_info"]["response_tokens"] == n_tokens


def test_each_trajectory_reports_verls_acc_and_pred_and_no_judge_when_it_is_off(manager):
    rows = [("g0", text, gold) for text, gold in RESPONSES]
    data = _batch(manager.tokenizer, rows)
    infos = [manager.loop.run_until_complete(manager.run_single(data[i : i + 1]))["reward_extra_info"]
             for i in range(len(data))]  # fmt: skip
    assert [i["acc"] for i in infos] == [1.0, 0.0, 1.0]
    assert [i["acc"] for i in infos] == [i["accuracy"] for i in infos]
    assert [i["pred"] for i in infos] == ["4", "5", "\\frac{1}{2}"]
    assert not manager.judge_on and all("judge" not in i for i in infos)


def test_the_judge_key_is_there_for_every_trajectory_when_the_judge_is_on(
    tiny_qwen2_5_vl, tokenizer
):
    with socket.socket() as s:  # a port nothing listens on: every call falls back
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = _verl_config(tiny_qwen2_5_vl, "reward.judge.enabled=true",
                          f"reward.judge.base_url=http://127.0.0.1:{port}/v1")  # fmt: skip
    data = _batch(tokenizer, [("g0", text, gold) for text, gold in RESPONSES])
    outs, _ = _stage_one(config, data)
    for out in outs:  # rules and math-verify decided these: no verdict, None (not NaN)
        assert tuple(out["reward_extra_info"]) == (*EXTRA_KEYS, "judge")
        assert out["reward_extra_info"]["judge"] is None


def test_the_reward_config_reaches_the_worker_in_one_piece(tiny_qwen2_5_vl, tokenizer):
    """verl's own worker class binds the one key, whole, into mmr's compute_score."""
    cfg = load_config(RLConfig, RECIPES / "omr_7b_gspo.yaml",
                      [f"verl.actor_rollout_ref.model.path={tiny_qwen2_5_vl}",
                       "reward.judge.enabled=false", "reward.weights.format=0.3",
                       "reward.plugin.kwargs={scale: [1, 2]}"])  # fmt: skip
    config = compose_verl_config(cfg)
    worker = RewardLoopWorker(config)
    bound = worker.reward_manager.compute_score  # verl's partial(_call_with_kwargs, fn, kwargs)
    assert bound.args[0] is compute_score
    from omegaconf import OmegaConf

    assert set(bound.args[1]) == {"config"}
    assert OmegaConf.to_container(bound.args[1]["config"]) == config_to_dict(cfg.reward)
    data = _batch(tokenizer, [("g0", text, gold) for text, gold in RESPONSES])
    outs = worker.loop.run_until_complete(worker.compute_score_batch(data))
    # 0.9 x accuracy + 0.3 x format: the recipe's weights, not the defaults
    assert [o["reward_score"] for o in outs] == pytest.approx([1.2, 0.0, 1.2])


def test_rewards_land_on_each_responses_last_token(manager):
    data = _batch(manager.tokenizer, [("g0", text, gold) for text, gold in RESPONSES])
    scores = [1.0, 0.0, 0.5]
    rm = MMRRewardManager.assemble_rm_scores(data, scores)
    prompt_len = data.batch["prompts"].shape[1]
    for i, score in enumerate(scores):
        last = int(data.batch["attention_mask"][i, prompt_len:].sum()) - 1
        assert rm[i, last] == score
        assert rm[i].sum() == score  # nowhere else


def test_a_reward_that_raises_scores_zero_and_is_counted(manager):
    def broken(**_):
        raise RuntimeError("plug-in bug")

    failing = MMRRewardManager(config=None, tokenizer=manager.tokenizer, compute_score=broken)
    data = _batch(manager.tokenizer, [("g0", text, gold) for text, gold in RESPONSES])
    out = failing.loop.run_until_complete(failing.run_single(data[0:1]))
    assert out["reward_score"] == 0.0 and out["reward_extra_info"]["errors"] == 1.0


def test_batch_gets_score_batch_rewards_with_the_group_term_on_each_last_token(grouped):
    config, data, outs, rows = grouped
    scores, infos, sessions, uids = finish_groups(
        _keys(data), rows, [o["reward_extra_info"] for o in outs], _sampler(config).reward_config
    )
    metrics = batch_metrics(sessions)  # what the sampler hook logs
    expected = _expected(data, config)
    # One reward row per session (each row here is a session of its own), what DAPO's filter reads.
    assert uids == [uid for uid, _, _ in GROUPS]
    assert [r["score"] for r in sessions] == pytest.approx([w["score"] for w in expected], abs=1e-6)
    for row, score, info, want in zip(rows, scores, infos, expected):
        assert score.shape == row.shape  # one reward per response token ...
        assert score[-1].item() == pytest.approx(want["score"], abs=1e-6)  # ... on the last
        assert torch.count_nonzero(score[:-1]) == 0
        assert info["length"] == pytest.approx(want["length"])
        assert info["accuracy"] == want["accuracy"] and info["format"] == want["format"]
    # The group term is there: in-group lengths differ from what stage 1 alone gave.
    group_terms = [i["length"] - o["reward_extra_info"]["length"] for i, o in zip(infos, outs)]
    assert sum(abs(t) > 1e-6 for t in group_terms[:7]) >= 4
    assert group_terms[7] == 0.0  # g2 is a group of one
    assert group_terms[0] > 0 > group_terms[2]  # shortest right answer gains, long wrong loses

    assert set(metrics) == set(METRICS) == {
        "reward/accuracy", "reward/format", "reward/length", "reward/judge_fallback",
        "reward/errors", "reward/group_length_changed",
    }  # fmt: skip
    assert metrics["reward/group_length_changed"] == sum(abs(t) > 1e-6 for t in group_terms)
    n = len(expected)
    assert metrics["reward/accuracy"] == pytest.approx(sum(r["accuracy"] for r in expected) / n)
    assert metrics["reward/format"] == pytest.approx(sum(r["format"] for r in expected) / n)
    assert metrics["reward/length"] == pytest.approx(sum(r["length"] for r in expected) / n)
    assert metrics["reward/judge_fallback"] == 0 and metrics["reward/errors"] == 0


def test_the_sampler_hands_verls_buffer_its_poll_interval(tiny_qwen2_5_vl):
    # verl's buffer sleeps poll_interval between looks for finished rollouts; its own
    # default (2 s) would end each generation batch on a 2 s tick.
    key = "verl.trainer.v1.sampler.sampler_kwargs.+poll_interval_s"
    assert _sampler(_verl_config(tiny_qwen2_5_vl)).buffer.poll_interval == POLL_INTERVAL_S
    assert _sampler(_verl_config(tiny_qwen2_5_vl, f"{key}=0.5")).buffer.poll_interval == 0.5


def test_budget_only_mode_leaves_rewards_alone_and_still_logs(tiny_qwen2_5_vl, grouped):
    _, data, outs, rows = grouped
    cfg = _sampler(_verl_config(tiny_qwen2_5_vl)).reward_config  # the recipe: length.mode=budget
    scores, _, sessions, _ = finish_groups(
        _keys(data), rows, [o["reward_extra_info"] for o in outs], cfg
    )
    metrics = batch_metrics(sessions)
    assert all(torch.equal(a, b) for a, b in zip(scores, rows)) and set(metrics) == set(METRICS)
    assert metrics["reward/group_length_changed"] == 0


def test_a_judge_that_is_down_neither_raises_nor_stalls(tiny_qwen2_5_vl, tokenizer):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    timeout_s = 20
    config = _verl_config(
        tiny_qwen2_5_vl, *LENGTH, "reward.judge.enabled=true",
        f"reward.judge.base_url=http://127.0.0.1:{port}/v1", f"reward.judge.timeout_s={timeout_s}",
    )  # fmt: skip
    # "two" vs gold "2": the rules cannot decide, so every row asks the judge.
    rows = [(f"u{i % 2}", f"<think>{'so ' * i}</think>\\boxed{{two}}", "2") for i in range(6)]
    data = _batch(tokenizer, rows)
    start = time.monotonic()
    outs, rm_rows = _stage_one(config, data)
    scores, infos, sessions, _ = finish_groups(
        _keys(data), rm_rows, [o["reward_extra_info"] for o in outs], _sampler(config).reward_config
    )
    metrics = batch_metrics(sessions)
    assert time.monotonic() - start < timeout_s  # less than one judge request's timeout
    assert metrics["reward/judge_fallback"] == 6 and metrics["reward/errors"] == 0
    assert metrics["reward/accuracy"] == 0.0  # fell back to the rules' "not shown correct"
    for score, info in zip(scores, infos):  # 0.9 x accuracy 0 + 0.1 x format + 0.5 x length
        assert score[-1].item() == pytest.approx(0.1 * info["format"] + 0.5 * info["length"])


@pytest.fixture(scope="module")
def transfer_queue():
    """A real TransferQueue on local Ray for the module's slow tests; each leaves it empty."""
    import ray
    import transfer_queue as tq
    from omegaconf import OmegaConf

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
        yield tq
    finally:
        tq.close()
        ray.shutdown()


def _store(tq, data: DataProto, outs: list[dict], uid_of=lambda uid: uid, only=None) -> list[str]:
    """Prompts and finished rollouts put as verl's trainer and AgentLoopWorkerTQ put them;
    `uid_of` renames the prompts (a refill's new uids), `only` keeps those prompts (by
    their uid in `data`). Returns the rollout keys."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    rows = [(i, k) for i, k in enumerate(_keys(data)) if only is None or k.split("_")[0] in only]
    keys = [f"{uid_of(k.split('_')[0])}_{k.split('_', 1)[1]}" for _, k in rows]
    prompt_len = data.batch["prompts"].shape[1]
    uids = list(dict.fromkeys(k.split("_")[0] for k in keys))
    tags = [{"is_prompt": True, "status": "finished", "global_steps": 1}] * len(uids)
    tq.kv_batch_put(keys=uids, partition_id="train", tags=tags)
    for (i, _), key in zip(rows, keys):
        n = int(data.batch["attention_mask"][i, prompt_len:].sum())
        output = AgentLoopOutput(
            prompt_ids=data.batch["prompts"][i].tolist(),
            response_ids=data.batch["responses"][i, :n].tolist(),
            response_mask=[1] * n,
            reward_score=outs[i]["reward_score"],
            metrics=AgentLoopMetrics(),
            extra_fields={"reward_extra_info": outs[i]["reward_extra_info"]},
        )
        field = {**output.as_dict(), "uid": key.split("_")[0]}
        tag = {"status": "success", "response_len": n, "seq_len": prompt_len + n}
        tq.kv_batch_put(keys=[key], partition_id="train",
                        fields=list_of_dict_to_tensordict([field]), tags=[tag])  # fmt: skip
    return keys


def _clear(tq) -> None:
    for partition, items in (tq.kv_list() or {}).items():
        if items:
            tq.kv_clear(keys=list(items), partition_id=partition)


@pytest.mark.slow
def test_sampler_hook_writes_group_rewards_into_transfer_queue(grouped, transfer_queue):
    """verl's replay buffer samples whole groups from a real TransferQueue; the hook finishes them."""
    tq = transfer_queue
    config, data, outs, _ = grouped
    try:
        keys = _store(tq, data, outs)
        uids = list(dict.fromkeys(data.non_tensor_batch["uid"]))
        batch, metrics = _sampler(config).sample(
            global_steps=1, partition_id="train", batch_size=len(uids)
        )
        assert sorted(batch.keys) == sorted(keys) and set(METRICS) <= set(metrics)
        assert "reward/groups_filtered" not in metrics  # the filter is off
        stored = tq.kv_batch_get(
            keys=keys, partition_id="train", select_fields=["rm_scores", "extra_fields"]
        )
        expected = _expected(data, config)
        for score, extra, want in zip(
            stored["rm_scores"].unbind(0), stored["extra_fields"], expected
        ):
            assert score[-1].item() == pytest.approx(want["score"], abs=1e-6)
            assert torch.count_nonzero(score[:-1]) == 0
            assert extra["reward_extra_info"]["length"] == pytest.approx(want["length"])
        n = len(expected)
        assert metrics["reward/length"] == pytest.approx(sum(r["length"] for r in expected) / n)
        # With the filter off every sampled rollout is trained on: the same means.
        assert metrics["reward/sampled"] == pytest.approx(sum(r["score"] for r in expected) / n)
        assert metrics["reward/sampled_accuracy"] == pytest.approx(metrics["reward/accuracy"])
        # What verl's advantage step reads next (PPOTrainer._compute_advantage): the new totals.
        padded = tq.kv_batch_get(
            keys=batch.keys, partition_id="train", select_fields=["response_mask", "rm_scores"]
        ).to_padded_tensor()
        want = {key: row["score"] for key, row in zip(keys, expected)}
        totals = padded["rm_scores"].sum(-1).tolist()
        assert totals == pytest.approx([want[key] for key in batch.keys], abs=1e-6)
    finally:
        _clear(tq)


@pytest.mark.slow
@pytest.mark.parametrize("limit", [0, 1])
def test_sampler_hook_drops_all_same_groups_and_refills_through_verls_buffer(
    grouped, transfer_queue, limit
):
    """DAPO in the hook: on `format` g0 is all the same (every response well formed), g1
    differs, g2 is a group of one (kept, as verl's rule). The refill function stands in
    for verl's generation: it stores the same three prompts again under new uids."""
    from verl.trainer.ppo.v1.replay_buffer import DAPO_FILTERED_REWARD_COUNTS_KEY

    tq = transfer_queue
    config, data, outs, _ = grouped
    sampler_cfg = config.trainer.v1.sampler
    section = {"enable": True, "metric": "format", "max_num_gen_batches": limit}
    refills: list[int] = []

    def refill(count: int) -> None:
        assert count == 3
        refills.append(count)
        _store(tq, data, outs, uid_of=lambda uid: f"{uid}r{len(refills)}")

    sampler = MMRGroupSampler(
        trainer_mode="sync", trainer_config={}, refill_fn=refill,
        max_off_policy_threshold=sampler_cfg.max_off_policy_threshold,
        max_off_policy_strategy=sampler_cfg.max_off_policy_strategy,
        sampler_kwargs={**sampler_cfg.sampler_kwargs, "filter_groups": section},
    )  # fmt: skip
    try:
        keys = _store(tq, data, outs)
        batch, metrics = sampler.sample(global_steps=1, partition_id="train", batch_size=3)
        uids = {key.split("_")[0] for key in batch.keys}
        left = set((tq.kv_list() or {}).get("train", {}))
        if limit == 1:  # no refill: the all-same g0 fills the batch
            assert refills == [] and uids == {"g0", "g1", "g2"}
            assert sorted(batch.keys) == sorted(keys)
            assert (metrics["reward/gen_batches"], metrics["reward/groups_filtered"],
                    metrics["reward/groups_flat_kept"]) == (1, 0, 1)  # fmt: skip
        else:  # one refill; g0 and its copy dropped, the surplus copy of g2 too
            assert refills == [3] and uids == {"g1", "g2", "g1r1"}
            assert (metrics["reward/gen_batches"], metrics["reward/groups_filtered"],
                    metrics["reward/groups_flat_kept"]) == (2, 2, 0)  # fmt: skip
            assert not any(key.startswith(("g0", "g2r1")) for key in left)  # cleared from TQ
        assert set(batch.keys) == left  # what is left in TransferQueue is the batch
        assert len(batch.tags) == len(batch.keys)
        assert metrics[DAPO_FILTERED_REWARD_COUNTS_KEY] == {1.0: 2 - limit}
        # the batch's reward metrics are its own rows' (stage 2 finished on every batch)
        formats = [r["reward_extra_info"]["format"] for r in tq.kv_batch_get(
            keys=batch.keys, partition_id="train", select_fields=["extra_fields"]
        )["extra_fields"]]  # fmt: skip
        assert metrics["reward/format"] == pytest.approx(sum(formats) / len(formats))
        # `reward/sampled` is over every rollout generated, the dropped groups included: a
        # refill stored the same rollouts again, so both cases give one copy's mean.
        expected = _expected(data, config)
        assert metrics["reward/sampled"] == pytest.approx(
            sum(r["score"] for r in expected) / len(expected)
        )
    finally:
        _clear(tq)


@pytest.mark.slow
def test_a_generation_batch_larger_than_the_step_is_submitted_with_it(grouped, transfer_queue):
    """DAPO's gen_batch_size in the hook: the trainer submitted 2 prompts (g0, g1) for a
    2-prompt step; with `gen_batch_size: 3` the sampler submits 1 more (g2) before it
    waits, samples all 3 as one generation batch and keeps the 2 that differ on `format`
    (g0 is all the same): no second generation batch."""
    tq = transfer_queue
    config, data, outs, _ = grouped
    sampler_cfg = config.trainer.v1.sampler
    refills: list[int] = []

    def refill(count: int) -> None:
        refills.append(count)
        _store(tq, data, outs, only={"g2"})

    sampler = MMRGroupSampler(
        trainer_mode="sync", trainer_config={}, refill_fn=refill,
        max_off_policy_threshold=sampler_cfg.max_off_policy_threshold,
        max_off_policy_strategy=sampler_cfg.max_off_policy_strategy,
        sampler_kwargs={**sampler_cfg.sampler_kwargs, "gen_batch_size": 3,
                        "filter_groups": {"enable": True, "metric": "format"}},
    )  # fmt: skip
    try:
        _store(tq, data, outs, only={"g0", "g1"})
        batch, metrics = sampler.sample(global_steps=1, partition_id="train", batch_size=2)
        assert refills == [1]
        assert {key.split("_")[0] for key in batch.keys} == {"g1", "g2"}
        assert (metrics["reward/gen_batches"], metrics["reward/groups_filtered"],
                metrics["reward/groups_flat_kept"]) == (1, 1, 0)  # fmt: skip
        assert set(batch.keys) == set((tq.kv_list() or {}).get("train", {}))  # g0 cleared
        # The surplus is submitted once a step: a second sample of step 1 submits none.
        _clear(tq)
        _store(tq, data, outs)  # g0, g1, g2: the 3 it waits for, none of them submitted
        batch, _ = sampler.sample(global_steps=1, partition_id="train", batch_size=2)
        assert refills == [1] and len(batch.keys) > 0
        _clear(tq)
        _store(tq, data, outs, only={"g0", "g1"})  # step 2: the surplus again
        sampler.sample(global_steps=2, partition_id="train", batch_size=2)
        assert refills == [1, 1]
        with pytest.raises(ConfigError, match=r"gen_batch_size'.*>= the step's batch size \(4"):
            sampler.sample(global_steps=3, partition_id="train", batch_size=4)
    finally:
        _clear(tq)
