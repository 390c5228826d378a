"""docs/reference.md is generated from the code: what the code adds shows up, or stops it."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from runner import reference


def test_every_job_key_has_its_flag_default_and_meaning() -> None:
    keys = {key: rest for key, *rest in reference.job_keys()}
    assert keys["limits.input_tokens_per_minute"][2] == "`--itpm`"
    assert keys["request.temperature"][1:3] == ["not sent (the API's)", "—"]
    kind, default, flag, _ = keys["output_dir"]
    assert (kind, flag) == ("string", "`--output-dir`")
    assert default.startswith("reports/ under the current directory")
    assert keys["input"][1] == keys["request.model"][1] == "required"
    assert keys["retry.max_retry_after"][1] == "600"
    assert all(meaning for *_, meaning in keys.values())


def test_exit_codes_come_from_the_error_classes_and_the_run() -> None:
    codes = reference.exit_codes()
    assert "UsageError" in codes[2] and "FatalApiError" in codes[3]
    assert 0 in codes and 130 in codes
    page = reference.render()
    run_help = reference._help("run")
    for code in codes:
        assert f"\n| {code} | " in page
        # `runner run --help` says every one too, from the same descriptions.
        assert f" {code}: " in " ".join(run_help.split()), code


def test_a_column_without_a_description_stops_the_generator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(reference.RESULT_SCHEMA, "brand_new", pl.String)
    with pytest.raises(reference.MissingDescription, match="results column 'brand_new'"):
        reference.render()
    assert reference.main(["--check"]) == 1


def test_check_fails_on_a_stale_page_and_writing_fixes_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "docs" / "reference.md"
    monkeypatch.setattr(reference, "DOC_PATH", page)
    assert reference.main(["--check"]) == 1
    assert reference.main([]) == 0
    assert reference.main(["--check"]) == 0
    page.write_text(page.read_text().replace("| `attempts` |", "| `tries` |"))
    assert reference.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().err
