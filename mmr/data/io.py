"""Streaming readers and writers of Samples: parquet, JSONL, JSON lists, folders of shards.

    stats = ReadStats()
    for sample in read_samples("data/mmfinereason/", stats=stats):   # any supported format
        ...
    print(stats.summary())

    with SampleWriter("out/curated.parquet") as writer:                # or .jsonl
        writer.write(sample)

Reading never holds a whole file: parquet is read one row group at a time in batches of
`batch_size` rows, JSONL one line at a time, a JSON list one element at a time.

Formats (`fmt`): "mmr" (mmr's own rows; images as bytes in parquet or as paths in JSONL),
"jsonl" (the same rows, named for the plain-JSONL case), "mmfinereason" (the MMFineReason
release), "omr_sft" (OpenMMReasoner / lmms-engine chat records). "auto" picks per file from
its columns or its first record: `messages`/`conversations` -> omr_sft; MMFineReason-only
columns (`image`, `qwen3vl_*`, `original_*`) without `images` -> mmfinereason; else mmr.
The mappings themselves live in `mmr.data.schema`.

Bad rows are skipped and counted, never fatal and never silent: each skip increments
`ReadStats.skipped[reason]`, keeps a few example messages, and the first one per reason is
logged. Reasons: malformed_json, missing_question, missing_answer, missing_image,
corrupt_image, unsupported_image (remote URL), unsupported_content (video/audio parts),
multi_turn, placeholder_mismatch, bad_field (a value of the wrong type), corrupt_parquet
(a row group that cannot be decoded: all its unread rows are counted).
Images referenced by path resolve against `image_root` (default: the file's folder).

Bad files are skipped the same way, one rule for every reader (pipeline stages, SFT, RL
prepare, eval): a data file that is empty (0 bytes), unreadable, not parquet despite its
name (bad magic, a truncated footer) or not JSON text (binary data under .jsonl) is never
opened by pyarrow or json: it is logged with its path and reason and recorded in
`ReadStats.skipped_files` (path -> reason), so each caller's report names it. Only when no
file at `path` is readable does `read_samples` raise (ValueError, naming the path and the
files), at the call.

A folder is read whole: every .parquet and .jsonl file under it, in path order, each in
its own format (a mixed folder loses no rows; reading one kind would drop the other
silently, and refusing would fail folders that mix shards on purpose). `.json` files are
data only in a folder without parquet shards: beside parquet they are metadata (HF dataset
folders keep `dataset_info.json` there); those left out are named in a warning. Names
starting with "." or "_" (temporary files, `_manifest.json`) are never read.

Writers write to a hidden temporary name beside the target and rename on close, so a run
that dies leaves no file that looks complete.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import itertools
import json
import logging
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from mmr.data.schema import (
    MMFINEREASON_SCHEMA,
    SAMPLE_SCHEMA,
    MalformedRow,
    RawImage,
    Sample,
    check_sample,
    json_default,
    sample_from_mmfinereason,
    sample_from_mmr,
    sample_from_omr,
    sample_to_jsonl,
    sample_to_mmfinereason,
    sample_to_omr,
    to_row,
)

logger = logging.getLogger(__name__)

READ_FORMATS = ("auto", "mmr", "jsonl", "mmfinereason", "omr_sft")
WRITE_FORMATS = ("auto", "parquet", "jsonl", "mmfinereason", "omr_sft")
_FROM_ROW = {
    "mmr": sample_from_mmr,
    "jsonl": sample_from_mmr,
    "mmfinereason": sample_from_mmfinereason,
    "omr_sft": sample_from_omr,
}
_MFR_ONLY = {"image", "original_question", "original_answer", "qwen3vl_235b_thinking_response"}
_MFR_ONLY |= {"qwen3vl_235b_instruct_caption", "qwen3vl_4b_pass_rate"}
_REMOTE = ("http://", "https://", "s3://", "gs://", "hf://")


@dataclass
class ReadStats:
    """What a read saw: rows read, rows kept, and skipped rows by reason with examples."""

    read: int = 0
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 3  # example messages kept per reason
    files: int = 0  # data files read
    skipped_files: dict[str, str] = field(default_factory=dict)  # path -> why it was not read

    def skip_file(self, path: Path, reason: str) -> None:
        """Record one data file that is not read; every one is logged with its path."""
        self.skipped_files[str(path)] = reason
        logger.warning("skipping data file %s: %s", path, reason)

    def skip(self, reason: str, message: str) -> None:
        """Count one skipped row; log the first of each reason."""
        self.skipped[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.max_examples:
            examples.append(message)
        if self.skipped[reason] == 1:
            logger.warning(
                "skipping row (%s): %s [further %s rows are only counted]", reason, message, reason
            )

    def summary(self) -> str:
        """Readable multi-line report."""
        lines = [f"read {self.read} rows, kept {self.kept}, skipped {self.read - self.kept}"]
        if self.skipped_files:
            lines.append(f"  files: {self.files} read, {len(self.skipped_files)} skipped")
            lines += [f"    {path}: {why}" for path, why in self.skipped_files.items()]
        for reason, count in self.skipped.most_common():
            lines.append(f"  {reason}: {count}")
            lines += [f"    e.g. {example}" for example in self.examples.get(reason, [])]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, for run logs."""
        return {
            "read": self.read,
            "kept": self.kept,
            "skipped": dict(self.skipped),
            "examples": {k: list(v) for k, v in self.examples.items()},
            "files": self.files,
            "skipped_files": dict(self.skipped_files),
        }


