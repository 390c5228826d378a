"""Mutated real event streams through a real HTTP server: an answer is a Completion or an ApiError.

The shapes are the API's (text, thinking, tool use, citations, refusals; see
tests/hostile.py); each mutation nulls, retypes or deletes a field, drops the event
names, cuts the stream, flips a byte, or reorders events. Whatever comes out, the
client must classify it: never any other exception, which would be an internal error.
"""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import polars as pl
from conftest import TEST_KEY
from helpers import write_jsonl
from hostile import encode, serve_hostile, shaped_events

from runner.client import Completion, stream_message
from runner.errors import ApiError
from runner.models import Request
from runner.provider import api_headers
from runner.transport import Bounds, new_http_client

SHAPES = ("text", "thinking", "tool_use", "citations", "refusal")
ODD_VALUES: list[Any] = [None, 0, -1, 2**70, 1.5, "", "x", [], {}, True, [None], {"type": None}]


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    """Every key path inside a JSON value."""
    found = [path] if path else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            found += _paths(child, (*path, i))
    return found


def mutate(rng: random.Random) -> bytes:
    """One real-shaped stream with one or two random mutations."""
    events = copy.deepcopy(shaped_events(rng.choice(SHAPES)))
    named = True
    for _ in range(rng.randint(1, 2)):
        how = rng.choice(["value", "value", "delete", "data_only", "reorder", "drop"])
        event = rng.choice(events)
        paths = _paths(event)
        if how == "value" and paths:
            *parent, last = rng.choice(paths)
            target = event
            for key in parent:
                target = target[key]
            target[last] = rng.choice(ODD_VALUES)
        elif how == "delete" and paths:
            *parent, last = rng.choice(paths)
            target = event
            for key in parent:
                target = target[key]
            del target[last]
        elif how == "data_only":
            named = False
        elif how == "reorder":
            rng.shuffle(events)
        elif how == "drop":
            events.remove(event)
    data = bytearray(encode(events, named=named))
    cut = rng.random()
    if cut < 0.15:
        del data[rng.randrange(len(data)) :]
    elif cut < 0.3:
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def _request(name: str) -> Request:
    body = {
        "model": "claude-sonnet-5-5",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": f"[[body:{name}]]"}],
    }
    return Request(
        row_id=name,
        line=1,
        model="claude-sonnet-5-5",
        max_tokens=16,
        body=json.dumps(body).encode(),
        fingerprint=name,
        estimated_input_tokens=4,
    )


def test_mutated_streams_are_always_classified() -> None:
    rng = random.Random(20261129)
    outcomes: dict[str, int] = {}
    with serve_hostile() as server:
        for i in range(400):
            server.bodies[str(i)] = mutate(rng)

        async def main() -> None:
            url = httpx.URL(server.base_url + "/v1/messages")
            async with new_http_client(4, Bounds(idle_timeout=5, attempt_timeout=10)) as http:
                for name in server.bodies:
                    try:
                        result = await stream_message(
                            http, url, api_headers(TEST_KEY), _request(name)
                        )
                    except ApiError as exc:
                        kind = type(exc).__name__
                    else:
                        assert isinstance(result, Completion)
                        kind = "ok"
                    outcomes[kind] = outcomes.get(kind, 0) + 1

        anyio.run(main)
    assert sum(outcomes.values()) == 400
    # The mutations reach every kind of classification, not one catch-all.
    assert {"ok", "MalformedError", "EofWithoutStop"} <= set(outcomes), outcomes


def test_a_run_over_mutated_streams_ends_with_no_internal_error(tmp_path: Path) -> None:
    rng = random.Random(17)
    with serve_hostile() as server:
        rows = []
        for i in range(60):
            server.bodies[str(i)] = mutate(rng)
            rows.append({"id": str(i), "prompt": f"row [[body:{i}]]"})
        write_jsonl(tmp_path / "input.jsonl", rows)
        proc = subprocess.run(
            [
                sys.executable, "-m", "runner", "run", "--input", str(tmp_path / "input.jsonl"),
                "--id-column", "id", "--model", "claude-sonnet-5-5",
                "--base-url", server.base_url, "--output-dir", str(tmp_path / "reports"),
                "--run-id", "fuzz", "--max-attempts", "2", "--quiet",
            ],
            env={**os.environ, "ANTHROPIC_API_KEY": TEST_KEY},
            capture_output=True,
            timeout=120,
            check=False,
        )  # fmt: skip
    stderr = proc.stderr.decode()
    assert proc.returncode in (0, 1), stderr
    assert "internal error" not in stderr and "Traceback" not in stderr
    results = pl.read_parquet(tmp_path / "reports" / "input" / "fuzz" / "results" / "*.parquet")
    assert results.height == 60
