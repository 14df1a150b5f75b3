"""Shared pytest fixtures: tiny offline checkpoints of each supported model family."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2.5-VL checkpoint built once per session; shared, so never write into it."""
    from mmr.models import tiny

    return tiny.build("qwen2_5_vl", tmp_path_factory.mktemp("tiny_qwen2_5_vl"))


@pytest.fixture(scope="session")
def tiny_qwen3_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen3-VL checkpoint built once per session; shared, so never write into it."""
    from mmr.models import tiny

    return tiny.build("qwen3_vl", tmp_path_factory.mktemp("tiny_qwen3_vl"))
