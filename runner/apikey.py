"""The API key: checked before anything is sent, and masked in every text that could carry it.

Masking happens in one function, `mask`, applied where text enters (every string the
server or the HTTP stack hands the client, in `client.py`) and where it leaves (the log
handlers and the CLI's last line). Whatever sits between, Parquet, exports, reports,
estimates, only ever holds text that went through it.
"""

from __future__ import annotations

import ipaddress
import os

import httpx

from runner.errors import UsageError

MASK = "***"
# A key shorter than this is a placeholder ("x", "test"): masking every occurrence of
# it would mangle file names and messages instead of hiding a secret.
_SHORTEST_SECRET = 8
_keys: set[str] = set()
# Where the official SDKs (and so runner) take credentials from: the key, and the bearer token.
_CREDENTIAL_VARIABLES = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")


def remember_key(key: str) -> None:
    """Mask `key` from now on, in this process."""
    if len(key) >= _SHORTEST_SECRET:
        _keys.add(key)


def mask(text: str) -> str:
    """`text` with every remembered key (and the environment's credentials) replaced by ***."""
    for key in _keys:
        if key in text:
            text = text.replace(key, MASK)
    for name in _CREDENTIAL_VARIABLES:
        secret = os.environ.get(name) or ""
        if len(secret) >= _SHORTEST_SECRET and secret in text:
            text = text.replace(secret, MASK)
    return text


def mask_optional(text: str | None) -> str | None:
    """`mask` for a field that may be absent."""
    return None if text is None else mask(text)


def check_endpoint(api_key: str, base_url: str, allow_insecure_http: bool) -> None:
    """Before anything is sent: the key is usable and masked, the URL safe to send it to."""
    remember_key(api_key)
    check_key(api_key)
    check_base_url(base_url, allow_insecure_http)


def check_key(key: str) -> None:
    """Refuse a key that HTTP cannot carry as it is (exit 2), without ever printing it."""
    if key != key.strip():
        raise UsageError(
            "the API key starts or ends with whitespace (a trailing newline from a file?): "
            "strip it and try again"
        )
    if any(ch.isspace() for ch in key):
        raise UsageError("the API key contains whitespace: check how it was set")
    if not key.isascii() or not key.isprintable():
        raise UsageError(
            "the API key contains non-ASCII or control characters: check how it was set"
        )


def check_base_url(base_url: str, allow_insecure_http: bool) -> None:
    """Refuse to send the key in clear text to another machine unless told to (exit 2)."""
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL as exc:
        raise UsageError(f"base URL {base_url!r} is not a URL: {exc}") from None
    if url.scheme != "http" or allow_insecure_http or _is_loopback(url.host):
        return
    raise UsageError(
        f"base URL {base_url} is plain http:// to another host: the API key would cross "
        "the network unencrypted. Use https://, or pass --allow-insecure-http if you mean it"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
