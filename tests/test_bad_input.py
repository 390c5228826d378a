"""Bad input never kills a job (issue 8): `runner run` as a real process against the mock API.

Bad rows are reported as `invalid` and named on stderr as FILE:LINE: reason while the rest
of the file runs (exit 1); unusable files and job files stop the run before any request
(exit 2, one line). Never a traceback, never the API key.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from helpers import attempts_of, log_lines, results_of

from runner.mock import MockConfig, MockServer, serve_in_thread

FAKE_KEY = "sk-ant-fake-BADINPUT-0123456789abcdef"
DATA = Path(__file__).parent / "data" / "bad"
# Small enough that the big prompt below is refused, large enough for every other prompt.
CONTEXT_WINDOW = 1_000
BIG_PROMPT = "word " * 3_000
ROOT = os.geteuid() == 0


@pytest.fixture
def mock() -> Iterator[MockServer]:
    """A healthy mock API whose context window a test can overflow cheaply."""
    with serve_in_thread(MockConfig(context_window=CONTEXT_WINDOW)) as server:
        yield server


def runner(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `runner ARGS` in `cwd` with a fake key; check no traceback and the key nowhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC")}
    env["ANTHROPIC_API_KEY"] = FAKE_KEY
    done = subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    assert FAKE_KEY not in output
    for path in cwd.rglob("*"):
        if path.is_file() and not path.is_symlink() and os.access(path, os.R_OK):
            assert FAKE_KEY.encode() not in path.read_bytes(), path
    return done


def run_args(mock: MockServer, *args: str, command: str = "run") -> list[str]:
    """`run` (or `estimate`) with the mock's URL, a model and a fixed output place."""
    return [
        command,
        "--base-url",
        mock.base_url,
        "--model",
        "claude-sonnet-5-5",
        "--output-dir",
        "out",
        "--max-tokens",
        "16",
        *args,
    ]


def row_lines(stderr: str, name: str) -> list[str]:
    """The `FILE:LINE: reason` messages about input file `name`, in order."""
    pattern = re.compile(re.escape(name) + r":\d+: .*")
    return [m.group(0) for line in stderr.splitlines() if (m := pattern.search(line))]


def error_lines(stderr: str) -> list[str]:
    """The `runner: error: ...` lines, without their prefix."""
    prefix = "runner: error: "
    return [line[len(prefix) :] for line in log_lines(stderr) if line.startswith(prefix)]


def sent_prompts(mock: MockServer) -> list[str]:
    """Every prompt the mock was sent, in arrival order."""
    return [attempt.prompt for attempt in mock.record.attempts()]


def messages_by_id(results: pl.DataFrame, status: str) -> dict[str, str]:
    """id -> error message of the rows with `status`."""
    rows = results.filter(pl.col("status") == status)
    return dict(zip(rows["id"], rows["error_message"], strict=True))


# --- rows: reported invalid, never sent, the rest runs ---

JSONL_LINES: list[tuple[bytes, str | None]] = [
    (b'{"id": "a", "prompt": "hello a"}', None),
    # Any JSON value fills a template; null fills it with nothing.
    (b'{"id": "b", "prompt": 5.50}', None),
    (b'{"id": "c", "prompt": null}', "empty prompt"),
    (b'{"id": "d", "prompt": ["x"]}', None),
    (b'{"id": "e", "prompt": {"t": 1}}', None),
    (b'{"id": "t", "prompt": true}', None),
    (b'{"id": "f"}', "missing field 'prompt'"),
    (b"[1, 2]", "expected a JSON object, found array"),
    (
        b'{"id": "g", broken',
        "invalid JSON: Expecting property name enclosed in double quotes (column 13)",
    ),
    (b'{"id": "u", "prompt": "caf\xff"}', "not valid UTF-8 (byte 0xff at column 27)"),
    (b"", None),  # blank lines are skipped
    (b"  \t ", None),
    (b'{"id": "h", "prompt": "  \\t\\n "}', "empty prompt"),
    (b'{"id": "a", "prompt": "hello again"}', "duplicate id a (first on line 1)"),
    (b'{"id": "big", "prompt": "' + BIG_PROMPT.encode() + b'"}', None),
    (b'{"id": "z", "prompt": "last z"}', None),  # no newline after the last line
]


