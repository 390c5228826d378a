"""Prompt caching: which input tokens are written to, read from, or bypass the cache.

Follows https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching: a
`cache_control` block caches the prefix up to and including it; the longest prefix
already cached is read, the rest up to the last breakpoint is written. Entries live
for the server's lifetime (the mock does not expire them after 5 minutes or 1 hour).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from runner.mock.wire import ParsedRequest


@dataclass(frozen=True, slots=True)
class InputUsage:
    """How a prompt's input tokens split between plain input and the cache."""

    input_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_5m: int = 0
    cache_creation_1h: int = 0

    def as_usage(self, output_tokens: int) -> dict[str, object]:
        """The `usage` object of the Messages API."""
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_creation_5m,
                "ephemeral_1h_input_tokens": self.cache_creation_1h,
            },
            "output_tokens": output_tokens,
        }


@dataclass(frozen=True, slots=True)
class _Breakpoint:
    key: str
    tokens: int  # prompt tokens up to and including the breakpoint's block
    ttl: str


class PromptCache:
    """The set of cached prefixes, keyed by a hash of the model and the prefix's blocks."""

    def __init__(self) -> None:
        self._prefixes: set[str] = set()

    def clear(self) -> None:
        """Forget every cached prefix."""
        self._prefixes.clear()

    def peek(self, request: ParsedRequest) -> InputUsage:
        """The usage `request` would report now, without writing to the cache."""
        return self._split(request, write=False)

    def use(self, request: ParsedRequest) -> InputUsage:
        """The usage `request` reports, writing its new prefixes to the cache."""
        return self._split(request, write=True)

    def _split(self, request: ParsedRequest, write: bool) -> InputUsage:
        breakpoints = _breakpoints(request)
        if not breakpoints:
            return InputUsage(request.input_tokens)
        read = 0
        first_new = 0
        for i, point in enumerate(breakpoints):
            if point.key in self._prefixes:
                read, first_new = point.tokens, i + 1
        created = {"5m": 0, "1h": 0}
        previous = read
        for point in breakpoints[first_new:]:
            created[point.ttl] += point.tokens - previous
            previous = point.tokens
            if write:
                self._prefixes.add(point.key)
        cached = max(read, breakpoints[-1].tokens)
        return InputUsage(
            input_tokens=request.input_tokens - cached,
            cache_creation_input_tokens=created["5m"] + created["1h"],
            cache_read_input_tokens=read,
            cache_creation_5m=created["5m"],
            cache_creation_1h=created["1h"],
        )


def _breakpoints(request: ParsedRequest) -> list[_Breakpoint]:
    if not any(b.cache_ttl for b in request.blocks):
        return []
    digest = hashlib.sha256(request.model.encode())
    points = []
    tokens = 0
    for block in request.blocks:
        # The role and the message boundary are part of the prefix, not only the text.
        text = block.text.encode()
        start = "message" if block.starts_message else "block"
        digest.update(f"|{start}:{block.role}:{len(text)}:".encode() + text)
        tokens += block.tokens
        if block.cache_ttl:
            points.append(_Breakpoint(digest.copy().hexdigest(), tokens, block.cache_ttl))
    return points