# ---------------------------------------------------------------------------------------
# Reading


def read_samples(
    path: str | os.PathLike[str],
    *,
    fmt: str = "auto",
    image_root: str | os.PathLike[str] | None = None,
    batch_size: int = 512,
    stats: ReadStats | None = None,
    validate_images: bool = True,
) -> Iterator[Sample]:
    """Yield the Samples in a file or a folder of shards, skipping (and counting) bad rows
    and bad files (module docstring: a folder's parquet and JSONL files are all read).

    Raises at the call: FileNotFoundError when `path` holds no data file, ValueError when
    none of its data files is readable (naming them and why).
    `validate_images` decodes every image with PIL to catch corrupt or truncated files;
    turn it off for data that this reader has already checked.
    """
    # Checked here, not on the first next(): a wrong path or format fails at the call.
    if fmt not in READ_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(READ_FORMATS)}")
    stats = stats if stats is not None else ReadStats()
    files = _readable_files(Path(path), stats)
    root = Path(image_root) if image_root is not None else None
    return _read_files(files, fmt, root, batch_size, stats, validate_images)


def _read_files(
    files: list[Path],
    fmt: str,
    image_root: Path | None,
    batch_size: int,
    stats: ReadStats,
    validate: bool,
) -> Iterator[Sample]:
    for file in files:
        try:
            records, file_fmt = _records(file, fmt, batch_size)
        except (pa.ArrowException, OSError) as e:  # changed since it was checked
            stats.skip_file(file, f"unreadable: {e}")
            continue
        stats.files += 1
        from_row, root = _FROM_ROW[file_fmt], image_root or file.parent
        for where, record in records:
            stats.read += 1
            try:
                if isinstance(record, MalformedRow):
                    raise record
                sample = _to_sample(record, from_row, file.stem, root, validate)
            except MalformedRow as e:
                stats.skip(e.reason, f"{where}: {e}")
                continue
            stats.kept += 1
            yield sample
    if stats.read > stats.kept or stats.skipped_files:
        logger.info("read %s: %s", ", ".join(map(str, files[:3])), stats.summary())


FromRow = Callable[..., tuple[Sample, list[RawImage]]]


def _to_sample(record: Any, from_row: FromRow, source: str, root: Path, validate: bool) -> Sample:
    if not isinstance(record, dict):
        raise MalformedRow("bad_field", f"record is a {type(record).__name__}, not an object")
    sample, raw_images = from_row(record, default_source=source)
    for i, raw in enumerate(raw_images):
        data, label = _resolve_image(raw, root, i)
        if validate:
            check_image(data, label)
        sample.images.append(data)
    return check_sample(sample)


def _resolve_image(raw: RawImage, root: Path, index: int) -> tuple[bytes, str]:
    """A raw image (bytes or a reference) -> (bytes, a label for messages)."""
    if isinstance(raw, bytes):
        return raw, f"#{index}"
    label = repr(raw if len(raw) < 120 else raw[:60] + "...")
    if raw.startswith("data:"):
        header, _, payload = raw.partition(",")
        try:
            return base64.b64decode(payload, validate=True), label
        except (binascii.Error, ValueError) as e:
            raise MalformedRow("corrupt_image", f"bad data URL {header!r}: {e}") from None
    if raw.startswith(_REMOTE):
        raise MalformedRow("unsupported_image", f"remote image {label}: only local files are read")
    file = Path(raw.removeprefix("file://"))
    file = file if file.is_absolute() else root / file
    try:
        return file.read_bytes(), label
    except OSError as e:
        raise MalformedRow(
            "missing_image", f"missing image {label} ({e.strerror}: {file})"
        ) from None


