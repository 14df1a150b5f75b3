"""Composition, row schema, config, import hygiene and verl compatibility."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mmr.config import ConfigError, load_config
from mmr.rewards import RewardConfig, compute_score, score_batch, summarize
from mmr.rewards.compose import VERL_KEYS

ROOT = Path(__file__).resolve().parents[2]
OK = r"<think>t</think> \boxed{4}"
ROW_KEYS = {"score", "accuracy", "format", "length", "judge", "judge_fallback",
            "extracted_answer", "decided_by", "error", "response_tokens", "tokens_source"}  # fmt: skip


def test_default_weights_and_row_keys() -> None:
    rows = score_batch(
        [
            {"response": OK, "ground_truth": "4"},
            {"response": r"\boxed{4}", "ground_truth": "4"},  # right, but no thinking
            {"response": r"<think>t</think> \boxed{5}", "ground_truth": "4"},
            {"response": "garbage"},  # no ground truth
            "not a dict",
        ]
    )
    assert [r["score"] for r in rows] == pytest.approx([1.0, 0.9, 0.1, 0.0, 0.0])
    assert all(set(r) == ROW_KEYS for r in rows)
    assert rows[3]["error"] == "missing field(s): ground_truth"
    summary = summarize(rows)
    assert summary["rows"] == 5 and summary["errors"] == 2
    assert summary["mean_accuracy"] == pytest.approx(0.4)


def test_weights_are_configurable() -> None:
    cfg = load_config(RewardConfig, None, ["weights.accuracy=1.0", "weights.format=0.5"])
    rows = score_batch([{"response": OK, "ground_truth": "4"}], cfg)
    assert rows[0]["score"] == pytest.approx(1.5)


def test_budget_length_part_is_weighted_into_the_score() -> None:
    cfg = load_config(
        RewardConfig, None,
        ["length.mode=budget", "length.budget_tokens=10", "length.max_tokens=20", "length.weight=0.5"],
    )  # fmt: skip
    rows = score_batch([{"response": OK, "ground_truth": "4", "response_tokens": 15}], cfg)
    assert rows[0]["length"] == -0.5 and rows[0]["score"] == pytest.approx(1.0 - 0.25)


@pytest.mark.parametrize(
    "override,key",
    [("length.mode=short", "length.mode"), ("plugin.mode=mix", "plugin.mode"),
     ("accuracy.parse_timeout_s=0", "accuracy.parse_timeout_s"), ("judge.concurency=4", "judge.concurency"),
     ("length.budget_tokens=50000", "length.budget_tokens")],
)  # fmt: skip
def test_bad_config_names_the_key(override: str, key: str) -> None:
    overrides = [override] + (["length.mode=budget"] if "budget_tokens" in override else [])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(RewardConfig, None, overrides)


def test_compute_score_has_verls_signature_and_fixed_keys() -> None:
    out = compute_score("openmmreasoner", OK, "4", {"question": "2+2?"})
    assert set(out) == set(VERL_KEYS)
    assert out["score"] == 1.0 and out["pred"] == "4"
    wrong = compute_score(
        data_source="x", solution_str="no answer", ground_truth="4", extra_info=None
    )
    assert set(wrong) == set(VERL_KEYS) and wrong["score"] == 0.0 and wrong["pred"] == ""


def test_compute_score_reads_config_from_kwargs(tmp_path) -> None:
    path = tmp_path / "reward.yaml"
    path.write_text("weights:\n  accuracy: 2.0\n")
    assert compute_score("s", OK, "4", {}, config=str(path))["score"] == pytest.approx(2.1)
    out = compute_score("s", OK, "4", {}, config=str(path), overrides=["weights.format=0"])
    assert out["score"] == pytest.approx(2.0)


def test_compute_score_reads_config_as_a_nested_mapping() -> None:
    from omegaconf import OmegaConf

    from mmr.config import config_to_dict

    cfg = RewardConfig()
    cfg.weights.accuracy = 2.0
    for config in (config_to_dict(cfg), OmegaConf.create(config_to_dict(cfg))):
        assert compute_score("s", OK, "4", {}, config=config)["score"] == pytest.approx(2.1)
    assert compute_score("s", OK, "4", {}, config={"weights": {"format": 0}})["score"] == 0.9
    with pytest.raises(ConfigError, match=r"weights\.acuracy"):
        compute_score("s", OK, "4", {}, config={"weights": {"acuracy": 1}})


def test_equal_configs_share_one_scorer_and_resolve_once() -> None:
    # verl calls compute_score once per rollout with the same bound config: the config and
    # its scorer are looked up, not rebuilt (OmegaConf's round trip cost ~4 ms a rollout).
    from omegaconf import OmegaConf

    from mmr.config import config_to_dict
    from mmr.rewards.compose import _resolve_config, get_scorer

    a, b = RewardConfig(), RewardConfig()
    assert a is not b and get_scorer(a) is get_scorer(b)
    b.length.budget_tokens += 1
    assert get_scorer(a) is not get_scorer(b)
    c = RewardConfig()
    c.accuracy.parse_timeout_s += 1  # a nested field counts
    assert get_scorer(c) is not get_scorer(a)
    plain = config_to_dict(b)
    as_dict, as_node = _resolve_config(plain, None), _resolve_config(OmegaConf.create(plain), None)
    assert as_dict is as_node is _resolve_config(dict(plain), None)
    assert as_dict.length.budget_tokens == b.length.budget_tokens
    assert _resolve_config(plain, ["weights.format=0"]) is not as_dict


def test_compute_score_gives_verls_acc_and_pred_and_judge_only_when_it_is_on() -> None:
    right = compute_score("s", OK, "4", {})
    wrong = compute_score("s", r"<think>t</think> \boxed{5}", "4", {})
    assert (right["acc"], right["pred"]) == (1.0, "4") and right["acc"] == right["accuracy"]
    assert (wrong["acc"], wrong["pred"]) == (0.0, "5") and wrong["acc"] == wrong["accuracy"]
    off = RewardConfig()
    off.judge.enabled = False
    assert "judge" not in compute_score("s", OK, "4", {}, config=off)
    on = RewardConfig()
    on.judge.enabled, on.judge.base_url = True, "http://127.0.0.1:9/v1"  # never called here
    out = compute_score("s", OK, "4", {}, config=on)  # the rules decide: no verdict
    assert list(out) == [*VERL_KEYS, "judge"] and out["judge"] is None


def test_verls_validation_metrics_get_accuracy_and_majority_vote() -> None:
    """verl's own reduction (process_validation_metrics) on compute_score's results."""
    pytest.importorskip("verl")
    from verl.trainer.ppo.metric_utils import process_validation_metrics

    answers = ["4", "4", "5", "4"]  # one prompt, four rollouts: 3 right, the vote is right
    results = [compute_score("s", f"<think>t</think> \\boxed{{{a}}}", "4", {}) for a in answers]
    infos = {key: [r[key] for r in results] for key in results[0]}
    metrics = process_validation_metrics(["s"] * 4, ["u"] * 4, infos)["s"]
    assert metrics["acc"]["mean@4"] == pytest.approx(0.75)
    # bootstrap samples of 4 (with replacement): the vote over `pred` beats the mean
    assert metrics["acc"]["maj@4/mean"] > metrics["acc"]["mean@4"]
    assert "pred" not in metrics  # a string: the vote, not a metric


def test_verl_loads_and_calls_it_like_its_reward_manager() -> None:
    """verl 0.9.1's own loader, then the call its NaiveRewardManager makes, from threads."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": str(ROOT / "mmr" / "rewards" / "__init__.py"),
                    "name": "compute_score",
                    "reward_kwargs": {"overrides": ["weights.format=0.2"]},
                }
            }
        }
    )
    fn = get_custom_reward_fn(config)
    cases = [(r"<think>a</think> \boxed{\frac{1}{2}}", "0.5", 1.1),
             (r"<think>a</think> \boxed{x^2-1}", "(x-1)(x+1)", 1.1),
             (r"<think>a</think> \boxed{7}", "8", 0.2), ("nothing", "8", 0.0)] * 8  # fmt: skip

    def call(case: tuple[str, str, float]) -> dict:
        # verl runs compute_score in an executor thread: no signals may be used here
        return fn(
            data_source="mmr_test",
            solution_str=case[0],
            ground_truth=case[1],
            extra_info={"num_turns": None, "rollout_reward_scores": {}},
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, cases))
    assert [r["score"] for r in results] == pytest.approx([c[2] for c in cases])
    # verl stacks each key over the batch, taking the key list from the first result
    assert all(list(r) == list(results[0]) for r in results)


