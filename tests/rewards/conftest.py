"""Fixtures for the reward tests: a scripted judge server and a clean judge environment."""

from __future__ import annotations

import pytest

from tests.fake_openai import FakeJudgeServer

JUDGE_ENV = ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL_NAME", "USE_LLM_JUDGE")


@pytest.fixture(scope="session")
def judge_server():
    server = FakeJudgeServer().start()
    yield server
    server.stop()


@pytest.fixture
def judge(judge_server: FakeJudgeServer, monkeypatch: pytest.MonkeyPatch) -> FakeJudgeServer:
    """The judge server, reset, with the OpenAI variables pointing at it."""
    judge_server.reset()
    monkeypatch.setenv("OPENAI_BASE_URL", judge_server.base_url)
    monkeypatch.setenv("OPENAI_MODEL_NAME", "judge")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("USE_LLM_JUDGE", raising=False)
    return judge_server


@pytest.fixture(autouse=True)
def _no_judge_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own judge settings must not leak into the tests.
    for name in JUDGE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("MMR_REWARD_CONFIG", raising=False)
