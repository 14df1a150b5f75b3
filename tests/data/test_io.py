"""Streaming reads and writes of Samples: round trips, external formats, bad rows, atomicity."""

from __future__ import annotations

import base64
import io
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmr.data import ReadStats, Sample, SampleWriter, read_samples, write_samples
from mmr.data.io import _json_list_records, count_rows, parquet_files
from mmr.data.schema import MMFINEREASON_COLUMNS


def image_bytes(
    kind: str = "PNG", color: tuple[int, int, int] = (10, 120, 240), size=(24, 16)
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, kind)
    return buf.getvalue()


def truncated_jpeg() -> bytes:
    # A noisy picture so the JPEG has enough entropy-coded data to cut in half.
    noise = Image.effect_noise((64, 64), 80).convert("RGB")
    buf = io.BytesIO()
    noise.save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    return data[: len(data) // 2]


def samples() -> list[Sample]:
    return [
        Sample(
            id="multi",
            source="geo",
            question="Compare <image> and <image>: which is larger?",
            answer="A",
            images=[image_bytes("PNG"), image_bytes("JPEG", (250, 3, 3))],
            response="<think>The first…</think><answer>A</answer>",
            caption="two shapes",
            pass_rate=0.25,
            meta={"original_question": "比较", "tags": ["x", 1], "nested": {"ok": None}},
        ),
        Sample(id="text", source="math", question="1+1=?", answer="2"),
        Sample(
            id="uni",
            source="sci",
            question="Ω≈∑ — what is shown? 🙂",
            answer="√π",
            images=[image_bytes("PNG", (0, 0, 0), (3, 3))],
            response=None,
            caption=None,
            pass_rate=0.0,
        ),
        Sample(id="img_only", source="sci", question="", answer="B", images=[image_bytes("PNG")]),
    ]


@pytest.mark.parametrize("suffix", ["parquet", "jsonl"])
def test_round_trip_keeps_every_field_and_image_bytes(tmp_path, suffix):
    path = tmp_path / f"out.{suffix}"
    assert write_samples(path, samples(), rows_per_group=2) == 4
    stats = ReadStats()
    back = list(read_samples(path, stats=stats))
    assert back == samples()  # dataclass equality: every field, images byte for byte
    assert (stats.read, stats.kept, sum(stats.skipped.values())) == (4, 4, 0)
    if suffix == "parquet":
        assert pq.ParquetFile(path).num_row_groups == 2
    else:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert all(p.startswith("out_images/") for p in rows[0]["images"])
        assert rows[0]["meta"]["original_question"] == "比较"  # readable, not escaped JSON


def test_jsonl_images_are_content_addressed_and_rewrites_are_stable(tmp_path):
    path = tmp_path / "a.jsonl"
    write_samples(path, samples())
    first = path.read_bytes()
    names = sorted(p.name for p in (tmp_path / "a_images").iterdir())
    assert len(names) == 3 and {Path(n).suffix for n in names} == {".png", ".jpg"}
    write_samples(path, samples())
    assert path.read_bytes() == first
    assert sorted(p.name for p in (tmp_path / "a_images").iterdir()) == names
    # The rows read from another folder when told where the images are.
    moved = tmp_path / "elsewhere" / "a.jsonl"
    moved.parent.mkdir()
    moved.write_bytes(first)
    assert list(read_samples(moved, image_root=tmp_path)) == samples()


def test_folder_of_shards(tmp_path):
    data = samples()
    write_samples(tmp_path / "shards" / "part-0.parquet", data[:2])
    write_samples(tmp_path / "shards" / "part-1.parquet", data[2:])
    (tmp_path / "shards" / ".part-2.parquet.tmp-1").write_bytes(b"half")  # a dead writer's
    (tmp_path / "shards" / "dataset_info.json").write_text("{}")
    assert list(read_samples(tmp_path / "shards")) == data


def mfr_table(image_form: str) -> pa.Table:
    image = image_bytes("PNG")
    rows = []
    for i in range(3):
        rows.append(
            {
                "source": "BMMR",
                "id": f"b{i}",
                "original_question": f"原题 {i}",
                "original_answer": "C",
                "image": image if image_form == "binary" else {"bytes": image, "path": f"{i}.png"},
                "question": f"Question {i}?",
                "answer": "C",
                "qwen3vl_235b_instruct_caption": "caption",
                "qwen3vl_235b_thinking_response": "<think>t</think><answer>C</answer>",
                "qwen3vl_4b_pass_rate": i / 4,
                "is_consistent": i != 1,
                "consistency_analysis": "fine",
            }
        )
    return pa.Table.from_pylist(rows)


@pytest.mark.parametrize("image_form", ["binary", "hf_struct"])
def test_mmfinereason_parquet_reads_and_exports(tmp_path, image_form):
    table = mfr_table(image_form)
    pq.write_table(table, tmp_path / "mfr.parquet")
    back = list(read_samples(tmp_path / "mfr.parquet"))  # detected from the columns
    assert [s.id for s in back] == ["b0", "b1", "b2"]
    first = back[1]
    assert (first.source, first.question, first.answer, first.pass_rate) == (
        "BMMR",
        "Question 1?",
        "C",
        0.25,
    )
    assert first.images == [image_bytes("PNG")]
    assert first.caption == "caption" and first.response.endswith("</answer>")
    assert first.meta["is_consistent"] is False and first.meta["original_question"] == "原题 1"

    write_samples(tmp_path / "export.parquet", back, fmt="mmfinereason")
    exported = pq.read_table(tmp_path / "export.parquet")
    assert tuple(exported.column_names) == MMFINEREASON_COLUMNS
    original = table.to_pylist()
    for row, orig in zip(exported.to_pylist(), original):
        image = orig.pop("image")
        assert row.pop("image")["bytes"] == (image if image_form == "binary" else image["bytes"])
        assert row == orig
    assert list(read_samples(tmp_path / "export.parquet")) == back


def omr_records(folder: Path) -> list[dict]:
    (folder / "imgs").mkdir(parents=True)
    (folder / "imgs" / "a.png").write_bytes(image_bytes("PNG"))
    (folder / "imgs" / "b.jpg").write_bytes(image_bytes("JPEG"))
    user = [
        {"type": "image_url", "image_url": {"url": "imgs/a.png"}},
        {"type": "image_url", "image_url": {"url": "imgs/b.jpg"}},
        {"type": "text", "text": "Which picture is brighter?"},
    ]
    reply = [{"type": "text", "text": "<think>look</think><answer>the second</answer>"}]
    return [
        {
            "id": "r0",
            "messages": [
                {"role": "user", "content": user},
                {"role": "assistant", "content": reply},
            ],
        },
        {
            "id": "r1",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "2*3?"}]},
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "<think>6</think>\\boxed{6}"}],
                },
            ],
        },
    ]


