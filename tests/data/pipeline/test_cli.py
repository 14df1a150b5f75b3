"""`mmr data` end to end: every recipe loads; `run --step all` on generated tasks with a
local rule teacher; `dedup` with the offline MiniLM model and `difficulty` against the local
server, with their report files; clear exit 2 errors."""

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
from mmr.data.schema import Sample
from mmr.data.synthetic import generate_tasks, solve, teacher_response
from tests.data.pipeline.helpers import arithmetic, parse_question

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


@pytest.mark.parametrize("step", ["collect", "clean"])
def test_unreadable_input_files_are_skipped_and_named_in_the_report(tmp_path, capsys, caplog, step):
    tasks = generate_tasks(6, with_response=False)
    shards = tmp_path / "shards"
    write_samples(shards / "part-0.parquet", tasks[:4])
    write_samples(shards / "part-1.jsonl", tasks[4:])  # a mixed folder: both kinds are read
    (shards / "part-2.parquet").write_bytes(b"")  # a writer that died before its footer
    out = tmp_path / "out"
    assert main(["run", "--step", step, "--input", str(shards), "--output", str(out)]) == 0
    report = json.loads((out / "reports" / f"{step}.json").read_text())
    assert report["rows_in"] == 6  # every row of the good files
    assert report["read"]["files"] == 2
    assert report["read"]["skipped_files"] == {
        str(shards / "part-2.parquet"): "empty file (0 bytes)"
    }
    assert f"{shards / 'part-2.parquet'}: empty file (0 bytes)" in capsys.readouterr().out
    assert f"skipping data file {shards / 'part-2.parquet'}" in caplog.text  # the warning


