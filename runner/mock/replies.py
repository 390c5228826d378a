"""Deterministic replies: the same prompt always gets the same text, cut at max_tokens.

The word list mixes multi-byte UTF-8 (é, ü, 日本語, emoji), double quotes, backslashes
and newlines, so a client must reassemble characters split across reads and decode
JSON escapes to get the text right.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from runner.mock.wire import ParsedRequest, text_tokens

MIN_REPLY_TOKENS = 5
MAX_REPLY_TOKENS = 120
# By default a text delta carries between one and this many tokens, as the real API's do.
MAX_TOKENS_PER_DELTA = 4

# Each entry is one output token.
WORDS: tuple[str, ...] = (
    " the",
    " a",
    " mock",
    " reply",
    " streams",
    " tokens",
    " slowly",
    " and",
    " of",
    " to",
    " café",
    " über",
    " naïve",
    " Straße",
    " 日本語",
    " テキスト",
    " 🙂",
    " 🚀",
    " —",
    ' "quoted"',
    ' say "hi"',
    " back\\slash",
    " C:\\path",
    " {json}",
    " </s>",
    ",",
    ".",
    "!",
    "\n",
    "\n\n",
    "\t",
)


@dataclass(frozen=True, slots=True)
class Reply:
    """What the model "says": the tokens of each delta, their total, and why it stopped.

    Besides the text: a thinking block before it (with its signature) when thinking is
    on, and a tool_use block after it when the model calls a tool.
    """

    chunks: tuple[tuple[str, ...], ...]  # the tokens shown in each text delta
    output_tokens: int
    stop_reason: str
    stop_sequence: str | None = None
    thinking: tuple[str, ...] = ()  # the thinking deltas
    signature: str = ""
    tool_use: Mapping[str, Any] | None = None  # {"id", "name", "input"}
    stop_details: Mapping[str, Any] | None = None  # a refusal's category and explanation

    @property
    def deltas(self) -> tuple[str, ...]:
        """The text of each delta."""
        return tuple("".join(chunk) for chunk in self.chunks)

    @property
    def text(self) -> str:
        """The whole reply text."""
        return "".join(token for chunk in self.chunks for token in chunk)


def generate_reply(
    request: ParsedRequest,
    reply_tokens: tuple[int, int] = (MIN_REPLY_TOKENS, MAX_REPLY_TOKENS),
    tokens_per_delta: int = 0,
) -> Reply:
    """The reply to `request`: length, words and delta sizes all drawn from its seed.

    The length is drawn from `reply_tokens` (inclusive); `tokens_per_delta` fixes the
    tokens of each text delta (0: one to MAX_TOKENS_PER_DELTA at random).
    """
    rng = random.Random(request.reply_seed)
    if REFUSAL_MARKER in request.prompt:
        return REFUSAL
    thinking: tuple[str, ...] = ()
    if request.thinking is not None:
        thinking = _thinking(rng, request)
    budget = request.max_tokens - len(thinking)
    tool = _tool_to_call(request)
    if tool is not None:
        call = {
            "id": "toolu_mock_" + hashlib.sha256(request.reply_seed).hexdigest()[:20],
            "name": tool,
            "input": instance(request.tools[tool], rng),
        }
        tokens = text_tokens(json.dumps(call["input"]))
        signature = _signature(request, thinking)
        return Reply((), len(thinking) + tokens, "tool_use", None, thinking, signature, call)
    if request.output_schema is not None:
        text = json.dumps(instance(request.output_schema, rng), ensure_ascii=False)
        pieces = [text[i : i + 4] for i in range(0, len(text), 4)]  # a token is ~4 characters
        stop = "end_turn"
        if len(pieces) > budget:
            pieces, stop = pieces[: max(budget, 0)], "max_tokens"
        chunks = tuple(tuple(pieces[i : i + 3]) for i in range(0, len(pieces), 3))
        output = len(thinking) + len(pieces)
        return Reply(chunks, output, stop, None, thinking, _signature(request, thinking))
    reply = _text_reply(rng, request, budget, reply_tokens, tokens_per_delta)
    if not thinking:
        return reply
    return replace(
        reply,
        output_tokens=reply.output_tokens + len(thinking),
        thinking=thinking,
        signature=_signature(request, thinking),
    )


def _text_reply(
    rng: random.Random,
    request: ParsedRequest,
    budget: int,
    reply_tokens: tuple[int, int],
    tokens_per_delta: int,
) -> Reply:
    """Words from the list, cut at the budget or a stop sequence."""
    length = rng.randint(*reply_tokens)
    # One random byte per draw: cheap, and the small modulo bias does not matter here.
    tokens = [WORDS[b % len(WORDS)] for b in rng.randbytes(length)]
    if tokens_per_delta:
        sizes = [tokens_per_delta] * length
    else:
        sizes = [1 + b % MAX_TOKENS_PER_DELTA for b in rng.randbytes(length)]
    tokens[0] = tokens[0].lstrip(" ") or tokens[0]
    stop_reason = "end_turn"
    if length > budget:
        tokens = tokens[: max(budget, 0)]
        stop_reason = "max_tokens"
    stop_sequence = None
    if request.stop_sequences:
        tokens, stop_sequence = _cut_at_stop_sequence(tokens, request.stop_sequences)
        if stop_sequence is not None:
            stop_reason = "stop_sequence"
    output_tokens = len(tokens)
    if stop_sequence is not None:
        # The last token holds the end of the stop sequence: generated and paid for, not shown.
        keep = "".join(tokens).index(stop_sequence)
        shown: list[str] = []
        for token in tokens:
            shown.append(token[:keep])
            keep -= len(shown[-1])
        tokens = [token for token in shown if token]
    chunks = []
    i = 0
    for size in sizes:
        if i >= len(tokens):
            break
        chunks.append(tuple(tokens[i : i + size]))
        i += size
    return Reply(tuple(chunks), output_tokens, stop_reason, stop_sequence)


def _cut_at_stop_sequence(
    tokens: list[str], stops: tuple[str, ...]
) -> tuple[list[str], str | None]:
    """Tokens up to the one that completes the first stop sequence, and that sequence."""
    text = ""
    for n, token in enumerate(tokens, start=1):
        text += token
        hits = [(text.find(s), s) for s in stops if s in text]
        if hits:
            return tokens[:n], min(hits)[1]
    return tokens, None


def _tool_to_call(request: ParsedRequest) -> str | None:
    """The custom tool the model calls: the forced one, else the first while tools may be used.

    A conversation whose last user turn returns a tool's result gets a text answer, so a
    tool loop ends.
    """
    choice = request.tool_choice or {"type": "auto"}
    if not request.tools or choice.get("type") == "none":
        return None
    if choice.get("type") == "tool":
        return str(choice["name"])
    if request.answers_tool and choice.get("type") != "any":
        return None
    return next(iter(request.tools))


def _thinking(rng: random.Random, request: ParsedRequest) -> tuple[str, ...]:
    """Thinking deltas: a few words each, within budget_tokens when one is set."""
    budget = int((request.thinking or {}).get("budget_tokens") or 64)
    count = min(rng.randint(8, 40), budget, max(request.max_tokens - 1, 1))
    words = [THINKING_WORDS[b % len(THINKING_WORDS)] for b in rng.randbytes(count)]
    return tuple(words)


def _signature(request: ParsedRequest, thinking: tuple[str, ...]) -> str:
    """An opaque signature of the thinking, as the API sends in signature_delta."""
    if not thinking:
        return ""
    digest = hashlib.sha256(request.reply_seed + "".join(thinking).encode()).digest()
    return base64.b64encode(digest * 2).decode()


# A prompt holding this marker is refused, as the API refuses a policy violation: a few
# words, stop_reason `refusal` and its stop_details (the category, an explanation).
REFUSAL_MARKER = "[[refusal]]"
REFUSAL = Reply(
    chunks=(("I", " can't", " help", " with", " that."),),
    output_tokens=5,
    stop_reason="refusal",
    stop_details={
        "type": "refusal",
        "category": "cyber",
        "explanation": "The request asks for help with malware.",
    },
)

THINKING_WORDS = (" Let", " me", " consider", " the", " question", " carefully", ".", " First")


def instance(schema: Mapping[str, Any], rng: random.Random) -> Any:
    """A value that satisfies the JSON schema (the subset structured outputs support)."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return instance(schema[key][0], rng)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: instance(sub, rng) for name, sub in properties.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), 1)
        return [instance(schema.get("items") or {"type": "string"}, rng) for _ in range(count)]
    if kind == "integer":
        return int(schema.get("minimum", 0)) + rng.randint(0, 9)
    if kind == "number":
        return float(schema.get("minimum", 0)) + rng.randint(0, 99) / 4
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    words = [WORDS[b % 10].strip() for b in rng.randbytes(3)]  # plain ASCII words
    return " ".join(words)
