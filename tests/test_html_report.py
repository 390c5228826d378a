"""The HTML report: self-contained, every chart present, and clean in a real headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from helpers import prompts, run_rows
from PIL import Image

from runner.errors import UsageError
from runner.html_charts import CHARTS, Timeline, _busy_integral, compact, dollars
from runner.html_report import write_html_report

CHART_IDS = [f"chart-{key}" for key, *_ in CHARTS]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class _Page(HTMLParser):
    """What the page loads from elsewhere, and which charts hold an SVG."""

    def __init__(self) -> None:
        super().__init__()
        self.external: list[str] = []
        self.scripts = 0
        self.figure: str | None = None
        self.charts_with_svg: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.scripts += tag == "script"
        for name in ("src", "href"):
            if found.get(name) and not str(found[name]).startswith("#"):
                self.external.append(f"{tag} {name}={found[name]}")
        if tag == "figure":
            self.figure = found.get("id")
        elif tag == "svg" and self.figure:
            self.charts_with_svg.add(self.figure)

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self.figure = None


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


def test_busy_integral_gives_the_mean_in_flight_per_bin() -> None:
    rng = np.random.default_rng(7)
    starts = rng.uniform(0, 10, 200)
    ends = starts + rng.uniform(0.01, 2, 200)
    edges = np.linspace(0, 12, 25)
    width = edges[1] - edges[0]
    mean = np.diff(_busy_integral(starts, edges) - _busy_integral(ends, edges)) / width
    # Brute force: each attempt's overlap with each bin.
    overlap = np.clip(
        np.minimum(ends[:, None], edges[None, 1:]) - np.maximum(starts[:, None], edges[None, :-1]),
        0,
        None,
    )
    np.testing.assert_allclose(mean, overlap.sum(axis=0) / width, atol=1e-9)


@pytest.fixture
def faulty_run(tmp_path: Path, mock_api) -> Path:
    """A run with ok rows, a retried 500, and a row rejected with 400."""
    rows = prompts(40)
    rows[3]["prompt"] += " [[fault:500]]"
    rows[7]["prompt"] += " [[fault:400:all]]"
    outcome = run_rows(tmp_path, mock_api.base_url, rows, run_id="night-1")
    assert outcome.exit_code == 1
    return outcome.run_dir


def test_page_is_self_contained_with_every_chart(tmp_path: Path, faulty_run: Path) -> None:
    out = tmp_path / "report.html"
    write_html_report(faulty_run, out)
    page = out.read_text("utf-8")
    parsed = _parse(page)
    assert parsed.external == [] and parsed.scripts == 0
    # SVG's own url(#id) references stay inside the page; nothing else may be fetched.
    assert not re.search(r"url\((?!#)", page) and "@import" not in page and "@font-face" not in page
    assert parsed.charts_with_svg == set(CHART_IDS)
    assert "claude-sonnet-5-5" in page  # the per-model chart's label
    assert "invalid_request_error" in page and "api_error" in page  # errors by type
    assert "39 ok · 1 error · 0 invalid" in page
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_job_dir_gives_one_page_over_its_runs(tmp_path: Path, mock_api) -> None:
    run_rows(tmp_path, mock_api.base_url, prompts(5), run_id="a")
    second = run_rows(tmp_path, mock_api.base_url, prompts(5, "other"), run_id="b")
    out = tmp_path / "job.html"
    write_html_report(second.run_dir.parent, out)
    page = out.read_text("utf-8")
    assert "runner report: job input" in page and "10 ok · 0 error" in page
    assert _parse(page).charts_with_svg == set(CHART_IDS)
    # One line per run, and the two runs' time shown apart, not overlaid.
    runs = page[page.index('<table id="runs">') :]
    assert "<td>a</td><td>finished</td><td>0</td>" in runs
    assert "<td>b</td><td>finished</td><td>0</td>" in runs
    assert "not running" in page


def test_the_top_answers_the_morning_question(tmp_path: Path, faulty_run: Path) -> None:
    out = tmp_path / "report.html"
    write_html_report(faulty_run, out)
    page = out.read_text("utf-8")
    headline = page[page.index('<dl id="headline">') : page.index("</dl>")]
    for piece in (
        "<dt>state</dt><dd>finished, exit 1</dd>",
        "<dt>started</dt><dd>20",
        "<dt>model</dt><dd>claude-sonnet-5-5</dd>",
        "concurrency 16 · no rate limits given · max_tokens 64 · max attempts 8",
        "39 ok · 1 error · 0 invalid of 40 input rows",
        " usable of 39 ok",
        " retries = $",
        "<dt>resume</dt><dd>runner ",
        "p50 ",
    ):
        assert piece in headline, piece
    # The charts' percentiles are the headline's.
    assert "p90 " in page and "p99 " in page and "p95 " not in page
    # Thousands on axes are written out, never as a 1e6 offset.
    assert not re.search(r">\s*1e[0-9]", page)
    failed = page[page.index("<h2>Failed rows</h2>") :]
    assert '<p id="failed-count">1 failed rows.</p>' in failed
    assert "invalid_request_error" in failed and "<td>000007</td>" in failed


def test_failed_rows_show_the_first_hundred_and_the_count(tmp_path: Path, mock_api) -> None:
    rows = [{"id": f"{i:04d}", "prompt": f"bad {i} [[fault:400:all]]"} for i in range(130)]
    outcome = run_rows(tmp_path, mock_api.base_url, rows)
    out = tmp_path / "failed.html"
    write_html_report(outcome.run_dir, out)
    page = out.read_text("utf-8")
    assert '<p id="failed-count">130 failed rows; the first 100 below.</p>' in page
    table = page[page.index('<table id="failed-rows">') :]
    assert table.count("<tr>") == 101 and "<td>0099</td>" in table and "<td>0100</td>" not in table


def test_a_missing_directory_is_a_clear_error(tmp_path: Path, faulty_run: Path) -> None:
    with pytest.raises(UsageError, match=r"no directory .*missing"):
        write_html_report(faulty_run, tmp_path / "missing" / "x.html")
    command = [sys.executable, "-m", "runner", "report", str(faulty_run), "--html"]
    done = subprocess.run(
        [*command, "/missing/dir/x.html"], capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 2 and "internal error" not in done.stderr
    assert "runner: error: /missing/dir/x.html: no directory /missing/dir" in done.stderr


def test_the_timeline_leaves_gaps_out_and_draws_them() -> None:
    timeline = Timeline([(1000.0, 1010.0), (1250.0, 1260.0)])
    assert timeline.gaps == [(1010.0, 1250.0)]
    gap = timeline.gap
    assert gap == pytest.approx(0.04 * 20)
    mapped = timeline(np.array([1000.0, 1005.0, 1250.0, 1259.0]))
    np.testing.assert_allclose(mapped, [0.0, 5.0, 10.0 + gap, 19.0 + gap])
    assert timeline.end == pytest.approx(20.0 + gap)


def test_axis_labels_are_compact() -> None:
    assert [compact(v) for v in (950, 12_000, 3_400_000, 0.5)] == ["950", "12k", "3.4M", "0.5"]
    assert [dollars(v) for v in (0, 0.5, 1234.5, 0.004)] == [
        "$0.00",
        "$0.50",
        "$1,234.50",
        "$0.004",
    ]


def test_a_run_with_no_attempts_still_draws_every_chart(tmp_path: Path, mock_api) -> None:
    outcome = run_rows(tmp_path, mock_api.base_url, [{"id": "a", "prompt": ""}])
    assert outcome.summary["attempts"] == 0
    out = tmp_path / "empty.html"
    write_html_report(outcome.run_dir, out)
    page = out.read_text("utf-8")
    assert _parse(page).charts_with_svg == set(CHART_IDS)
    assert "no attempts" in page and "no priced spend" in page


# ---- headless Chromium -------------------------------------------------------------


@pytest.fixture
def chromium() -> str:
    """Debian's `chromium`: required in CI, skipped on a machine without it."""
    path = shutil.which("chromium")
    if path is None:
        message = "chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _chromium(binary: str, tmp_path: Path, page: Path, *action: str) -> tuple[str, list[str]]:
    """Open `page` in headless Chromium; its stdout, and the console messages it logged."""
    profile = tmp_path / f"profile-{page.stem}"
    done = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr",
         "--v=0", *action, page.as_uri()],
        capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


def test_console_messages_are_caught(chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text('<html><body><script>console.error("boom")</script></body></html>')
    _, console = _chromium(chromium, tmp_path, page, "--dump-dom")
    assert any('"boom"' in line for line in console)


def test_report_loads_in_chromium_with_its_charts(
    chromium: str, tmp_path: Path, faulty_run: Path
) -> None:
    out = tmp_path / "report.html"
    command = [sys.executable, "-m", "runner", "report", str(faulty_run), "--html", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    dom, console = _chromium(chromium, tmp_path, out, "--dump-dom")
    assert console == []
    parsed = _parse(dom)
    assert parsed.charts_with_svg == set(CHART_IDS)
    shot = tmp_path / "shot.png"
    _, console = _chromium(
        chromium, tmp_path, out, f"--screenshot={shot}", "--window-size=1000,2600"
    )
    assert console == []
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # The charts' colours are on screen: ok bars (#3b7dd8) and failures (#d8613b).
    for colour in ((0x3B, 0x7D, 0xD8), (0xD8, 0x61, 0x3B)):
        close = (np.abs(pixels - np.array(colour)).sum(axis=2) < 30).sum()
        assert close > 500, f"colour {colour} covers only {close} pixels"
