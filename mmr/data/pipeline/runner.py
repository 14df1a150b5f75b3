"""Shards, manifests and reports: what makes every stage streaming, parallel and resumable.

A stage is a function `process(samples, log) -> kept samples` that `run_stage` applies to
its input cut into shards of `shard_rows` rows, read lazily, so memory holds a few shards
whatever the input size. Files, for a stage writing to DIR/<folder>:

    DIR/<folder>/part-00000.parquet      kept Samples (mmr parquet), one file per shard with rows
    DIR/<folder>/_manifest.json          the run's fingerprint and every finished shard's counts
    DIR/failed/<stage>/part-00000.parquet  samples whose requests kept failing (meta["failed"])
    DIR/reports/<stage>.json             counts and drop reasons per filter (also printed)
    DIR/_work/<stage>/                   shard files being written

Resume. A shard's files are written under `_work/` and renamed into place, then the shard
is added to the manifest (atomically replaced). A stage killed at any point and run again
skips the shards its manifest lists and deletes part files it does not list, so no row is
lost or written twice; what is redone is the shards that were in flight: one with
`num_proc=1`, at most one per worker plus one queued otherwise. A manifest made with a
different input or config is refused (pass `overwrite=True` to start over).

Parallelism. With `num_proc > 1` whole shards go to a pool of spawned worker processes
(`process` must then be picklable: a module-level function or a `functools.partial` of
one); each worker writes its shard's files itself, so only counts come back. With
`executor: ray` the same shards go to Ray tasks instead (`ray_executor`): same function,
same files, same manifest, so a run may even be resumed with the other executor.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import queue
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from mmr.config import config_to_dict
from mmr.data.io import ReadStats, parquet_files, read_samples, write_samples
from mmr.data.schema import Sample

__all__ = [
    "ShardLog",
    "StageError",
    "format_report",
    "in_worker",
    "load_manifest",
    "ray_section",
    "read_input",
    "run_stage",
    "stage_key",
]

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
MAX_EXAMPLES = 3  # example messages kept per count key
_IN_WORKER = False


class StageError(RuntimeError):
    """A stage that cannot run as asked (e.g. its folder holds another run's shards)."""


def in_worker() -> bool:
    """True inside a pool worker or a Ray shard task: there, math-verify runs in-process
    (no nested pools)."""
    return _IN_WORKER


def _init_worker() -> None:
    global _IN_WORKER
    _IN_WORKER = True
    logging.basicConfig(level=logging.WARNING)


@dataclass
class ShardLog:
    """What happened to one shard's rows. Keys: `dropped/<filter>/<reason>`,
    `failed/<reason>` and `info/<name>` (counts that are neither)."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    failed: list[Sample] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # stage-specific JSON for the report

    def drop(self, sample: Sample, filter_name: str, reason: str, detail: str = "") -> None:
        """Count one sample removed by a filter."""
        self._note(
            f"dropped/{filter_name}/{reason}", f"{sample.id}: {detail}" if detail else sample.id
        )

    def fail(self, sample: Sample, reason: str, detail: str = "") -> None:
        """Set a sample aside as failed (its requests kept failing): written to DIR/failed/."""
        sample.meta["failed"] = f"{reason}: {detail}" if detail else reason
        self.failed.append(sample)
        self._note(f"failed/{reason}", f"{sample.id}: {detail}" if detail else sample.id)

    def info(self, name: str, n: int = 1) -> None:
        """Count something that is neither a drop nor a failure (e.g. skipped requests)."""
        self.counts[f"info/{name}"] += n

    def _note(self, key: str, example: str) -> None:
        self.counts[key] += 1
        examples = self.examples.setdefault(key, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(example[:300])


@dataclass
class _Paths:
    stage_dir: Path
    failed_dir: Path
    work_dir: Path


def _part(index: int) -> str:
    return f"part-{index:05d}.parquet"


def _run_shard(
    process: Callable[[list[Sample], ShardLog], list[Sample]],
    paths: _Paths,
    index: int,
    samples: list[Sample],
) -> dict[str, Any]:
    """Process one shard and move its files into place; returns its manifest entry."""
    shard_log = ShardLog()
    kept = process(samples, shard_log)
    entry: dict[str, Any] = {
        "index": index,
        "rows_in": len(samples),
        "rows_out": len(kept),
        "failed": len(shard_log.failed),
        "file": _part(index) if kept else None,
        "counts": dict(shard_log.counts),
        "examples": shard_log.examples,
        "extra": shard_log.extra,
    }
    for rows, target_dir in ((kept, paths.stage_dir), (shard_log.failed, paths.failed_dir)):
        if rows:
            tmp = paths.work_dir / f"{target_dir.name}-{_part(index)}"
            write_samples(tmp, rows, fmt="parquet")
            target_dir.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target_dir / _part(index))
    return entry


# ---------------------------------------------------------------------------------------
# Manifest


def fingerprint(**parts: Any) -> str:
    """A short hash of what a stage's output depends on (input, config section, shard size)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


# Settings that change how fast a stage runs, not what it writes: a resumed run may change them.
# (`engine`, `api_bases`, `breaker_*`: how and to how many replicas of the model requests go.)
_RUNTIME_KEYS = {"concurrency", "timeout_s", "retries", "backoff_s", "num_proc", "device"}
_RUNTIME_KEYS |= {"engine", "api_bases", "breaker_failures", "breaker_cooldown_s"}


def _without_runtime(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_runtime(v) for k, v in value.items() if k not in _RUNTIME_KEYS}
    return value


def stage_key(input_path: str | os.PathLike[str] | None, section: Any, shard_rows: int) -> str:
    """The fingerprint of a stage run: its input (a stage folder's own fingerprint, else the
    files' sizes and times), its config section (speed settings left out) and shard size."""
    return fingerprint(
        input=_input_identity(input_path),
        config=_without_runtime(config_to_dict(section)),
        shard_rows=shard_rows,
    )


def _input_identity(path: str | os.PathLike[str] | None) -> Any:
    if path is None:
        return None
    path = Path(path)
    manifest = load_manifest(path) if path.is_dir() else None
    if manifest is not None:
        return {"stage": manifest.get("stage"), "fingerprint": manifest.get("fingerprint")}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files[:10_000]]


