"""DAPO's group filter (`mmr.rl.filter_groups`), the part both RL engines share: pure Python."""

from __future__ import annotations

import pytest

from mmr.config import ConfigError, load_config
from mmr.rl import filter_groups
from mmr.rl.filter_groups import Collector, FilterGroupsSection
from mmr.rl.local_config import LocalRLConfig


def _rows(scores, accuracy=None):
    accuracy = accuracy or [0.0] * len(scores)
    return [{"score": s, "accuracy": a, "format": 0.0, "length": 0.0}
            for s, a in zip(scores, accuracy)]  # fmt: skip


def test_flat_groups_are_those_with_one_value_in_two_or_more_rows():
    values = [0.1, 0.1, 0.1, 1.0, 0.0, 0.5, 0.1 + 0.2, 0.3]
    groups = ["a", "a", "a", "b", "b", "c", "d", "d"]
    # a: all 0.1; b: differs; c: a group of one (kept, as verl's rule); d: 0.30000000000000004
    # and 0.3 differ in the last bit: not equal, as the advantage sees them.
    assert filter_groups.flat_groups(values, groups) == ["a"]
    assert filter_groups.flat_groups([1.0, 1.0, 0.0, 0.0], ["x", "x", "y", "y"]) == ["x", "y"]
    assert filter_groups.flat_groups([], []) == []


def test_each_metric_reads_its_reward_part():
    row = {"score": 0.7, "accuracy": 1.0, "format": 0.5, "length": -0.2}
    got = {m: filter_groups.metric_value(m, row) for m in filter_groups.METRICS}
    assert got == {"acc": 1.0, "accuracy": 1.0, "format": 0.5, "length": -0.2,
                   "score": 0.7, "seq_reward": 0.7, "reward": 0.7}  # fmt: skip


def test_collector_keeps_informative_groups_and_asks_for_more_until_full():
    section = FilterGroupsSection(enable=True, metric="score", max_num_gen_batches=0)
    c = Collector(section, size=2)
    c.add(_rows([1, 1, 0, 1]), ["0", "0", "1", "1"])  # "0" flat, "1" informative
    assert c.wants_more()
    c.add(_rows([0, 0, 0.5, 0.2]), ["2", "2", "3", "3"])  # "2" flat, "3" informative
    assert not c.wants_more()
    assert c.chosen() == [(0, "1"), (1, "3")]
    assert c.metrics("train/") == {
        "train/gen_batches": 2.0, "train/groups_filtered": 2.0, "train/groups_flat_kept": 0.0}  # fmt: skip
    assert dict(c.flat_values) == {1.0: 1, 0.0: 1}


