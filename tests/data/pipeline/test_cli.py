"""`mmr data` end to end: every recipe loads; `run --step all` on generated tasks with a
local rule teacher; clear exit 2 errors."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from mmr.config import load_config
from mmr.data.io import write_samples
from mmr.data.pipeline.cli import main
from mmr.data.pipeline.config import PipelineConfig
from mmr.data.synthetic import generate_tasks, solve, teacher_response

RECIPES = sorted((Path(__file__).resolve().parents[3] / "recipes" / "data").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipes_load_and_open_with_their_command(path):
    load_config(PipelineConfig, path)
    assert path.read_text().startswith("# mmr data ")


def test_mfr_recipe_numbers():
    cfg = load_config(PipelineConfig, RECIPES[[p.name for p in RECIPES].index("mfr.yaml")])
    assert cfg.clean.max_image_size == 2048
    assert (cfg.select.content.min_response_words, cfg.select.content.min_caption_words) == (
        200,
        100,
    )
    assert (cfg.select.templated.ngram_n, cfg.select.templated.ngram_freq) == (50, 3)
    assert cfg.select.difficulty.num_samples == 4 and cfg.select.difficulty.threshold is None


def test_run_all_on_generated_tasks_with_a_local_teacher(tmp_path, server, png):
    tasks = generate_tasks(12, with_response=False)
    # Questions repeat across tasks (templated); the image tells them apart.
    by_image = {base64.b64encode(t.images[0]).decode(): t for t in tasks}

    tasks[5].images = [b"corrupt"]  # dropped by clean

    def teacher(body):
        parts = body["messages"][-1]["content"]
        url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
        task = by_image[url.split(",", 1)[1]]
        wrong = task.id == tasks[3].id  # always wrong: dropped by distill's verification
        return (
            teacher_response(task.meta).replace(f"{{{solve(task.meta)}}}", "{999}")
            if wrong
            else teacher_response(task.meta)
        )

    server.script = teacher
    write_samples(tmp_path / "tasks.parquet", tasks)
    recipe = RECIPES[[p.name for p in RECIPES].index("demo.yaml")]
    argv = ["run", "--config", str(recipe), "--step", "all", "--quiet", "--input",
            str(tmp_path / "tasks.parquet"), "--output", str(tmp_path / "out"),
            f"distill.cot.client.api_base={server.base_url}"]  # fmt: skip
    assert main(argv) == 0
    selected = ds.dataset(tmp_path / "out" / "selected", format="parquet").to_table()
    ids = set(selected["id"].to_pylist())
    # k=2 paths per question; 10 questions survive clean and verification.
    assert len(ids) == 20 and not any(i.startswith(tasks[3].id) for i in ids)
    reports = {
        p.stem: json.loads(p.read_text()) for p in (tmp_path / "out" / "reports").glob("*.json")
    }
    assert set(reports) == {"collect", "clean", "distill", "select"}
    assert reports["clean"]["filters"] == {"image": {"corrupt_image": 1}}
    assert reports["distill"]["filters"] == {"verify": {"wrong_answer": 1}}
    assert (tmp_path / "out" / "config.yaml").is_file()
    assert main(argv) == 0  # everything finished: nothing is redone
    assert len(server.requests) == 22


def test_errors_exit_2(tmp_path, capsys):
    assert main(["run", "--step", "select", "--output", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["run", "--step", "select", "--output", str(tmp_path), "select.nope=1"]) == 2
    assert "unknown config key 'select.nope'" in capsys.readouterr().err
    write_samples(tmp_path / "q.parquet", generate_tasks(2, with_response=False))
    assert (
        main(
            [
                "run",
                "--step",
                "distill",
                "--input",
                str(tmp_path / "q.parquet"),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "api_base" in capsys.readouterr().err