@pytest.mark.parametrize("container", ["json", "jsonl", "parquet"])
def test_openmmreasoner_sft_with_image_paths(tmp_path, container):
    data_folder = tmp_path / "data"
    records = omr_records(data_folder)
    path = tmp_path / f"sft.{container}"
    if container == "json":
        path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    elif container == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    back = list(read_samples(path, image_root=data_folder))
    assert [s.id for s in back] == ["r0", "r1"]
    assert back[0].source == "sft"  # the file's stem when the record names no source
    assert back[0].question == "Which picture is brighter?"
    assert back[0].images == [image_bytes("PNG"), image_bytes("JPEG")]
    assert (back[0].answer, back[1].answer) == ("the second", "6")
    assert back[1].images == [] and back[1].meta["answer_from"] == "boxed"


def test_openmmreasoner_export_reads_back(tmp_path):
    data = samples()
    write_samples(tmp_path / "omr.jsonl", data, fmt="omr_sft")
    back = list(read_samples(tmp_path / "omr.jsonl"))
    for got, want in zip(back, data):
        assert (got.id, got.question, got.answer, got.images, got.response) == (
            want.id,
            want.question,
            want.answer,
            want.images,
            want.response,
        )
        assert {k: v for k, v in got.meta.items() if k != "answer_from"} == want.meta