def read_input(
    path: str | os.PathLike[str], *, fmt: str = "auto", validate_images: bool = False
) -> tuple[Iterator[Sample], ReadStats, int | None]:
    """(samples, their ReadStats, row count when parquet metadata tells it) for a stage.

    Files the reader skips (empty, unreadable) are named in the stats and left out of the
    count; an input with no readable file raises ValueError here, before the stage starts."""
    stats = ReadStats()
    samples = read_samples(path, fmt=fmt, stats=stats, validate_images=validate_images)
    files = parquet_files(path)
    total = None if files is None else sum(_parquet_rows(f) for f in files)
    return samples, stats, total


def _parquet_rows(file: Path) -> int:
    try:
        return pq.ParquetFile(file).metadata.num_rows
    except (pa.ArrowException, OSError) as err:  # checked here, before a stage starts
        raise StageError(f"{file} is not a readable parquet file: {err}") from None


def load_manifest(stage_dir: Path) -> dict[str, Any] | None:
    """The stage folder's manifest, or None when there is none yet."""
    path = stage_dir / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _save_manifest(stage_dir: Path, manifest: dict[str, Any]) -> None:
    tmp = stage_dir / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, stage_dir / MANIFEST)


def _prepare(paths: _Paths, stage: str, key: str, overwrite: bool) -> dict[str, Any]:
    """Load (or start) the manifest and clear what no finished shard owns."""
    manifest = load_manifest(paths.stage_dir)
    if manifest is not None and (overwrite or manifest.get("fingerprint") != key):
        if not overwrite:
            raise StageError(
                f"{paths.stage_dir} holds the output of another input or config "
                f"(fingerprint {manifest.get('fingerprint')}, now {key}); pass --overwrite "
                "to start this stage again, or choose another --output"
            )
        manifest = None
    if manifest is None:
        for folder in (paths.stage_dir, paths.failed_dir):
            shutil.rmtree(folder, ignore_errors=True)
        manifest = {"stage": stage, "fingerprint": key, "complete": False, "shards": {}}
    entries = manifest["shards"].values()
    owned = {
        paths.stage_dir: {e["file"] for e in entries if e["file"]} | {manifest.get("empty_file")},
        paths.failed_dir: {_part(e["index"]) for e in entries if e["failed"]},
    }
    for folder, names in owned.items():
        for file in folder.glob("part-*.parquet"):
            if file.name not in names:  # written by a shard that did not reach the manifest
                file.unlink()
    shutil.rmtree(paths.work_dir, ignore_errors=True)
    for folder in (paths.stage_dir, paths.work_dir):
        folder.mkdir(parents=True, exist_ok=True)
    _save_manifest(paths.stage_dir, manifest)
    return manifest


