"""The single-process GSPO engine (`mmr/rl/local.py`) on CPU with tiny models.

The end-to-end runs are small (2 prompts x 4 rollouts x 16 tokens a step). A tiny random
model never writes a final answer, so most runs score with `letter_reward` below (a
verl-signature plug-in), which gives every group a spread of rewards and so real gradients.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmr.config import load_config
from mmr.models import generate
from mmr.rl import local
from mmr.rl.local_config import LocalRLConfig
from tests.fake_openai import FakeJudgeServer

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "demo" / "tiny_gspo.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
SMALL = [
    "data.batch_size=2",
    "rollout.n=4",
    "rollout.max_new_tokens=16",
    "reward.accuracy.workers=0",  # math-verify in this (main) thread: no worker start-up
    "reward.judge.enabled=false",
]
WITH_PLUGIN = ["reward.function=tests.rl.test_local:letter_reward"]
REQUIRED = ("step", "reward", "reward/accuracy", "reward/format", "reward/length",
            "reward/judge_fallback", "reward/errors", "response/length", "loss",
            "clip_fraction", "lr", "grad_norm")  # fmt: skip


def letter_reward(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """Share of the letter "e": random text gets a different score in every rollout."""
    return solution_str.count("e") / max(len(solution_str), 1)


def _metrics(out: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records}


def _comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "time" and not k.startswith("perf/")}


@pytest.fixture(autouse=True)
def _no_judge_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL_NAME", "USE_LLM_JUDGE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    """8 generated visual tasks, prompts only."""
    from mmr.data.synthetic import write_synthetic

    path = tmp_path_factory.mktemp("gspo_prompts") / "train.parquet"
    write_synthetic(path, 8, seed=0, with_response=False)
    return path


@pytest.fixture(scope="module")
def inputs(prompts, tiny_qwen2_5_vl) -> list[str]:
    """The tiny model and the prompts, as overrides."""
    return [f"model.path={tiny_qwen2_5_vl}", f"data.train_files=[{prompts}]"]


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory, inputs) -> Path:
    """2 steps through `python -m mmr.rl.local`, as users launch it."""
    out = tmp_path_factory.mktemp("gspo_two")
    cmd = [sys.executable, "-m", "mmr.rl.local", "--config", str(RECIPE),
           f"trainer.output_dir={out}", "trainer.max_steps=2", "trainer.save_steps=1",
           *inputs, *SMALL, *WITH_PLUGIN]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_two_steps_write_metrics_checkpoints_and_a_loadable_final(two_step_run, tiny_qwen2_5_vl):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    out = two_step_run
    metrics = _metrics(out)
    assert sorted(metrics) == [1, 2]
    for record in metrics.values():
        assert set(REQUIRED) <= set(record), set(REQUIRED) - set(record)
        assert record["grad_norm"] > 0 and record["response/length"] > 0
        assert 0.0 <= record["clip_fraction"] <= 1.0
    assert metrics[1]["lr"] == metrics[2]["lr"] == pytest.approx(1e-3)
    rollouts = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 2 * 2 * 4 and {r["group"] for r in rollouts} == {"0", "1"}

    for step in (1, 2):
        folder = out / "checkpoints" / f"step_{step}"
        state = json.loads((folder / "trainer_state.json").read_text())
        assert (state["step"], state["epoch"], state["position"]) == (step, 0, 2 * step)
        saved = torch.load(folder / "state.pt", weights_only=True)  # nothing unpickled
        assert set(saved) == {"model", "optimizer", "scheduler"}
        assert set(torch.load(folder / "rng_rank0.pt", weights_only=True)) == {
            "python", "numpy", "torch", "cuda"}  # fmt: skip

    final = Qwen2_5_VLForConditionalGeneration.from_pretrained(out / "final")
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_qwen2_5_vl)
    assert AutoProcessor.from_pretrained(out / "final").tokenizer.chat_template
    trained, frozen = [], []
    for (name, p), q in zip(final.named_parameters(), base.parameters()):
        (frozen if "visual" in name else trained).append(torch.equal(p, q))
    assert all(frozen) and not all(trained)  # vision tower frozen, language model moved


def test_resume_reproduces_the_uninterrupted_run(two_step_run, inputs, tmp_path):
    straight = tmp_path / "straight"
    local.main(["--config", str(RECIPE), f"trainer.output_dir={straight}", "trainer.max_steps=3",
                "trainer.save_steps=0", "trainer.export=false", *inputs, *SMALL, *WITH_PLUGIN])  # fmt: skip
    resumed = tmp_path / "resumed"
    shutil.copytree(two_step_run, resumed)
    local.main(["--config", str(RECIPE), f"trainer.output_dir={resumed}", "trainer.max_steps=3",
                "trainer.save_steps=1", "trainer.export=false", *inputs, *SMALL, *WITH_PLUGIN])  # fmt: skip

    a, b = _metrics(straight), _metrics(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    # Steps 1-2 of the resumed run are the first run's own lines: it resumed, not restarted.
    assert b[2]["time"] == _metrics(two_step_run)[2]["time"]
    assert (resumed / "checkpoints" / "step_3" / "state.pt").is_file()
    for step in (1, 2, 3):
        assert _comparable(a[step]) == _comparable(b[step]), step
    assert a[3]["grad_norm"] > 0
    lines = (resumed / "rollouts.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1] * 8 + [2] * 8 + [3] * 8


def _fixed_tensors(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(6, 7, dtype=torch.long)
    for row, length in enumerate([7, 3, 5, 1, 6, 4]):
        mask[row, :length] = 1
    old = -torch.rand(6, 7, generator=g) * 3
    # Per-token drift large enough that some sequence ratios leave [1 - 3e-4, 1 + 4e-4].
    new = (old + torch.randn(6, 7, generator=g) * 2e-3).requires_grad_()
    advantages = torch.tensor([1.0, -0.5, 0.25, -1.0, 0.75, -0.25]).unsqueeze(-1) * mask
    return new, old, advantages, mask


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "token-mean"])
def test_policy_loss_equals_verls_gspo_on_fixed_tensors(agg):
    from verl.trainer.ppo.core_algos import compute_policy_loss_gspo, get_policy_loss_fn
    from verl.workers.config import ActorConfig

    cfg = load_config(LocalRLConfig, RECIPE, [f"algorithm.loss_agg_mode={agg}"])
    a = cfg.algorithm  # the recipe carries OpenMMReasoner's GSPO settings
    assert (a.adv_estimator, a.loss_mode) == ("grpo", "gspo")
    assert (a.clip_ratio_low, a.clip_ratio_high) == (3e-4, 4e-4)
    loss_fn = get_policy_loss_fn(cfg.algorithm.loss_mode)
    new, old, adv, mask = _fixed_tensors()
    ours, our_metrics = local.policy_loss(
        loss_fn, local.build_actor_config(cfg), new, old, adv, mask
    )
    (ours_grad,) = torch.autograd.grad(ours, new)

    reference = ActorConfig(
        strategy="fsdp", rollout_n=8, ppo_micro_batch_size_per_gpu=1,
        clip_ratio_low=3e-4, clip_ratio_high=4e-4, loss_agg_mode=agg,
    )  # fmt: skip
    theirs, their_metrics = compute_policy_loss_gspo(
        old_log_prob=old, log_prob=new, advantages=adv, response_mask=mask,
        loss_agg_mode=agg, config=reference,
    )  # fmt: skip
    (theirs_grad,) = torch.autograd.grad(theirs, new)
    assert torch.equal(ours, theirs) and torch.equal(ours_grad, theirs_grad)
    assert our_metrics == their_metrics
    assert 0.0 < our_metrics["actor/pg_clipfrac"] < 1.0  # the clip range is exercised


def test_advantages_equal_verls_grpo_for_a_hand_built_group():
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.3, 0.9])
    groups = ["a", "a", "a", "a", "b", "b"]
    mask = torch.zeros(6, 5, dtype=torch.long)
    for row, length in enumerate([5, 2, 4, 1, 3, 5]):
        mask[row, :length] = 1
    ours = local.compute_advantages(scores, mask, groups, norm_by_std=True)

    token_rewards = torch.zeros(6, 5)
    for row, length in enumerate([5, 2, 4, 1, 3, 5]):
        token_rewards[row, length - 1] = scores[row]  # the outcome on the last response token
    theirs, _ = compute_grpo_outcome_advantage(
        token_level_rewards=token_rewards, response_mask=mask, index=np.array(groups, dtype=object)
    )
    assert torch.equal(ours, theirs)
    # By hand: group a has mean 0.5 and std 0.5774, group b mean 0.6 and std 0.4243.
    expected = torch.tensor([0.8660, -0.8660, -0.8660, 0.8660, -0.7071, 0.7071])
    assert torch.allclose(ours[:, 0], expected, atol=1e-3)
    assert torch.equal(ours == 0, mask == 0)  # every response token, and only those

    plain = local.compute_advantages(scores, mask, groups, norm_by_std=False)
    assert torch.allclose(plain[:, 0], torch.tensor([0.5, -0.5, -0.5, 0.5, -0.3, 0.3]))


def test_a_judge_that_goes_down_mid_run_does_not_stop_the_engine(
    tiny_qwen2_5_vl, tmp_path, monkeypatch
):
    from transformers import AutoTokenizer

    from mmr.data.synthetic import write_synthetic

    # Questions with numeric answers, and every other rollout replaced by a final answer
    # the rules cannot decide, so each step asks the judge.
    prompts = write_synthetic(tmp_path / "prompts.parquet", 4, kinds=["count", "digits"],
                              with_response=False)  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2_5_vl)
    real_sample, words = generate.sample, itertools.cycle(["seven", "nine", "a dozen"])

    def half_scripted(model, inputs, **how):
        real = real_sample(model, inputs, **how).tokens
        text = f"<think>I count.</think> The answer is \\boxed{{about {next(words)}}}<|im_end|>"
        ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
        out = torch.full((len(real), max(real.shape[1], len(ids))), tokenizer.pad_token_id)
        out[:, : real.shape[1]] = real
        out[::2] = tokenizer.pad_token_id
        out[::2, : len(ids)] = ids
        return generate.cut_at_end(out, model.generation_config.eos_token_id)

    server = FakeJudgeServer().start()
    real_score, calls = local.score_batch, []

    def score_then_stop_the_judge(items, cfg):
        rows = real_score(items, cfg)
        calls.append(rows)
        if len(calls) == 1:  # after the first step the judge goes down
            server.script = lambda prompt: ("drop", None)  # kept-alive connections die too
            server.stop()
        return rows

    monkeypatch.setattr(generate, "sample", half_scripted)
    monkeypatch.setattr(local, "score_batch", score_then_stop_the_judge)
    out = tmp_path / "run"
    local.main([
        "--config", str(RECIPE), f"trainer.output_dir={out}", f"model.path={tiny_qwen2_5_vl}",
        f"data.train_files=[{prompts}]", "trainer.max_steps=2", "trainer.export=false",
        *SMALL, "reward.judge.enabled=true", f"reward.judge.base_url={server.base_url}",
        "reward.judge.timeout_s=2", "reward.judge.retries=0",
    ])  # fmt: skip

    metrics = _metrics(out)
    assert sorted(metrics) == [1, 2] and len(calls) == 2
    assert metrics[1]["reward/judged"] >= 4 and metrics[1]["reward/judge_fallback"] == 0
    assert metrics[1]["reward/accuracy"] >= 0.5  # the judge said CORRECT
    assert metrics[2]["reward/judged"] == 0 and metrics[2]["reward/judge_fallback"] >= 4
    assert metrics[2]["reward/accuracy"] < 0.5  # the scripted answers fell back to "wrong"
    assert (out / "checkpoints" / "step_2" / "state.pt").is_file()


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "token-mean"])
def test_micro_batches_give_the_same_update_as_one_batch(tmp_path, inputs, agg):
    # ppo_micro_batch_size splits each mini-batch's forward/backward; verl's global batch
    # info scales each micro loss, so the accumulated gradient, the step and the reported
    # loss are those of one whole-batch pass.
    import copy

    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    cfg = load_config(LocalRLConfig, RECIPE, [*inputs, *SMALL, "data.batch_size=2", "rollout.n=4",
                      f"algorithm.loss_agg_mode={agg}", "optim.lr=1e-2"])  # fmt: skip
    torch.manual_seed(0)
    model, processor, device = local.build_policy(cfg)
    prompts = local.load_prompts(cfg, processor, tmp_path)
    batch = local.next_batch(prompts, local.TrainerState(seed=0), cfg)
    rollouts = local.generate_rollouts(model, processor, batch, cfg, device)
    rows = rollouts.responses.shape[0]
    g = torch.Generator().manual_seed(1)
    advantages = torch.randn(rows, 1, generator=g) * rollouts.response_mask
    results = []
    for micro in (0, 3):  # 3 does not divide the 8 rows: a short last micro-batch
        cfg.algorithm.ppo_micro_batch_size = micro
        copy_ = copy.deepcopy(model)
        optimizer, _ = local.build_optimizer(cfg, copy_, total_steps=1)
        stats = local.update_policy(copy_, optimizer, rollouts, advantages, cfg,
                                    get_policy_loss_fn("gspo"), local.build_actor_config(cfg))  # fmt: skip
        results.append((stats, [p.detach().clone() for p in copy_.parameters()]))
    (whole, w_params), (split, s_params) = results
    assert split["loss"] == pytest.approx(whole["loss"], rel=1e-5, abs=1e-7)
    # The grad norm pins the gradient's scale (Adam's first step would hide a wrong one);
    # the weights pin its direction (to 0.1% of a step: Adam magnifies float noise in
    # near-zero gradients).
    assert split["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-4)
    assert whole["grad_norm"] > 0
    for a, b in zip(w_params, s_params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _one_batch(cfg):
    torch.manual_seed(0)
    model, processor, device = local.build_policy(cfg)
    prompts = local.load_prompts(cfg, processor, Path(cfg.trainer.output_dir))
    batch = local.next_batch(prompts, local.TrainerState(seed=0), cfg)
    return model, local.generate_rollouts(model, processor, batch, cfg, device)


def _entropy_and_kl(model, reference, rollouts, temperature):
    from verl.trainer.ppo.core_algos import kl_penalty

    rows, mask = slice(0, len(rollouts.samples)), rollouts.response_mask.bool()
    with torch.no_grad():
        log_prob, entropy = local.response_log_probs(model, rollouts, rows, temperature, True)
        ref, _ = local.response_log_probs(reference, rollouts, rows, temperature)
    kl = kl_penalty(log_prob, ref, "low_var_kl")
    return float(entropy[mask].mean()), float(kl[mask].mean())


def test_entropy_bonus_and_kl_loss_act_as_in_verl(tmp_path, inputs):
    """With zero advantages only the entropy bonus moves the policy: entropy rises. With a
    KL loss to the starting model, several updates end closer to it than without."""
    import copy

    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    base = [*inputs, *SMALL, f"trainer.output_dir={tmp_path}", "optim.lr=1e-3",
            "optim.warmup_steps=0"]  # fmt: skip
    results = {}
    for name, extra in {
        "plain": [],
        "entropy": ["algorithm.entropy_coeff=1.0"],
        "kl": ["algorithm.use_kl_loss=true", "algorithm.kl_loss_coef=10.0"],
    }.items():
        cfg = load_config(LocalRLConfig, RECIPE, [*base, "algorithm.ppo_epochs=4", *extra])
        model, rollouts = _one_batch(cfg)
        start = copy.deepcopy(model).requires_grad_(False)
        zero = name == "entropy"
        g = torch.Generator().manual_seed(1)
        adv = torch.zeros(len(rollouts.samples), 1) if zero else torch.randn(
            len(rollouts.samples), 1, generator=g)  # fmt: skip
        adv = adv * rollouts.response_mask
        optimizer, _ = local.build_optimizer(cfg, model, total_steps=1)
        before = _entropy_and_kl(model, start, rollouts, cfg.rollout.temperature)
        stats = local.update_policy(model, optimizer, rollouts, adv, cfg,
                                    get_policy_loss_fn("gspo"), local.build_actor_config(cfg),
                                    start if cfg.algorithm.use_kl_loss else None)  # fmt: skip
        results[name] = (before, _entropy_and_kl(model, start, rollouts, cfg.rollout.temperature))
        if name == "entropy":
            assert "entropy" in stats and "kl_loss" not in stats
        if name == "kl":
            assert stats["kl_loss"] >= 0.0
    (ent_before, _), (ent_after, _) = results["entropy"]
    assert ent_after > ent_before + 1e-3
    assert results["kl"][1][1] < results["plain"][1][1]


# ---- algorithm.filter_groups (DAPO's dynamic sampling) ----------------------------------


def flat_on_letters(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """0.5 for every response to a multiple-choice prompt (answer A-Z): those groups are
    all the same; elsewhere `letter_reward`, a spread in every group."""
    if len(ground_truth) == 1 and ground_truth.isupper():
        return 0.5
    return letter_reward(data_source, solution_str, ground_truth, extra_info)


def _hand_built(widths: tuple[int, int], images: list[int], groups: list[str], pad: int = 9):
    """Rollouts of len(images) rows, row r with images[r] images of 4 patches each."""
    rows, (prompt, response) = len(images), widths
    count = sum(images)
    ids = torch.arange(rows * prompt).reshape(rows, prompt) + 100
    return local.Rollouts(
        inputs={"input_ids": ids, "attention_mask": torch.ones(rows, prompt, dtype=torch.long),
                "image_grid_thw": torch.tensor([[1, 2, 2]] * count),
                "pixel_values": torch.arange(count * 4 * 3, dtype=torch.float).reshape(-1, 3)},
        image_offsets=[0, *np.cumsum(images).tolist()],
        responses=torch.arange(rows * response).reshape(rows, response),
        response_mask=torch.ones(rows, response, dtype=torch.long),
        truncated=torch.zeros(rows, dtype=torch.bool),
        samples=[None] * rows, groups=groups, texts=[f"t{g}" for g in groups], pad_token_id=pad,
    )  # fmt: skip


def test_rollouts_select_takes_rows_with_exactly_their_images():
    r = _hand_built((3, 2), images=[1, 0, 2], groups=["0", "0", "1"])
    picked = r.select([2, 0])
    assert picked.groups == ["1", "0"] and picked.image_offsets == [0, 2, 3]
    assert torch.equal(picked.inputs["input_ids"], r.inputs["input_ids"][[2, 0]])
    pixels = r.inputs["pixel_values"]
    # row 2's images are patches 4..11 of the original, row 0's 0..3
    assert torch.equal(picked.inputs["pixel_values"], torch.cat([pixels[4:12], pixels[:4]]))
    assert torch.equal(picked.model_inputs(slice(1, 2))["pixel_values"], pixels[:4])
    assert "pixel_values" not in r.select([1]).model_inputs(slice(0, 1))


def test_rollouts_concat_pads_prompts_left_and_responses_right():
    a = _hand_built((3, 2), images=[1, 0], groups=["0", "0"])
    b = _hand_built((5, 4), images=[2, 1], groups=["1", "1"])
    both = local.Rollouts.concat([a, b])
    assert both.groups == ["0", "0", "1", "1"] and both.image_offsets == [0, 1, 1, 3, 4]
    ids, mask = both.inputs["input_ids"], both.inputs["attention_mask"]
    assert torch.equal(ids[:2, :2], torch.full((2, 2), 9)) and not mask[:2, :2].any()
    assert torch.equal(ids[:2, 2:], a.inputs["input_ids"]) and mask[:2, 2:].all()
    assert torch.equal(both.responses[:2, 2:], torch.full((2, 2), 9))
    assert not both.response_mask[:2, 2:].any() and both.response_mask[2:].all()
    # b's second row keeps its own image (the 4th overall)
    assert torch.equal(both.model_inputs(slice(3, 4))["pixel_values"],
                       b.inputs["pixel_values"][8:12])  # fmt: skip
    with pytest.raises(ValueError, match="group ids repeat"):
        local.Rollouts.concat([a, a])


def test_concat_and_select_keep_each_rows_log_probs(tmp_path, inputs):
    # The extra left padding of a concatenated batch must not change what the model sees.
    cfg = load_config(LocalRLConfig, RECIPE, [*inputs, *SMALL, f"trainer.output_dir={tmp_path}"])
    torch.manual_seed(0)
    model, processor, device = local.build_policy(cfg)
    prompts = local.load_prompts(cfg, processor, tmp_path)
    state = local.TrainerState(seed=0)
    parts = [local.generate_rollouts(model, processor, local.next_batch(prompts, state, cfg),
                                     cfg, device, first_group=2 * i) for i in range(2)]  # fmt: skip
    both = local.Rollouts.concat(parts).select([12, 13, 0, 1])  # part 2's row 4-5, part 1's 0-1
    with torch.no_grad():
        got, _ = local.response_log_probs(model, both, slice(0, 4), 1.0)
        want = [local.response_log_probs(model, p, slice(0, 2), 1.0)[0] for p in parts]
        want_b, _ = local.response_log_probs(model, parts[1], slice(4, 6), 1.0)
    mask = both.response_mask.bool()
    width = want[0].shape[1]
    torch.testing.assert_close(got[2:, :width][mask[2:, :width]], want[0][mask[2:, :width]],
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    width = want_b.shape[1]
    torch.testing.assert_close(got[:2, :width][mask[:2, :width]], want_b[mask[:2, :width]],
                               rtol=1e-4, atol=1e-4)  # fmt: skip


def test_filter_groups_trains_on_groups_that_differ(tmp_path, inputs):
    out = tmp_path / "dapo"
    local.main(["--config", str(RECIPE), f"trainer.output_dir={out}", "trainer.max_steps=3",
                "trainer.export=false", "trainer.save_steps=0", *inputs, *SMALL,
                "reward.function=tests.rl.test_local:flat_on_letters", "reward.plugin.workers=0",
                "algorithm.filter_groups.enable=true", "algorithm.filter_groups.metric=score",
                "algorithm.filter_groups.max_num_gen_batches=4"])  # fmt: skip
    metrics = _metrics(out)
    assert sorted(metrics) == [1, 2, 3]
    rows = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    for step, record in metrics.items():
        assert 1 <= record["train/gen_batches"] <= 4
        groups: dict[str, list[float]] = {}
        for row in rows:
            if row["step"] == step:
                groups.setdefault(row["group"], []).append(row["score"])
        assert len(groups) == 2 and all(len(g) == 4 for g in groups.values())  # a full batch
        flat = sum(len(set(g)) == 1 for g in groups.values())
        assert flat == record["train/groups_flat_kept"] == record["reward/flat_groups"] * 2
        if flat == 0:
            assert all(0.5 not in g for g in groups.values())  # no multiple-choice group
    assert sum(r["train/groups_filtered"] for r in metrics.values()) > 0
    assert any(r["train/gen_batches"] > 1 for r in metrics.values())


def test_filter_groups_stops_at_max_num_gen_batches(tmp_path, inputs):
    # A tiny random model never answers right: every group is all-wrong on `acc`.
    cfg = load_config(LocalRLConfig, RECIPE, [
        *inputs, *SMALL, *WITH_PLUGIN, "reward.plugin.workers=0", f"trainer.output_dir={tmp_path}",
        "algorithm.filter_groups.enable=true", "algorithm.filter_groups.metric=acc",
        "algorithm.filter_groups.max_num_gen_batches=2"])  # fmt: skip
    torch.manual_seed(0)
    model, processor, device = local.build_policy(cfg)
    prompts = local.load_prompts(cfg, processor, tmp_path)
    state, times = local.TrainerState(seed=0), {"rollout": 0.0, "reward": 0.0}
    rollouts, rows, metrics = local.collect_rollouts(model, processor, prompts, state, cfg,
                                                     device, times)  # fmt: skip
    assert {k: v for k, v in metrics.items() if k.startswith("train/")} == {
        "train/gen_batches": 2.0, "train/groups_filtered": 2.0, "train/groups_flat_kept": 2.0}  # fmt: skip
    # The reward of every rollout sampled (16: both batches, not only the 8 trained on).
    assert metrics["reward/sampled_accuracy"] == 0.0
    assert set(metrics) == {"train/gen_batches", "train/groups_filtered",
                            "train/groups_flat_kept", "reward/sampled", "reward/sampled_accuracy"}  # fmt: skip
    assert state.position == 4  # two generation batches of 2 prompts drawn
    assert rollouts.groups == ["0"] * 4 + ["1"] * 4  # the first batch's groups fill it
    assert len(rows) == 8 and {r["accuracy"] for r in rows} == {0.0}
    assert times["rollout"] > 0 and times["reward"] > 0
    # A generation batch of 3 prompts (DAPO's gen_batch_size): the same limit, 6 prompts
    # drawn, the batch filled with the first batch's first 2 groups, group ids counting on.
    cfg.data.gen_batch_size = 3
    state = local.TrainerState(seed=0)
    rollouts, rows, metrics = local.collect_rollouts(model, processor, prompts, state, cfg,
                                                     device, times)  # fmt: skip
    assert {k: v for k, v in metrics.items() if k.startswith("train/")} == {
        "train/gen_batches": 2.0, "train/groups_filtered": 4.0, "train/groups_flat_kept": 2.0}  # fmt: skip
    assert state.position == 6 and rollouts.groups == ["0"] * 4 + ["1"] * 4
    cfg.data.gen_batch_size = 0
    # Filter off: the batch is everything sampled, and its mean is `reward/sampled`.
    cfg.algorithm.filter_groups.enable = False
    _, rows, metrics = local.collect_rollouts(model, processor, prompts, state, cfg, device, times)
    assert len(rows) == 8 and metrics == {
        "reward/sampled": pytest.approx(float(np.mean([r["score"] for r in rows]))),
        "reward/sampled_accuracy": 0.0}  # fmt: skip
