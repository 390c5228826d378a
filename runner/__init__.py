"""runner: a batch prompt runner and usage accountant for the Anthropic Messages API."""

from __future__ import annotations

__version__ = "0.1.0"