def check_image(data: bytes, label: str = "image") -> None:
    """Raise MalformedRow("corrupt_image") unless PIL can fully decode `data`."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()  # checksums and structure (PNG CRCs)
        # verify() does not decode pixels; load() does, and catches truncated JPEG/PNG data.
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except UnidentifiedImageError:
        raise MalformedRow(
            "corrupt_image", f"corrupt image {label}: not an image PIL knows"
        ) from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise MalformedRow("corrupt_image", f"corrupt image {label}: {e}") from None


def count_rows(path: str | os.PathLike[str]) -> int | None:
    """Rows in a file or folder without decoding them, or None where that needs a parse.

    Parquet rows come from the file footers, JSONL rows are its non-empty lines; a JSON list
    gives None. Malformed rows count (reading them later skips and counts them); files the
    reader skips do not (and, as there, no readable file at all raises ValueError).
    """
    total = 0
    for file in _readable_files(Path(path), None):
        if file.suffix == ".parquet":
            total += pq.ParquetFile(file).metadata.num_rows
        elif file.suffix == ".jsonl":
            with open(file, "rb") as f:
                total += sum(1 for line in f if line.strip())
        else:
            return None
    return total


def parquet_files(path: str | os.PathLike[str]) -> list[Path] | None:
    """The readable files `read_samples` reads at `path` when all of its data files are
    parquet (whose footers give row counts and schemas without reading rows), else None
    (also for no such path). Files the reader skips (module docstring) are left out."""
    try:
        files, _ = _list_files(Path(path))
    except FileNotFoundError:
        return None
    if not all(f.suffix == ".parquet" for f in files):
        return None
    return [f for f in files if _unreadable(f) is None]


def _list_files(path: Path) -> tuple[list[Path], list[Path]]:
    """(the data files at `path`, the .json files left out as metadata) in path order."""
    if path.is_file():
        return [path], []
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or folder: {path}")
    files = [
        p
        for p in sorted(path.rglob("*"))
        if p.is_file()
        and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
    ]
    if any(p.suffix == ".parquet" for p in files):
        shards = [p for p in files if p.suffix in (".parquet", ".jsonl")]
        return shards, [p for p in files if p.suffix == ".json"]
    shards = [p for p in files if p.suffix in (".jsonl", ".json")]
    if not shards:
        raise FileNotFoundError(f"no .parquet, .jsonl or .json files under {path}")
    return shards, []


def _readable_files(path: Path, stats: ReadStats | None) -> list[Path]:
    """The data files at `path` that can be read; the others go to `stats.skip_file`
    (unless `stats` is None: a caller that only counts). ValueError when none can."""
    files, metadata = _list_files(path)
    if metadata and stats is not None:
        names = ", ".join(str(p.relative_to(path)) for p in metadata[:5])
        more = f" and {len(metadata) - 5} more" if len(metadata) > 5 else ""
        logger.warning(
            "%s: not reading %d .json file(s) beside parquet shards, taken as metadata: %s%s",
            path, len(metadata), names, more,
        )  # fmt: skip
    reasons = {file: _unreadable(file) for file in files}
    readable = [file for file, reason in reasons.items() if reason is None]
    if not readable:
        bad = "; ".join(f"{f}: {why}" for f, why in list(reasons.items())[:5])
        more = f"; and {len(files) - 5} more" if len(files) > 5 else ""
        raise ValueError(f"no readable data file at {path} ({bad}{more})")
    for file, reason in reasons.items():
        if reason is not None and stats is not None:
            stats.skip_file(file, reason)
    return readable


def _unreadable(file: Path) -> str | None:
    """Why `file` cannot be read as data (checked before any row is read), or None."""
    try:
        if file.stat().st_size == 0:
            return "empty file (0 bytes)"
        if file.suffix == ".parquet":
            pq.read_metadata(file)  # magic bytes and footer: a 0-byte or truncated file fails
            return None
        with open(file, "rb") as f:
            head = f.read(4096)
    except (pa.ArrowException, OSError) as e:
        kind = "parquet" if file.suffix == ".parquet" else "data"
        return f"not a readable {kind} file: {e}"
    magic = {b"PAR1": " (parquet)", b"\x1f\x8b": " (gzip)"}
    if head.startswith(tuple(magic)) or b"\x00" in head:  # JSON text never holds a NUL byte
        found = next((hint for m, hint in magic.items() if head.startswith(m)), "")
        return f"binary data{found}, not JSON text"
    return None


Records = Iterator[tuple[str, Any]]  # (where, record or MalformedRow)


def _records(file: Path, fmt: str, batch_size: int) -> tuple[Records, str]:
    """The file's records and its format (detected when `fmt` is "auto")."""
    if file.suffix == ".parquet":
        fmt = detect_format(pq.read_schema(file).names) if fmt == "auto" else fmt
        return _parquet_records(file, batch_size), fmt
    records = _json_records(file)
    if fmt != "auto":
        return records, fmt
    head = []
    for item in records:  # the first real record decides; malformed lines before it are kept
        head.append(item)
        if isinstance(item[1], dict):
            fmt = detect_format(item[1].keys())
            break
    return itertools.chain(head, records), "mmr" if fmt == "auto" else fmt


