"""The request parameters beyond the prompt, checked as the Messages API checks them.

Models, sampling under each `anthropic-version`, tools and tool_choice, extended
thinking, structured outputs (`output_config`), service tiers and assistant prefill.
Sources: https://docs.anthropic.com/en/api/messages, .../build-with-claude/tool-use,
.../extended-thinking, .../structured-outputs, and the model pages (prefill).
"""

from __future__ import annotations

import re
import tomllib
from functools import lru_cache
from importlib import resources
from typing import Any

from runner.mock.errors import WireError

# The version that removed the sampling parameters (the model samples as it was tuned).
NO_SAMPLING_VERSION = "2026-10-21"
SAMPLING_PARAMS = ("temperature", "top_p", "top_k")
THINKING_MIN_BUDGET = 1024
EFFORTS = ("low", "medium", "high", "max")
SERVICE_TIERS = ("auto", "standard_only")
TOOL_CHOICES = ("auto", "any", "tool", "none")
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
# A dated snapshot of a model id (claude-sonnet-4-5-20250929) is that model.
_DATED = re.compile(r"-\d{8}$")
# Models from the 4.6 generation on refuse a conversation that ends with the assistant.
_NO_PREFILL = re.compile(r"^claude-[a-z]+-(4-[6-9]|[5-9](-\d+)?)(\b|-)")


@lru_cache(maxsize=1)
def known_models() -> frozenset[str]:
    """The models the mock serves: those of runner's built-in price table."""
    text = resources.files("runner").joinpath("data/prices.toml").read_text("utf-8")
    return frozenset(tomllib.loads(text).get("models", {}))


def check_model(model: str, extra: tuple[str, ...] = ()) -> None:
    """An unknown model is the API's 404 not_found_error."""
    if model in extra:
        return
    if _DATED.sub("", model) not in known_models() and model not in known_models():
        raise WireError(f"model: {model}", 404, "not_found_error")


def check_sampling(data: dict[str, Any], version: str) -> None:
    """Sampling ranges; under NO_SAMPLING_VERSION the parameters are gone from the API."""
    if version >= NO_SAMPLING_VERSION:
        for name in SAMPLING_PARAMS:
            if name in data:
                raise WireError(f"{name}: Extra inputs are not permitted")
        return
    for name in ("temperature", "top_p"):
        value = data.get(name)
        if value is not None and (not _is_number(value) or not 0.0 <= value <= 1.0):
            raise WireError(f"{name}: Input should be a number between 0 and 1")
    top_k = data.get("top_k")
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        raise WireError("top_k: Input should be a non-negative integer")


def check_prefill(model: str, messages: list[Any]) -> None:
    """A final assistant message (prefill) is refused by 4.6+ models."""
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "assistant" and _NO_PREFILL.match(model):
        raise WireError(
            "This model does not support assistant message prefill. "
            "The conversation must end with a user message."
        )


def parse_tools(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The custom tools by name (server tools, which have their own `type`, pass as they are)."""
    tools = data.get("tools")
    if tools is None:
        if "tool_choice" in data:
            raise WireError("tool_choice: tool_choice may only be specified while providing tools")
        return {}
    if not isinstance(tools, list):
        raise WireError("tools: Input should be a valid list")
    custom: dict[str, dict[str, Any]] = {}
    names: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools.{i}"
        if not isinstance(tool, dict):
            raise WireError(f"{where}: Input should be a valid dictionary")
        name = tool.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise WireError(f"{where}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
        if name in names:
            raise WireError("tools: Tool names must be unique.")
        names.add(name)
        if tool.get("type", "custom") != "custom":
            continue  # a server tool (web_search_20250305, ...): the API runs it
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise WireError(f"{where}.input_schema: Field required")
        if schema.get("type") != "object":
            raise WireError(f"{where}.input_schema.type: Input should be 'object'")
        extra = set(tool) - {"name", "description", "input_schema", "type", "cache_control"}
        extra -= {"strict", "input_examples"}
        if extra:
            raise WireError(f"{where}.{sorted(extra)[0]}: Extra inputs are not permitted")
        custom[name] = schema
    _check_tool_choice(data.get("tool_choice"), names)
    return custom


def _check_tool_choice(choice: Any, names: set[str]) -> None:
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in TOOL_CHOICES:
        raise WireError("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    if choice["type"] == "tool" and choice.get("name") not in names:
        raise WireError(f"tool_choice.name: no tool named {choice.get('name')!r} in tools")


def parse_thinking(data: dict[str, Any], max_tokens: int) -> dict[str, Any] | None:
    """The thinking configuration when thinking is on; None when it is off."""
    thinking = data.get("thinking")
    if thinking is None:
        return None
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "disabled":
        return None
    if kind == "adaptive":
        return thinking
    if kind != "enabled":
        raise WireError("thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'")
    budget = thinking.get("budget_tokens")
    if not _is_int(budget):
        raise WireError("thinking.enabled.budget_tokens: Field required")
    if budget < THINKING_MIN_BUDGET:
        raise WireError(
            f"thinking.enabled.budget_tokens: Input should be greater than or equal to "
            f"{THINKING_MIN_BUDGET}"
        )
    if max_tokens and budget >= max_tokens:
        raise WireError("`max_tokens` must be greater than `thinking.budget_tokens`.")
    return thinking


def check_thinking_compatible(data: dict[str, Any], thinking: dict[str, Any] | None) -> None:
    """What extended thinking rules out: forced tool use, top_k, temperature other than 1."""
    if thinking is None:
        return
    choice = data.get("tool_choice") or {}
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        raise WireError("Thinking may not be enabled when tool_choice forces tool use.")
    if data.get("temperature", 1) != 1:
        raise WireError(
            "`temperature` may only be set to 1 when thinking is enabled. "
            "Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
        )
    if "top_k" in data:
        raise WireError("`top_k` is not supported when thinking is enabled.")


def parse_output_schema(data: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema the answer must satisfy (output_config.format), if any."""
    config = data.get("output_config")
    fmt = None
    if config is not None:
        if not isinstance(config, dict):
            raise WireError("output_config: Input should be a valid dictionary")
        extra = set(config) - {"format", "effort"}
        if extra:
            raise WireError(f"output_config.{sorted(extra)[0]}: Extra inputs are not permitted")
        effort = config.get("effort")
        if effort is not None and effort not in EFFORTS:
            names = ", ".join(f"'{e}'" for e in EFFORTS)
            raise WireError(f"output_config.effort: Input should be one of {names}")
        fmt = config.get("format")
        where = "output_config.format"
    if fmt is None and data.get("output_format") is not None:  # the beta's earlier spelling
        fmt, where = data["output_format"], "output_format"
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise WireError(f"{where}.type: Input should be 'json_schema'")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise WireError(f"{where}.schema: Field required")
    return schema


def check_service_tier(data: dict[str, Any]) -> None:
    """service_tier is one of the documented tiers."""
    tier = data.get("service_tier")
    if tier is not None and tier not in SERVICE_TIERS:
        raise WireError("service_tier: Input should be 'auto' or 'standard_only'")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
