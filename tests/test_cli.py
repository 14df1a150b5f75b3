"""The `mmr` console script: subcommands, help, and honest exits for unbuilt stages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmr import cli

STAGES = ["sft", "rl", "data", "reward", "eval", "demo", "models"]


def _mmr_executable() -> str:
    # The console script installed by `pip install -e .` next to this interpreter.
    return str(Path(sys.executable).with_name("mmr"))


def test_console_script_lists_every_subcommand():
    out = subprocess.run(
        [_mmr_executable(), "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in STAGES:
        assert name in out


@pytest.mark.parametrize("name", STAGES)
def test_each_subcommand_has_help(name, capsys):
    try:
        code = cli.main([name, "--help"])
    except SystemExit as exc:  # argparse exits after printing help
        code = exc.code
    assert code == 0
    assert name in capsys.readouterr().out


def test_models_list(capsys):
    assert cli.main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "qwen2_5_vl" in out and "qwen3_vl" in out


def test_models_tiny_unknown_family(tmp_path, capsys):
    assert cli.main(["models", "tiny", "--family", "llama", "--out", str(tmp_path)]) == 2
    assert "qwen2_5_vl" in capsys.readouterr().out


def test_models_tiny_writes_a_loadable_model(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = tmp_path / "tiny"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [_mmr_executable(), "models", "tiny", "--family", "qwen2_5_vl", "--out", str(out)],
        check=True,
        env=env,
        capture_output=True,
    )
    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert model.config.model_type == "qwen2_5_vl"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"


# Every subcommand the README names, through the installed console script.
README_COMMANDS = [
    ["rl", "prepare"], ["rl", "train"], ["rl", "merge"], ["rl", "local"],
    ["data", "run"], ["data", "dedup"], ["data", "difficulty"],
    ["reward", "score"], ["reward", "explain"], ["eval"], ["sft"], ["models", "tiny"],
]  # fmt: skip


@pytest.mark.parametrize("command", README_COMMANDS, ids=" ".join)
def test_readme_subcommand_answers_help(command):
    proc = subprocess.run(
        [_mmr_executable(), *command, "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower()
    assert "not built" not in proc.stdout + proc.stderr


def test_rl_merge_from_the_cli_names_what_is_wrong(tmp_path):
    proc = subprocess.run(
        [
            _mmr_executable(),
            "rl",
            "merge",
            "--checkpoint",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "not a verl FSDP actor checkpoint" in proc.stderr