def test_bad_rows_are_skipped_and_counted(tmp_path, caplog):
    (tmp_path / "good.png").write_bytes(image_bytes("PNG"))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    (tmp_path / "cut.jpg").write_bytes(truncated_jpeg())
    lines = [
        {"id": "ok1", "question": "Q1", "answer": "1", "images": ["good.png"]},
        {"id": "bad_bytes", "question": "Q", "answer": "1", "images": ["corrupt.png"]},
        {"id": "cut", "question": "Q", "answer": "1", "images": ["cut.jpg"]},
        {"id": "gone", "question": "Q", "answer": "1", "images": ["nope/missing.png"]},
        '{"id": "broken", "question": ',
        {"id": "no_answer", "question": "Q"},
        {"id": "no_answer2", "question": "Q"},
        {"id": "web", "question": "Q", "answer": "1", "images": ["https://example.com/a.png"]},
        {"id": "ok2", "question": "Q2 <image>", "answer": "2", "images": ["good.png"]},
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    stats = ReadStats()
    with caplog.at_level(logging.WARNING, logger="mmr.data.io"):
        kept = list(read_samples(path, stats=stats))
    assert [s.id for s in kept] == ["ok1", "ok2"]
    assert dict(stats.skipped) == {
        "corrupt_image": 2,
        "missing_image": 1,
        "malformed_json": 1,
        "missing_answer": 2,
        "unsupported_image": 1,
    }
    assert (stats.read, stats.kept) == (9, 2)
    examples = stats.examples["corrupt_image"]
    assert examples[0] == "mixed.jsonl line 2: corrupt image 'corrupt.png': not an image PIL knows"
    assert "truncated" in examples[1]
    assert stats.examples["malformed_json"][0].startswith("mixed.jsonl line 5:")
    assert "missing_answer: 2" in stats.summary()
    assert json.loads(json.dumps(stats.as_dict()))["skipped"]["missing_image"] == 1
    logged = [
        r.getMessage() for r in caplog.records if "skipping row (missing_answer)" in r.getMessage()
    ]
    assert len(logged) == 1  # once per reason, the rest counted


def test_corrupt_inline_bytes_in_parquet(tmp_path):
    bad = [Sample("good", "s", "Q", "a", images=[image_bytes("JPEG")])]
    bad.append(Sample("garbage", "s", "Q", "a", images=[b"definitely not an image"]))
    bad.append(Sample("cut", "s", "Q", "a", images=[truncated_jpeg()]))
    write_samples(tmp_path / "x.parquet", bad)
    stats = ReadStats()
    assert [s.id for s in read_samples(tmp_path / "x.parquet", stats=stats)] == ["good"]
    assert stats.skipped == {"corrupt_image": 2}
    # Data checked before may skip the decode; then the bytes pass through untouched.
    assert len(list(read_samples(tmp_path / "x.parquet", validate_images=False))) == 3


def test_image_references_data_url_and_absolute_path(tmp_path):
    png = image_bytes("PNG")
    (tmp_path / "abs.png").write_bytes(png)
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    row = {"question": "Q", "answer": "a", "images": [data_url, str(tmp_path / "abs.png")]}
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "r.jsonl").write_text(json.dumps(row) + "\n")
    (sample,) = read_samples(tmp_path / "sub" / "r.jsonl")
    assert sample.images == [png, png]


def test_parquet_is_read_lazily_by_row_group(tmp_path, monkeypatch):
    many = [Sample(f"s{i}", "src", f"question {i}", str(i)) for i in range(400)]
    write_samples(tmp_path / "big.parquet", many, rows_per_group=20)
    assert pq.ParquetFile(tmp_path / "big.parquet").num_row_groups == 20
    batches = []
    original = pq.ParquetFile.iter_batches

    def counting(self, *args, **kwargs):
        for batch in original(self, *args, **kwargs):
            batches.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counting)
    stats = ReadStats()
    reader = read_samples(tmp_path / "big.parquet", batch_size=10, stats=stats)
    assert next(reader).id == "s0"
    assert batches == [10] and stats.read == 1  # nothing past the first batch was touched
    assert [s.id for s in reader] == [f"s{i}" for i in range(1, 400)]
    assert len(batches) == 40


