"""Deterministic replies: the same prompt always gets the same text, cut at max_tokens.

The word list mixes multi-byte UTF-8 (é, ü, 日本語, emoji), double quotes, backslashes
and newlines, so a client must reassemble characters split across reads and decode
JSON escapes to get the text right.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from runner.mock.wire import ParsedRequest

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
    """What the model "says": the tokens of each delta, their total, and why it stopped."""

    chunks: tuple[tuple[str, ...], ...]  # the tokens shown in each text delta
    output_tokens: int
    stop_reason: str
    stop_sequence: str | None = None

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
    length = rng.randint(*reply_tokens)
    # One random byte per draw: cheap, and the small modulo bias does not matter here.
    tokens = [WORDS[b % len(WORDS)] for b in rng.randbytes(length)]
    if tokens_per_delta:
        sizes = [tokens_per_delta] * length
    else:
        sizes = [1 + b % MAX_TOKENS_PER_DELTA for b in rng.randbytes(length)]
    tokens[0] = tokens[0].lstrip(" ") or tokens[0]
    stop_reason = "end_turn"
    if length > request.max_tokens:
        tokens = tokens[: request.max_tokens]
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