def detect_format(keys: Iterable[str]) -> str:
    """The row format that a set of column names means: `omr_sft`, `mmfinereason` or `mmr`."""
    keys = set(keys)
    if keys & {"messages", "conversations"}:
        return "omr_sft"
    if "images" not in keys and keys & _MFR_ONLY:
        return "mmfinereason"
    return "mmr"


def _parquet_records(file: Path, batch_size: int) -> Records:
    with pq.ParquetFile(file) as parquet:
        first = 0
        for group in range(parquet.num_row_groups):
            rows, done = parquet.metadata.row_group(group).num_rows, 0
            try:
                for batch in parquet.iter_batches(batch_size=batch_size, row_groups=[group]):
                    for record in batch.to_pylist():
                        yield f"{file.name} row {first + done}", record
                        done += 1
            except (pa.ArrowException, OSError) as e:
                # One bad row group should not cost the rest of the file: count its unread rows.
                error = MalformedRow("corrupt_parquet", f"row group {group} unreadable: {e}")
                for row in range(first + done, first + rows):
                    yield f"{file.name} row {row}", error
            first += rows


def _json_records(file: Path) -> Records:
    with open(file, "rb") as f:
        start = f.read(64).lstrip()
        f.seek(0)
        if file.suffix == ".json" and start.startswith(b"["):
            yield from _json_list_records(f, file.name)
        else:  # JSONL, or a .json file that holds one object per line
            yield from _jsonl_records(f, file.name)


def _jsonl_records(f: BinaryIO, name: str) -> Records:
    for number, line in enumerate(f, start=1):
        if not line.strip():
            continue
        try:
            yield f"{name} line {number}", json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            yield f"{name} line {number}", MalformedRow("malformed_json", f"bad JSON: {e}")


def _json_list_records(f: BinaryIO, name: str, chunk: int = 1 << 20) -> Records:
    """Elements of a JSON list, decoded one at a time from a growing text buffer."""
    reader = io.TextIOWrapper(f, encoding="utf-8", errors="replace")
    decoder = json.JSONDecoder()
    buf, pos, index, want = reader.read(chunk), 0, 0, chunk
    pos = buf.index("[") + 1
    while True:
        while pos < len(buf) and buf[pos] in " \t\r\n,":
            pos += 1
        if pos < len(buf) and buf[pos] == "]":
            return
        try:
            if pos >= len(buf):
                raise json.JSONDecodeError("unterminated list", buf, pos)
            value, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError as e:
            more = reader.read(want)
            if not more:  # a syntax error: nothing after it can be trusted
                message = f"bad JSON ({e.msg}); the rest of the list was not read"
                yield f"{name} row {index}", MalformedRow("malformed_json", message)
                return
            buf, pos, want = buf[pos:] + more, 0, want * 2  # a long element: read more at once
            continue
        yield f"{name} row {index}", value
        index, pos, want = index + 1, end, chunk
        if pos > chunk:
            buf, pos = buf[pos:], 0


# ---------------------------------------------------------------------------------------
# Writing


