"""Images and PDFs named by a column (a path or a URL) as Messages API content blocks.

A local file becomes a base64 block whose media type comes from its first bytes (not
its name); a URL becomes a `url` source the API fetches itself. Source:
https://docs.anthropic.com/en/docs/build-with-claude/vision and .../pdf-support.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

__all__ = ["AttachmentError", "attachment_block", "estimated_tokens"]

# Magic numbers of the media types the API accepts (image/* for `image`, PDF for `document`).
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),  # after "RIFF" and a 4-byte size
    (b"%PDF-", 0, "application/pdf"),
)
# An image costs about (width x height) / 750 tokens, at most about 1,600 once the API
# scales it down; without decoding the image, the limiter assumes the most. A PDF page
# costs 1,500-3,000 tokens of text and image; a page is roughly 50 KB.
_IMAGE_TOKENS = 1_600
_PDF_TOKENS_PER_BYTE = 3_000 / 50_000


class AttachmentError(ValueError):
    """A column's attachment cannot be sent: the reason, for the invalid row."""


def attachment_block(value: str, base: Path | None) -> dict[str, Any]:
    """The content block for one path or URL; relative paths are looked up beside `base`."""
    if value.startswith(("https://", "http://")):
        kind = "document" if value.lower().split("?")[0].endswith(".pdf") else "image"
        return {"type": kind, "source": {"type": "url", "url": value}}
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None and (base / path).exists():
        path = base / path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AttachmentError(f"attachment {value}: no such file") from None
    except OSError as exc:
        raise AttachmentError(f"attachment {value}: cannot read: {exc.strerror or exc}") from None
    media_type = _media_type(data)
    if media_type is None:
        raise AttachmentError(f"attachment {value}: not a PNG, JPEG, GIF, WebP image or a PDF")
    kind = "document" if media_type == "application/pdf" else "image"
    encoded = base64.b64encode(data).decode("ascii")
    return {"type": kind, "source": {"type": "base64", "media_type": media_type, "data": encoded}}


def estimated_tokens(block: dict[str, Any]) -> int:
    """Input tokens a block will likely cost, for the limiter's admission before usage is known."""
    source = block.get("source") or {}
    if block.get("type") == "document" and source.get("type") == "base64":
        return max(1_500, int(len(source.get("data", "")) * 3 / 4 * _PDF_TOKENS_PER_BYTE))
    return _IMAGE_TOKENS if block.get("type") == "image" else 3_000


def _media_type(data: bytes) -> str | None:
    for magic, offset, media_type in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return media_type
    return None
