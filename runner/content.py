"""What an answer says beyond its text: tool calls, thinking, and JSON when JSON was asked.

Blocks arrive as `content_block_start` (a tool_use's id and name), deltas by type
(`input_json_delta` pieces of a tool's input, `thinking_delta`, `signature_delta`) and
whole blocks in a non-streamed Message. Source:
https://docs.anthropic.com/en/docs/build-with-claude/streaming (content block deltas).
No I/O; a malformed piece never raises: a tool input that is not JSON is kept as text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from runner.models import Request, RowResult, Status

if TYPE_CHECKING:  # reading.py builds Completions from this module's collector
    from runner.reading import Completion

__all__ = [
    "AnswerContent",
    "ContentCollector",
    "parse_output_json",
    "with_answer_content",
]


@dataclass(frozen=True, slots=True)
class AnswerContent:
    """The non-text content of one answer."""

    tool_calls: tuple[dict[str, Any], ...] = ()  # {"id", "name", "input"} each
    thinking: str = ""

    def tool_calls_json(self) -> str | None:
        """The tool calls as the results' `tool_calls` column holds them (None if none)."""
        if not self.tool_calls:
            return None
        return json.dumps(list(self.tool_calls), ensure_ascii=False, separators=(",", ":"))


class ContentCollector:
    """Assembles tool_use and thinking blocks from stream events or a whole Message."""

    __slots__ = ("_inputs", "_thinking", "_tools")

    def __init__(self) -> None:
        self._tools: dict[int, dict[str, Any]] = {}
        self._inputs: dict[int, list[str]] = {}
        self._thinking: list[str] = []

    def start(self, index: object, block: object) -> None:
        """A content_block_start: remember a tool_use block's id and name."""
        if isinstance(block, dict) and block.get("type") == "tool_use" and isinstance(index, int):
            self._tools[index] = {"id": block.get("id"), "name": block.get("name")}
            given = block.get("input")
            if isinstance(given, dict) and given:
                self._inputs[index] = [json.dumps(given)]

    def delta(self, index: object, delta: dict[str, Any]) -> None:
        """A content_block_delta that is not text."""
        kind = delta.get("type")
        if kind == "input_json_delta" and isinstance(index, int):
            piece = delta.get("partial_json")
            if isinstance(piece, str):
                self._inputs.setdefault(index, []).append(piece)
        elif kind == "thinking_delta" and isinstance(delta.get("thinking"), str):
            self._thinking.append(delta["thinking"])

    def block(self, index: int, block: dict[str, Any]) -> None:
        """A whole block of a non-streamed Message."""
        if block.get("type") == "tool_use":
            self._tools[index] = {"id": block.get("id"), "name": block.get("name")}
            self._inputs[index] = [json.dumps(block.get("input", {}))]
        elif block.get("type") == "thinking" and isinstance(block.get("thinking"), str):
            self._thinking.append(block["thinking"])

    def content(self) -> AnswerContent:
        """What was collected, tool inputs parsed (an empty input is `{}`)."""
        calls = []
        for index in sorted(self._tools):
            text = "".join(self._inputs.get(index, [])) or "{}"
            try:
                given: Any = json.loads(text)
            except ValueError:
                given = text  # kept as sent, for the user to see
            calls.append({**self._tools[index], "input": given})
        return AnswerContent(tuple(calls), "".join(self._thinking))


def with_answer_content(result: RowResult, request: Request, completion: Completion) -> RowResult:
    """An ok row with the columns its answer fills beyond its text.

    A structured answer that is not valid JSON makes the row an `error` with error_type
    `invalid_output` (its text stays, for a look at what came back).
    """
    content = completion.content
    fields: dict[str, Any] = {
        "stop_details": completion.stop_details,
        "tool_calls": content.tool_calls_json(),
        "thinking": content.thinking or None if request.keep_thinking else None,
        "thinking_tokens": completion.thinking_tokens,
    }
    if request.wants_json and completion.stop_reason != "tool_use":
        parsed, problem = parse_output_json(completion.text)
        fields["output_json"] = parsed
        if problem is not None:
            fields.update(status=Status.ERROR, error_type="invalid_output", error_message=problem)
    return replace(result, **fields)


def parse_output_json(text: str) -> tuple[str | None, str | None]:
    """A structured answer as compact JSON text, or (None, why it is not valid JSON)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        return None, f"the answer is not valid JSON: {exc}"
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")), None