def test_unreadable_row_group_costs_only_its_rows(tmp_path):
    path = tmp_path / "c.parquet"
    write_samples(
        path, [Sample(f"s{i}", "src", "q" * 60 + str(i), "a") for i in range(30)], rows_per_group=10
    )
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(2)  # `question` of group 1
    data = bytearray(path.read_bytes())
    start = chunk.data_page_offset
    data[start : start + chunk.total_compressed_size] = b"Z" * chunk.total_compressed_size
    path.write_bytes(bytes(data))
    stats = ReadStats()
    ids = [s.id for s in read_samples(path, stats=stats)]
    assert ids == [f"s{i}" for i in list(range(10)) + list(range(20, 30))]
    assert stats.skipped == {"corrupt_parquet": 10} and stats.read == 30


def test_json_list_is_decoded_element_by_element():
    records = [{"i": i, "text": "x" * (i * 7) + "]},{"} for i in range(20)]
    raw = io.BytesIO(json.dumps(records).encode())
    got = [record for _, record in _json_list_records(raw, "f.json", chunk=16)]
    assert got == records
    broken = io.BytesIO(b'[{"a": 1}, {"a": 2,, {"a": 3}]')
    got = [record for _, record in _json_list_records(broken, "f.json", chunk=8)]
    assert got[0] == {"a": 1} and got[1].reason == "malformed_json" and len(got) == 2


def test_aborted_writer_leaves_no_file(tmp_path):
    path = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError), SampleWriter(path, rows_per_group=1) as writer:
        writer.write(samples()[0])
        writer.write(samples()[1])
        assert not path.exists()  # only a hidden temporary name while writing
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), SampleWriter(tmp_path / "out.jsonl") as writer:
        writer.write(samples()[1])
        raise RuntimeError("killed")
    assert not (tmp_path / "out.jsonl").exists()
    # A row that pyarrow rejects when the last row group is flushed at close().
    with pytest.raises((TypeError, pa.ArrowException)), SampleWriter(path) as writer:
        writer.write(Sample("bad", "s", "Q", "a", images=[12345]))  # type: ignore[list-item]
    assert list(tmp_path.iterdir()) == []


def test_writer_counts_what_a_format_cannot_hold(tmp_path):
    with SampleWriter(tmp_path / "m.parquet", fmt="mmfinereason") as writer:
        for sample in samples():
            writer.write(sample)
    assert writer.written == 3 and writer.skipped == {"multi_image": 1}
    with pytest.raises(ValueError, match="cannot tell the format"):
        SampleWriter(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="unknown format"):
        read_samples(tmp_path / "m.parquet", fmt="csv")
    with pytest.raises(FileNotFoundError):
        read_samples(tmp_path / "absent.parquet")


def test_count_rows_reads_no_rows(tmp_path) -> None:
    samples = [Sample(id=str(i), source="s", question=f"q{i}", answer="1") for i in range(7)]
    write_samples(tmp_path / "shards" / "a.parquet", samples[:4])
    write_samples(tmp_path / "shards" / "b.parquet", samples[4:])
    assert count_rows(tmp_path / "shards") == 7
    assert count_rows(tmp_path / "shards" / "a.parquet") == 4
    lines = tmp_path / "rows.jsonl"
    lines.write_text('{"id": "1"}\n\n{"id": "2"}\nnot json\n')
    assert count_rows(lines) == 3  # a malformed line is a row; reading it skips and counts it
    listed = tmp_path / "rows.json"
    listed.write_text(json.dumps([{"id": "1"}]))
    assert count_rows(listed) is None  # a JSON list would have to be parsed


def _rows(prefix: str, n: int) -> list[Sample]:
    return [
        Sample(id=f"{prefix}{i}", source="s", question=f"q{i}?", answer=str(i)) for i in range(n)
    ]


def test_mixed_folder_reads_every_parquet_and_jsonl_file(tmp_path, caplog) -> None:
    folder = tmp_path / "mixed"
    write_samples(folder / "a.parquet", _rows("a", 3))
    write_samples(folder / "b.jsonl", _rows("b", 2))
    write_samples(folder / "sub" / "c.jsonl", _rows("c", 2))
    (folder / "dataset_info.json").write_text('{"features": {}}')  # metadata beside shards
    stats = ReadStats()
    with caplog.at_level(logging.WARNING, logger="mmr.data.io"):
        ids = [s.id for s in read_samples(folder, stats=stats)]
    assert ids == ["a0", "a1", "a2", "b0", "b1", "c0", "c1"]  # no row of either kind is lost
    assert (stats.files, stats.skipped_files) == (3, {})
    assert "dataset_info.json" in caplog.text and "metadata" in caplog.text
    assert count_rows(folder) == 7
    assert parquet_files(folder) is None  # not all parquet: no footer-only row count


def _truncated_parquet(path: Path) -> None:
    write_samples(path, _rows("t", 5))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # footer gone


BAD_FILES = {
    "empty.parquet": lambda p: p.write_bytes(b""),
    "truncated.parquet": _truncated_parquet,
    "magic.parquet": lambda p: p.write_text('{"id": "not parquet"}\n'),
    "empty.jsonl": lambda p: p.write_bytes(b""),
    "gzip.jsonl": lambda p: p.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03abc"),
    "parquet.jsonl": lambda p: write_samples(p, _rows("p", 2), fmt="parquet"),
}
REASONS = {
    "empty.parquet": "empty file (0 bytes)",
    "truncated.parquet": "not a readable parquet file",
    "magic.parquet": "not a readable parquet file",
    "empty.jsonl": "empty file (0 bytes)",
    "gzip.jsonl": "binary data (gzip), not JSON text",
    "parquet.jsonl": "binary data (parquet), not JSON text",
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_data_file_is_a_counted_skip_naming_the_file(tmp_path, caplog, name) -> None:
    folder = tmp_path / "data"
    write_samples(folder / "good-0.parquet", _rows("p", 4))
    write_samples(folder / "good-1.jsonl", _rows("j", 3))
    bad = folder / name
    BAD_FILES[name](bad)
    stats = ReadStats()
    with caplog.at_level(logging.WARNING, logger="mmr.data.io"):
        ids = [s.id for s in read_samples(folder, stats=stats)]
    assert sorted(ids) == sorted([f"p{i}" for i in range(4)] + [f"j{i}" for i in range(3)])
    assert stats.files == 2 and list(stats.skipped_files) == [str(bad)]
    assert REASONS[name] in stats.skipped_files[str(bad)]
    assert (stats.read, stats.kept) == (7, 7)  # a skipped file is no row
    assert str(bad) in caplog.text and REASONS[name] in caplog.text
    assert str(bad) in stats.summary() and stats.as_dict()["skipped_files"] == stats.skipped_files
    assert count_rows(folder) == 7  # what the reader reads, not what the bad file claims


def test_parquet_files_leaves_out_unreadable_shards(tmp_path) -> None:
    write_samples(tmp_path / "a.parquet", _rows("a", 2))
    (tmp_path / "b.parquet").write_bytes(b"")
    _truncated_parquet(tmp_path / "c.parquet")
    assert parquet_files(tmp_path) == [tmp_path / "a.parquet"]
    assert [s.id for s in read_samples(tmp_path)] == ["a0", "a1"]


def test_no_readable_file_fails_at_the_call_naming_it(tmp_path) -> None:
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"no readable data file at .*empty\.parquet.*0 bytes"):
        read_samples(empty)  # at the call, not on the first next()
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "x.parquet").write_bytes(b"")
    _truncated_parquet(folder / "y.parquet")
    with pytest.raises(ValueError, match="no readable data file") as err:
        read_samples(folder)
    assert "x.parquet: empty file (0 bytes)" in str(err.value)
    assert "y.parquet: not a readable parquet file" in str(err.value)
    with pytest.raises(ValueError, match="no readable data file"):
        count_rows(folder)
