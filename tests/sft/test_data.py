"""The SFT stream reads through mmr.data.io: a bad shard is skipped and named in its stats."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mmr.data.io import write_samples
from mmr.data.schema import Sample
from mmr.sft.config import DataSection
from mmr.sft.data import SFTStream


def _rows(prefix: str, n: int) -> list[Sample]:
    return [Sample(id=f"{prefix}{i}", source="s", question=f"q{i}?", answer="1") for i in range(n)]


def _stream(files: list[str]) -> SFTStream:
    processor = SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=0))
    cfg = DataSection(train_files=files, shuffle=False)
    return SFTStream(cfg, processor, get_rope_index=None, seed=0)


def test_stream_skips_an_unreadable_shard_and_counts_it(tmp_path):
    write_samples(tmp_path / "data" / "a.parquet", _rows("a", 3))
    write_samples(tmp_path / "data" / "b.jsonl", _rows("b", 2))
    (tmp_path / "data" / "c.parquet").write_bytes(b"")
    stream = _stream([str(tmp_path / "data")])
    assert [s.id for s in stream._samples(0)] == ["a0", "a1", "a2", "b0", "b1"]
    read = stream.stats.as_dict()["read"]  # what data_stats.json holds
    assert read["files"] == 2
    assert read["skipped_files"] == {str(tmp_path / "data" / "c.parquet"): "empty file (0 bytes)"}


def test_stream_with_no_readable_file_names_it(tmp_path):
    (tmp_path / "train.parquet").write_bytes(b"PAR1 cut short")
    stream = _stream([str(tmp_path / "train.parquet")])
    with pytest.raises(ValueError, match=r"no readable data file at .*train\.parquet"):
        next(stream._samples(0))
