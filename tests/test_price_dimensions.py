"""Every price dimension against a hand computation from the pricing page's numbers.

Numbers per million tokens (https://platform.claude.com/docs/en/about-claude/pricing):
Sonnet 4.6 $3 in / $3.75 5m write / $6 1h write / $0.30 read / $15 out; Haiku 5.5 $0.10 /
$0.125 / $0.20 / $0.01 / $0.50 up to 100,000 prompt tokens and $0.50 / $0.625 / $1.00 /
$0.05 / $2.50 above; web search $10 per 1,000; US inference 1.1x; batch 50 %.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from runner.errors import UsageError
from runner.lifecycle import check_model, stale_prices_warning
from runner.models import Usage
from runner.pricing import PriceTable, describe

SONNET = "claude-sonnet-4-6"
HAIKU = "claude-haiku-5-5"
JOBS = Path(__file__).parent.parent / "jobs"


@pytest.fixture
def table() -> PriceTable:
    return PriceTable.load()


def test_prompt_at_the_threshold_is_the_lower_band(table: PriceTable) -> None:
    usage = Usage(input_tokens=60_000, cache_read_input_tokens=40_000, output_tokens=2_000)
    # 60,000*0.10 + 40,000*0.01 + 2,000*0.50 = 6,000 + 400 + 1,000 = 7,400 per MTok
    assert table.cost(HAIKU, usage) == pytest.approx(0.0074, abs=1e-12)


def test_prompt_over_the_threshold_prices_the_whole_request_higher(table: PriceTable) -> None:
    usage = Usage(
        input_tokens=60_000,
        cache_creation_input_tokens=1,
        cache_read_input_tokens=40_000,
        output_tokens=2_000,
    )
    # 100,001 prompt tokens: every token at the upper band, output included:
    # 60,000*0.50 + 1*0.625 + 40,000*0.05 + 2,000*2.50 = 30,000 + 0.625 + 2,000 + 5,000
    assert table.cost(HAIKU, usage) == pytest.approx(0.037000625, abs=1e-12)


def test_web_search_fee_is_added_per_request(table: PriceTable) -> None:
    usage = Usage(input_tokens=1_000, output_tokens=100, web_search_requests=3)
    # 1,000*3 + 100*15 = 4,500 per MTok = $0.0045, plus 3 * $10/1,000 = $0.03
    assert table.cost(SONNET, usage) == pytest.approx(0.0345, abs=1e-12)


def test_us_inference_multiplies_token_prices_not_fees(table: PriceTable) -> None:
    usage = Usage(input_tokens=1_000, output_tokens=100, web_search_requests=1, inference_geo="us")
    # $0.0045 * 1.1 = $0.00495, plus $0.01 for the search
    assert table.cost(SONNET, usage) == pytest.approx(0.01495, abs=1e-12)
    global_ = Usage(input_tokens=1_000, output_tokens=100, inference_geo="global")
    assert table.cost(SONNET, global_) == pytest.approx(0.0045, abs=1e-12)


def test_batch_halves_tokens_but_not_fees(table: PriceTable) -> None:
    usage = Usage(input_tokens=1_000, output_tokens=100, web_search_requests=2)
    assert table.batch_cost(SONNET, usage) == pytest.approx(0.00225 + 0.02, abs=1e-12)


def test_a_dimension_the_table_lacks_leaves_the_cost_empty(
    caplog: pytest.LogCaptureFixture,
) -> None:
    usage = Usage(input_tokens=10, inference_geo="eu")
    with caplog.at_level(logging.WARNING, logger="runner"):
        assert PriceTable.load().cost(SONNET, usage) is None
    assert "inference_geo 'eu'" in caplog.text
    # A reseller's table that prices searches in its own way must say so, or rows are flagged.
    assert PriceTable.load().cost(SONNET, Usage(web_fetch_requests=2)) == 0.0


def test_scale_multiplies_every_list_price(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("scale = 0.35\n")
    table = PriceTable.load(override=path)
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert table.cost(SONNET, usage) == pytest.approx((3 + 15) * 0.35, abs=1e-9)
    long = Usage(input_tokens=200_000)
    assert table.cost(HAIKU, long) == pytest.approx(200_000 * 0.50 * 0.35 / 1e6, abs=1e-12)
    assert table.kind == "scaled"
    assert "scaled list prices" in describe(table.to_dict())[0]


def test_the_example_reseller_file_layers_scale_model_scale_and_a_field() -> None:
    table = PriceTable.load(override=JOBS / "reseller-prices.toml")
    million_out = Usage(output_tokens=1_000_000)
    assert table.cost("claude-opus-5-5", million_out) == pytest.approx(20 * 0.5)
    assert table.cost("claude-sonnet-5-5", million_out) == pytest.approx(3.0)  # as written
    assert table.cost("claude-sonnet-5-5", Usage(input_tokens=1_000_000)) == pytest.approx(0.7)
    assert table.cost(SONNET, million_out) == pytest.approx(15 * 0.35)
    assert table.cost("reseller-fast-1", million_out) == pytest.approx(1.0)
    assert table.kind == "custom"
    lines = describe(table.to_dict())
    assert lines[0] == "prices: custom prices, as of 2026-11-29 (https://reseller.example/pricing)"
    assert "every model's prices ×0.35" in lines[1]
    assert "claude-opus-5-5 ×0.5" in lines[1]


def test_scale_of_a_model_the_table_lacks_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[models.nope]\nscale = 0.5\n")
    with pytest.raises(UsageError, match=r"nope.*'scale'"):
        PriceTable.load(override=path)


def test_a_retired_model_is_refused_unless_allowed(table: PriceTable) -> None:
    with pytest.raises(
        UsageError, match=r"claude-opus-4-20250514 was retired on 2026-06-15.*--allow-retired"
    ):
        check_model(table, "claude-opus-4-20250514")
    assert "retired" in (check_model(table, "claude-opus-4-0", allow_retired=True) or "")


def test_a_model_retiring_soon_is_named_with_its_date_and_replacement(table: PriceTable) -> None:
    warning = check_model(table, "claude-sonnet-4-5", on=date(2026, 11, 20))
    assert warning == (
        "model claude-sonnet-4-5 is deprecated and retires on 2026-11-30 (in 10 days); "
        "use claude-sonnet-5-5 instead"
    )
    assert check_model(table, "claude-sonnet-5-5") is None


def test_a_built_in_table_older_than_90_days_is_named(table: PriceTable) -> None:
    assert stale_prices_warning(table.builtin_as_of, on=date(2026, 12, 1)) is None
    warning = stale_prices_warning(table.builtin_as_of, on=date(2027, 3, 1))
    assert warning is not None and "92 days old" in warning


@pytest.mark.parametrize("command", ["run", "estimate"])
def test_the_cli_refuses_a_retired_model_with_exit_2(tmp_path: Path, command: str) -> None:
    rows = tmp_path / "in.jsonl"
    rows.write_text('{"prompt": "hi"}\n')
    args = [sys.executable, "-m", "runner", command, "--input", str(rows)]
    args += ["--model", "claude-opus-4-0", "--base-url", "http://127.0.0.1:9"]
    args += ["--output-dir", str(tmp_path / "reports")] + (
        ["--offline"] if command == "estimate" else []
    )
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "ANTHROPIC_API_KEY": "sk-test-not-a-real-key-123"},
    )
    assert done.returncode == 2, done.stderr
    assert "model claude-opus-4-0 was retired on 2026-06-15; use claude-opus-4-8" in done.stderr
    assert not (tmp_path / "reports").exists()
