"""Fixtures for the pipeline tests: a scripted OpenAI-compatible server and a clean env."""

from __future__ import annotations

import pytest

from mmr.data.pipeline.client import reset_breakers
from tests.fake_openai import FakeOpenAIServer


@pytest.fixture(scope="session")
def _server():
    server = FakeOpenAIServer().start()
    yield server
    server.stop()


@pytest.fixture
def server(_server: FakeOpenAIServer) -> FakeOpenAIServer:
    """The scripted server, reset for this test."""
    _server.reset()
    return _server


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own endpoint settings must not leak into the tests.
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL_NAME", "USE_LLM_JUDGE"):
        monkeypatch.delenv(name, raising=False)
    # Replicas' circuit breakers live as long as the process: one test's dead replica (or a
    # port a later server reuses) must not rest another test's.
    reset_breakers()


@pytest.fixture(scope="session")
def png() -> bytes:
    """A small valid PNG."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()