def test_import_is_light_and_imports_no_stage() -> None:
    code = (
        "import sys, mmr.rewards, mmr.rewards.cli; "
        "bad = [m for m in ('torch', 'transformers', 'math_verify', 'httpx', 'mmr.sft', 'mmr.rl', "
        "'mmr.data.pipeline', 'mmr.eval') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


MIXED = [
    {"response": OK, "ground_truth": "4"},
    {"response": r"<think>a</think> \boxed{\dfrac{1}{2}}", "ground_truth": "0.5"},
    {"response": r"<think>a</think> \boxed{(x+1)^2}", "ground_truth": "x^2+2x+1"},
    {"response": r"<think>a</think> The answer is (B).", "ground_truth": "B",
     "question": "Pick one.\nA. 12\nB. 15"},
    {"response": r"<think>a</think> \boxed{15}", "ground_truth": "B",
     "question": "Pick one.\nA. 12\nB. 15"},
    {"response": r"<think>\boxed{4}</think> no answer here", "ground_truth": "4"},
    {"response": r"<think>never closed \boxed{4}", "ground_truth": "4"},
    {"response": r"<answer>12 cm</answer>", "ground_truth": "12"},
    {"response": r"<think>a</think> \boxed{3}", "ground_truth": "4"},
    {"response": "no ground truth"},
    {"response": r"<think>a</think> \boxed{" + "9" * 5000 + "}", "ground_truth": "7"},
]  # fmt: skip


def test_rules_in_workers_give_the_in_process_rows() -> None:
    """Batches of >= chunk_size rows run extraction, format and rules in the workers."""
    from mmr.rewards.compose import _POOLS, shutdown

    items = [dict(item, group=i % 7) for i, item in enumerate(MIXED * 12)]  # 132 rows
    in_process = RewardConfig()
    in_process.accuracy.workers = 0
    in_workers = RewardConfig()
    in_workers.accuracy.chunk_size = 16
    shutdown()
    expected = score_batch(items, in_process)
    assert not _POOLS
    got = score_batch(items, in_workers)
    assert got == expected
    assert _POOLS
    # A small batch that the rules decide alone starts no workers.
    shutdown()
    small = [0, 3, 4, 7, 8]
    assert score_batch([items[i] for i in small], in_workers) == [expected[i] for i in small]
    assert not _POOLS


def test_list_and_dict_group_ids_are_groups() -> None:
    # JSON input may hold any group id; equal ids form one group, whatever their type.
    cfg = RewardConfig()
    cfg.length.mode, cfg.length.weight = "group", 0.5
    short, long = OK, r"<think>" + "w " * 200 + r"</think> \boxed{4}"
    rows = score_batch(
        [{"response": r, "ground_truth": "4", "group": g} for r, g in
         [(short, [1, 2]), (long, [1, 2]), (short, {"p": 1}), (long, {"p": 1})]],
        cfg,
    )  # fmt: skip
    as_strings = score_batch(
        [{"response": r, "ground_truth": "4", "group": g} for r, g in
         [(short, "a"), (long, "a"), (short, "b"), (long, "b")]],
        cfg,
    )  # fmt: skip
    assert [r["length"] for r in rows] == [r["length"] for r in as_strings]
    assert rows[0]["length"] > rows[1]["length"]
