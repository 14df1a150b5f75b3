"""The demo's outputs: its stages' metrics read back, the plots, report.md and the console
summary, all from summary.json's dict (`mmr.demo.summarize_run` makes it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmr.eval.stats import smoothed

if TYPE_CHECKING:
    from mmr.demo import DemoConfig

VERL_METRICS = "verl_metrics.jsonl"  # verl's file logger (`trainer.logger: [.., file]`)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rl_metrics(rl_dir: Path) -> list[dict[str, Any]]:
    """Per-step RL metrics of either engine: `step`, `reward` (the mean total) and
    `reward/<part>`. verl logs the mean total as `critic/score/mean`."""
    local = read_jsonl(rl_dir / "metrics.jsonl")
    if local:
        return local
    rows = []
    for row in read_jsonl(rl_dir / VERL_METRICS):
        data = row["data"]
        parts = {k: v for k, v in data.items() if k.startswith("reward/")}
        rows.append({"step": row["step"], "reward": data.get("critic/score/mean"),
                     "response_length": data.get("response_length/mean"), **parts})  # fmt: skip
    return rows


SMOOTH = 4  # steps in the reward plot's trailing mean


def write_plots(out: Path, results: dict[str, Any], summary: dict[str, Any]) -> None:
    """sft_loss.png, rl_reward.png (reward and its parts per step), accuracy.png."""
    from mmr.eval.plots import bar_plot, line_plot

    sft = read_jsonl(out / "sft" / "metrics.jsonl")
    line_plot(out / "sft_loss.png", "SFT loss",
              {"train/loss": ([r["step"] for r in sft], [r["train/loss"] for r in sft])})  # fmt: skip
    rl = rl_metrics(out / "rl")
    keys = ("reward", "reward/accuracy", "reward/format", "reward/length")
    series = {k: ([r["step"] for r in rl], [r.get(k) for r in rl]) for k in keys}
    series["reward, trailing mean of 4 steps"] = ([r["step"] for r in rl], smoothed(
        [r.get("reward") for r in rl], SMOOTH))  # fmt: skip
    # The trained batch's reward is biased by the group filter (all-same groups dropped);
    # the mean over every sampled rollout is the policy's own (`reward/sampled`).
    if any(r.get("reward/sampled") is not None for r in rl):
        series["every sampled rollout, trailing mean of 4 steps"] = ([r["step"] for r in rl],
            smoothed([r.get("reward/sampled") for r in rl], SMOOTH))  # fmt: skip
    line_plot(out / "rl_reward.png", "GSPO reward and its parts (train prompts)", series)
    accuracy = {name: summary[f"accuracy_{name}"] for name in results}
    bar_plot(out / "accuracy.png", "Held-out accuracy per stage", accuracy,
             hline=("chance", summary["accuracy_chance"]))  # fmt: skip
    if summary["length_ablation"] is not None:
        lengths = {f"{name}: mean response tokens": ([r["step"] for r in log],
                                                     [r.get("response_length") for r in log])
                   for name, log in ((n, rl_metrics(out / n)) for n in ("rl", "rl_no_length"))}  # fmt: skip
        line_plot(out / "rl_length.png", "GSPO response length, with and without the length term",
                  lengths)  # fmt: skip


def trend_lines(trend: dict[str, Any] | None) -> list[str]:
    """report.md's line on the GSPO train reward over every sampled rollout."""
    if not trend:
        return []
    return [
        f"GSPO train reward over every sampled rollout (before the group filter), mean of the "
        f"first {trend['steps']} steps -> the last {trend['steps']}: {trend['first']:.3f} -> "
        f"{trend['last']:.3f} ({trend['rise']:+.3f}); its accuracy part "
        f"{trend['first_accuracy']:.3f} -> {trend['last_accuracy']:.3f}.", "",
    ]  # fmt: skip


def judge_lines(judge: dict[str, Any] | None) -> list[str]:
    """report.md's line on the reward's LLM judge (the demo's rule judge) during GSPO."""
    if judge is None:
        return ["GSPO's reward ran without the LLM judge (rl.judge=false).", ""]
    return [
        f"GSPO's LLM judge (the demo's rule judge on 127.0.0.1) was asked about "
        f"{judge['requests']} distinct answers the rules could not confirm and accepted "
        f"{judge['correct']} (the same option as its text, a number as a word).", "",
    ]  # fmt: skip