# ---------------------------------------------------------------------------------------
# The loop


def _chunks(samples: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    iterator = iter(samples)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def run_stage(
    stage: str,
    folder: str,
    out_dir: str | os.PathLike[str],
    samples: Iterable[Sample],
    process: Callable[[list[Sample], ShardLog], list[Sample]],
    *,
    key: str,
    shard_rows: int = 1000,
    num_proc: int = 1,
    overwrite: bool = False,
    total: int | None = None,
    read_stats: ReadStats | None = None,
    quiet: bool = False,
    ray: Any = None,
) -> dict[str, Any]:
    """Run `process` over `samples` shard by shard into DIR/<folder>; return the report.

    `key` is the fingerprint of the input and config (see `fingerprint`); a finished
    stage with the same key is not run again (its report is returned). `ray` (the recipe's
    `ray` section) runs the shards as Ray tasks instead of in this process or its pool.
    """
    out = Path(out_dir)
    paths = _Paths(out / folder, out / "failed" / stage, out / "_work" / stage)
    manifest = _prepare(paths, stage, key, overwrite)
    started = time.monotonic()
    if not manifest["complete"]:
        bar = tqdm(total=total, unit="rows", desc=stage, disable=quiet, dynamic_ncols=True)
        try:
            shards = _pending_shards(_chunks(samples, shard_rows), manifest, bar)
            for entry in _execute(process, paths, shards, num_proc, ray):
                _record(manifest, entry, paths)
                bar.update(entry["rows_in"])
        finally:
            bar.close()
        if not any(e["file"] for e in manifest["shards"].values()):
            # No rows kept: one empty shard, so the folder still reads as a (0-row) dataset.
            write_samples(paths.stage_dir / _part(0), [], fmt="parquet")
            manifest["empty_file"] = _part(0)
        manifest["complete"] = True
        manifest["read"] = read_stats.as_dict() if read_stats is not None else None
        manifest["elapsed_s"] = round(time.monotonic() - started, 3)
        _save_manifest(paths.stage_dir, manifest)
    shutil.rmtree(paths.work_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        paths.work_dir.parent.rmdir()  # DIR/_work, once no stage uses it
    report = build_report(stage, paths.stage_dir, manifest)
    report_path = out / "reports" / f"{stage}.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    if not quiet:
        print(format_report(report))
    return report


def _pending_shards(
    chunks: Iterator[list[Sample]], manifest: dict[str, Any], bar: tqdm
) -> Iterator[tuple[int, list[Sample]]]:
    for index, chunk in enumerate(chunks):
        if str(index) in manifest["shards"]:
            bar.update(len(chunk))  # finished in an earlier run
            continue
        yield index, chunk


def _execute(
    process: Callable[[list[Sample], ShardLog], list[Sample]],
    paths: _Paths,
    shards: Iterator[tuple[int, list[Sample]]],
    num_proc: int,
    ray: Any = None,
) -> Iterator[dict[str, Any]]:
    """Manifest entries of the shards, in the order they finish."""
    if ray is not None:
        from mmr.data.pipeline.ray_executor import run_shards

        yield from run_shards(_run_shard, process, paths, shards, ray)
        return
    if num_proc <= 1:
        for index, chunk in shards:
            yield _run_shard(process, paths, index, chunk)
        return
    done: queue.Queue[Any] = queue.Queue()
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe next to client/verify threads
    with ctx.Pool(num_proc, initializer=_init_worker) as pool:
        in_flight = 0
        # One shard per worker plus one queued keeps them busy while the next is read.
        for index, chunk in shards:
            pool.apply_async(
                _run_shard,
                (process, paths, index, chunk),
                callback=done.put,
                error_callback=done.put,
            )
            in_flight += 1
            while in_flight > num_proc:
                in_flight -= 1
                yield _checked(done.get())
        while in_flight:
            in_flight -= 1
            yield _checked(done.get())


def _checked(result: Any) -> dict[str, Any]:
    if isinstance(result, BaseException):
        raise result
    return result


def _record(manifest: dict[str, Any], entry: dict[str, Any], paths: _Paths) -> None:
    manifest["shards"][str(entry["index"])] = entry
    _save_manifest(paths.stage_dir, manifest)


# ---------------------------------------------------------------------------------------
# Reports


def build_report(stage: str, stage_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Counts over all shards: rows in and out, drops per filter and reason, failures."""
    counts: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    rows_in = rows_out = failed = 0
    for entry in manifest["shards"].values():
        rows_in += entry["rows_in"]
        rows_out += entry["rows_out"]
        failed += entry["failed"]
        counts.update(entry["counts"])
        for k, v in entry["examples"].items():
            examples.setdefault(k, []).extend(v[: MAX_EXAMPLES - len(examples.get(k, []))])
    filters: dict[str, dict[str, int]] = {}
    for k, n in sorted(counts.items()):
        if k.startswith("dropped/"):
            _, name, reason = k.split("/", 2)
            filters.setdefault(name, {})[reason] = n
    elapsed = manifest.get("elapsed_s") or 0.0
    return {
        "stage": stage,
        "output": str(stage_dir),
        "rows_in": rows_in,
        "rows_out": rows_out,
        "dropped": sum(sum(r.values()) for r in filters.values()),
        "failed": failed,
        "filters": filters,
        "failed_reasons": {k[7:]: n for k, n in sorted(counts.items()) if k.startswith("failed/")},
        "info": {k[5:]: n for k, n in sorted(counts.items()) if k.startswith("info/")},
        "read": manifest.get("read"),
        "examples": examples,
        "shards": len(manifest["shards"]),
        "elapsed_s": elapsed,
        "rows_per_s": round(rows_in / elapsed, 1) if elapsed else None,
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a small table (what each stage prints when it ends)."""
    lines = [
        f"{report['stage']}: {report['rows_in']} rows in -> {report['rows_out']} out, "
        f"{report['dropped']} dropped, {report['failed']} failed "
        f"({report['shards']} shards, {report['elapsed_s']} s) -> {report['output']}"
    ]
    rows: list[tuple[str, str, int]] = []
    read = report.get("read") or {}
    rows += [("read", reason, n) for reason, n in sorted(read.get("skipped", {}).items())]
    for name, reasons in report["filters"].items():
        rows += [(name, reason, n) for reason, n in reasons.items()]
    rows += [("failed", reason, n) for reason, n in report["failed_reasons"].items()]
    rows += [("info", name, n) for name, n in report["info"].items()]
    if rows:
        width = max(len(r[1]) for r in rows)
        lines.append(f"  {'filter':<12} {'reason':<{width}} {'rows':>8}")
        lines += [f"  {f:<12} {r:<{width}} {n:>8}" for f, r, n in rows]
    skipped_files = read.get("skipped_files") or {}
    if skipped_files:
        lines.append(f"  skipped {len(skipped_files)} unreadable input file(s):")
        lines += [f"    {path}: {why}" for path, why in skipped_files.items()]
    return "\n".join(lines)


def run_sample_stage(
    stage: str,
    folder: str,
    shard_fn: Callable[..., list[Sample]],
    section: Any,
    cfg: Any,
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """The common stage: read `input_path`, run `shard_fn(shard, log, cfg=section)` per shard.

    `section` is the stage's own config section: it (with the input and the shard size)
    fingerprints the run, so a finished stage with the same settings is not redone.
    """
    samples, stats, total = read_input(input_path)
    return run_stage(
        stage,
        folder,
        out_dir,
        samples,
        functools.partial(shard_fn, cfg=section),
        key=stage_key(input_path, section, cfg.shard_rows),
        shard_rows=cfg.shard_rows,
        num_proc=cfg.num_proc,
        overwrite=overwrite,
        total=total,
        read_stats=stats,
        quiet=quiet,
        ray=ray_section(cfg),
    )


def ray_section(cfg: Any) -> Any:
    """The recipe's `ray` section when `executor: ray`, else None (run here)."""
    return cfg.ray if cfg.executor == "ray" else None