def test_collector_stops_at_max_num_gen_batches_and_fills_with_flat_groups():
    section = FilterGroupsSection(enable=True, metric="acc", max_num_gen_batches=2)
    c = Collector(section, size=3)
    # score differs in every group, accuracy in none but "1": the metric decides
    c.add(_rows([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0, 0, 1, 0, 1, 1]), list("001122"))
    assert c.wants_more()
    c.add(_rows([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [1, 1, 0, 0, 1, 1]), list("334455"))
    assert not c.wants_more()  # two generation batches, one informative group
    assert c.chosen() == [(0, "1"), (0, "0"), (0, "2")]
    assert c.metrics("") == {"gen_batches": 2.0, "groups_filtered": 3.0, "groups_flat_kept": 2.0}


def test_collector_takes_no_more_than_the_batch():
    c = Collector(FilterGroupsSection(enable=True, metric="score"), size=1)
    c.add(_rows([0, 1, 0, 1]), ["a", "a", "b", "b"])
    assert not c.wants_more() and c.chosen() == [(0, "a")]
    assert c.metrics("")["groups_filtered"] == 0.0


def test_the_section_is_checked_by_key(tmp_path):
    key = "algorithm.filter_groups"
    with pytest.raises(ConfigError, match=r"algorithm\.filter_groups\.metric.*'seq_final'"):
        FilterGroupsSection(True, "seq_final", 0).check(key)
    with pytest.raises(ConfigError, match=r"algorithm\.filter_groups\.metric.*None"):
        FilterGroupsSection(True, None, 0).check(key)
    with pytest.raises(ConfigError, match=r"algorithm\.filter_groups\.max_num_gen_batches.*-1"):
        FilterGroupsSection(True, "acc", -1).check(key)
    FilterGroupsSection(False, None, 0).check(key)  # off: nothing to check

    # verl's node (`mmr rl train`, the sampler hook): missing keys take verl's defaults,
    # values are not coerced, so a wrong one is named.
    assert FilterGroupsSection.of(None) == FilterGroupsSection()
    assert FilterGroupsSection.of({"enable": True, "metric": "acc"}).max_num_gen_batches == 0
    with pytest.raises(ConfigError, match=r"verl\.algorithm\.filter_groups\.max_num_gen_batches"):
        FilterGroupsSection.of({"enable": True, "metric": "acc", "max_num_gen_batches": "3"}).check(
            f"verl.{key}"
        )

    # rl local's config: verl's keys, unknown ones rejected by name
    with pytest.raises(ConfigError, match=r"algorithm\.filter_groups\.metrik"):
        load_config(LocalRLConfig, None, ["algorithm.filter_groups.metrik=acc"])
    with pytest.raises(ConfigError, match=r"algorithm\.filter_groups\.metric"):
        load_config(LocalRLConfig, None, ["algorithm.filter_groups.enable=true"])
    cfg = load_config(LocalRLConfig, None, ["algorithm.filter_groups.enable=true",
                      "algorithm.filter_groups.metric=acc"])  # fmt: skip
    assert cfg.algorithm.filter_groups == FilterGroupsSection(True, "acc", 0)


def test_the_generation_batch_size_is_checked_by_key():
    from mmr.rl.filter_groups import check_gen_batch_size

    key, enable = "data.gen_batch_size", "algorithm.filter_groups.enable"
    for value in (0, None, 4, 6):  # 0/None: the step's batch size
        check_gen_batch_size(key, value, 4, True, enable)
    for bad in (3, -1, 2.5, "6", True):
        with pytest.raises(
            ConfigError, match=r"'data\.gen_batch_size'.*>= the step's batch size \(4"
        ):
            check_gen_batch_size(key, bad, 4, True, enable)
    # Without the filter every group is trained on: a larger generation batch is refused.
    with pytest.raises(
        ConfigError,
        match=r"'data\.gen_batch_size' \(6\) needs algorithm\.filter_groups\.enable=true",
    ):
        check_gen_batch_size(key, 6, 4, False, enable)
    check_gen_batch_size(key, 4, 4, False, enable)  # the batch size itself: no change

    # rl local's config checks it when loaded
    with pytest.raises(ConfigError, match=r"'data\.gen_batch_size' \(8\) needs"):
        load_config(LocalRLConfig, None, ["data.gen_batch_size=8"])
    with pytest.raises(ConfigError, match=r"'data\.gen_batch_size'.*got 2"):
        load_config(LocalRLConfig, None, ["data.batch_size=4", "data.gen_batch_size=2"])
    cfg = load_config(LocalRLConfig, None, ["data.gen_batch_size=8", "algorithm.filter_groups.enable=true",
                      "algorithm.filter_groups.metric=acc"])  # fmt: skip
    assert cfg.data.gen_batch_size == 8


def test_sampled_metrics_average_every_rollout_given():
    from mmr.rl.filter_groups import sampled_metrics

    rows = [{"score": 1.0, "accuracy": 1.0}, {"score": 0.1, "accuracy": 0.0},
            {"score": 0.1}, {"score": 0.6, "accuracy": 1.0}]  # fmt: skip
    out = sampled_metrics(rows)
    assert out == {"reward/sampled": pytest.approx(0.45), "reward/sampled_accuracy": 0.5}
    assert sampled_metrics([]) == {}