def write_report(
    out: Path, cfg: DemoConfig, results: dict[str, Any], summary: dict[str, Any]
) -> None:
    """report.md: what ran, the numbers, the per-task table, the plots."""
    from mmr.demo import ALPHA, MARGIN  # the checks' thresholds (mmr.demo imports this module)

    s, pt, fz = summary, summary["pretrain"], summary["sft_frozen"]
    ok = {True: "yes", False: "**no**"}
    pretrained = (
        f"pretraining {pt['steps']} steps (cache {pt['cache']})" if pt else "no pretraining"
    )
    lines = [
        "# mmr demo report", "",
        f"Seed {cfg.seed}; {cfg.tasks.train} train tasks, {cfg.tasks.test} held-out test tasks; "
        f"{pretrained}; {s['sft_samples']} curated SFT samples; {s['sft_steps']} SFT steps "
        f"(final loss {s['sft_final_loss']:.3f}); {s['rl_steps']} GSPO steps; "
        f"{s['total_seconds']:.0f} s in all.", "",
        "| model | accuracy | 95% interval | format | mean response tokens |",
        "|---|---|---|---|---|",
        *(f"| {n} | {s[f'accuracy_{n}']:.3f} | {interval(s[f'accuracy_ci95_{n}'])} | "
          f"{s[f'format_{n}']:.3f} | {s[f'mean_response_tokens_{n}']:.1f} |" for n in results),
        f"| chance (best constant answer per task type) | {s['accuracy_chance']:.3f} | | | |", "",
        f"- SFT beats the base model by >= {MARGIN}: {ok[s['checks']['sft_beats_base_by_0.2']]}",
        f"- SFT beats chance by >= {MARGIN}: {ok[s['checks']['sft_beats_chance_by_0.2']]}",
        f"- RL not worse than SFT beyond chance (sign test, p < {ALPHA} fails): "
        f"{ok[s['checks']['rl_not_worse_than_sft']]} (of {s['rl_vs_sft']['tasks']} tasks, "
        f"{s['rl_vs_sft']['discordant']} discordant: only RL right on "
        f"{s['rl_vs_sft']['rl_only_right']}, only SFT on {s['rl_vs_sft']['sft_only_right']}; "
        f"p = {s['rl_vs_sft']['p_value']:.3f})",
        f"- SFT left its frozen parts ({', '.join(fz['parts']) or 'none'}: {fz['parameters']:,} "
        f"parameters in {fz['tensors']} tensors) bit-identical: "
        f"{ok[s['checks']['sft_frozen_parts_bit_identical']]}; it changed "
        f"{fz['trainable_tensors_changed']} of the {fz['trainable_tensors']} trainable tensors", "",
        *(pretrain_lines(cfg, pt) if pt else []),
        (f"SFT: packing efficiency {s['sft_packing_efficiency']:.3f} (real tokens / row capacity)."
         if s["sft_packing_efficiency"] is not None
         else "SFT: padded batches (data.packing=false)."), "",
        "![SFT loss](sft_loss.png) ![GSPO reward](rl_reward.png) ![accuracy](accuracy.png)", "",
        *trend_lines(s["rl_sampled_reward"]),
        *judge_lines(s.get("rl_judge")),
        *headroom_lines(s["headroom"]),
        *rl_headroom_lines(s),
        *ablation_lines(s["length_ablation"]),
        *strategy_lines(s.get("lookup_strategy") or {}),
        "## Accuracy per task type (held-out, 95% intervals)", "",
        "| data_source | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|",
    ]  # fmt: skip
    sources = [k for k in next(iter(results.values()))["table"] if k != "all"]
    for src in sources:
        rows = [s["per_source"][n][src] for n in results]
        cells = [f"{r['accuracy']:.3f} {interval(r['accuracy_ci95'])}" for r in rows]
        lines.append(f"| {src} | " + " | ".join(cells) + " |")
    lines += [
        "", "## Answer spread (held-out)", "",
        "The share of each model's answers that equal its commonest one (`top_answer`): near 1 "
        "where the gold answers vary is a model answering one constant, which scores 1/k on a "
        "kind of k balanced answers whatever it was trained on.", "",
        "| data_source | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|",
        *(f"| {src} | " + " | ".join(f"{s['per_source'][n][src]['top_answer']:.3f}"
                                     for n in results) + " |"
          for src in sources),
    ]  # fmt: skip
    lines += ["", "## Files", "",
              "data/reports/*.json (pipeline counts), sft/metrics.jsonl, rl/metrics.jsonl, "
              "rl/rollouts.jsonl, eval/<model>/generations.jsonl and accuracy.md, "
              "pretrain/descriptions.jsonl (held-out descriptions, field by field), "
              f"timings per stage in summary.json: {s['seconds']}."]  # fmt: skip
    (out / "report.md").write_text("\n".join(lines) + "\n")


