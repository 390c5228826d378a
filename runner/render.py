"""Turn an input row into a Messages API request body, or say why it cannot be sent."""

from __future__ import annotations

import datetime
import hashlib
import json
import string
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.attachments import AttachmentError, attachment_block, estimated_tokens
from runner.errors import JobFileError
from runner.models import InputRow, InvalidRow, Request
from runner.request_params import DEFAULT_ROW_FIELDS, ROW_PARAM_MESSAGES, param_from_cell

if TYPE_CHECKING:  # job.py checks templates with parse_template: no import cycle
    from runner.job import RequestSpec

# Anthropic's tokenizer gives roughly 3.5 characters a token for English text;
# the limiter corrects this estimate with the real usage once a stream reports it.
CHARS_PER_TOKEN = 3.5


# One encoder for every row: json.dumps would rebuild one (and check its options) each call.
_encode_string = json.JSONEncoder(ensure_ascii=False).encode


class Renderer:
    """Turns a row into its request body: the template, the row's own fields, attachments.

    Most jobs send one user message from a template with the same settings for every
    row: that body is encoded once up to the prompt, so a row costs one small string
    encoding and one hash update. A row that sets its own fields (a `model` column, a
    `messages` conversation, attachments) or a Message Batches request line is built
    as a dict and encoded whole.
    """

    def __init__(
        self,
        spec: RequestSpec,
        input_columns: Sequence[str] = (),
        *,
        batch_requests: bool = False,
        base: Path | None = None,
    ) -> None:
        self.spec = spec
        self.batch_requests = batch_requests
        self._base = base
        self.row_fields = _row_fields(spec, input_columns) if not batch_requests else {}
        self._messages_column = self.row_fields.pop(ROW_PARAM_MESSAGES, None)
        self._attachments = list(spec.attachments or ())
        if spec.prompt is None and (self._messages_column or batch_requests):
            self._pieces: list[tuple[str, str | None]] = []  # the conversation is the row's
        else:
            template = spec.prompt if spec.prompt is not None else "{" + spec.prompt_column + "}"
            self._pieces = parse_template(template)
        named = {name for _, name in self._pieces if name is not None}
        self.columns = sorted(named | set((spec.columns or {}).values()))
        # Columns the input must have, though a row may leave them out (no attachment).
        self.optional_columns = sorted(set(self._attachments))
        self.static = self._static_fields()
        self._system_chars = len(spec.system or "")
        static = json.dumps(self.static, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        self._fingerprint_seed = hashlib.blake2b(static.encode(), digest_size=12)
        # The body keeps nested objects in the job's order: a JSON schema's property order
        # is the order the answer's fields come in.
        sent = json.dumps(
            dict(sorted(self.static.items())), ensure_ascii=False, separators=(",", ":")
        )
        self._body_prefix = (sent[:-1] + ',"messages":[{"role":"user","content":').encode()
        self._wants_json = _wants_json(self.static)
        self._simple = not (batch_requests or self.row_fields or self._messages_column)
        self._simple = self._simple and not self._attachments

    def _static_fields(self) -> dict[str, Any]:
        """The fields every row shares: the job's model, settings and passthrough params."""
        spec = self.spec
        fields: dict[str, Any] = {"model": spec.model, "max_tokens": spec.max_tokens}
        if spec.system:
            if spec.cache_system:
                fields["system"] = [
                    {"type": "text", "text": spec.system, "cache_control": {"type": "ephemeral"}}
                ]
            else:
                fields["system"] = spec.system
        for name in ("temperature", "top_p", "top_k", "stop_sequences"):
            value = getattr(spec, name)
            if value is not None:
                fields[name] = value
        fields.update(spec.params or {})
        return fields

    def render(self, row: InputRow) -> Request | InvalidRow:
        """The request for `row`, or an InvalidRow naming the column that is missing or wrong."""
        prompt: str | None = None
        if self._pieces:
            made = self._prompt(row)
            if isinstance(made, InvalidRow):
                return made
            prompt = made
        if self._simple:
            assert prompt is not None, "a simple job always has a template"
            return self._simple_request(row, prompt)
        try:
            body = self._body(row, prompt)
        except _RowProblem as problem:
            return InvalidRow(row.id, row.line, str(problem))
        if not isinstance(body.get("model"), str) or not body["model"]:
            return InvalidRow(row.id, row.line, "no model: the job sets none and the row neither")
        encoded = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        fingerprint = hashlib.blake2b(
            json.dumps(body, ensure_ascii=False, sort_keys=True).encode(), digest_size=12
        )
        max_tokens = body.get("max_tokens")
        return Request(
            row_id=row.id,
            line=row.line,
            model=body["model"],
            body=encoded,
            fingerprint=fingerprint.hexdigest(),
            estimated_input_tokens=_estimate(body),
            max_tokens=max_tokens if isinstance(max_tokens, int) else self.spec.max_tokens,
            wants_json=_wants_json(body),
            keep_thinking=self.spec.keep_thinking,
        )

    def _prompt(self, row: InputRow) -> str | InvalidRow:
        parts: list[str] = []
        for literal, name in self._pieces:
            parts.append(literal)
            if name is None:
                continue
            if name not in row.columns:
                return InvalidRow(row.id, row.line, f"missing column '{name}'")
            value = row.columns[name]
            parts.append(value if type(value) is str else template_text(value))
        prompt = "".join(parts)
        if not prompt.strip():
            return InvalidRow(row.id, row.line, "empty prompt")
        return prompt

    def _simple_request(self, row: InputRow, prompt: str) -> Request:
        encoded = _encode_string(prompt).encode()
        digest = self._fingerprint_seed.copy()
        digest.update(encoded)
        return Request(
            row_id=row.id,
            line=row.line,
            model=str(self.spec.model),
            body=self._body_prefix + encoded + b"}]}",
            fingerprint=digest.hexdigest(),
            estimated_input_tokens=int((len(prompt) + self._system_chars) / CHARS_PER_TOKEN) + 8,
            max_tokens=self.spec.max_tokens,
            wants_json=self._wants_json,
            keep_thinking=self.spec.keep_thinking,
        )

    def _body(self, row: InputRow, prompt: str | None) -> dict[str, Any]:
        """The whole body for a row that sets fields of its own (raises _RowProblem)."""
        if self.batch_requests:
            params = row.columns.get("params")
            if not isinstance(params, dict):
                raise _RowProblem("'params' must be an object (a Messages API request)")
            body = {k: v for k, v in self.static.items() if v is not None and k != "system"}
            body.update({k: v for k, v in params.items() if k != "stream"})
            return body
        body = {k: v for k, v in self.static.items() if v is not None}
        for param, column in self.row_fields.items():
            value = row.columns.get(column)
            if value is None or value == "":
                continue  # an empty cell keeps the job's value
            value, problem = param_from_cell(param, value)
            if problem is not None:
                raise _RowProblem(problem)
            body[param] = value
        messages = self._messages(row)
        groups = [self._attachment(row, column) for column in self._attachments]
        blocks = [block for group in groups for block in group]
        if prompt is not None or blocks:
            content: Any = prompt
            if blocks:  # images and documents before the text, as the docs advise
                content = [*blocks, *([{"type": "text", "text": prompt}] if prompt else [])]
            messages.append({"role": "user", "content": content})
        if not messages:
            raise _RowProblem("empty prompt")
        body["messages"] = messages
        return body

    def _messages(self, row: InputRow) -> list[dict[str, Any]]:
        """The row's conversation from its messages column: a list of {role, content}."""
        if self._messages_column is None:
            return []
        value = row.columns.get(self._messages_column)
        if value is None or value == "":
            return []
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise _RowProblem(
                    f"column '{self._messages_column}' is not a JSON list of messages"
                ) from None
        if not isinstance(value, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in value
        ):
            raise _RowProblem(
                f"column '{self._messages_column}' must be a list of {{role, content}} objects"
            )
        return list(value)

    def _attachment(self, row: InputRow, column: str) -> list[dict[str, Any]]:
        value = row.columns.get(column)
        if value is None or value == "":
            return []
        values = value if isinstance(value, list) else [value]
        try:
            return [attachment_block(str(item), self._base) for item in values]
        except AttachmentError as exc:
            raise _RowProblem(str(exc)) from None


class _RowProblem(Exception):
    """Why a row cannot become a request."""


def _row_fields(spec: RequestSpec, input_columns: Sequence[str]) -> dict[str, str]:
    """Request field -> the column that sets it: the job's mapping, then same-named columns."""
    fields = dict(spec.columns or {})
    if spec.row_fields:
        for name in DEFAULT_ROW_FIELDS:
            if name not in fields and name in input_columns and name != spec.prompt_column:
                fields[name] = name
    return fields


def _wants_json(body: dict[str, Any]) -> bool:
    """The request asks for a JSON answer (output_config.format, or the beta's output_format)."""
    config = body.get("output_config")
    return bool(isinstance(config, dict) and config.get("format")) or bool(
        body.get("output_format")
    )


def _estimate(body: dict[str, Any]) -> int:
    """Input tokens the body will likely cost: its text by length, attachments by kind."""
    chars = len(json.dumps(body.get("system") or "")) + len(json.dumps(body.get("tools") or ""))
    tokens = 8
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for block in content:
                if isinstance(block, dict) and block.get("type") in ("image", "document"):
                    tokens += estimated_tokens(block)
                else:
                    chars += len(json.dumps(block, ensure_ascii=False))
        else:
            chars += len(str(content or ""))
    return tokens + int(chars / CHARS_PER_TOKEN)


def parse_template(template: str) -> list[tuple[str, str | None]]:
    """Split a `{column}` template into (literal, column) pieces; `{{` and `}}` are braces."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise JobFileError(
            f"prompt template: {exc} (write {{{{ and }}}} for literal braces)"
        ) from None
    pieces: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is not None and (spec or conversion or name == ""):
            raise JobFileError(
                "prompt template: placeholders are plain column names like {text}, "
                f"not '{{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}}'"
            )
        pieces.append((literal, name))
    return pieces


def template_text(value: Any) -> str:
    """A column's value as a template writes it.

    Numbers as the file wrote them (JSONL keeps a float's own spelling, so 411.50
    stays 411.50), booleans as JSON writes them (`true`, `false`), null as nothing
    (as an empty CSV cell), lists and objects as compact JSON, dates in ISO 8601.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return _encode_compact(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return str(value)


_encode_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode
