"""examples/eval.sh names only lmms-eval tasks that exist, and leaves their settings alone.

Checked without the network against listings recorded beside this file (names only, with
the source commit; tests/examples/lmms_eval_tasks/refresh.py rewrites them): the default
list against lmms-eval's own tasks, the OMR_TASKS_DIR list against OpenMMReasoner's folder.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = (ROOT / "examples" / "eval.sh").read_text()
LISTINGS = Path(__file__).with_name("lmms_eval_tasks")


def _listing(name: str) -> set[str]:
    lines = (LISTINGS / name).read_text().splitlines()
    assert re.search(r" = [0-9a-f]{40}: ", lines[0]), "the header names the source commit"
    return set(lines[1:])


def _tasks(variable: str) -> list[str]:
    match = re.search(rf'^{variable}="([^"]+)"$', SCRIPT, re.M)
    assert match, f"eval.sh defines {variable}"
    return match[1].split(",")


@pytest.mark.parametrize(
    ("variable", "listing"),
    [("UPSTREAM_TASKS", "lmms-eval.txt"), ("OMR_TASKS", "openmmreasoner.txt")],
)
def test_every_task_exists_where_eval_sh_loads_it(variable: str, listing: str) -> None:
    tasks = _tasks(variable)
    known = _listing(listing)
    if variable == "OMR_TASKS":
        # With --include_path, lmms-eval knows its own tasks and the folder's.
        known |= _listing("lmms-eval.txt")
    assert len(tasks) == 12
    assert [t for t in tasks if t not in known] == []


def test_upstream_list_is_the_default_and_the_folder_is_passed_as_include_path() -> None:
    assert "DEFAULT_TASKS=$UPSTREAM_TASKS" in SCRIPT
    assert '--include_path "$OMR_TASKS_DIR"' in SCRIPT
    # Without it, upstream lmms-eval rejects most of OpenMMReasoner's names.
    assert len(set(_tasks("OMR_TASKS")) - _listing("lmms-eval.txt")) >= 10


def test_mmr_tasks_come_from_mmrs_own_folder() -> None:
    from mmr.eval import lmms_tasks

    assert set(_tasks("MMR_TASK_LIST")) <= {*lmms_tasks.TASKS, lmms_tasks.GROUP}
    assert "DEFAULT_TASKS=$MMR_TASK_LIST" in SCRIPT
    assert '--include_path "$(python -m mmr.eval.lmms_tasks)"' in SCRIPT


def test_generation_settings_stay_the_tasks_own() -> None:
    # --gen_kwargs would override every task's 49,152 new tokens and sampling temperature.
    calls = [line for line in SCRIPT.splitlines() if "--gen_kwargs" in line]
    assert calls == ['[[ -z "$GEN_KWARGS" ]] || extra+=(--gen_kwargs "$GEN_KWARGS")']
    assert re.search(r"^GEN_KWARGS=\$\{GEN_KWARGS:-\}", SCRIPT, re.M)