def interval(ci: list[float]) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def strategy_lines(tables: dict[str, Any]) -> list[str]:
    """report.md's lookup section: how each model's option-letter answers found the letter."""
    tables = {name: t for name, t in tables.items() if t}
    if not tables:
        return []
    lines = ["## How the option-letter answers found the letter", "",
             "Read the options out up to the named colour, or named the letter at once (the "
             "teacher's skipped lookup, data.skip_lookup): answers (accuracy).", "",
             "| answers of | read out | skipped | other | read-out share |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, t in tables.items():
        cells = [f"{t[w]['answers']} ({t[w]['accuracy']:.3f})" if t[w]["answers"] else "0"
                 for w in ("read_out", "skipped", "other")]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {t['read_out_share']:.3f} |")
    return [*lines, ""]


def ablation_lines(a: dict[str, Any] | None) -> list[str]:
    """report.md's length-ablation section: GSPO with and without the length term."""
    if a is None:
        return ["Length ablation: off (rl.length_ablation=false).", ""]
    lines = ["## The overthinking penalty: GSPO with and without the length term", "",
             "| run | accuracy (95% interval) | mean response tokens | empty <think> |",
             "|---|---|---|---|"]  # fmt: skip
    for label, key in (("with the length term", "with_length"), ("without", "without_length")):
        r = a[key]
        lo, hi = r["accuracy_ci95"]
        lines.append(f"| {label} | {r['accuracy']:.3f} ({lo:.3f}-{hi:.3f}) | "
                     f"{r['mean_response_tokens']:.1f} | {r['empty_think_share']:.3f} |")  # fmt: skip
    lines += [
        "",
        f"Responses {a['shorter_by']:.1%} shorter with the term. ![length](rl_length.png)",
        "",
    ]
    return lines


def headroom_lines(h: dict[str, Any] | None) -> list[str]:
    """report.md's headroom section: SFT's pass@1 and pass@n per kind."""
    if h is None:
        return ["SFT headroom: off (eval.headroom_n=0).", ""]
    n = h["n"]
    return [
        f"## SFT headroom: {n} answers per held-out task, temperature {h['temperature']}", "",
        f"pass@1 is their mean accuracy, pass@{n} the share of tasks any of them gets right: "
        "GSPO turns the gap into pass@1; a kind without one leaves RL nothing to learn. "
        "95% intervals over tasks.", "",
        f"| data_source | tasks | pass@1 | pass@{n} | gap |", "|---|---|---|---|---|",
        *(f"| {src} | {r['tasks']} | {r['pass@1']:.3f} {interval(r['pass@1_ci95'])} | "
          f"{r['pass@n']:.3f} {interval(r['pass@n_ci95'])} | {r['pass@n'] - r['pass@1']:+.3f} |"
          for src, r in h["table"].items()), "",
    ]  # fmt: skip


def rl_headroom_lines(s: dict[str, Any]) -> list[str]:
    """report.md: the RL model's sampled answers beside SFT's (what GSPO optimizes), with
    the paired test of their per-task accuracy."""
    sft, rl, paired = s["headroom"], s.get("rl_headroom"), s.get("rl_vs_sft_sampled")
    if not (sft and rl and paired):
        return []
    n = rl["n"]
    return [
        f"## Sampled answers after GSPO: {n} per held-out task, temperature {rl['temperature']}",
        "", "GSPO maximizes the expected reward of a sampled answer: its pass@1 should rise "
        f"(and pass@{n} may fall as the policy concentrates). 95% intervals over tasks.", "",
        f"| data_source | SFT pass@1 | RL pass@1 | SFT pass@{n} | RL pass@{n} |",
        "|---|---|---|---|---|",
        *(f"| {src} | {sft['table'][src]['pass@1']:.3f} | {r['pass@1']:.3f} "
          f"{interval(r['pass@1_ci95'])} | {sft['table'][src]['pass@n']:.3f} | "
          f"{r['pass@n']:.3f} |" for src, r in rl["table"].items()), "",
        f"Per task, RL's answers are right more often than SFT's on {paired['rl_only_right']} "
        f"tasks and less often on {paired['sft_only_right']} (two-sided sign test p = "
        f"{paired['p_value']:.3f}).", "",
    ]  # fmt: skip


def pretrain_lines(cfg: DemoConfig, pt: dict[str, Any]) -> list[str]:
    """report.md's pretraining section."""
    return [
        "## Pretraining (perception, every part trainable)", "",
        f"{pt['steps']} steps on {cfg.pretrain.train} scene descriptions (final loss "
        f"{pt['final_loss'] or float('nan'):.3f}, packing efficiency "
        f"{pt['packing_efficiency'] or 0:.3f}); cache {pt['cache']} ({pt['key']}). Held-out "
        f"descriptions of {pt['all']['n']} scenes, exact match per field:", "",
        "| scene kind | fields right | scenes with every field right |", "|---|---|---|",
        *(f"| {k} | {v['fields']:.3f} | {v['scenes']:.3f} |"
          for k, v in [*pt["per_kind"].items(), ("all", pt["all"])]), "",
        *([f"Per field (kind/field: share right): "
           f"{', '.join(f'{k} {v:.3f}' for k, v in pt['per_field'].items())}.", ""]
          if pt.get("per_field") else []),  # cache entries before session 7 lack it
    ]  # fmt: skip


def print_summary(summary: dict[str, Any], out: Path) -> None:
    s = summary
    pretrained = (
        f"pretrained {s['accuracy_pretrained']:.3f}, " if "accuracy_pretrained" in s else ""
    )
    print(f"\n[mmr demo] held-out accuracy: base {s['accuracy_base']:.3f}, "
          f"{pretrained}SFT {s['accuracy_sft']:.3f}, "
          f"RL {s['accuracy_rl']:.3f}, "
          f"chance {s['accuracy_chance']:.3f}; checks: "
          f"{'all pass' if s['checks']['all'] else s['checks']}")  # fmt: skip
    paired, n = s["rl_vs_sft"], (s["headroom"] or {}).get("n")
    head = f"SFT pass@1 {s['sft_pass_at_1']:.3f}, pass@{n} {s['sft_pass_at_n']:.3f}; " if n else ""
    if n and s.get("rl_pass_at_1") is not None:
        head += f"RL pass@1 {s['rl_pass_at_1']:.3f}, pass@{n} {s['rl_pass_at_n']:.3f}; "
    print(f"[mmr demo] {head}RL vs SFT: {paired['discordant']} of {paired['tasks']} tasks "
          f"discordant, sign test p = {paired['p_value']:.3f}")  # fmt: skip
    ways = s.get("lookup_strategy") or {}
    if ways.get("sft") and ways.get("rl"):
        print("[mmr demo] option-letter answers that read the options out: "
              + ", ".join(f"{name.upper()} {ways[name]['read_out_share']:.3f}"
                          for name in ("sft", "rl")))  # fmt: skip
    described = s["pretrain_description_accuracy"]
    print(f"[mmr demo] pretrained (cache {s['pretrain_cache']}): held-out description "
          f"accuracy {'n/a' if described is None else f'{described:.3f}'}; SFT froze "
          f"{', '.join(s['sft_frozen']['parts']) or 'nothing'} (bit-identical: "
          f"{s['sft_frozen']['bit_identical']}), packing efficiency "
          f"{s['sft_packing_efficiency'] or 0:.3f}")  # fmt: skip
    print(f"[mmr demo] {out}/summary.json, report.md, sft_loss.png, rl_reward.png, accuracy.png "
          f"({s['total_seconds']:.0f} s)")  # fmt: skip