# What `runner run` names on stderr and `runner estimate` lists, for each file.
EXPECTED = {
    "rows.jsonl": [
        f"rows.jsonl:{n}: {reason}" for n, (_, reason) in enumerate(JSONL_LINES, 1) if reason
    ],
    # tests/data/bad/rows.csv; a multi-line record is cited by its first line (10, not 11).
    "rows.csv": [
        "rows.csv:5: expected 3 fields, found 4",
        "rows.csv:6: expected 3 fields, found 2",
        "rows.csv:7: column 'prompt' is not valid UTF-8 (byte 0xff)",
        "rows.csv:8: empty prompt",
        "rows.csv:9: duplicate id ok1 (first on line 2)",
        "rows.csv:10: expected 3 fields, found 4",
        "rows.csv:12: empty prompt",
    ],
}


def test_bad_jsonl_rows_are_invalid_and_the_rest_runs(tmp_path: Path, mock: MockServer) -> None:
    (tmp_path / "rows.jsonl").write_bytes(b"\n".join(raw for raw, _ in JSONL_LINES))
    done = runner(
        tmp_path, *run_args(mock, "--input", "rows.jsonl", "--id-column", "id", "--run-id", "r1")
    )

    assert done.returncode == 1, done.stderr
    assert row_lines(done.stderr, "rows.jsonl") == EXPECTED["rows.jsonl"]
    results = results_of(tmp_path / "out" / "rows" / "r1")
    # An id that cannot be read is reported by its line.
    assert messages_by_id(results, "invalid") == {
        "c": JSONL_LINES[2][1],
        "f": JSONL_LINES[6][1],
        "line:8": JSONL_LINES[7][1],
        "line:9": JSONL_LINES[8][1],
        "line:10": JSONL_LINES[9][1],
        "h": JSONL_LINES[12][1],
        "a": JSONL_LINES[13][1],
    }
    assert set(results.filter(pl.col("status") == "invalid")["attempts"]) == {0}
    ok = results.filter(pl.col("status") == "ok")
    assert sorted(ok["id"]) == ["a", "b", "d", "e", "t", "z"]
    # The duplicate never overwrote the first occurrence's result.
    first = ok.filter(pl.col("id") == "a").row(0, named=True)
    assert first["output_text"] == mock.record.final_for_prompt("hello a").text
    # Nothing invalid reached the API; only the good rows did.
    assert sorted(sent_prompts(mock)) == sorted(
        ['["x"]', "5.50", "hello a", "last z", "true", '{"t":1}']
    )

    # Too large for the API: sent once and recorded as the API's 400, never retried.
    # (The mock refuses it before its record, so our attempts table is the witness.)
    big = results.filter(pl.col("id") == "big").row(0, named=True)
    assert big["status"] == "error" and big["attempts"] == 1
    assert big["error_type"] == "invalid_request_error"
    assert "prompt is too long" in big["error_message"]
    big_attempts = attempts_of(tmp_path / "out" / "rows" / "r1").filter(pl.col("id") == "big")
    assert big_attempts["http_status"].to_list() == [400]


def test_resume_keeps_the_first_of_a_duplicate_id(tmp_path: Path, mock: MockServer) -> None:
    (tmp_path / "dup.jsonl").write_text(
        '{"id": "x", "prompt": "first x"}\n{"id": "y", "prompt": "only y"}\n'
        '{"id": "x", "prompt": "second x"}\n'
    )
    args = run_args(mock, "--input", "dup.jsonl", "--id-column", "id", "--run-id", "r1")
    first = runner(tmp_path, *args)
    assert first.returncode == 1
    before = results_of(tmp_path / "out" / "dup" / "r1")
    again = runner(tmp_path, *args)

    assert again.returncode == 1
    assert row_lines(again.stderr, "dup.jsonl") == ["dup.jsonl:3: duplicate id x (first on line 1)"]
    after = results_of(tmp_path / "out" / "dup" / "r1")
    columns = ["id", "status", "output_text", "request_id", "error_message"]
    assert after.select(columns).sort("status").equals(before.select(columns).sort("status"))
    assert sorted(sent_prompts(mock)) == ["first x", "only y"]  # nothing sent again


def test_bad_csv_rows_are_invalid_and_the_rest_runs(tmp_path: Path, mock: MockServer) -> None:
    (tmp_path / "rows.csv").write_bytes((DATA / "rows.csv").read_bytes())
    done = runner(
        tmp_path, *run_args(mock, "--input", "rows.csv", "--id-column", "id", "--run-id", "r1")
    )

    assert done.returncode == 1, done.stderr
    assert row_lines(done.stderr, "rows.csv") == EXPECTED["rows.csv"]
    results = results_of(tmp_path / "out" / "rows" / "r1")
    assert sorted(results.filter(pl.col("status") == "invalid")["id"]) == sorted(
        ["long", "short", "utf", "blank", "ok1", "bad2", "none"]
    )
    assert sorted(results.filter(pl.col("status") == "ok")["id"]) == ["last", "ml", "ok1"]
    # RFC 4180: the embedded newline, comma and doubled quotes arrive exactly; no U+FFFD.
    assert sorted(sent_prompts(mock)) == sorted(["hello", 'two\nlines, "quoted"', "the end"])


def test_estimate_counts_and_lists_the_same_invalid_rows(tmp_path: Path, mock: MockServer) -> None:
    (tmp_path / "rows.jsonl").write_bytes(b"\n".join(raw for raw, _ in JSONL_LINES))
    (tmp_path / "rows.csv").write_bytes((DATA / "rows.csv").read_bytes())
    for name in EXPECTED:
        args = ["--input", name, "--id-column", "id", "--json"]
        done = runner(tmp_path, *run_args(mock, *args, command="estimate"))
        assert done.returncode == 0, done.stderr
        figures = json.loads(done.stdout)
        # The same FILE:LINE: reason lines as `runner run` prints, here as data.
        assert figures["invalid"] == EXPECTED[name]
        to_send = 7 if name == "rows.jsonl" else 3
        assert figures["rows"] == {"to_send": to_send, "invalid": len(EXPECTED[name])}
    assert sent_prompts(mock) == []  # count_tokens only: no message was sent


# --- formats: read exactly, nothing lost ---


def test_bom_and_crlf_leave_no_trace(tmp_path: Path, mock: MockServer) -> None:
    (tmp_path / "win.csv").write_bytes(b"\xef\xbb\xbfid,prompt\r\nc1,first\r\nc2,second\r\n")
    (tmp_path / "win.jsonl").write_bytes(
        b'\xef\xbb\xbf{"id": "j1", "prompt": "third"}\r\n\r\n   \r\n'
        b'{"id": "j2", "prompt": "fourth"}'
    )
    for name in ("win.csv", "win.jsonl"):
        done = runner(
            tmp_path, *run_args(mock, "--input", name, "--id-column", "id", "--run-id", "r1")
        )
        assert done.returncode == 0, done.stderr
    ids = [*results_of(tmp_path / "out" / "win" / "r1")["id"]]
    assert sorted(ids) == ["c1", "c2", "j1", "j2"]  # one job name: both runs share r1
    assert sorted(sent_prompts(mock)) == ["first", "fourth", "second", "third"]


@pytest.mark.parametrize(
    ("name", "content"), [("header_only.csv", b"id,prompt\n"), ("empty.jsonl", b"")]
)
def test_no_rows_is_a_clean_run(
    tmp_path: Path, mock: MockServer, name: str, content: bytes
) -> None:
    (tmp_path / name).write_bytes(content)
    done = runner(tmp_path, *run_args(mock, "--input", name, "--run-id", "r1"))
    assert done.returncode == 0, done.stderr
    assert results_of_or_empty(tmp_path / "out" / Path(name).stem / "r1").height == 0
    assert sent_prompts(mock) == []


def results_of_or_empty(run_dir: Path) -> pl.DataFrame:
    """The run's results; an empty frame when the run wrote no part."""
    parts = list((run_dir / "results").glob("*.parquet"))
    return results_of(run_dir) if parts else pl.DataFrame()


def test_input_format_flag_reads_an_unknown_extension(tmp_path: Path, mock: MockServer) -> None:
    (tmp_path / "notes.txt").write_text('{"prompt": "from a txt"}\n')
    done = runner(tmp_path, *run_args(mock, "--input", "notes.txt", "--input-format", "jsonl"))
    assert done.returncode == 0, done.stderr
    assert sent_prompts(mock) == ["from a txt"]


# --- files and job files: exit 2 before any request, one line ---


def _setup_files(tmp: Path) -> None:
    (tmp / "folder.csv").mkdir()
    (tmp / "folder").mkdir()
    (tmp / "loop.csv").symlink_to("loop.csv")  # unreadable even for root: ELOOP
    (tmp / "locked.csv").write_text("id,prompt\n1,hi\n")
    (tmp / "locked.csv").chmod(0)
    (tmp / "empty.csv").write_bytes(b"")
    (tmp / "cols.csv").write_text("id,text\n1,hello\n")
    (tmp / "cols.jsonl").write_text('{"id": 1, "text": "a"}\n{"id": 2, "text": "b"}\n')
    (tmp / "notes.txt").write_text("prompt\nhello\n")
    (tmp / "ok.csv").write_text("id,prompt\n1,hello\n")


# The job file's sections come after its `input = "cols.csv"` line.
JOB_FILES = {
    "job typo": "[request]\nmax_token = 64\n",
    "job wrong type": '[request]\nmax_tokens = "64"\n',
    "job unknown top-level key": 'inputs = "x.csv"\n',
    "job template column": '[request]\nprompt = "{body}"\n',
}

# case -> (options before the command, such as --debug; the command; its options; how
# its one error line starts).
STOP_CASES: dict[str, tuple[tuple[str, ...], str, list[str], str]] = {
    "missing": ((), "run", ["--input", "nope.csv"], "nope.csv: no such file"),
    "directory": (
        (),
        "run",
        ["--input", "folder.csv"],
        "folder.csv: is a directory, not an input file",
    ),
    "unreadable": ((), "run", ["--input", "loop.csv"], "loop.csv: cannot read: "),
    "no permission": (
        (),
        "run",
        ["--input", "locked.csv"],
        "locked.csv: cannot read: permission denied",
    ),
    "empty csv": ((), "run", ["--input", "empty.csv"], "empty.csv: empty: no header line"),
    "no prompt column": (
        (),
        "run",
        ["--input", "cols.csv"],
        "no column 'prompt' in cols.csv (columns: id, text)",
    ),
    "unknown extension": (
        (),
        "run",
        ["--input", "notes.txt"],
        "notes.txt: unknown input format; use .csv, .jsonl, .ndjson, .parquet, .pq "
        "(optionally .gz or .zst), or --input-format",
    ),
    "template column": (
        (),
        "run",
        ["--input", "cols.csv", "--prompt", "Summarise {body}"],
        "no column 'body' in cols.csv (columns: id, text)",
    ),
    "with --debug": (("--debug",), "run", ["--input", "nope.csv"], "nope.csv: no such file"),
    "job typo": (
        (),
        "run",
        ["job.toml"],
        "job.toml: unknown key 'request.max_token' (did you mean 'max_tokens'?)",
    ),
    "job wrong type": (
        (),
        "run",
        ["job.toml"],
        "job.toml: request.max_tokens must be an integer, not a string",
    ),
    "job unknown top-level key": (
        (),
        "run",
        ["job.toml"],
        "job.toml: unknown key 'inputs' (did you mean 'input'?)",
    ),
    "job template column": (
        (),
        "run",
        ["job.toml"],
        "no column 'body' in cols.csv (columns: id, text)",
    ),
    "estimate: missing": ((), "estimate", ["--input", "nope.csv"], "nope.csv: no such file"),
    "estimate: template column": (
        (),
        "estimate",
        ["--input", "cols.csv", "--prompt", "{body}"],
        "no column 'body' in cols.csv (columns: id, text)",
    ),
    "estimate: job typo": (
        (),
        "estimate",
        ["job.toml"],
        "job.toml: unknown key 'request.max_token' (did you mean 'max_tokens'?)",
    ),
}


