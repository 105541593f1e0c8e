"""The router's chat answers as Messages API objects: the message, its content blocks,
stop reason and usage. Interlock's extras (usage.cost_usd and latency_ms, routing_decision)
ride along as on the chat API; Anthropic's SDKs keep unknown fields."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import orjson

from interlock.router.v1 import router_pb2 as pb
from services.common.wire.common import routing_to_json

log = logging.getLogger(__name__)
JSON = dict[str, Any]
STOP_REASONS = {
    pb.FINISH_REASON_STOP: "end_turn",
    pb.FINISH_REASON_LENGTH: "max_tokens",
    pb.FINISH_REASON_TOOL_CALLS: "tool_use",
    pb.FINISH_REASON_FUNCTION_CALL: "tool_use",
    pb.FINISH_REASON_CONTENT_FILTER: "refusal",
}


def message_id(request_id: str) -> str:
    """msg_<request id>, so a message is found in the logs and the ledger by its id."""
    return "msg_" + request_id.removeprefix("req_")


def stop_reason(finish: pb.FinishReason.ValueType) -> str:
    # Which stop sequence ended a reply is not reported by every provider, so a stop is end_turn.
    return STOP_REASONS.get(finish, "end_turn")


def usage_to_json(usage: pb.Usage) -> JSON:
    """Anthropic counts cached prompt tokens apart from input_tokens; our prompt_tokens include them."""
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
    return {
        "input_tokens": usage.prompt_tokens - cached - written,
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
        "cost_usd": round(usage.cost_usd, 10),
        "latency_ms": usage.latency_ms,
    }


def tool_use_id(call_id: str) -> str:
    """The call's own id (the client sends it back in tool_result); one is minted when a provider gave none."""
    return call_id or "toolu_" + uuid.uuid4().hex[:24]


def tool_input(arguments: str, name: str) -> JSON:
    """A tool call's arguments as the object tool_use.input must be."""
    try:
        parsed = orjson.loads(arguments) if arguments.strip() else {}
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        # The model wrote arguments that are not a JSON object; the block must still hold one.
        log.warning("tool call %s: arguments are not a JSON object; sent as {}", name)
        return {}
    return parsed


def message_to_json(response: pb.ChatResponse, msg_id: str, requested_model: str) -> JSON:
    choice = response.choices[0] if response.choices else pb.Choice()
    message = choice.message
    content: list[JSON] = []
    text = message.content or message.refusal
    if text:
        content.append({"type": "text", "text": text})
    content += [
        {
            "type": "tool_use",
            "id": tool_use_id(call.id),
            "name": call.function.name,
            "input": tool_input(call.function.arguments, call.function.name),
        }
        for call in message.tool_calls
    ]
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": response.model or requested_model,
        "content": content,
        "stop_reason": stop_reason(choice.finish_reason),
        "stop_sequence": None,
        "usage": usage_to_json(response.usage),
        "routing_decision": routing_to_json(response.routing_decision),
    }
