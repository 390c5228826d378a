"""Tests for the price table and the cost of a usage (hand-computed, per million tokens)."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from runner.errors import UsageError
from runner.models import Usage
from runner.pricing import ModelPrice, PriceTable

DATA = Path(__file__).parent / "data" / "prices"
SONNET = "claude-sonnet-4-6"  # $3 in, $3.75 5m write, $6 1h write, $0.30 read, $15 out


@pytest.fixture
def table() -> PriceTable:
    return PriceTable.load()


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (Usage(input_tokens=1_000_000), 3.0),
        (Usage(output_tokens=1_000_000), 15.0),
        (Usage(cache_read_input_tokens=1_000_000), 0.30),
        (
            Usage(cache_creation_input_tokens=1_000_000, cache_creation_5m=1_000_000),
            3.75,
        ),
        (
            Usage(cache_creation_input_tokens=1_000_000, cache_creation_1h=1_000_000),
            6.0,
        ),
    ],
    ids=["input", "output", "cache_read", "cache_write_5m", "cache_write_1h"],
)
def test_each_component_alone(table: PriceTable, usage: Usage, expected: float) -> None:
    assert table.cost(SONNET, usage) == pytest.approx(expected, abs=1e-12)


def test_all_components_combined(table: PriceTable) -> None:
    usage = Usage(
        input_tokens=1_200,
        output_tokens=350,
        cache_creation_input_tokens=3_000,
        cache_read_input_tokens=10_000,
        cache_creation_5m=2_000,
        cache_creation_1h=1_000,
    )
    # 1200*3 + 2000*3.75 + 1000*6 + 10000*0.30 + 350*15 = 3600+7500+6000+3000+5250 = 25350
    assert table.cost(SONNET, usage) == pytest.approx(0.02535, abs=1e-12)


def test_cache_reads_are_not_priced_as_input(table: PriceTable) -> None:
    # LiteLLM once added cache_read tokens to input: 1M reads would then cost $3.30.
    usage = Usage(input_tokens=0, cache_read_input_tokens=1_000_000)
    assert table.cost(SONNET, usage) == pytest.approx(0.30, abs=1e-12)


def test_cache_creation_is_charged_once(table: PriceTable) -> None:
    # The total and its split describe the same tokens: $3.75, never 3.75 + 3.75.
    usage = Usage(cache_creation_input_tokens=1_000_000, cache_creation_5m=1_000_000)
    assert table.cost(SONNET, usage) == pytest.approx(3.75, abs=1e-12)
    usage = Usage(
        cache_creation_input_tokens=1_000_000,
        cache_creation_5m=400_000,
        cache_creation_1h=600_000,
    )
    assert table.cost(SONNET, usage) == pytest.approx(0.4 * 3.75 + 0.6 * 6.0, abs=1e-12)


def test_missing_split_is_priced_at_the_5m_rate(table: PriceTable) -> None:
    usage = Usage(cache_creation_input_tokens=1_000_000)
    assert table.cost(SONNET, usage) == pytest.approx(3.75, abs=1e-12)


def test_split_remainder_is_priced_at_the_5m_rate(table: PriceTable) -> None:
    usage = Usage(cache_creation_input_tokens=1_000_000, cache_creation_1h=250_000)
    assert table.cost(SONNET, usage) == pytest.approx(0.75 * 3.75 + 0.25 * 6.0, abs=1e-12)


def test_cost_keeps_sub_cent_precision(table: PriceTable) -> None:
    assert table.cost(SONNET, Usage(input_tokens=1)) == pytest.approx(3e-6, abs=1e-15)
    assert table.cost(SONNET, Usage()) == 0.0


def test_batch_cost_halves_the_standard_cost(table: PriceTable) -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert table.batch_multiplier == 0.5
    assert table.batch_cost(SONNET, usage) == pytest.approx(9.0, abs=1e-12)


@pytest.mark.parametrize(
    "model",
    ["claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20991231"],
)
def test_alias_and_dated_ids_resolve_to_one_entry(table: PriceTable, model: str) -> None:
    assert table.price_for(model) == ModelPrice(3.0, 3.75, 6.0, 0.30, 15.0)


def test_dated_form_of_an_alias_resolves(table: PriceTable) -> None:
    assert table.price_for("claude-3-5-haiku-20991231") == table.price_for(
        "claude-3-5-haiku-latest"
    )


def test_opus_4_5_is_not_priced_like_opus_4_1(table: PriceTable) -> None:
    assert table.price_for("claude-opus-4-5-20251101") == ModelPrice(5.0, 6.25, 10.0, 0.5, 25.0)
    assert table.price_for("claude-opus-4-1") == ModelPrice(15.0, 18.75, 30.0, 1.5, 75.0)


def test_unknown_model_gives_none_and_one_warning(
    table: PriceTable, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="runner")
    for _ in range(3):
        assert table.cost("gpt-unknown", Usage(input_tokens=10)) is None
        assert table.batch_cost("gpt-unknown", Usage(input_tokens=10)) is None
    assert table.cost("other-unknown", Usage()) is None
    messages = [r.getMessage() for r in caplog.records if r.name == "runner"]
    assert messages == [
        "no price for model gpt-unknown: cost_usd left empty (add it with --prices FILE)",
        "no price for model other-unknown: cost_usd left empty (add it with --prices FILE)",
    ]


def test_builtin_table_has_date_and_source(table: PriceTable) -> None:
    assert table.as_of == "2026-11-29"
    assert table.source.startswith("https://platform.claude.com/docs/")


def test_override_file_changes_a_price_and_adds_a_model() -> None:
    table = PriceTable.load(override=DATA / "reseller.toml")
    assert table.price_for(SONNET) == ModelPrice(2.4, 3.75, 6.0, 0.30, 12.0)
    assert table.price_for("fast") == ModelPrice(0.5, 0.625, 1.0, 0.05, 2.0)
    assert table.cost("reseller-fast-1", Usage(output_tokens=1_000_000)) == 2.0
    assert table.source == "https://reseller.example/pricing"
    assert table.as_of == "2026-11-29"  # not set by the override: the built-in date stays
    assert table.price_for("claude-haiku-4-5") is not None  # the rest is untouched


def test_job_extra_table_applies_last() -> None:
    job_model = {"input": 1, "cache_write_5m": 2, "cache_write_1h": 3, "cache_read": 4, "output": 5}
    extra = {SONNET: {"input": 1.0}, "job-model": job_model}
    table = PriceTable.load(override=DATA / "reseller.toml", extra=extra)
    assert table.price_for(SONNET) == ModelPrice(1.0, 3.75, 6.0, 0.30, 12.0)
    assert table.price_for("job-model") == ModelPrice(1.0, 2.0, 3.0, 4.0, 5.0)


def test_job_extra_table_may_be_file_shaped() -> None:
    table = PriceTable.load(extra={"batch_multiplier": 0.4, "models": {SONNET: {"output": 10}}})
    assert table.batch_multiplier == 0.4
    assert table.price_for(SONNET) == ModelPrice(3.0, 3.75, 6.0, 0.30, 10.0)


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[models.claude-sonnet-4-5\ninput = 1\n", ["not valid TOML"]),
        ("[models.claude-sonnet-4-5]\ninput = -1.0\n", ["claude-sonnet-4-5", "'input'", "-1.0"]),
        ('[models.claude-sonnet-4-5]\noutput = "15"\n', ["claude-sonnet-4-5", "'output'"]),
        ("[models.claude-sonnet-4-5]\noutput = true\n", ["claude-sonnet-4-5", "'output'"]),
        ("[models.claude-sonnet-4-5]\noutput = nan\n", ["claude-sonnet-4-5", "'output'"]),
        (
            "[models.claude-sonnet-4-5]\ncache_write = 3.75\n",
            ["claude-sonnet-4-5", "'cache_write'"],
        ),
        (
            "[models.new-model]\ninput = 1.0\ncache_write_5m = 1.25\n"
            "cache_write_1h = 2.0\noutput = 5.0\n",
            ["new-model", "'cache_read'", "missing"],
        ),
        ("currency = 'EUR'\n", ["'currency'"]),
        ("batch_multiplier = -0.5\n", ["'batch_multiplier'"]),
        ("[models.claude-sonnet-4-5]\naliases = 'sonnet'\n", ["claude-sonnet-4-5", "'aliases'"]),
    ],
    ids=[
        "bad-toml",
        "negative",
        "string",
        "bool",
        "nan",
        "unknown-field",
        "missing-field",
        "unknown-top-field",
        "negative-multiplier",
        "aliases-not-a-list",
    ],
)
def test_malformed_override_names_file_model_and_field(
    tmp_path: Path, text: str, needles: list[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        PriceTable.load(override=path)
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message


def test_missing_override_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        PriceTable.load(override=tmp_path / "nope.toml")


def test_malformed_job_extra_names_the_job() -> None:
    with pytest.raises(UsageError, match=r"job file \[prices\].*m1.*'output'"):
        PriceTable.load(extra={"m1": {"input": 1, "output": -2}})


def test_to_dict_round_trips_through_json() -> None:
    table = PriceTable.load(override=DATA / "reseller.toml")
    data = table.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["batch_multiplier"] == 0.5
    assert data["overrides"] == [
        f"prices file {DATA / 'reseller.toml'}: {SONNET} custom; reseller-fast-1 custom"
    ]
    assert data["kind"] == "custom"
    assert data["models"][SONNET] == {
        "input": 2.4,
        "cache_write_5m": 3.75,
        "cache_write_1h": 6.0,
        "cache_read": 0.30,
        "output": 12.0,
        "long_prompt_above": None,
        "long_prompt": None,
        "aliases": [],
        "kind": "custom",
    }
    assert data["models"]["reseller-fast-1"]["aliases"] == ["fast"]


def test_load_makes_no_network_call(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network used")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert PriceTable.load(override=DATA / "reseller.toml").price_for(SONNET) is not None


def test_import_reads_no_file() -> None:
    # A fresh interpreter where reading the packaged table or parsing TOML would fail:
    # importing the module must still work, and only load() may touch the file.
    code = (
        "import importlib.resources, tomllib\n"
        "def boom(*a, **k): raise RuntimeError('read at import')\n"
        "importlib.resources.files = boom\n"
        "tomllib.load = tomllib.loads = boom\n"
        "import runner.pricing\n"
        "try:\n"
        "    runner.pricing.PriceTable.load()\n"
        "except RuntimeError:\n"
        "    print('lazy')\n"
    )
    root = Path(__file__).parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "lazy"
