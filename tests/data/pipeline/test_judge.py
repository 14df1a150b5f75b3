"""The LLM judge in distill, select and difficulty, served by the scripted server on
127.0.0.1: what the rules cannot verify is judged; a judge that is down, hung or talking
nonsense gives counted fallbacks (reason `judge_fallback`), never a crash or a stall."""

from __future__ import annotations

import re
import socket
import time

import pyarrow.dataset as ds
import pytest

from mmr.data.io import write_samples
from mmr.data.pipeline.cli import main
from mmr.data.pipeline.config import PipelineConfig
from mmr.data.pipeline.difficulty import run_difficulty
from mmr.data.pipeline.distill import run_distill
from mmr.data.pipeline.runner import StageError
from mmr.data.pipeline.select import run_select
from mmr.rewards import shutdown
from mmr.rewards.config import JudgeConfig
from tests.data.pipeline.helpers import arithmetic, long_think, parse_question, sample
from tests.fake_openai import prompt_text

NUMBERS = {"zero": 0, "two": 2, "four": 4, "seven": 7, "eight": 8, "nine": 9}
_JUDGED = re.compile(r"Reference answer:\s*(.*?)\s*Student's final answer:\s*(.*?)\s*\n\n", re.S)


@pytest.fixture(autouse=True)
def _fresh_scorers():
    # mmr.rewards caches a scorer (its judge, verdicts and down state) per config.
    shutdown()
    yield
    shutdown()


def _judge(body) -> str:
    """A judge that knows number words: CORRECT when the answer names the gold number."""
    gold, answer = _JUDGED.search(prompt_text(body)).groups()
    return "CORRECT" if str(NUMBERS.get(answer.strip(), answer)) == gold.strip() else "INCORRECT"


def _is_judge(body) -> bool:
    return "Reference answer:" in prompt_text(body)


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there any more


def _judge_cfg(base_url: str, **kw) -> JudgeConfig:
    kw = {"timeout_s": 5.0, "retries": 1, "backoff_s": 0.01, **kw}
    return JudgeConfig(enabled=True, base_url=base_url, model="judge", **kw)


def _select_rows(tmp_path):
    answers = ["7", "seven", "eight", "8"]  # rule right; judged right; judged wrong; rule wrong
    rows = [
        sample(i, response=f"<think>{long_think(250, i)}</think>\n<answer>{a}</answer>")
        for i, a in enumerate(answers)
    ]
    write_samples(tmp_path / "in.parquet", rows)
    return tmp_path / "in.parquet"


def _select(tmp_path, judge: JudgeConfig, out: str = "out"):
    cfg = PipelineConfig()
    cfg.select.correctness.verify.judge = judge
    start = time.monotonic()
    report = run_select(cfg, _select_rows(tmp_path), tmp_path / out, quiet=True)
    ids = ds.dataset(tmp_path / out / "selected", format="parquet").to_table()["id"].to_pylist()
    return report, ids, time.monotonic() - start


def test_select_judges_what_the_rules_cannot_verify(tmp_path, server):
    server.script = _judge
    report, ids, _ = _select(tmp_path, _judge_cfg(server.base_url))
    assert ids == ["s000", "s001"]
    assert report["filters"] == {"correctness": {"wrong_answer": 2}}
    assert report["info"] == {"judged": 2}
    judged = sorted(_JUDGED.search(prompt_text(b)).group(2) for b in server.bodies)
    assert judged == ["eight", "seven"]  # "8" was settled by the rules
    assert server.bodies[0]["model"] == "judge"


@pytest.mark.parametrize("how", ["refused", "hung", "nonsense"])
def test_select_with_a_failing_judge_counts_fallbacks(tmp_path, server, how):
    server.script = (lambda body: ("sleep", 60.0)) if how == "hung" else (lambda body: "maybe?")
    url = _closed_port_url() if how == "refused" else server.base_url
    report, ids, elapsed = _select(tmp_path, _judge_cfg(url, timeout_s=0.3))
    assert ids == ["s000"]  # not verified: the rule result stands
    assert report["filters"] == {"correctness": {"judge_fallback": 2, "wrong_answer": 1}}
    assert report["info"] == {"judge_fallback": 2}
    # Two tries of 0.3 s each, in parallel; a stall on the hung server would take 60 s. The
    # bound leaves room for the stage's start-up on a loaded 2-core machine.
    assert elapsed < 15.0


def test_distill_keeps_the_paths_the_judge_verifies(tmp_path, server):
    words = {v: k for k, v in NUMBERS.items()}
    tries: dict[int, int] = {}

    def script(body):
        if _is_judge(body):
            return _judge(body)
        q, total = parse_question(body)
        tries[q] = tries.get(q, 0) + 1
        said = words[total] if tries[q] == 1 else "nine"  # path 1 right in words, path 2 wrong
        return f"<think>I add.</think>\n<answer>{said}</answer>"

    server.script = script
    write_samples(tmp_path / "in.parquet", arithmetic(3))  # sums 0, 2, 4
    cfg = PipelineConfig()
    cot = cfg.distill.cot
    cot.k, cot.client.api_base, cot.client.retries = 2, server.base_url, 0
    cfg.distill.verify.judge = _judge_cfg(server.base_url)
    report = run_distill(cfg, tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    table = ds.dataset(tmp_path / "out" / "distilled", format="parquet").to_table()
    assert table["id"].to_pylist() == ["q000-0", "q001-0", "q002-0"]
    assert report["info"]["judged"] == 6 and "judge_fallback" not in report["info"]

    # The judge goes down: no path can be verified, each question is counted, none failed.
    shutdown()
    tries.clear()
    cfg.distill.verify.judge = _judge_cfg(_closed_port_url())
    report = run_distill(cfg, tmp_path / "in.parquet", tmp_path / "down", quiet=True)
    assert report["rows_out"] == 0 and report["failed"] == 0
    assert report["filters"] == {"verify": {"judge_fallback": 3}}
    assert report["info"]["judge_fallback"] == 6


def test_a_judge_without_endpoint_is_an_error(tmp_path, capsys):
    cfg = PipelineConfig()
    cfg.select.correctness.verify.judge = JudgeConfig(enabled=True)
    with pytest.raises(StageError, match=r"select\.correctness\.verify\.judge is enabled"):
        run_select(cfg, _select_rows(tmp_path), tmp_path / "out", quiet=True)
    argv = ["run", "--step", "select", "--input", str(tmp_path / "in.parquet"),
            "--output", str(tmp_path / "cli"), "select.correctness.verify.judge.enabled=true"]  # fmt: skip
    assert main(argv) == 2
    assert "no endpoint" in capsys.readouterr().err


def test_difficulty_never_rates_from_answers_the_judge_could_not_check(tmp_path, server):
    server.script = lambda body: "<answer>seven</answer>"  # only a judge can tell
    rows = [sample(0), sample(1)]
    write_samples(tmp_path / "in.parquet", rows)
    cfg = PipelineConfig()
    cfg.select.difficulty.client.api_base = server.base_url
    cfg.select.difficulty.verify.judge = _judge_cfg(_closed_port_url())
    report = run_difficulty(cfg, tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    assert report["rows_out"] == 0
    assert report["failed_reasons"] == {"difficulty_judge_fallback": 2}
    assert report["info"]["judge_fallback"] == 8