class SampleWriter:
    """Write Samples incrementally to mmr parquet, plain JSONL, MMFineReason parquet or
    OpenMMReasoner SFT JSONL (`fmt`; "auto" picks parquet or jsonl from the suffix).

    Parquet rows are buffered into row groups of `rows_per_group` rows (or fewer once their
    images reach `max_group_bytes`). JSONL formats save each image once under `image_dir`
    (default `<stem>_images/` beside the file), named by content hash, and store paths
    relative to the JSONL file's folder, so `read_samples` finds them by default.
    A sample the format cannot hold (MMFineReason: more than one image) is skipped and
    counted in `skipped`. `written` counts rows written.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fmt: str = "auto",
        rows_per_group: int = 256,
        max_group_bytes: int = 256 << 20,
        image_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.fmt = _writer_format(self.path, fmt)
        self.rows_per_group = rows_per_group
        self.max_group_bytes = max_group_bytes
        self.image_dir = (
            Path(image_dir) if image_dir else self.path.with_name(f"{self.path.stem}_images")
        )
        self.written = 0
        self.skipped: Counter[str] = Counter()
        self._rows: list[dict[str, Any]] = []
        self._row_bytes = 0
        self._closed = False
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex[:12]}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.fmt in ("parquet", "mmfinereason"):
            schema = SAMPLE_SCHEMA if self.fmt == "parquet" else MMFINEREASON_SCHEMA
            self._schema = schema
            self._parquet: pq.ParquetWriter | None = pq.ParquetWriter(
                self._tmp, schema, compression="zstd"
            )
            self._text = None
        else:
            self._parquet = None
            self._text = open(self._tmp, "w", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def __enter__(self) -> SampleWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, sample: Sample) -> bool:
        """Write one sample; False when the format cannot hold it (counted in `skipped`)."""
        if self._closed:
            raise ValueError(f"writer for {self.path} is closed")
        try:
            row = self._encode(sample)
        except MalformedRow as e:
            self.skipped[e.reason] += 1
            if self.skipped[e.reason] == 1:
                logger.warning(
                    "%s: not writing sample %s (%s): %s", self.path, sample.id, e.reason, e
                )
            return False
        if self._text is not None:
            self._text.write(json.dumps(row, ensure_ascii=False, default=json_default) + "\n")
        else:
            self._rows.append(row)
            self._row_bytes += sum(map(len, sample.images)) + len(sample.question)
            self._row_bytes += len(sample.response or "") + len(sample.caption or "")
            if len(self._rows) >= self.rows_per_group or self._row_bytes >= self.max_group_bytes:
                self._flush()
        self.written += 1
        return True

    def close(self) -> None:
        """Finish the file and move it to its final name."""
        if self._closed:
            return
        try:
            self._flush()
        except BaseException:
            self.abort()  # a row pyarrow rejects must not leave a temporary file behind
            raise
        self._close_handles()
        os.replace(self._tmp, self.path)
        if self.skipped:
            logger.warning(
                "%s: %d written, skipped %s", self.path, self.written, dict(self.skipped)
            )

    def abort(self) -> None:
        """Drop what was written; the final file is not created (an old one is left as is)."""
        if self._closed:
            return
        self._close_handles()
        self._tmp.unlink(missing_ok=True)

    def _close_handles(self) -> None:
        self._closed = True
        if self._parquet is not None:
            self._parquet.close()
        if self._text is not None:
            self._text.close()

    def _flush(self) -> None:
        if self._parquet is None or not self._rows:
            return
        table = pa.Table.from_pylist(self._rows, schema=self._schema)
        self._parquet.write_table(table, row_group_size=len(self._rows))
        self._rows, self._row_bytes = [], 0

    def _encode(self, sample: Sample) -> dict[str, Any]:
        if self.fmt == "parquet":
            return to_row(sample)
        if self.fmt == "mmfinereason":
            return sample_to_mmfinereason(sample)
        paths = [self._save_image(image) for image in sample.images]
        if self.fmt == "omr_sft":
            # Meta extras ride along as top-level keys; the reader puts them back into meta.
            extras = {k: v for k, v in sample.meta.items() if k not in ("system", "answer_from")}
            return {**extras, **sample_to_omr(sample, paths)}
        return sample_to_jsonl(sample, paths)

    def _save_image(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()[:32]
        target = self.image_dir / f"{digest}{_image_suffix(data)}"
        if not target.exists():  # content-addressed: an existing file already holds these bytes
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        return Path(os.path.relpath(target, self.path.parent)).as_posix()


def write_samples(path: str | os.PathLike[str], samples: Iterable[Sample], **kwargs: Any) -> int:
    """Write all `samples` with a SampleWriter (same keyword arguments); return rows written."""
    with SampleWriter(path, **kwargs) as writer:
        for sample in samples:
            writer.write(sample)
    return writer.written


def _writer_format(path: Path, fmt: str) -> str:
    if fmt not in WRITE_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(WRITE_FORMATS)}")
    if fmt != "auto":
        return fmt
    if path.suffix in (".parquet", ".jsonl"):
        return path.suffix[1:]
    raise ValueError(f"cannot tell the format of {path}: name it .parquet or .jsonl, or pass fmt=")


_MAGIC = [
    (b"\x89PNG", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"GIF8", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
]


def _image_suffix(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((suffix for magic, suffix in _MAGIC if data.startswith(magic)), ".img")


__all__ = [
    "ReadStats",
    "SampleWriter",
    "check_image",
    "count_rows",
    "detect_format",
    "parquet_files",
    "read_samples",
    "write_samples",
]
