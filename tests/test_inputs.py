"""Reading input files: file-level errors, row-level invalid rows, formats, streaming."""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc
from pathlib import Path

import pytest

from runner import input_source
from runner.errors import InputFileError
from runner.input_formats import detect_format
from runner.input_source import InputSource
from runner.inputs import InputReader, SeenIds
from runner.models import InputRow, InvalidRow

DATA = Path(__file__).parent / "data" / "inputs"


def read(name: str, **kwargs: object) -> list[InputRow | InvalidRow]:
    reader = InputReader(DATA / name, **kwargs)  # type: ignore[arg-type]
    reader.check()
    return list(reader)


def check_error(path: Path, **kwargs: object) -> str:
    with pytest.raises(InputFileError) as info:
        InputReader(path, **kwargs).check()  # type: ignore[arg-type]
    return str(info.value)


# --- formats ---


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.csv", "csv"),
        ("A.CSV", "csv"),
        ("a.jsonl", "jsonl"),
        ("a.JSONL", "jsonl"),
        ("a.ndjson", "jsonl"),
        ("a.jsonl.gz", "jsonl"),
        ("a.csv.zst", "csv"),
        ("a.parquet", "parquet"),
    ],
)
def test_detect_format_from_extension(name: str, fmt: str) -> None:
    assert detect_format(InputSource(Path(name))).name == fmt


def test_detect_format_explicit_wins() -> None:
    assert detect_format(InputSource(Path("unknown.txt")), "jsonl").name == "jsonl"


def test_stdin_needs_a_format() -> None:
    with pytest.raises(InputFileError, match="stdin: say its format with --input-format"):
        detect_format(InputSource(Path("-")))


def test_unknown_extension() -> None:
    message = check_error(DATA / "unknown.txt")
    assert (
        message
        == f"{DATA / 'unknown.txt'}: unknown input format; use .csv, .jsonl, .ndjson, .parquet, "
        ".pq (optionally .gz or .zst), or --input-format"
    )


def test_unknown_extension_read_with_explicit_format() -> None:
    rows = read("unknown.txt", fmt="csv")
    assert rows == [InputRow("1", 2, {"id": "1", "text": "a"})]


def test_upper_case_csv_extension_reads() -> None:
    assert read("UPPER.CSV", id_column="id") == [InputRow("U1", 2, {"id": "U1", "text": "upper"})]


def test_ndjson_reads_as_jsonl() -> None:
    assert read("sample.ndjson") == [InputRow("1", 1, {"text": "nd"})]


# --- file-level errors ---


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    assert check_error(path) == f"{path}: no such file"


def test_directory(tmp_path: Path) -> None:
    path = tmp_path / "dir.jsonl"
    path.mkdir()
    assert check_error(path) == f"{path}: is a directory, not an input file"


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.csv"
    path.write_text("id,text\n1,a\n")
    path.chmod(0)
    if os.access(path, os.R_OK):
        # root reads through file modes: make open() refuse the way the OS would.
        def refuse(*args: object, **kwargs: object) -> None:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(input_source, "open", refuse, raising=False)
    assert check_error(path) == f"{path}: cannot read: permission denied"


def test_empty_csv_has_no_header() -> None:
    assert check_error(DATA / "empty.csv") == f"{DATA / 'empty.csv'}: empty: no header line"


def test_blank_first_line_csv() -> None:
    path = DATA / "blank_first_line.csv"
    assert check_error(path) == f"{path}: blank first line: no header line"


def test_header_not_utf8() -> None:
    path = DATA / "bad_header.csv"
    assert check_error(path) == f"{path}: header line is not valid UTF-8"


def test_duplicate_header_column() -> None:
    path = DATA / "dup_header.csv"
    assert check_error(path) == f"{path}: column 'text' appears twice in the header"


def test_needed_column_absent_from_header() -> None:
    path = DATA / "basic.csv"
    message = check_error(path, columns_needed=["text", "body"])
    assert message == f"no column 'body' in {path} (columns: id, text, lang)"


def test_id_column_absent_from_header() -> None:
    path = DATA / "basic.csv"
    assert check_error(path, id_column="key") == (
        f"no column 'key' in {path} (columns: id, text, lang)"
    )


def test_jsonl_needed_field_in_none_of_the_first_objects() -> None:
    path = DATA / "missing_field_everywhere.jsonl"
    assert check_error(path, columns_needed=["text"]) == (
        f"no field 'text' in the first 2 objects of {path} (keys found: id, body, extra)"
    )


