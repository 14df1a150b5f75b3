"""`mmr demo` end to end at a reduced size: every stage runs for real (tiny model, teacher
server, data pipeline, SFT and GSPO subprocesses, eval), for a few steps. Whether the model
learns is the full demo's business (its checks), not this test's."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import mmr.demo
from mmr.config import ConfigError, config_to_dict, load_config
from mmr.data.io import read_samples
from mmr.data.synthetic import recheck_count, teacher_response
from mmr.demo import (
    DEFAULT_CONFIG,
    DemoConfig,
    empty_think_share,
    lookup_strategies,
    main,
    pretrain,
    pretrain_key,
    verl_keys,
)
from mmr.eval.stats import sign_test_p, smoothed, wilson_interval

ROOT = Path(__file__).resolve().parents[1]

SMALL = [
    "tasks.train=12",
    "tasks.test=8",
    "model.hidden_size=64",
    "model.intermediate_size=128",
    "model.layers=2",
    "eval.max_new_tokens=12",
    "eval.headroom_n=2",
    "require_checks=false",
    "pretrain.train=12",
    "pretrain.test=6",
    "pretrain.kinds=[colour,largest]",
    "pretrain.max_new_tokens=12",
    "pretrain.overrides=[trainer.max_steps=2]",
    "sft.overrides=[trainer.max_steps=3,trainer.save_steps=0]",
    "rl.overrides=[trainer.max_steps=2,trainer.save_steps=0,data.batch_size=2,rollout.n=2,"
    "rollout.max_new_tokens=12,reward.accuracy.workers=0,algorithm.filter_groups.enable=true,"
    "algorithm.filter_groups.metric=acc,algorithm.filter_groups.max_num_gen_batches=2]",
    "rl.verl_overrides=[verl.trainer.total_training_steps=2,verl.trainer.save_freq=2,"
    "verl.data.max_response_length=12,reward.length.budget_tokens=6,reward.length.max_tokens=12]",
]
KEYS = ("accuracy_base", "accuracy_chance", "accuracy_pretrained", "accuracy_sft", "accuracy_rl",
        "format_sft", "pretrain_description_accuracy", "sft_packing_efficiency",
        "format_rl", "mean_response_tokens_sft", "mean_response_tokens_rl")  # fmt: skip


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL_NAME", "USE_LLM_JUDGE"):
        monkeypatch.delenv(name, raising=False)


def test_demo_small_end_to_end(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    # The demo's default path (pretraining, frozen packed SFT, GSPO twice: with and without
    # the length term) on the debug engine. The same demo with GSPO on verl is the first run
    # of tests/rl/test_verl_train.py (one launch of verl's trainer for both tests).
    out, cache = tmp_path / "demo", f"pretrain.cache_dir={tmp_path / 'cache'}"
    argv = [f"output_dir={out}", "rl.engine=local", cache, *SMALL]
    # the verbose teacher, through the server, the pipeline's filters and SFT
    argv += ["data.max_rechecks=3", "rl.length_ablation=true", "pretrain.enabled=true"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    check_demo_outputs(out, summary, capsys.readouterr().out, engine="local", rl_steps=2)
    assert summary["pretrain_cache"] == "miss" and summary["pretrain"]["steps"] == 2
    assert set(summary["pretrain"]["per_kind"]) == {"colour", "largest"}
    per_field = summary["pretrain"]["per_field"]
    assert {"colour/colour", "colour/shape", "largest/largest"} <= set(per_field)
    assert all(0.0 <= v <= 1.0 for v in per_field.values())
    selected = list(read_samples(out / "data" / "selected"))
    data = load_config(DemoConfig, DEFAULT_CONFIG, argv).data  # demo.yaml's teacher: it skips
    assert data.skip_lookup > 0  # steps in a share of the `largest` traces
    assert sorted(s.response for s in selected) == sorted(
        teacher_response(s.meta, max_rechecks=3, skip_lookup=data.skip_lookup,
                         skip_form=data.skip_form) for s in selected
    )  # fmt: skip
    assert {recheck_count(s.meta, 3) for s in selected} != {0}
    assert (out / "rl" / "rollouts.jsonl").is_file()
    # The ablation: a second GSPO run from the same SFT model, the length term off.
    assert "mode: none" in (out / "rl_no_length" / "config.yaml").read_text()
    assert "mode: budget" in (out / "rl" / "config.yaml").read_text()
    ablation = summary["length_ablation"]
    report = (out / "report.md").read_text()
    for key, name in (("with_length", "rl"), ("without_length", "rl_no_length")):
        gens = [json.loads(x) for x in (out / "eval" / name / "generations.jsonl").open()]
        assert len(gens) == 8 and ablation[key]["accuracy"] == summary[f"accuracy_{name}"]
        assert ablation[key]["empty_think_share"] == empty_think_share(
            [g["response"] for g in gens]
        )
    assert set(ablation["checks"]) <= set(summary["checks"])
    assert "## The overthinking penalty" in report
    assert (out / "rl_length.png").read_bytes()[:4] == b"\x89PNG"
    # The same inputs again: the pretraining stage comes from the cache, without training.
    cfg = load_config(DemoConfig, str(DEFAULT_CONFIG), [cache, *SMALL, "pretrain.enabled=true"])
    with monkeypatch.context() as m:
        m.setattr(mmr.demo, "stage", lambda *a, **k: pytest.fail("pretrained again"))
        model, again = pretrain(cfg, out / "base_model", tmp_path / "again")
    assert again["cache"] == "hit" and again["key"] == summary["pretrain"]["key"]
    assert again["all"] == summary["pretrain"]["all"]
    assert (model / "model.safetensors").read_bytes() == (
        out / "pretrain" / "final" / "model.safetensors"
    ).read_bytes()
    assert "cache hit" in capsys.readouterr().out
    # A rerun replaces its own folder; a folder it did not make is refused.
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    assert main([f"output_dir={stranger}", *SMALL]) == 2
    assert (stranger / "notes.txt").read_text() == "keep me"


def check_demo_outputs(
    out: Path,
    summary: dict,
    printed: str,
    *,
    engine: str,
    rl_steps: int,
    train_tasks: int = 12,
    sft_steps: int = 3,
) -> None:
    """What every small demo run writes, whichever engine ran GSPO (pretraining on for the
    debug engine's run, off for verl's)."""
    card = summary["pretrain"] is not None
    keys = [k for k in KEYS if card or "pretrain" not in k]
    assert summary["rl_engine"] == engine
    if not card:
        assert summary["pretrain_description_accuracy"] is None
        assert "accuracy_pretrained" not in summary and not (out / "pretrain").exists()
    # SFT froze the vision tower and the projector, and they are bit-identical afterwards.
    assert summary["sft_frozen"]["parts"] == ["vision_tower", "projector"]
    assert summary["sft_frozen"]["bit_identical"] and summary["sft_frozen"]["tensors"] > 0
    assert summary["checks"]["sft_frozen_parts_bit_identical"]
    assert summary["sft_frozen"]["trainable_tensors_changed"] > 0
    for key in keys:
        assert 0.0 <= summary[key] <= (1.0 if key.startswith(("acc", "format")) else 12.0), key
    assert summary["sft_steps"] == sft_steps and summary["rl_steps"] == rl_steps
    assert summary["sft_samples"] == train_tasks  # every teacher trace verified and selected
    _check_statistics(out, summary, keys)
    assert set(summary["per_source"]["sft"]) >= {
        "synthetic/colour",
        "synthetic/count",
        "synthetic/largest",
        "all",
    }
    for png in ("sft_loss.png", "rl_reward.png", "accuracy.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # Both engines log the reward of every sampled rollout (before the group filter).
    from mmr.demo_report import rl_metrics

    log = rl_metrics(out / "rl")
    assert len(log) == rl_steps and all(0 <= r["reward/sampled_accuracy"] <= 1 for r in log)
    # GSPO's prompts are the train tasks of rl.kinds (the recipe: largest).
    assert summary["config"]["rl"]["kinds"] == ["largest"]
    rl_tasks = pq.read_table(out / "tasks_rl.parquet").column("source").to_pylist()
    assert set(rl_tasks) == {"synthetic/largest"}
    # A mean total: accuracy 0.9 + format 0.1, and the length terms (weight 0.1 each of the
    # budget and the in-group part) move it below 0 or above 1.
    assert all(-0.25 <= r["reward/sampled"] <= 1.25 for r in log)
    assert summary["rl_sampled_reward"] is None  # a trend needs 4 steps
    # GSPO's reward had its LLM judge on: the demo's rule judge, served while GSPO ran; every
    # request it got was answered (no judge fallback in any step).
    judge = summary["rl_judge"]
    assert 0 <= judge["correct"] <= judge["requests"]
    assert all(r.get("reward/judge_fallback", 0) == 0 for r in log)
    report = (out / "report.md").read_text()
    assert "reward.judge.enabled=true" in printed and "GSPO's LLM judge" in report
    assert "| sft |" in report and "![accuracy](accuracy.png)" in report
    assert (
        "## SFT headroom: 2 answers per held-out task" in report and "| pass@1 | pass@2 |" in report
    )
    assert f"| all | 8 | {summary['sft_pass_at_1']:.3f} [" in report
    assert "## Sampled answers after GSPO: 2 per held-out task" in report
    assert f"| all | {summary['sft_pass_at_1']:.3f} | {summary['rl_pass_at_1']:.3f} [" in report
    assert f"{summary['rl_vs_sft']['discordant']} discordant" in report
    # Each model's answer spread per kind, read from its eval table.
    count = summary["per_source"]["rl"]["synthetic/count"]
    assert 1 / count["responses"] <= count["top_answer"] <= 1.0
    assert "## Answer spread (held-out)" in report
    assert (
        f"| synthetic/count | {summary['per_source']['base']['synthetic/count']['top_answer']:.3f} |"
        in report
    )
    for name in ("base", "pretrained", "sft", "rl") if card else ("base", "sft", "rl"):
        assert len((out / "eval" / name / "generations.jsonl").read_text().splitlines()) == 8
    assert "held-out accuracy" in printed
    if card:
        assert len((out / "pretrain" / "descriptions.jsonl").read_text().splitlines()) == 6
        assert "pretrained model: cache miss" in printed


def _check_statistics(out: Path, summary: dict, keys: list[str]) -> None:
    """The headroom, the intervals and the paired test, recomputed from the generations."""
    sampled = [json.loads(line) for line in (out / "eval" / "sft_headroom" / "generations.jsonl")
               .read_text().splitlines()]  # fmt: skip
    assert len(sampled) == 16  # 8 tasks x headroom_n=2
    right: dict[str, list[bool]] = {}
    for row in sampled:
        right.setdefault(row["id"], []).append(row["accuracy"] == 1)
    head = summary["headroom"]
    assert head["n"] == 2 and head["temperature"] == 1.0
    assert set(head["table"]) == {"synthetic/colour", "synthetic/count", "synthetic/largest", "all"}
    assert summary["sft_pass_at_1"] == pytest.approx(sum(r["accuracy"] for r in sampled) / 16)
    assert summary["sft_pass_at_n"] == pytest.approx(sum(map(any, right.values())) / 8)
    assert head["table"]["all"]["tasks"] == 8
    for row in head["table"].values():
        assert 0 <= row["pass@1"] <= row["pass@n"] <= 1
        for k in ("pass@1", "pass@n"):
            low, high = row[f"{k}_ci95"]
            assert 0 <= low <= row[k] <= high <= 1 and high - low > 0.1  # a few tasks: wide
    for name in ("base", "sft", "rl"):
        low, high = summary[f"accuracy_ci95_{name}"]
        assert [low, high] == wilson_interval(summary[f"accuracy_{name}"], 8)
        for row in summary["per_source"][name].values():
            assert row["accuracy_ci95"] == wilson_interval(row["accuracy"], row["questions"])
    greedy = {
        name: {json.loads(line)["id"]: json.loads(line)["accuracy"] == 1 for line in
               (out / "eval" / name / "generations.jsonl").read_text().splitlines()}
        for name in ("sft", "rl")
    }  # fmt: skip
    paired = summary["rl_vs_sft"]
    only_sft = sum(greedy["sft"][k] and not greedy["rl"][k] for k in greedy["sft"])
    only_rl = sum(greedy["rl"][k] and not greedy["sft"][k] for k in greedy["sft"])
    assert (paired["tasks"], paired["sft_only_right"], paired["rl_only_right"]) == (
        8,
        only_sft,
        only_rl,
    )
    assert paired["discordant"] == only_sft + only_rl
    assert (
        paired["p_value"]
        == paired["sign_test_p"]
        == sign_test_p(min(only_sft, only_rl), only_sft + only_rl)
    )
    # RL's sampled answers as SFT's, and the paired test of how often each gets a task right.
    share = {}
    for name in ("sft_headroom", "rl_headroom"):
        rows = [json.loads(line) for line in (out / "eval" / name / "generations.jsonl")
                .read_text().splitlines()]  # fmt: skip
        assert len(rows) == 16
        by_task: dict[str, list[bool]] = {}
        for row in rows:
            by_task.setdefault(row["id"], []).append(row["accuracy"] == 1)
        share[name] = {k: sum(v) / len(v) for k, v in by_task.items()}
    rl_rows = summary["rl_headroom"]["table"]
    assert summary["rl_pass_at_1"] == rl_rows["all"]["pass@1"]
    assert summary["rl_pass_at_1"] == pytest.approx(sum(share["rl_headroom"].values()) / 8)
    more = sum(share["rl_headroom"][k] > share["sft_headroom"][k] for k in share["rl_headroom"])
    less = sum(share["rl_headroom"][k] < share["sft_headroom"][k] for k in share["rl_headroom"])
    sampled = summary["rl_vs_sft_sampled"]
    assert (sampled["rl_only_right"], sampled["sft_only_right"]) == (more, less)
    assert sampled["p_value"] == sign_test_p(min(more, less), more + less)


def test_wilson_interval():
    # Reference values: scipy's binomtest(k, n).proportion_ci(method="wilson") (not a dep).
    assert wilson_interval(0.0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4)
    assert wilson_interval(1.0, 10) == pytest.approx([0.7225, 1.0], abs=1e-4)
    assert wilson_interval(0.5, 10) == pytest.approx([0.2366, 0.7634], abs=1e-4)
    assert wilson_interval(0.53, 200) == pytest.approx([0.4609, 0.5980], abs=1e-4)
    assert wilson_interval(0.5, 0) == [0.0, 1.0]


def test_new_keys_are_checked_naming_them(capsys, tmp_path):
    assert main([f"output_dir={tmp_path}", "data.max_rechecks=9"]) == 2
    assert "data.max_rechecks" in capsys.readouterr().err
    assert main([f"output_dir={tmp_path}", "data.skip_lookup=1.5"]) == 2
    assert "data.skip_lookup" in capsys.readouterr().err
    assert main([f"output_dir={tmp_path}", "data.skip_form=colour"]) == 2
    assert "data.skip_form" in capsys.readouterr().err
    assert main([f"output_dir={tmp_path}", "eval.headroom_n=-1"]) == 2
    assert "eval.headroom_n" in capsys.readouterr().err
    assert main([f"output_dir={tmp_path}", "rl.kinds=[colour,bars]"]) == 2
    assert "'rl.kinds' names ['bars']" in capsys.readouterr().err
    assert main([f"output_dir={tmp_path}", "tasks.train_kinds=[colour,digits]"]) == 2
    assert "'tasks.train_kinds' names ['digits']" in capsys.readouterr().err
    argv = [f"output_dir={tmp_path}", "tasks.train_kinds=[colour,count]", "rl.kinds=[largest]"]
    assert main(argv) == 2  # GSPO's prompts come from the train tasks
    assert "'rl.kinds' names ['largest']" in capsys.readouterr().err


def test_train_kinds_weight_the_train_split_and_leave_the_test_split_balanced(tmp_path):
    from collections import Counter

    from mmr.demo import DemoConfig, rl_prompts, write_tasks

    argv = ["tasks.train=40", "tasks.test=30", "tasks.train_kinds=[colour,largest,largest,count]",
            "rl.kinds=[largest]"]  # fmt: skip
    cfg = load_config(DemoConfig, None, argv)
    train, test = write_tasks(cfg, tmp_path)
    kinds = Counter(s.meta["kind"] for s in read_samples(train))
    assert kinds == {"colour": 10, "count": 10, "largest": 20}
    assert Counter(s.meta["kind"] for s in read_samples(test)) == {
        "colour": 10,
        "count": 10,
        "largest": 10,
    }
    prompts = list(read_samples(rl_prompts(cfg, train, tmp_path / "rl.parquet")))
    assert len(prompts) == 20 and {s.meta["kind"] for s in prompts} == {"largest"}
    # Without train_kinds both splits take tasks.kinds.
    cfg = load_config(DemoConfig, None, ["tasks.train=30", "tasks.test=30"])
    (tmp_path / "plain").mkdir()
    train, _ = write_tasks(cfg, tmp_path / "plain")
    assert Counter(s.meta["kind"] for s in read_samples(train)) == {
        "colour": 10,
        "count": 10,
        "largest": 10,
    }


def test_rl_overrides_set_verls_run_too():
    # The demo's GSPO settings are one list for both engines: each debug-engine key becomes
    # its verl counterpart(s); logging-only keys stay behind; a key with none is refused.
    cfg = load_config(DemoConfig, DEFAULT_CONFIG, [])
    verl = verl_keys(cfg.rl.overrides)
    assert "verl.data.max_response_length=96" in verl
    assert {"verl.trainer.total_training_steps=48", "verl.trainer.save_freq=48"} <= set(verl)
    assert "verl.actor_rollout_ref.actor.ppo_mini_batch_size=16" in verl
    assert "verl.algorithm.filter_groups.enable=true" in verl
    assert "verl.trainer.v1.sampler.sampler_kwargs.+gen_batch_size=24" in verl
    assert verl_keys(["trainer.seed=2"]) == ["verl.data.seed=2",
                                             "verl.actor_rollout_ref.rollout.seed=2"]  # fmt: skip
    assert verl_keys(["reward.length.weight=0.3", "algorithm.use_kl_loss=true",
                      "trainer.save_steps=0", "reward.accuracy.workers=0"]) == [
        "reward.length.weight=0.3", "verl.actor_rollout_ref.actor.use_kl_loss=true"]  # fmt: skip
    with pytest.raises(ConfigError, match=r"sets model\.freeze, which the demo cannot pass"):
        verl_keys(["model.freeze=[]"])
    with pytest.raises(ConfigError, match="not key=value"):
        verl_keys(["trainer.max_steps"])


# The length ablation's GSPO settings (README's command): they set no data.batch_size.
ABLATION_RL = ("rl.overrides=[rollout.max_new_tokens=160,reward.length.mode=group,"
               "reward.length.weight=0.3,optim.lr=1.0e-4,trainer.max_steps=32,"
               "algorithm.filter_groups.enable=true,algorithm.filter_groups.metric=acc,"
               "algorithm.filter_groups.max_num_gen_batches=2]")  # fmt: skip


@pytest.mark.parametrize("overrides", [[], [ABLATION_RL], ["rl.overrides=[]"]])
def test_both_engines_run_gspo_with_the_same_settings(overrides):
    # What `mmr demo` hands each engine (its recipe, rl.verl_overrides, rl.overrides as each
    # engine's keys) composed as that engine composes it: every GSPO setting the two share
    # is equal (session 12: an rl.overrides without data.batch_size ran verl at 2 prompts a
    # step and the debug engine at 4).
    from mmr.rl.local_config import LocalRLConfig
    from mmr.rl.train import RLConfig, compose_verl_config

    pytest.importorskip("verl")
    demo = load_config(DemoConfig, DEFAULT_CONFIG, overrides)
    local = load_config(LocalRLConfig, ROOT / demo.rl.config, demo.rl.overrides)
    verl_cfg = load_config(RLConfig, ROOT / demo.rl.verl_config,
                           [*demo.rl.verl_overrides, *verl_keys(demo.rl.overrides)])  # fmt: skip
    verl = compose_verl_config(verl_cfg)
    actor, rollout = verl.actor_rollout_ref.actor, verl.actor_rollout_ref.rollout
    algo = local.algorithm
    shared = ("loss_agg_mode", "clip_ratio_low", "clip_ratio_high", "entropy_coeff")
    shared += ("use_kl_loss", "kl_loss_coef", "kl_loss_type", "ppo_epochs")
    sampling = ("n", "temperature", "top_p", "top_k")
    mini = algo.ppo_mini_batch_size or local.data.batch_size  # 0: the whole batch
    pairs = {
        "prompts a step": (local.data.batch_size, verl.data.train_batch_size),
        "mini-batch": (mini, actor.ppo_mini_batch_size),
        "steps": (local.trainer.max_steps, verl.trainer.total_training_steps),
        "response tokens": (local.rollout.max_new_tokens, verl.data.max_response_length),
        **{f"rollout.{k}": (getattr(local.rollout, k), rollout[k]) for k in sampling},
        **{f"algorithm.{k}": (getattr(algo, k), actor[k]) for k in shared},
        "loss": (algo.loss_mode, actor.policy_loss.loss_mode),
        "lr": (local.optim.lr, actor.optim.lr),
        "weight decay": (local.optim.weight_decay, actor.optim.weight_decay),
        "grad clip": (local.optim.grad_clip, actor.grad_clip),
        "frozen tower": ("vision_tower" in local.model.freeze, actor.freeze_vision_tower),
        "filter_groups": (algo.filter_groups.enable, verl.algorithm.filter_groups.enable),
    }
    if algo.filter_groups.enable:  # its metric and budget mean something only when on
        for k in ("metric", "max_num_gen_batches"):
            pairs[f"filter_groups.{k}"] = (getattr(algo.filter_groups, k),
                                           verl.algorithm.filter_groups[k])  # fmt: skip
        sampler = verl.trainer.v1.sampler.sampler_kwargs
        pairs["prompts a generation batch"] = (local.data.gen_batch_size or local.data.batch_size,
                                               sampler.get("gen_batch_size") or verl.data.train_batch_size)  # fmt: skip
    differ = {name: pair for name, pair in pairs.items() if pair[0] != pair[1]}
    assert not differ, differ
    reward_local, reward_verl = config_to_dict(local.reward), config_to_dict(verl_cfg.reward)
    for reward in (reward_local, reward_verl):
        reward["accuracy"].pop("workers")  # where math-verify runs, not what it decides
    assert reward_local == reward_verl


def test_rl_prompts_are_the_train_tasks_of_rl_kinds(tmp_path):
    from mmr.data.synthetic import write_synthetic
    from mmr.demo import DemoConfig, rl_prompts

    train = write_synthetic(tmp_path / "train.parquet", 30, split="train", seed=0,
                            kinds=["colour", "count", "largest"], levels=[1],
                            with_response=False)  # fmt: skip
    cfg = load_config(DemoConfig, None, ["rl.kinds=[largest,colour]"])
    prompts = rl_prompts(cfg, train, tmp_path / "rl.parquet")
    every, kept = pq.read_table(train).to_pylist(), pq.read_table(prompts).to_pylist()
    want = [r for r in every if r["source"] in ("synthetic/colour", "synthetic/largest")]
    assert kept == want and 0 < len(kept) < len(every)  # in order, whole rows
    for kinds in ("[]", "[count,largest,colour]"):  # every kind: the train file itself
        cfg = load_config(DemoConfig, None, [f"rl.kinds={kinds}"])
        assert rl_prompts(cfg, train, tmp_path / "x.parquet") == train


def test_sampled_reward_trend_compares_the_first_and_last_quarter():
    from mmr.demo import sampled_reward_trend

    log = [{"step": i, "reward": 0.5, "reward/sampled": 0.1 * i,
            "reward/sampled_accuracy": 0.05 * i} for i in range(1, 9)]  # fmt: skip
    trend = sampled_reward_trend(log)
    assert trend == {"steps": 2, "first": 0.15, "last": 0.75, "rise": 0.6,
                     "first_accuracy": 0.075, "last_accuracy": 0.375}  # fmt: skip
    assert sampled_reward_trend(log[:3]) is None
    assert sampled_reward_trend([{"step": 1, "reward": 0.5}] * 8) is None  # an older log


def test_smoothed_is_a_trailing_mean():
    assert smoothed([1.0, 3.0, None, 5.0, 7.0], 2) == [1.0, 2.0, 3.0, 5.0, 6.0]


def test_empty_think_share():
    responses = ["<think>The shape is red.</think>\\boxed{red}", "<think> \n</think>\\boxed{1}",
                 "\\boxed{2}", "<think>\nI count.\n</think> \\boxed{3}"]  # fmt: skip
    assert empty_think_share(responses) == 0.5 and empty_think_share([]) == 0.0


def test_lookup_strategies_sort_option_answers_by_how_they_found_the_letter(tmp_path):
    from mmr.data.synthetic import generate_tasks
    from mmr.demo_report import strategy_lines

    tasks = generate_tasks(6, kinds=["largest"], levels=[1])
    rows = [  # the teacher's own two traces, one wrong answer of each, and two others
        {"id": "a", "ground_truth": tasks[0].answer, "accuracy": 1.0,
         "response": teacher_response(tasks[0])},
        {"id": "b", "ground_truth": tasks[1].answer, "accuracy": 0.0,
         "response": teacher_response(tasks[1])},
        {"id": "c", "ground_truth": tasks[2].answer, "accuracy": 1.0,
         "response": teacher_response(tasks[2], skip_lookup=1.0)},
        {"id": "d", "ground_truth": tasks[3].answer, "accuracy": 0.0,
         "response": teacher_response(tasks[3], skip_lookup=1.0)},
        {"id": "e", "ground_truth": "B", "accuracy": 0.0, "response": "<think>B</think>"},
        {"id": "g", "ground_truth": tasks[4].answer, "accuracy": 1.0,
         "response": teacher_response(tasks[4], skip_lookup=1.0, skip_form="answer")},
        {"id": "f", "ground_truth": "3", "accuracy": 1.0, "response": "Option A is red"},
    ]  # fmt: skip
    (tmp_path / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = lookup_strategies(tmp_path)
    assert table == {
        "read_out": {"answers": 2, "accuracy": 0.5},
        "skipped": {"answers": 3, "accuracy": 0.6667},
        "other": {"answers": 1, "accuracy": 0.0},
        "read_out_share": 0.3333,  # of the 6 option-letter answers (f's gold is a number)
    }
    lines = strategy_lines({"sft": table, "rl": None})
    assert "| sft | 2 (0.500) | 3 (0.667) | 1 (0.000) | 0.333 |" in lines
    assert not any(line.startswith("| rl ") for line in lines)
    (tmp_path / "generations.jsonl").write_text(json.dumps(rows[-1]) + "\n")
    assert lookup_strategies(tmp_path) is None and strategy_lines({"sft": None}) == []


def test_sign_test_p():
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(0, 10) == pytest.approx(2 / 1024)
    assert sign_test_p(8, 25) == pytest.approx(0.1078, abs=1e-3)  # 8 vs 17: not significant
    assert sign_test_p(5, 10) == 1.0
    assert sign_test_p(3, 20) < 0.05


def test_pretrain_key_follows_what_determines_the_weights(tmp_path: Path):
    from mmr.models import tiny

    base = tiny.build("qwen2_5_vl", tmp_path / "base", seed=0)

    def key(*overrides: str) -> str:
        return pretrain_key(load_config(DemoConfig, str(DEFAULT_CONFIG), list(overrides)), base)

    same = key()
    assert key() == same and key("pretrain.cache_dir=/elsewhere") == same
    assert key("output_dir=/elsewhere", "tasks.train=64") == same  # later stages: not in it
    for changed in ("seed=1", "pretrain.train=100", "pretrain.kinds=[count]",
                    "pretrain.overrides=[optim.lr=1e-3]", "eval.batch_size=8"):  # fmt: skip
        assert key(changed) != same, changed
    (base / "model.safetensors").write_bytes(b"other weights")
    assert key() != same


def test_a_failed_check_exits_3_naming_it(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path):
    # The stages are the small end-to-end test's business; here only what main does with
    # the checks run() returns.
    checks = {"sft_beats_base_by_0.2": True, "rl_not_worse_than_sft": False, "all": False}
    monkeypatch.setattr(mmr.demo, "run", lambda cfg: {"checks": checks})
    assert main([f"output_dir={tmp_path}"]) == 3
    err = capsys.readouterr().err
    assert "checks failed: rl_not_worse_than_sft" in err and "sft_beats" not in err
    assert main([f"output_dir={tmp_path}", "require_checks=false"]) == 0