@pytest.mark.parametrize("step", ["collect", "clean"])
def test_input_without_a_readable_file_exits_2_naming_the_files(tmp_path, capsys, step):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "part-0.parquet").write_bytes(b"")
    (shards / "part-1.parquet").write_bytes(b"not parquet at all")
    out = tmp_path / "out"
    assert main(["run", "--step", step, "--input", str(shards), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"no readable data file at {shards}" in err
    assert "part-0.parquet: empty file (0 bytes)" in err
    assert "part-1.parquet: not a readable parquet file" in err
    assert not (out / "reports").exists()  # refused before the stage started


# ---------------------------------------------------------------------------------------
# `mmr data dedup` and `mmr data difficulty`


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_dedup_cli_with_the_offline_minilm_model(tmp_path, capsys):
    rows = [
        Sample("1", "s", "How many red circles are there in the image?", "3"),
        Sample("2", "s", "How many red circles are in the picture?", "3"),
        Sample("3", "s", "What is the probability of rolling two sixes with two dice?", "1/36"),
        Sample("4", "s", "Count the red circles in the image.", "3"),
        Sample("5", "s", "Compute the perimeter of the square shown.", "8"),
        Sample("6", "s", "What is the chance of rolling two sixes with a pair of dice?", "1/36"),
    ]
    write_samples(tmp_path / "rl.parquet", rows)
    out = tmp_path / "out"
    argv = ["dedup", "--input", str(tmp_path / "rl.parquet"), "--output", str(out),
            "dedup.embedder=minilm", "dedup.threshold=0.8", "shard_rows=4"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "dedup: 6 rows in -> 3 out, 3 dropped" in printed and "clusters: 2" in printed
    kept = ds.dataset(out / "deduped", format="parquet").to_table()["id"].to_pylist()
    assert kept == ["1", "3", "5"]
    report = json.loads((out / "reports" / "dedup.json").read_text())
    assert report["filters"] == {"dedup": {"near_duplicate": 3}} and report["shards"] == 2
    assert report["clusters"]["count"] == 2 and report["clusters"]["largest"][0]["kept"] == "1"
    lines = (out / "reports" / "dedup_clusters.jsonl").read_text().splitlines()
    clusters = {c["kept"]: [d[0] for d in c["duplicates"]] for c in map(json.loads, lines)}
    assert clusters == {"1": ["2", "4"], "3": ["6"]}
    assert load_config(PipelineConfig, out / "config.dedup.yaml").dedup.threshold == 0.8
    assert not (out / "config.yaml").exists()  # the name `mmr data run` writes
    # Finished: run again, nothing is redone (and no model is loaded for it).
    assert main([*argv, "--quiet"]) == 0
    assert json.loads((out / "reports" / "dedup.json").read_text())["rows_out"] == 3


def test_dedup_cli_bad_input_exits_2(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert _run(["dedup", "--output", out], capsys) == (
        2,
        "mmr data dedup: needs --input (the file or folder to read)\n",
    )
    code, err = _run(["dedup", "--input", str(tmp_path / "gone.parquet"), "--output", out], capsys)
    assert code == 2 and "no such file or folder" in err
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    code, err = _run(["dedup", "--input", str(tmp_path / "bad.parquet"), "--output", out], capsys)
    assert code == 2 and "bad.parquet" in err
    write_samples(tmp_path / "ok.parquet", [Sample("1", "s", "What is 1 + 1?", "2")])
    good = ["dedup", "--input", str(tmp_path / "ok.parquet"), "--output", out]
    code, err = _run([*good, "dedup.threshold=1.5"], capsys)
    assert code == 2 and "dedup.threshold" in err
    code, err = _run([*good, f"dedup.embedder={tmp_path / 'no-model'}"], capsys)
    assert code == 2 and f"dedup.embedder '{tmp_path / 'no-model'}' cannot be loaded" in err
    assert _run([*good, "dedup.embedder=hashing"], capsys)[0] == 0
    code, err = _run([*good, "dedup.embedder=hashing", "dedup.threshold=0.5"], capsys)
    assert code == 2 and "--overwrite" in err  # another config's output is never mixed in


def test_difficulty_cli_against_the_local_server(tmp_path, server, capsys):
    # Question i: the small model is right in (i % 5) of its 4 tries; question 4 fails.
    tries: dict[int, int] = {}

    def script(body):
        q, total = parse_question(body)
        if q == 4:
            return ("status", 503)
        tries[q] = tries.get(q, 0) + 1
        return f"\\boxed{{{total if tries[q] <= q % 5 else total + 1}}}"

    server.script = script
    rows = arithmetic(6)
    rows[5].pass_rate = 0.5  # stored: kept, not asked again
    rows[3].id = rows[2].id  # a repeated id still gets its own pass rate
    write_samples(tmp_path / "sel.parquet", rows)
    out = tmp_path / "out"
    argv = ["difficulty", "--input", str(tmp_path / "sel.parquet"), "--output", str(out),
            "--quiet", f"select.difficulty.client.api_base={server.base_url}",
            "select.difficulty.client.retries=0", "select.difficulty.client.model=small"]  # fmt: skip
    assert main(argv) == 0
    table = ds.dataset(out / "difficulty", format="parquet").to_table().to_pylist()
    assert [(r["id"], r["pass_rate"]) for r in table] == [
        ("q000", 0.0), ("q001", 0.25), ("q002", 0.5), ("q002", 0.75), ("q005", 0.5)
    ]  # fmt: skip
    assert json.loads(table[1]["meta"]) == {"pass_rate_model": "small"}
    report = json.loads((out / "reports" / "difficulty.json").read_text())
    assert report["failed_reasons"] == {"difficulty_http_503": 1}
    assert report["info"] == {"answers_requested": 20, "rated": 4}
    assert (out / "failed" / "difficulty" / "part-00000.parquet").is_file()
    assert (
        load_config(PipelineConfig, out / "config.difficulty.yaml").select.difficulty.client.model
        == "small"
    )
    assert len(server.requests) == 20
    assert main(argv) == 0 and len(server.requests) == 20  # finished: nothing asked again


def test_difficulty_cli_bad_input_exits_2(tmp_path, server, capsys):
    out = str(tmp_path / "out")
    write_samples(tmp_path / "q.parquet", arithmetic(2))
    good = ["difficulty", "--input", str(tmp_path / "q.parquet"), "--output", out]
    code, err = _run(good, capsys)  # no server named
    assert code == 2 and "select.difficulty.client has no endpoint" in err
    url = f"select.difficulty.client.api_base={server.base_url}"
    code, err = _run(["difficulty", "--output", out, url], capsys)
    assert (code, err) == (2, "mmr data difficulty: needs --input (the file or folder to read)\n")
    code, err = _run(
        ["difficulty", "--input", str(tmp_path / "none"), "--output", out, url], capsys
    )
    assert code == 2 and "no such file or folder" in err
    code, err = _run([*good, url, "select.difficulty.num_samples=0"], capsys)
    assert code == 2 and "select.difficulty.num_samples" in err
    code, err = _run([*good, url, "select.difficulty.verify.judge.enabled=true"], capsys)
    assert code == 2 and "select.difficulty.verify.judge is enabled but has no endpoint" in err
    assert server.requests == []
