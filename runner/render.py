"""Turn an input row into a Messages API request body, or say why it cannot be sent."""

from __future__ import annotations

import datetime
import hashlib
import json
import string
from typing import TYPE_CHECKING, Any

from runner.errors import JobFileError
from runner.models import InputRow, InvalidRow, Request

if TYPE_CHECKING:  # job.py checks templates with parse_template: no import cycle
    from runner.job import RequestSpec

# Anthropic's tokenizer gives roughly 3.5 characters a token for English text;
# the limiter corrects this estimate with the real usage once a stream reports it.
CHARS_PER_TOKEN = 3.5


# One encoder for every row: json.dumps would rebuild one (and check its options) each call.
_encode_string = json.JSONEncoder(ensure_ascii=False).encode


class Renderer:
    """Fills the prompt template from a row's columns and encodes the request body once."""

    def __init__(self, spec: RequestSpec) -> None:
        template = spec.prompt if spec.prompt is not None else "{" + spec.prompt_column + "}"
        self.spec = spec
        self._pieces = parse_template(template)
        self.columns = sorted({name for _, name in self._pieces if name is not None})
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
        self._system_chars = len(spec.system or "")
        # Everything but the prompt is the same for every row: encode and hash it once,
        # so a row costs one small string encoding and one hash update.
        static = json.dumps(fields, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        self._fingerprint_seed = hashlib.blake2b(static.encode(), digest_size=12)
        self._body_prefix = (
            static[:-1] + ',"stream":true,"messages":[{"role":"user","content":'
        ).encode()

    def render(self, row: InputRow) -> Request | InvalidRow:
        """The request for `row`, or an InvalidRow naming the column that is missing or wrong."""
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
        )


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