@pytest.fixture(scope="module")
def stopped_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[subprocess.CompletedProcess[str], Path, int]]]:
    """Every STOP_CASES run, one after the other, against one mock.

    Gives case -> (the finished process, its directory, requests the mock had served).
    """
    with serve_in_thread(MockConfig()) as mock:
        finished = {}
        for case, (prefix, command, args, _) in STOP_CASES.items():
            if case == "no permission" and ROOT:
                continue  # root would read it and send its row
            cwd = tmp_path_factory.mktemp(case.replace(" ", "_"))
            _setup_files(cwd)
            if "job.toml" in args:
                (cwd / "job.toml").write_text(
                    'input = "cols.csv"\n' + JOB_FILES[case.removeprefix("estimate: ")]
                )
            finished[case] = (runner(cwd, *prefix, *run_args(mock, *args, command=command)), cwd)
        served = mock.record.totals()["requests"]
        yield {case: (done, cwd, served) for case, (done, cwd) in finished.items()}


@pytest.mark.parametrize("case", STOP_CASES)
def test_unusable_input_or_job_stops_before_any_request(stopped_runs, case: str) -> None:
    if case == "no permission" and ROOT:
        pytest.skip("root reads a file whatever its mode")
    done, cwd, served = stopped_runs[case]
    assert done.returncode == 2, done.stderr
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith(STOP_CASES[case][3]), done.stderr
    assert served == 0  # not one of the cases sent a request
    assert not (cwd / "out").exists()


def test_directory_without_extension_is_named_a_directory(tmp_path: Path, mock: MockServer) -> None:
    _setup_files(tmp_path)
    done = runner(tmp_path, *run_args(mock, "--input", "folder"))
    assert done.returncode == 2
    assert error_lines(done.stderr) == ["folder: is a directory, not an input file"]


def test_a_resume_reads_a_batch_of_only_invalid_rows(tmp_path: Path, mock: MockServer) -> None:
    (tmp_path / "blank.jsonl").write_text('{"id": "a", "prompt": ""}\n{"id": "b", "prompt": " "}\n')
    args = run_args(mock, "--input", "blank.jsonl", "--id-column", "id", "--run-id", "r1")
    assert runner(tmp_path, *args).returncode == 1
    # Other settings: every row is read again, and no batch holds a row to send.
    again = runner(tmp_path, *args, "--max-tokens", "99")
    assert again.returncode == 1, again.stderr
    assert row_lines(again.stderr, "blank.jsonl") == [
        "blank.jsonl:1: empty prompt",
        "blank.jsonl:2: empty prompt",
    ]


@pytest.mark.parametrize(("key", "shown"), [(FAKE_KEY, "***.jsonl"), ("test", "test.jsonl")])
def test_a_real_key_is_masked_and_a_placeholder_is_not(
    tmp_path: Path, key: str, shown: str
) -> None:
    # A file named after the key puts the key in the error message.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC")}
    env["ANTHROPIC_API_KEY"] = key
    done = subprocess.run(
        [sys.executable, "-m", "runner", "run", "--input", f"{key}.jsonl",
         "--model", "claude-sonnet-5-5"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert error_lines(done.stderr) == [f"{shown}: no such file"]
