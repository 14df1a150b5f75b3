"""The SFT data stream: Sample files -> shard -> shuffle -> tokenize -> pack -> micro-batches.

Nothing is preprocessed ahead of time and no file has to fit in memory: samples stream
from `mmr.data.io.read_samples`, rank `r` of `w` keeps samples `r, r+w, ...`, a seeded
buffer shuffles them, `mmr.data.chat` tokenizes them (too-long and broken samples are
counted, not fatal), and every `pack_buffer` tokenized samples are bin-packed
(first-fit decreasing, near-equal lengths in seeded random order so rows mix kinds) into
rows of `packing_length` tokens. First-fit decreasing makes the rows in order of their
longest sample; they are shuffled (seeded) within each buffer, so training does not run
long-to-short once per buffer on every rank at the same time. With `batch_size` > 1 the
rows of a micro-batch are laid end to end in one sequence (attention stays per sample,
so this is the same computation as a batch of rows, without padding between them).

The stream for (seed, epoch, rank) is the same every time it is built, so a resumed run
rebuilds it and skips the micro-batches it already trained on: data order and position
resume exactly (`SFTStream.batches(epoch, skip=n)`).
"""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from mmr.data.chat import ChatStats, TokenizedSample, tokenize_sample
from mmr.data.io import ReadStats, read_samples
from mmr.data.packing import (
    PackStats,
    RopeIndexFn,
    collate_packed,
    collate_padded,
    pack_first_fit_decreasing,
)
from mmr.data.schema import Sample
from mmr.sft.config import DataSection


@dataclass
class StreamStats:
    """What the stream did to the data; logged at the end of every epoch."""

    read: ReadStats = field(default_factory=ReadStats)
    chat: ChatStats = field(default_factory=ChatStats)
    pack: PackStats = field(default_factory=PackStats)

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read.as_dict(),
            "tokenize": self.chat.as_dict(),
            "packing_efficiency": round(self.pack.efficiency, 4),
            "rows": self.pack.rows,
        }


class SFTStream:
    """Deterministic micro-batches of one rank's share of the data, epoch by epoch."""

    def __init__(
        self,
        cfg: DataSection,
        processor: Any,
        get_rope_index: RopeIndexFn,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not cfg.train_files:
            raise ValueError("data.train_files is empty: give Sample parquet/JSONL files")
        self.cfg = cfg
        self.processor = processor
        self.get_rope_index = get_rope_index
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad_token_id = processor.tokenizer.pad_token_id
        self.stats = StreamStats()

    def batches(self, epoch: int, skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Micro-batches of `epoch` for this rank, after skipping the first `skip`."""
        self.stats = StreamStats()
        for i, group in enumerate(self._groups(epoch)):
            if i < skip:
                continue  # already trained on before the resume
            yield self._collate(group)

    def micro_batch_sizes(self, epoch: int) -> Iterator[int]:
        """Samples in each micro-batch of `epoch` for this rank, in order: what `batches`
        would yield, tokenized and packed but not collated (for planning the step count)."""
        for group in self._groups(epoch):
            yield len(group)

    def _groups(self, epoch: int) -> Iterator[list[TokenizedSample]]:
        cfg = self.cfg
        items = (
            item for item in (self._tokenize(s) for s in self._samples(epoch)) if item is not None
        )
        if not cfg.packing:
            yield from _chunks(items, cfg.batch_size)
            return
        rows = self._packed_rows(items, epoch)
        yield from (
            [item for row in rows_chunk for item in row]
            for rows_chunk in _chunks(rows, cfg.batch_size)
        )

    def _samples(self, epoch: int) -> Iterator[Sample]:
        cfg = self.cfg
        shard = (
            s
            for path in cfg.train_files
            for j, s in enumerate(
                read_samples(path, fmt=cfg.format, image_root=cfg.image_root, stats=self.stats.read)
            )
            if j % self.world_size == self.rank
        )
        if not cfg.shuffle:
            yield from shard
            return
        rng = random.Random(f"{self.seed}/{epoch}/{self.rank}")
        buffer: list[Sample] = []
        for sample in shard:
            buffer.append(sample)
            if len(buffer) >= cfg.shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    def _tokenize(self, sample: Sample) -> TokenizedSample | None:
        cfg = self.cfg
        limit = min(cfg.max_length, cfg.packing_length) if cfg.packing else cfg.max_length
        return tokenize_sample(
            sample,
            self.processor,
            max_length=limit,
            truncation=cfg.truncation,
            system_prompt=cfg.system_prompt,
            stats=self.stats.chat,
        )

    def _packed_rows(
        self, items: Iterator[TokenizedSample], epoch: int
    ) -> Iterator[list[TokenizedSample]]:
        rng = random.Random(f"{self.seed}/{epoch}/{self.rank}/rows")
        for buffer in _chunks(items, self.cfg.pack_buffer):
            lengths = [len(it) for it in buffer]
            if self.cfg.shuffle:  # near-equal lengths in random order: rows mix kinds
                bins = pack_first_fit_decreasing(lengths, self.cfg.packing_length, rng=rng)
                rng.shuffle(bins)
            else:
                bins = pack_first_fit_decreasing(lengths, self.cfg.packing_length)
            for b in bins:
                row = [buffer[i] for i in b]
                self.stats.pack.rows += 1
                self.stats.pack.tokens += sum(len(it) for it in row)
                self.stats.pack.capacity += self.cfg.packing_length
                yield row

    def _collate(self, group: list[TokenizedSample]) -> dict[str, torch.Tensor]:
        if not self.cfg.packing:
            return collate_padded(group, pad_token_id=self.pad_token_id)
        return collate_packed(
            group,
            self.get_rope_index,
            pad_token_id=self.pad_token_id,
            packing_length=self.cfg.packing_length * self.cfg.batch_size,
        )


def prefetched(batches: Iterator[dict], depth: int, pin: bool = False) -> Iterator[dict]:
    """`batches`, prepared up to `depth` ahead in a background thread (0: in the caller).

    Reading, image processing, tokenization, packing and collation then overlap the
    training step instead of stalling the GPU between steps (most of that work releases
    the GIL: PIL, the Rust tokenizer, torch). Order is unchanged, so resume is unchanged.
    `pin`: page-locked tensors, for `.to(cuda, non_blocking=True)`. An error in the thread
    is raised here; leaving the loop early stops the thread.
    """
    if depth <= 0:
        yield from batches
        return
    done = object()
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        """Hand `item` over; False once the consumer has stopped."""
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if pin:
                    batch = {k: v.pin_memory() for k, v in batch.items()}
                if not put(batch):
                    return
            put(done)
        except BaseException as err:  # handed to the consumer, raised there
            put(err)

    thread = threading.Thread(target=produce, name="mmr-sft-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)


def _chunks(it, size: int) -> Iterator[list]:
    chunk = []
    for x in it:
        chunk.append(x)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