def test_jsonl_id_field_in_none_of_the_first_objects() -> None:
    path = DATA / "missing_field_everywhere.jsonl"
    assert check_error(path, id_column="key") == (
        f"no field 'key' in the first 2 objects of {path} (keys found: id, body, extra)"
    )


def test_jsonl_peek_stops_at_100_objects(tmp_path: Path) -> None:
    path = tmp_path / "late.jsonl"
    lines = [json.dumps({"id": str(i)}) for i in range(100)] + ['{"id": "x", "text": "late"}']
    path.write_text("\n".join(lines) + "\n")
    assert "no field 'text' in the first 100 objects" in check_error(path, columns_needed=["text"])


def test_jsonl_field_in_some_early_object_makes_the_rest_per_row(tmp_path: Path) -> None:
    path = tmp_path / "some.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", "text": "t"}\n')
    reader = InputReader(path, id_column="id", columns_needed=["text"])
    reader.check()
    assert reader.columns == ["id", "text"]
    assert list(reader) == [
        InvalidRow("a", 1, "missing field 'text'"),
        InputRow("b", 2, {"id": "b", "text": "t"}),
    ]


def test_iterating_without_check_still_checks() -> None:
    with pytest.raises(InputFileError, match="no column 'body'"):
        list(InputReader(DATA / "basic.csv", columns_needed=["body"]))


# --- CSV ---


def test_csv_basic_ids_verbatim_and_values_as_str() -> None:
    reader = InputReader(DATA / "basic.csv", id_column="id", columns_needed=["text"])
    reader.check()
    assert reader.columns == ["id", "text", "lang"]
    assert list(reader) == [
        InputRow("000123", 2, {"id": "000123", "text": "hello", "lang": "en"}),
        InputRow("abc", 3, {"id": "abc", "text": "bonjour, monde", "lang": "fr"}),
        # an empty needed value is the renderer's concern, not the reader's
        InputRow("7", 4, {"id": "7", "text": "", "lang": "de"}),
    ]


def test_csv_row_number_ids_without_id_column() -> None:
    assert [(row.id, row.line) for row in read("basic.csv")] == [("1", 2), ("2", 3), ("3", 4)]


def test_csv_bom_is_stripped() -> None:
    reader = InputReader(DATA / "bom.csv", id_column="id")
    reader.check()
    assert reader.columns == ["id", "text"]
    assert list(reader) == [InputRow("A1", 2, {"id": "A1", "text": "first"})]


def test_csv_crlf_leaves_no_carriage_return() -> None:
    assert read("crlf.csv", id_column="id") == [
        InputRow("r1", 2, {"id": "r1", "text": "one"}),
        # inside quotes the record's own line break is data, kept exactly
        InputRow("r2", 3, {"id": "r2", "text": "two\r\nlines"}),
    ]


def test_csv_quoting_kept_exactly_and_multiline_cited_by_first_line() -> None:
    assert read("quoting.csv", id_column="id") == [
        InputRow("q1", 2, {"id": "q1", "text": "line one\nline two\n\nline four"}),
        InputRow("q2", 6, {"id": "q2", "text": "a, b, and c"}),
        InputRow("q3", 7, {"id": "q3", "text": 'she said "hi"'}),
        InputRow("q4", 8, {"id": "q4", "text": ""}),
    ]


def test_csv_wrong_field_count() -> None:
    assert read("field_count.csv", id_column="id") == [
        InputRow("ok1", 2, {"id": "ok1", "text": "fine", "lang": "en"}),
        InvalidRow("long", 3, "expected 3 fields, found 4"),
        InvalidRow("short", 4, "expected 3 fields, found 2"),
        InputRow("ok2", 5, {"id": "ok2", "text": "fine", "lang": "en"}),
    ]


def test_csv_short_record_missing_the_id_column() -> None:
    assert read("short_id.csv", id_column="id", columns_needed=["text"]) == [
        InvalidRow("line:2", 2, "expected 2 fields, found 1"),
        InputRow("x1", 3, {"text": "hello", "id": "x1"}),
    ]


def test_csv_invalid_utf8_rejected_with_its_column() -> None:
    assert read("bad_utf8.csv", id_column="id") == [
        InputRow("u1", 2, {"id": "u1", "text": "café", "lang": "fr"}),
        InvalidRow("u2", 3, "column 'text' is not valid UTF-8 (byte 0xff)"),
        InvalidRow("line:4", 4, "column 'id' is not valid UTF-8 (byte 0xfe)"),
        InvalidRow("u4", 5, "column 'text' is not valid UTF-8 (byte 0xc3)"),
        InputRow("u5", 7, {"id": "u5", "text": "after", "lang": "en"}),
    ]


def test_csv_never_yields_replacement_or_surrogate_characters() -> None:
    for row in read("bad_utf8.csv"):
        if isinstance(row, InputRow):
            for value in row.columns.values():
                assert "\ufffd" not in value
                value.encode("utf-8")  # no lone surrogates


def test_csv_duplicate_ids() -> None:
    assert read("duplicates.csv", id_column="id") == [
        InputRow("d1", 2, {"id": "d1", "text": "first"}),
        InputRow("d2", 3, {"id": "d2", "text": "second"}),
        InvalidRow("d1", 4, "duplicate id d1 (first on line 2)"),
        InvalidRow("d1", 5, "duplicate id d1 (first on line 2)"),
    ]


def test_csv_empty_id() -> None:
    assert read("empty_id.csv", id_column="id") == [
        InvalidRow("line:2", 2, "empty id in column 'id'"),
        InputRow("e2", 3, {"id": "e2", "text": "ok"}),
    ]


def test_csv_malformed_quotes_are_invalid_rows_and_reading_goes_on() -> None:
    assert read("malformed_quotes.csv", id_column="id") == [
        InvalidRow("line:2", 2, "malformed CSV: ',' expected after '\"'"),
        InvalidRow("line:3", 3, "malformed CSV: ',' expected after '\"'"),
        InputRow("m3", 5, {"id": "m3", "text": "fine"}),
        InvalidRow("line:6", 6, "malformed CSV: unexpected end of data"),
    ]


def test_csv_header_only_yields_nothing() -> None:
    reader = InputReader(DATA / "header_only.csv", id_column="id", columns_needed=["text"])
    reader.check()
    assert reader.columns == ["id", "text"]
    assert list(reader) == []


def test_csv_last_line_without_newline() -> None:
    assert read("no_final_newline.csv", id_column="id") == [
        InputRow("n1", 2, {"id": "n1", "text": "first"}),
        InputRow("n2", 3, {"id": "n2", "text": "last line"}),
    ]


def test_csv_blank_lines_are_not_records() -> None:
    assert read("blank_lines.csv") == [
        InputRow("1", 2, {"text": "alpha"}),
        InputRow("2", 4, {"text": "beta"}),
    ]


def test_csv_field_larger_than_default_limit(tmp_path: Path) -> None:
    big = "x" * 200_000  # csv's default limit is 131072 characters
    path = tmp_path / "big.csv"
    path.write_text(f'id,text\n1,"{big}"\n')
    assert list(InputReader(path)) == [InputRow("1", 2, {"id": "1", "text": big})]


# --- JSONL ---


def test_jsonl_basic_values_as_parsed_and_int_id_as_str() -> None:
    reader = InputReader(DATA / "basic.jsonl", id_column="id", columns_needed=["text"])
    reader.check()
    assert reader.columns == ["id", "text", "n", "tags", "meta"]
    assert list(reader) == [
        InputRow("000123", 1, {"id": "000123", "text": "hello", "n": 1.5, "tags": ["a"]}),
        InputRow("7", 2, {"id": 7, "text": "seven", "meta": {"k": None}}),
        InputRow("x y", 3, {"id": "x y", "text": ""}),
    ]


def test_jsonl_invalid_rows() -> None:
    rows = read("invalid.jsonl", id_column="id", columns_needed=["text"])
    assert rows == [
        InputRow("ok1", 1, {"id": "ok1", "text": "fine"}),
        InvalidRow("line:2", 2, "invalid JSON: Expecting value (column 23)"),
        InvalidRow("line:3", 3, "expected a JSON object, found array"),
        InvalidRow("line:4", 4, "expected a JSON object, found string"),
        InvalidRow("line:5", 5, "expected a JSON object, found number"),
        InvalidRow("line:6", 6, "expected a JSON object, found null"),
        InvalidRow("line:7", 7, "expected a JSON object, found boolean"),
        InvalidRow("nofield", 8, "missing field 'text'"),
        InvalidRow("line:9", 9, "missing id field 'id'"),
        InvalidRow("line:10", 10, "id field 'id' must be a string or integer, found number"),
        InvalidRow("line:11", 11, "id field 'id' must be a string or integer, found boolean"),
        InvalidRow("line:12", 12, "id field 'id' must be a string or integer, found array"),
        InvalidRow("line:13", 13, "id field 'id' must be a string or integer, found object"),
        InvalidRow("line:14", 14, "id field 'id' must be a string or integer, found null"),
        InvalidRow("line:15", 15, "empty id in field 'id'"),
        InvalidRow("line:16", 16, "not valid UTF-8 (byte 0xe9 at column 25)"),
        InvalidRow("ok1", 17, "duplicate id ok1 (first on line 1)"),
        InputRow("99", 18, {"id": 99, "text": "last"}),
        InvalidRow("99", 19, "duplicate id 99 (first on line 18)"),
        InvalidRow("line:20", 20, "id field 'id' is not valid Unicode"),
    ]


def test_jsonl_values_json_refuses_to_build_are_invalid_rows() -> None:
    rows = read("json_limits.jsonl")
    assert [(row.id, row.line) for row in rows] == [("1", 1), ("2", 2), ("3", 3)]
    assert isinstance(rows[0], InvalidRow)
    assert rows[0].reason.startswith("invalid JSON: Exceeds the limit (4300 digits)")
    assert rows[1] == InvalidRow("2", 2, "invalid JSON: nested too deeply")
    assert rows[2] == InputRow("3", 3, {"n": 1})


def test_jsonl_invalid_rows_keep_row_numbers_without_id_column() -> None:
    rows = read("invalid.jsonl")
    assert [row.id for row in rows] == [str(n) for n in range(1, 21)]
    assert rows[1] == InvalidRow("2", 2, "invalid JSON: Expecting value (column 23)")


def test_jsonl_several_missing_fields() -> None:
    rows = read("basic.jsonl", columns_needed=["text", "n", "tags"])
    assert rows[1] == InvalidRow("2", 2, "missing fields 'n', 'tags'")


def test_jsonl_bom_is_stripped() -> None:
    assert read("bom.jsonl", id_column="id") == [
        InputRow("b1", 1, {"id": "b1", "text": "bom"}),
        InputRow("b2", 2, {"id": "b2", "text": "two"}),
    ]


def test_jsonl_crlf() -> None:
    assert read("crlf.jsonl", id_column="id") == [
        InputRow("c1", 1, {"id": "c1", "text": "one"}),
        InputRow("c2", 2, {"id": "c2", "text": "two"}),
    ]


def test_jsonl_blank_lines_skipped_lines_physical_last_line_read() -> None:
    assert read("blank_lines.jsonl") == [
        InputRow("1", 2, {"text": "a"}),
        InputRow("2", 5, {"text": "b"}),
        InputRow("3", 7, {"text": "c"}),
    ]


def test_jsonl_empty_file_yields_nothing() -> None:
    reader = InputReader(DATA / "empty.jsonl", id_column="id", columns_needed=["text"])
    reader.check()
    assert reader.columns == []
    assert list(reader) == []


# --- fingerprint ---


def test_fingerprint_of_what_was_read() -> None:
    path = DATA / "basic.jsonl"
    data = path.read_bytes()
    reader = InputReader(path)
    list(reader)
    assert reader.fingerprint() == {
        "path": str(path.resolve()),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


# --- seen ids and streaming ---


def test_seen_ids_grows_and_remembers_first_lines() -> None:
    seen = SeenIds()
    for line in range(1, 5001):
        assert seen.first_line(f"id-{line}", line) == line
    assert len(seen) == 5000
    assert seen.first_line("id-1", 9999) == 1
    assert seen.first_line("id-4321", 9999) == 4321
    assert len(seen) == 5000


def peak_while_reading(reader: InputReader) -> tuple[int, int]:
    """Rows read and the peak traced memory while reading them."""
    reader.check()
    tracemalloc.start()
    try:
        count = sum(isinstance(row, InputRow) for row in reader)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return count, peak


@pytest.fixture(scope="module")
def big_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    text = "x" * 50
    with path.open("w") as f:
        for i in range(200_000):
            f.write(f'{{"id": "row-{i}", "text": "{text}"}}\n')
    return path


def test_jsonl_streams_without_loading_the_file(big_jsonl: Path) -> None:
    count, peak = peak_while_reading(InputReader(big_jsonl, columns_needed=["text"]))
    assert count == 200_000
    # row-number ids need no seen-ids table: nothing grows with the rows read
    assert peak < 1_000_000 < big_jsonl.stat().st_size / 10, peak


def test_jsonl_seen_ids_is_the_only_growth(big_jsonl: Path) -> None:
    reader = InputReader(big_jsonl, id_column="id", columns_needed=["text"])
    count, peak = peak_while_reading(reader)
    assert count == 200_000
    # 16 bytes a slot, at most half full, and the old table while growing
    assert peak < 70 * count + 1_000_000, peak
