"""DAPO's dynamic sampling (`algorithm.filter_groups`), one meaning in both RL engines.

A rollout group whose responses all score the same on the chosen metric has advantage
exactly 0 (`mmr.rl.advantage`): it costs a batch slot and teaches nothing. With
`enable: true` each step drops such groups and generates more prompts, one generation
batch (the step's batch size in prompts) at a time, until the batch is full of groups
that differ; at `max_num_gen_batches` generation batches it stops and fills the rest with
dropped groups (their advantage is 0), counted in a metric and a warning, instead of
generating on. The keys, their names and defaults are verl 0.9.1's `FilterGroupsConfig`
(verl/trainer/config/algorithm.py); verl's own buffer filters before mmr's group length
term and does not bound its refills (it ignores `max_num_gen_batches`), so `mmr rl train`
filters in mmr's sampler hook (`mmr.rl.reward.MMRGroupSampler`) and `mmr rl local` in its
step loop, both on the finished scores (the group length term included).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from mmr.config import ConfigError
from mmr.rl.advantage import equal_groups

logger = logging.getLogger(__name__)

# metric name -> the reward row key it reads. `acc` is verl's name of the accuracy part;
# `score`, `seq_reward` (verl's legacy DAPO name) and `reward` (verl v1's) are the total.
METRICS = {
    "acc": "accuracy",
    "accuracy": "accuracy",
    "format": "format",
    "length": "length",
    "score": "score",
    "seq_reward": "score",
    "reward": "score",
}


@dataclass
class FilterGroupsSection:
    enable: bool = False  # drop all-same groups and generate more prompts (DAPO)
    metric: str | None = None  # what must differ within a group: acc | score | ... (METRICS)
    max_num_gen_batches: int = 0  # generation batches per step at most; 0: no limit

    @classmethod
    def of(cls, node: Mapping[str, Any] | None) -> FilterGroupsSection:
        """The section from verl's `algorithm.filter_groups` node (an OmegaConf node or a
        dict; missing keys take verl's defaults). Values are taken as they are, so that
        `check` sees (and names) a wrong one."""
        node = node or {}
        return cls(**{f.name: node.get(f.name, f.default) for f in fields(cls)})

    def check(self, prefix: str) -> None:
        """Refuse a section a run could not follow, naming the key (`prefix`: the section)."""
        if not self.enable:
            return
        if self.metric not in METRICS:
            known = ", ".join(METRICS)
            raise ConfigError(
                f"config key '{prefix}.metric' is {self.metric!r}; with {prefix}.enable=true "
                f"choose one of {known}"
            )
        limit = self.max_num_gen_batches
        if not isinstance(limit, int) or limit < 0:
            raise ConfigError(
                f"config key '{prefix}.max_num_gen_batches' must be an integer >= 0 "
                f"(0: no limit), got {limit!r}"
            )


def check_gen_batch_size(
    key: str, value: Any, batch_size: int, enabled: bool, enable_key: str
) -> None:
    """Refuse a generation batch size (`key`: its config key) that is not 0 (the step's
    batch size) or an integer >= `batch_size`, or that is set while the filter is off
    (`enable_key`): without the filter every generated group is trained on, so there is
    no surplus to choose from."""
    if value is None or value == 0:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < batch_size:
        raise ConfigError(
            f"config key '{key}' must be 0 (the batch size) or an integer >= the step's "
            f"batch size ({batch_size} prompts), got {value!r}"
        )
    if value != batch_size and not enabled:
        raise ConfigError(
            f"config key '{key}' ({value}) needs {enable_key}=true: it sizes the generation "
            "batches that DAPO's group filter chooses from"
        )


def metric_value(metric: str, row: Mapping[str, Any]) -> float:
    """The metric of one scored response (a reward row: score, accuracy, format, length)."""
    return float(row[METRICS[metric]])


def flat_groups(values: Sequence[float], groups: Sequence[Hashable]) -> list[Hashable]:
    """The groups (of two or more rows) whose values are all equal, in first-seen order.
    The same test as the advantage's exact-zero rule (`advantage.equal_groups`)."""
    if not groups:
        return []
    rows = equal_groups(torch.tensor(values, dtype=torch.float64), np.array(groups, dtype=object))
    return list(dict.fromkeys(g for g, flat in zip(groups, rows) if flat))


def sampled_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The policy's reward on the step's prompts, before any filter: the mean total
    (`reward/sampled`) and accuracy part (`reward/sampled_accuracy`) over every rollout
    generated for the step, in every generation batch (each is a fresh draw of prompts).
    The trained batch's own `reward` is biased once all-same groups are dropped (it stays
    near the middle of the reward range whatever the policy does); this is the curve that
    shows whether the policy improves. Equal to the batch's with the filter off."""
    if not rows:
        return {}
    return {
        "reward/sampled": float(np.mean([float(row["score"]) for row in rows])),
        "reward/sampled_accuracy": float(
            np.mean([float(row.get("accuracy", 0.0)) for row in rows])
        ),
    }


class Collector:
    """One step's groups across its generation batches: which to train on, and the tally.

    `add` classifies each new generation batch's groups (by the section's metric);
    `wants_more` says whether to generate another; `chosen` gives the batch: up to `size`
    informative groups in generation order, then (only once `max_num_gen_batches` ran
    out) all-same ones to fill it. Groups are named `(generation batch, group id)`.
    """

    def __init__(self, section: Any, size: int) -> None:
        self.metric, self.limit, self.size = section.metric, section.max_num_gen_batches, size
        self.informative: list[tuple[int, Hashable]] = []
        self.flat: list[tuple[int, Hashable]] = []
        self.flat_values: Counter[float] = Counter()
        self.gen_batches = 0

    def add(self, rows: Sequence[Mapping[str, Any]], groups: Sequence[Hashable]) -> None:
        """One generation batch: its scored rows (reward rows) and each row's group."""
        batch = self.gen_batches
        self.gen_batches += 1
        values = [metric_value(self.metric, row) for row in rows]
        flat = set(flat_groups(values, groups))
        for group in dict.fromkeys(groups):
            (self.flat if group in flat else self.informative).append((batch, group))
        for group, value in zip(groups, values):
            if group in flat:
                flat.discard(group)  # one count per group
                self.flat_values[value] += 1

    def wants_more(self) -> bool:
        full = len(self.informative) >= self.size
        return not full and (self.limit <= 0 or self.gen_batches < self.limit)

    def chosen(self) -> list[tuple[int, Hashable]]:
        fill = max(0, self.size - len(self.informative))
        return self.informative[: self.size] + self.flat[:fill]

    def metrics(self, prefix: str) -> dict[str, float]:
        """`gen_batches` used, all-same `groups_filtered` (dropped) and
        `groups_flat_kept` (trained on: the limit ran out), each under `prefix`; a warning
        when some were kept."""
        kept_flat = len(self.chosen()) - min(len(self.informative), self.size)
        if kept_flat:
            logger.warning(
                "algorithm.filter_groups: %d of %d groups all the same after %d generation "
                "batches (max_num_gen_batches); training on them (advantage 0)",
                kept_flat, self.size, self.gen_batches,
            )  # fmt: skip
        return {
            f"{prefix}gen_batches": float(self.gen_batches),
            f"{prefix}groups_filtered": float(len(self.flat) - kept_flat),
            f"{prefix}groups_flat_kept": float(kept_flat),
        }
