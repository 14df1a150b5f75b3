"""Distill against a scripted teacher on 127.0.0.1: right, wrong, malformed and failing
answers; k verified paths; captions; failures set aside and reported, never dropped silently."""

from __future__ import annotations

import time
from collections import Counter

import pyarrow.dataset as ds

from mmr.data.io import read_samples, write_samples
from mmr.data.pipeline.config import PipelineConfig
from mmr.data.pipeline.distill import run_distill
from tests.data.pipeline.helpers import arithmetic, parse_question, solution
from tests.fake_openai import image_count, prompt_text


def _cfg(server, **cot) -> PipelineConfig:
    cfg = PipelineConfig(shard_rows=4)
    client = cfg.distill.cot.client
    client.api_base, client.retries, client.backoff_s, client.timeout_s = (
        server.base_url,
        1,
        0.01,
        5,
    )
    for key, value in cot.items():
        setattr(cfg.distill.cot, key, value)
    return cfg


def test_teacher_paths_are_verified_and_failures_reported(tmp_path, server):
    # By question number mod 5: right; wrong; garbage body; HTTP 500; split reasoning.
    def teacher(body):
        q, total = parse_question(body)
        kind = q % 5
        if kind == 1:
            return solution(total + 1)
        if kind == 2:
            return ("garbage", b"not json")
        if kind == 3:
            return ("status", 500)
        if kind == 4:
            return ("reasoning", "adding", f"<answer>{total}</answer>")
        return solution(total)

    server.script = teacher
    rows = arithmetic(10)
    rows[9].response = solution(rows[9].answer)  # has a response: kept, not asked
    write_samples(tmp_path / "in.parquet", rows)
    report = run_distill(_cfg(server), tmp_path / "in.parquet", tmp_path / "out", quiet=True)

    out = {s.id: s for s in read_samples(tmp_path / "out" / "distilled")}
    assert sorted(out) == ["q000", "q004", "q005", "q009"]
    assert out["q004"].response.startswith("<think>adding</think>")
    assert out["q000"].meta["teacher"] == "default"
    assert report["filters"] == {"verify": {"wrong_answer": 2}}
    assert report["failed_reasons"] == {"teacher_malformed_reply": 2, "teacher_http_500": 2}
    failed = {s.id: s.meta["failed"] for s in read_samples(tmp_path / "out" / "failed" / "distill")}
    assert sorted(failed) == ["q002", "q003", "q007", "q008"]
    assert failed["q003"].startswith("teacher_http_500")
    assert report["info"]["kept_existing_response"] == 1
    # Every question the stage saw is accounted for: kept, dropped or failed.
    assert report["rows_out"] + report["dropped"] + report["failed"] == report["rows_in"]
    assert Counter(parse_question(b)[0] for b in server.bodies)[3] == 2  # one retry


def test_k_paths_keep_only_the_verified_ones(tmp_path, server):
    tries: Counter[int] = Counter()

    def teacher(body):
        q, total = parse_question(body)
        tries[q] += 1
        return solution(total if tries[q] % 2 else total - 1)  # paths 1 and 3 right

    server.script = teacher
    write_samples(tmp_path / "in.parquet", arithmetic(3))
    run_distill(_cfg(server, k=4), tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    ids = ds.dataset(tmp_path / "out" / "distilled", format="parquet").to_table()["id"]
    assert ids.to_pylist() == ["q000-0", "q000-1", "q001-0", "q001-1", "q002-0", "q002-1"]
    assert len(server.requests) == 12


def test_captions_need_images_and_the_teacher_never_sees_them(tmp_path, server, png):
    def script(body):
        text = prompt_text(body)
        if text.startswith("Describe"):
            return "A red rectangle." if image_count(body) == 1 else ("status", 500)
        assert "red rectangle" not in text  # CoT prompts never carry the caption
        return solution(parse_question(body)[1])

    server.script = script
    rows = arithmetic(3)
    rows[0].images = [png]
    write_samples(tmp_path / "in.parquet", rows)
    cfg = _cfg(server)
    cfg.distill.caption.enabled = True
    cfg.distill.caption.client.api_base = server.base_url
    report = run_distill(cfg, tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    out = {s.id: s for s in read_samples(tmp_path / "out" / "distilled")}
    assert out["q000"].caption == "A red rectangle." and out["q001"].caption is None
    assert report["info"]["captioned"] == 1 and report["rows_out"] == 3


def test_an_error_body_echoing_the_key_is_kept_redacted(tmp_path, server, monkeypatch):
    # A gateway that answers 500 with the request it got, Authorization header included:
    # the failure's detail travels into failed/ shards, reports and manifests.
    secret = "sk-test-SECRET-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", secret)

    def echo(body):
        return ("status", 500, f"bad upstream; request headers: {server.requests[-1]['headers']}")

    server.script = echo
    write_samples(tmp_path / "in.parquet", arithmetic(3))
    report = run_distill(_cfg(server), tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    assert server.requests[-1]["headers"]["Authorization"] == f"Bearer {secret}"
    assert report["failed_reasons"] == {"teacher_http_500": 3}
    failed = [s.meta["failed"] for s in read_samples(tmp_path / "out" / "failed" / "distill")]
    assert len(failed) == 3 and all("[redacted]" in f and secret not in f for f in failed)
    assert secret not in str(report)
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_answers_are_checked_while_later_requests_are_in_flight(tmp_path, server, monkeypatch):
    # 96 questions, all in flight at once; the last 32 are answered after 0.5 s: the first
    # 64 answers are verified (the real check_answers, wrapped to note when it runs, in
    # batches of at least verify._CHECK_BATCH) before the teacher sends the last reply.
    from mmr.data.pipeline import verify

    replied, checked = [], []

    def teacher(body):
        q, total = parse_question(body)
        if q >= 64:
            time.sleep(0.5)
        replied.append(time.monotonic())
        return solution(total)

    def noting(items, cfg, log=None):
        checked.append((time.monotonic(), len(items)))
        return check_answers(items, cfg, log)

    check_answers = verify.check_answers
    monkeypatch.setattr(verify, "check_answers", noting)
    server.script = teacher
    write_samples(tmp_path / "in.parquet", arithmetic(96))
    cfg = _cfg(server)
    cfg.shard_rows, cfg.distill.cot.client.concurrency = 96, 96
    report = run_distill(cfg, tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    assert report["rows_out"] == 96 and sum(n for _, n in checked) == 96
    early = [n for t, n in checked if t < max(replied)]
    assert sum(early) >= 64 and all(n >= verify._CHECK_BATCH for n in early)
