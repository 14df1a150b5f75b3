"""Plug-ins: loading by file or module, add/replace, containment of failures."""

from __future__ import annotations

import logging
import time

import pytest

from mmr.rewards import RewardConfig, RewardScorer
from mmr.rewards.plugins import PluginRunner, load_function
from tests.rewards import plugin_fns

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
OK = r"<think>t</think> \boxed{4}"


def _cfg(function: str, mode: str = "replace", weight: float = 1.0, **kwargs) -> RewardConfig:
    cfg = RewardConfig(function=function)
    cfg.plugin.mode, cfg.plugin.weight, cfg.plugin.kwargs = mode, weight, kwargs
    return cfg


def test_load_by_module_and_by_file(tmp_path) -> None:
    assert load_function("tests.rewards.plugin_fns:constant") is plugin_fns.constant
    path = tmp_path / "my_reward.py"
    path.write_text("def fn(data_source, solution_str, ground_truth, extra_info=None, **kw):\n"
                    "    return 0.75\n")  # fmt: skip
    assert load_function(f"{path}:fn")("s", "x", "y") == 0.75
    example = load_function(f"{ROOT}/examples/custom_reward.py:brevity_reward")
    out = example("math", OK, "4", {}, target_words=100)
    assert out["score"] > 1.0 and set(out) == {"score", "brevity", "words"}


@pytest.mark.parametrize(
    "spec,error",
    [("no_colon", ValueError), ("/nope/missing.py:fn", FileNotFoundError),
     ("tests.rewards.plugin_fns:missing", AttributeError), ("no_such_pkg_xyz:fn", ImportError)],
)  # fmt: skip
def test_load_errors_name_the_problem(spec: str, error: type) -> None:
    with pytest.raises(error):
        load_function(spec)


def test_replace_mode_uses_the_plugin_score_and_parts() -> None:
    rows = RewardScorer(_cfg("tests.rewards.plugin_fns:with_parts")).score_batch(
        [{"response": OK, "ground_truth": "4"}]
    )
    assert rows[0]["score"] == 0.5 and rows[0]["plugin"] == 0.5
    assert rows[0]["brevity"] == 0.2 and rows[0]["accuracy"] == 0.0  # its part replaced mmr's


def test_add_mode_adds_the_weighted_plugin_score() -> None:
    cfg = _cfg("tests.rewards.plugin_fns:constant", mode="add", weight=2.0, value=0.25)
    rows = RewardScorer(cfg).score_batch([{"response": OK, "ground_truth": "4"}])
    assert rows[0]["score"] == pytest.approx(0.9 + 0.1 + 2.0 * 0.25)


def test_failures_score_zero_are_counted_and_logged_once(caplog) -> None:
    caplog.set_level(logging.ERROR, logger="mmr.rewards.plugins")
    scorer = RewardScorer(_cfg("tests.rewards.plugin_fns:flaky"))
    golds = ["raise", "raise", "raise", "nan", "none", "nodict", "fine"]
    rows = scorer.score_batch([{"response": OK + str(i), "ground_truth": g}
                               for i, g in enumerate(golds)])  # fmt: skip
    assert [r["score"] for r in rows] == [0.0] * 6 + [1.0]
    assert [r["plugin_error"] for r in rows] == [True] * 6 + [False]
    assert "RuntimeError: boom" in rows[0]["error"]
    assert scorer.plugin_errors == 6
    # three raises with different messages share one traceback; nan/none/nodict one each
    tracebacks = [r for r in caplog.records if "Traceback" in r.getMessage()]
    assert len(tracebacks) == 4
    assert sum("RuntimeError" in r.getMessage() for r in tracebacks) == 1


def test_runner_accepts_numpy_like_scalars() -> None:
    class Scalar:
        def item(self) -> float:
            return 0.5

    runner = PluginRunner("inline", fn=lambda **kw: Scalar(), workers=0)
    assert runner("s", "x", "y", None) == (0.5, {}, None)


def test_a_plugin_that_kills_exits_or_hangs_costs_one_rollout(caplog) -> None:
    # Supervised workers: each misbehaviour scores 0, counts, is logged once, and the
    # batch ends in bounded time (a hung call's worker is killed and replaced).
    caplog.set_level(logging.ERROR, logger="mmr.rewards.plugins")
    cfg = _cfg("tests.rewards.plugin_fns:hostile")
    cfg.plugin.timeout_s = 2.0
    scorer = RewardScorer(cfg)
    golds = ["exit", "sysexit", "hang", "inf", "text", "raise", "fine", "fine"]
    start = time.monotonic()
    rows = scorer.score_batch([{"response": OK + str(i), "ground_truth": g}
                               for i, g in enumerate(golds)])  # fmt: skip
    assert time.monotonic() - start < 30
    assert [r["score"] for r in rows] == [0.0] * 6 + [1.0, 1.0]
    assert [r["plugin_error"] for r in rows] == [True] * 6 + [False, False]
    assert "died" in rows[0]["error"] and "SystemExit" in rows[1]["error"]
    assert "timeout" in rows[2]["error"] and "non-finite" in rows[3]["error"]
    assert scorer.plugin_errors == 6
    # the workers were replaced: the next batch is scored as usual
    again = scorer.score_batch([{"response": OK, "ground_truth": "fine"}])
    assert again[0]["score"] == 1.0
    scorer.close()


def test_a_plugins_slow_import_does_not_count_against_its_timeout(tmp_path) -> None:
    # Real plug-ins import torch or transformers: seconds in a fresh worker.
    path = tmp_path / "slow_reward.py"
    path.write_text("import time\ntime.sleep(3)\n\ndef fn(**kwargs):\n    return 1.0\n")
    cfg = _cfg(f"{path}:fn")
    cfg.plugin.timeout_s = 1.0
    scorer = RewardScorer(cfg)  # loads it here too, once, to fail early on a bad spec
    rows = scorer.score_batch([{"response": OK, "ground_truth": "4"} for _ in range(3)])
    assert [r["score"] for r in rows] == [1.0] * 3 and scorer.plugin_errors == 0
    scorer.close()


def test_in_process_mode_for_debugging_still_contains_errors() -> None:
    cfg = _cfg("tests.rewards.plugin_fns:hostile")
    cfg.plugin.workers = 0
    rows = RewardScorer(cfg).score_batch(
        [{"response": OK, "ground_truth": g} for g in ("sysexit", "raise", "fine")]
    )
    assert [r["score"] for r in rows] == [0.0, 0.0, 1.0]
