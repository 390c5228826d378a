"""Shared fixtures: an isolated environment and the bundled mock API on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.mock import MockConfig, serve_in_thread

TEST_KEY = "sk-test-0123456789-secret"


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the user's key, base URL or home, and none writes outside tmp_path."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    # Tests talk to 127.0.0.1: a machine's proxy settings must not route them elsewhere.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def mock_api() -> Iterator:
    """A healthy mock API with no latency."""
    with serve_in_thread(MockConfig()) as server:
        yield server
