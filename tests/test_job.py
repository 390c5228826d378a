"""The job file and flags: every mistake is one message naming the file or flag, and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import prompts, write_jsonl

from runner.cli import cli
from runner.errors import JobFileError, UsageError
from runner.job import load_job_file, resolve_job

HEAD = 'input = "in.csv"\n[request]\nmodel = "claude-sonnet-5-5"\n'


def job_error(tmp_path: Path, text: str | bytes, flags: dict[str, Any] | None = None) -> str:
    """Write `text` as job.toml, resolve it and return the one-line error it raises."""
    with pytest.raises(UsageError) as info:
        resolve_job(_write(tmp_path / "job.toml", text), flags or {})
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            HEAD + "max_token = 5\n",
            "unknown key 'request.max_token' (did you mean 'max_tokens'?)",
        ),
        ('inptu = "in.csv"\n', "unknown key 'inptu' (did you mean 'input'?)"),
        ("[limit]\nconcurrency = 2\n", "unknown key 'limit' (did you mean 'limits'?)"),
        (
            HEAD + "[retry]\nmax_atempts = 2\n",
            "unknown key 'retry.max_atempts' (did you mean 'max_attempts'?)",
        ),
        (
            "zzz = 1\n",
            "unknown key 'zzz' (valid keys: name, input, input_format, id_column, base_url, "
            "prices, allow_insecure_http, mode, output_dir, dedupe, cache, request, limits, "
            "retry, batch)",
        ),
        ("request = 5\n", "[request] must be a table"),
    ],
)
def test_unknown_keys_name_the_key_and_the_closest(tmp_path: Path, text: str, message: str) -> None:
    assert job_error(tmp_path, text) == f"{tmp_path / 'job.toml'}: {message}"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('max_tokens = "512"', "request.max_tokens must be an integer, not a string"),
        ("max_tokens = 5.0", "request.max_tokens must be an integer, not a float"),
        ("max_tokens = true", "request.max_tokens must be an integer, not a boolean"),
        ('temperature = "hot"', "request.temperature must be a number, not a string"),
        ("cache_system = 1", "request.cache_system must be true or false, not an integer"),
        (
            'stop_sequences = "END"',
            "request.stop_sequences must be an array of strings, not a string",
        ),
        (
            'stop_sequences = ["END", 2]',
            "request.stop_sequences must be an array of strings, found an integer in it",
        ),
        ("system = 1979-05-27", "request.system must be a string, not a date/time"),
        ("model = [1]", "request.model must be a string, not an array"),
    ],
)
def test_wrong_types_name_the_key_and_the_type(tmp_path: Path, line: str, message: str) -> None:
    text = 'input = "in.csv"\n[request]\n' + line + "\n"
    assert job_error(tmp_path, text) == f"{tmp_path / 'job.toml'}: {message}"


def test_integer_is_a_valid_number(tmp_path: Path) -> None:
    (tmp_path / "job.toml").write_text(HEAD + "temperature = 1\n[retry]\nidle_timeout = 5\n")
    job = resolve_job(tmp_path / "job.toml", {})
    assert job.request.temperature == 1 and job.retry.idle_timeout == 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEAD + "max_tokens = 0\n", "request.max_tokens must be at least 1, not 0"),
        (HEAD + "[limits]\nconcurrency = -1\n", "limits.concurrency must be at least 1, not -1"),
        (
            HEAD + "[limits]\nrequests_per_minute = 0\n",
            "limits.requests_per_minute must be at least 1, not 0",
        ),
        (
            HEAD + "[retry]\nidle_timeout = nan\n",
            "retry.idle_timeout must be a positive number, not nan",
        ),
        (
            HEAD + "[retry]\nidle_timeout = inf\n",
            "retry.idle_timeout must be a positive number, not inf",
        ),
        (HEAD + "[retry]\ngrace_period = -1\n", "retry.grace_period must be 0 or more, not -1"),
        (
            'name = "../etc"\n' + HEAD,
            "name must be a plain name (it names a directory), not '../etc'",
        ),
        ('id_column = ""\n' + HEAD, "id_column must name a column, not ''"),
        (
            'base_url = "ftp://x"\n' + HEAD,
            "base_url must start with http:// or https://, not 'ftp://x'",
        ),
        (
            'input_format = "xml"\n' + HEAD,
            "input_format must be one of csv, jsonl, parquet, not 'xml'",
        ),
        (
            HEAD + 'prompt = "{text"\n',
            "prompt template: expected '}' before end of string "
            "(write {{ and }} for literal braces)",
        ),
        (
            HEAD + 'prompt = "{text!r}"\n',
            "prompt template: placeholders are plain column names like {text}, not '{text!r}'",
        ),
        ('[request]\nmodel = "m"\n', "no input file: give --input PATH or `input` in the job file"),
    ],
)
def test_bad_values_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    assert job_error(tmp_path, text) == f"{tmp_path / 'job.toml'}: {message}"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"request.max_tokens": 0}, "--max-tokens must be at least 1, not 0"),
        ({"limits.requests_per_minute": 0}, "--rpm must be at least 1, not 0"),
        ({"limits.output_tokens_per_minute": -5}, "--otpm must be at least 1, not -5"),
        (
            {"base_url": "localhost:8080"},
            "--base-url must start with http:// or https://, not 'localhost:8080'",
        ),
        (
            {"request.prompt": "{"},
            "--prompt: prompt template: Single '{' encountered in format string "
            "(write {{ and }} for literal braces)",
        ),
    ],
)
def test_a_bad_flag_is_named_as_the_flag(
    tmp_path: Path, flags: dict[str, Any], message: str
) -> None:
    # The job file is fine; the flag that overrides it is what the message names.
    assert job_error(tmp_path, HEAD + "max_tokens = 64\n", flags) == message


def test_a_bad_environment_base_url_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "api.example.com")
    message = "ANTHROPIC_BASE_URL must start with http:// or https://, not 'api.example.com'"
    assert job_error(tmp_path, HEAD) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'input = "\xff.csv"\n', "not valid UTF-8 (byte 0xff)"),
        (
            "[request\n",
            "not valid TOML: Expected ']' at the end of a table declaration (at line 1, column 9)",
        ),
        ("a = 1\na = 2\n", "not valid TOML: Cannot overwrite a value (at line 2, column 6)"),
    ],
)
def test_unreadable_toml_is_one_line(tmp_path: Path, text: str | bytes, message: str) -> None:
    with pytest.raises(JobFileError) as info:
        load_job_file(_write(tmp_path / "job.toml", text))
    assert str(info.value) == f"{tmp_path / 'job.toml'}: {message}"


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_missing_or_directory_job_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^nope\.toml: job file not found$"):
        load_job_file(Path("nope.toml"))
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(UsageError, match=r"^dir\.toml: is a directory, not a job file$"):
        load_job_file(Path("dir.toml"))


def test_a_valid_job_resolves_with_flags_winning(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "in.jsonl").write_text("")
    (tmp_path / "jobs" / "job.toml").write_text(
        'name = "nightly"\ninput = "in.jsonl"\ninput_format = "JSONL"\nid_column = "id"\n'
        '[request]\nmodel = "claude-haiku-4-5"\nprompt = "Say {text} {{literally}}"\n'
        'stop_sequences = ["END"]\n[limits]\nconcurrency = 4\n'
    )
    job = resolve_job(Path("jobs/job.toml"), {"limits.concurrency": 9, "request.max_tokens": None})
    assert job.name == "nightly"
    assert job.input == Path("jobs/in.jsonl")  # relative to the job file
    assert job.input_format == "jsonl"
    assert job.limits.concurrency == 9 and job.request.max_tokens == 1024
    assert job.request.stop_sequences == ["END"]


def test_output_dir_is_relative_to_the_job_file_and_a_flag_wins(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    job_file = _write(jobs / "job.toml", 'output_dir = "nightly"\n' + HEAD)
    assert resolve_job(job_file, {}).output_dir == jobs / "nightly"
    flagged = resolve_job(job_file, {"output_dir": Path("elsewhere")})
    assert flagged.output_dir == Path("elsewhere")
    # Without the key, `reports` under the working directory, as before.
    assert resolve_job(_write(jobs / "plain.toml", HEAD), {}).output_dir == Path("reports")


def test_a_run_writes_where_the_job_file_says(tmp_path: Path, mock_api) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    write_jsonl(jobs / "in.jsonl", prompts(3))
    job_file = _write(
        jobs / "nightly.toml",
        'input = "in.jsonl"\noutput_dir = "runs"\n[request]\nmodel = "claude-sonnet-5-5"\n',
    )
    result = CliRunner().invoke(
        cli, ["run", str(job_file), "--base-url", mock_api.base_url], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    (run_dir,) = (jobs / "runs" / "in").iterdir()  # the job is named after its input
    assert (run_dir / "summary.json").is_file()
    assert not (tmp_path / "reports").exists()
