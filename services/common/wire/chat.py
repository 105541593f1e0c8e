"""Chat completions: OpenAI JSON <-> interlock.router.v1 messages."""

from __future__ import annotations

from typing import Any

from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.router.v1 import router_pb2 as pb
from services.common.evaluators import MAX_PER_REQUEST, EvaluatorSpecError, parse_evaluators
from services.common.wire import fields as f
from services.common.wire.common import (
    CHAT_KNOWN,
    FINISH_FROM_WIRE,
    FINISH_TO_WIRE,
    parse_route,
    parse_sampling,
    routing_to_json,
    sampling_to_json,
    usage_from_json,
    usage_to_json,
)

ROLE_FROM_WIRE = {
    "system": pb.ROLE_SYSTEM,
    "user": pb.ROLE_USER,
    "assistant": pb.ROLE_ASSISTANT,
    "tool": pb.ROLE_TOOL,
    "developer": pb.ROLE_DEVELOPER,
    "function": pb.ROLE_FUNCTION,
}
ROLE_TO_WIRE = {v: k for k, v in ROLE_FROM_WIRE.items()}
_MESSAGE_KNOWN = {"role", "content", "name", "tool_calls", "tool_call_id", "refusal"}


# ---------------------------------------------------------------- requests


def parse_chat_request(body: dict[str, Any]) -> tuple[pb.ChatRequest, bool]:
    """Validate a client's chat request; returns the message and its `stream` flag."""
    request = pb.ChatRequest(model=f.req_str(body, "model"))
    messages = body.get("messages")
    if messages is None:
        raise f.missing("messages")
    if not isinstance(messages, list):
        raise f.wrong_type("messages", "an array")
    if not messages:
        raise f.bad_value("messages", "must contain at least one message")
    for i, raw in enumerate(messages):
        request.messages.append(_parse_message(raw, f"messages[{i}]"))
    request.sampling.CopyFrom(parse_sampling(body))
    tools = f.opt_list(body, "tools")
    for i, raw in enumerate(tools or ()):
        request.tools.append(_parse_tool(raw, f"tools[{i}]"))
    tool_choice = body.get("tool_choice")
    if tool_choice is not None:
        if isinstance(tool_choice, str):
            if tool_choice not in ("none", "auto", "required"):
                raise f.bad_value("tool_choice", "must be none, auto, required or an object")
        elif not isinstance(tool_choice, dict):
            raise f.wrong_type("tool_choice", "a string or an object")
        request.tool_choice_json = f.dumps(tool_choice)
    parallel = f.opt_bool(body, "parallel_tool_calls")
    if parallel is not None:
        request.parallel_tool_calls = parallel
    response_format = f.opt_object(body, "response_format")
    if response_format is not None:
        if not isinstance(response_format.get("type"), str):
            raise f.missing("response_format.type")
        request.response_format_json = f.dumps(response_format)
    stream = f.opt_bool(body, "stream") or False
    stream_options = f.opt_object(body, "stream_options")
    if stream_options is not None:
        include = f.opt_bool(stream_options, "include_usage", "stream_options.include_usage")
        request.stream_options.include_usage = bool(include)
    route = parse_route(body)
    if route is not None:
        request.route.CopyFrom(route)
    if body.get("evaluate") is not None:
        request.evaluators.extend(_parse_evaluate(body["evaluate"]))
    extra = {k: v for k, v in body.items() if k not in CHAT_KNOWN}
    if extra:
        request.extra_json = f.dumps(extra)
    return request, stream


def _parse_evaluate(raw: object) -> list[cpb.Evaluator]:
    try:
        return parse_evaluators(raw, "evaluate", limit=MAX_PER_REQUEST)
    except EvaluatorSpecError as exc:
        raise f.bad_value(exc.path, exc.problem) from exc


def _parse_message(raw: object, param: str) -> pb.Message:
    if not isinstance(raw, dict):
        raise f.wrong_type(param, "an object")
    role_name = raw.get("role")
    if role_name is None:
        raise f.missing(f"{param}.role")
    if not isinstance(role_name, str) or role_name not in ROLE_FROM_WIRE:
        raise f.bad_value(f"{param}.role", "must be one of " + ", ".join(ROLE_FROM_WIRE))
    message = pb.Message(role=ROLE_FROM_WIRE[role_name])
    content = raw.get("content")
    if isinstance(content, str):
        message.content = content
    elif isinstance(content, list):
        for j, part in enumerate(content):
            message.parts.append(_parse_part(part, f"{param}.content[{j}]"))
    elif content is not None:
        raise f.wrong_type(f"{param}.content", "a string or an array of content parts")
    elif role_name in ("system", "user", "developer", "tool"):
        raise f.missing(f"{param}.content")
    name = f.opt_str(raw, "name", f"{param}.name")
    if name:
        message.name = name
    for j, call in enumerate(f.opt_list(raw, "tool_calls", f"{param}.tool_calls") or ()):
        message.tool_calls.append(_parse_tool_call(call, f"{param}.tool_calls[{j}]", j))
    tool_call_id = f.opt_str(raw, "tool_call_id", f"{param}.tool_call_id")
    if role_name == "tool" and not tool_call_id:
        raise f.missing(f"{param}.tool_call_id")
    if tool_call_id:
        message.tool_call_id = tool_call_id
    refusal = f.opt_str(raw, "refusal", f"{param}.refusal")
    if refusal is not None:
        message.refusal = refusal
    extra = {k: v for k, v in raw.items() if k not in _MESSAGE_KNOWN}
    if extra:
        message.extra_json = f.dumps(extra)
    return message


def _parse_part(raw: object, param: str) -> pb.ContentPart:
    if not isinstance(raw, dict):
        raise f.wrong_type(param, "an object")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise f.missing(f"{param}.type")
    if kind == "text":
        text = raw.get("text")
        if not isinstance(text, str):
            raise f.wrong_type(f"{param}.text", "a string")
        return pb.ContentPart(text=text)
    if kind == "image_url":
        image = raw.get("image_url")
        if isinstance(image, str):  # some clients send the bare URL
            image = {"url": image}
        if not isinstance(image, dict) or not isinstance(image.get("url"), str):
            raise f.missing(f"{param}.image_url.url")
        detail = image.get("detail")
        if detail is not None and detail not in ("auto", "low", "high"):
            raise f.bad_value(f"{param}.image_url.detail", "must be auto, low or high")
        return pb.ContentPart(image_url=pb.ImageUrl(url=image["url"], detail=detail or ""))
    return pb.ContentPart(other_json=f.dumps(raw))


def _parse_tool_call(raw: object, param: str, index: int) -> pb.ToolCall:
    if not isinstance(raw, dict):
        raise f.wrong_type(param, "an object")
    function = raw.get("function")
    if not isinstance(function, dict):
        raise f.missing(f"{param}.function")
    name = f.req_str(function, "name", f"{param}.function.name")
    arguments = function.get("arguments", "")
    if not isinstance(arguments, str):
        raise f.wrong_type(f"{param}.function.arguments", "a string")
    return pb.ToolCall(
        id=f.opt_str(raw, "id", f"{param}.id") or "",
        type=f.opt_str(raw, "type", f"{param}.type") or "function",
        function=pb.FunctionCall(name=name, arguments=arguments),
        index=index,
    )


def _parse_tool(raw: object, param: str) -> pb.Tool:
    if not isinstance(raw, dict):
        raise f.wrong_type(param, "an object")
    kind = raw.get("type", "function")
    if kind != "function":
        raise f.bad_value(f"{param}.type", "must be function")
    function = raw.get("function")
    if not isinstance(function, dict):
        raise f.missing(f"{param}.function")
    definition = pb.FunctionDefinition(name=f.req_str(function, "name", f"{param}.function.name"))
    description = f.opt_str(function, "description", f"{param}.function.description")
    if description:
        definition.description = description
    parameters = f.opt_object(function, "parameters", f"{param}.function.parameters")
    if parameters is not None:
        definition.parameters_json = f.dumps(parameters)
    strict = f.opt_bool(function, "strict", f"{param}.function.strict")
    if strict is not None:
        definition.strict = strict
    return pb.Tool(type="function", function=definition)


def chat_request_to_json(request: pb.ChatRequest, upstream_model: str, *, stream: bool) -> dict[str, Any]:
    """The body an OpenAI-compatible upstream expects for this request."""
    body: dict[str, Any] = f.loads(request.extra_json) if request.extra_json else {}
    body["model"] = upstream_model
    body["messages"] = [message_to_json(m) for m in request.messages]
    body.update(sampling_to_json(request.sampling))
    if request.tools:
        body["tools"] = [_tool_to_json(t) for t in request.tools]
    if request.tool_choice_json:
        body["tool_choice"] = f.loads(request.tool_choice_json)
    if request.HasField("parallel_tool_calls"):
        body["parallel_tool_calls"] = request.parallel_tool_calls
    if request.response_format_json:
        body["response_format"] = f.loads(request.response_format_json)
    if stream:
        body["stream"] = True
        # Always ask for usage so the ledger is exact; the edge decides what the client sees.
        body["stream_options"] = {"include_usage": True}
    return body


def _tool_to_json(tool: pb.Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.function.name}
    if tool.function.description:
        function["description"] = tool.function.description
    if tool.function.parameters_json:
        function["parameters"] = f.loads(tool.function.parameters_json)
    if tool.function.HasField("strict"):
        function["strict"] = tool.function.strict
    return {"type": tool.type or "function", "function": function}


def _part_to_json(part: pb.ContentPart) -> dict[str, Any]:
    which = part.WhichOneof("part")
    if which == "text":
        return {"type": "text", "text": part.text}
    if which == "image_url":
        image: dict[str, Any] = {"url": part.image_url.url}
        if part.image_url.detail:
            image["detail"] = part.image_url.detail
        return {"type": "image_url", "image_url": image}
    return f.loads(part.other_json) if part.other_json else {}


def _tool_call_to_json(call: pb.ToolCall, *, with_index: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if with_index:
        out["index"] = call.index
    if call.id:
        out["id"] = call.id
    if call.type or not with_index:
        out["type"] = call.type or "function"
    function: dict[str, Any] = {}
    if call.function.name or not with_index:
        function["name"] = call.function.name
    function["arguments"] = call.function.arguments
    out["function"] = function
    return out


def message_to_json(message: pb.Message) -> dict[str, Any]:
    """A request-side message (history) as OpenAI JSON."""
    out: dict[str, Any] = {"role": ROLE_TO_WIRE.get(message.role, "user")}
    if message.parts:
        out["content"] = [_part_to_json(p) for p in message.parts]
    elif message.HasField("content"):
        out["content"] = message.content
    else:
        out["content"] = None
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [_tool_call_to_json(c, with_index=False) for c in message.tool_calls]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.HasField("refusal"):
        out["refusal"] = message.refusal
    if message.extra_json:
        out.update(f.loads(message.extra_json))
    return out


def message_text(message: pb.Message) -> str:
    """All text of a message, for token counting and echo-style providers."""
    if message.parts:
        return "".join(p.text for p in message.parts if p.WhichOneof("part") == "text")
    return message.content


# ---------------------------------------------------------------- responses


def chat_response_to_json(response: pb.ChatResponse) -> dict[str, Any]:
    routing = routing_to_json(response.routing_decision)
    body: dict[str, Any] = {
        "id": response.id,
        "object": "chat.completion",
        "created": response.created,
        "model": response.model,
        "choices": [
            {
                "index": c.index,
                "message": _response_message_to_json(c.message),
                "logprobs": f.loads(c.logprobs_json) if c.logprobs_json else None,
                "finish_reason": FINISH_TO_WIRE.get(c.finish_reason, "stop"),
                "routing_decision": routing,
            }
            for c in response.choices
        ],
        "usage": usage_to_json(response.usage),
        "routing_decision": routing,
    }
    if response.system_fingerprint:
        body["system_fingerprint"] = response.system_fingerprint
    if response.extra_json:
        for key, value in f.loads(response.extra_json).items():
            body.setdefault(key, value)
    return body


def _response_message_to_json(message: pb.Message) -> dict[str, Any]:
    out: dict[str, Any] = {
        "role": "assistant",
        "content": message.content if message.HasField("content") else None,
        "refusal": message.refusal if message.HasField("refusal") else None,
    }
    if message.tool_calls:
        out["tool_calls"] = [_tool_call_to_json(c, with_index=False) for c in message.tool_calls]
    if message.extra_json:
        for key, value in f.loads(message.extra_json).items():
            out.setdefault(key, value)
    return out


def chat_response_from_json(body: dict[str, Any]) -> pb.ChatResponse:
    """Parse an upstream's chat.completion leniently."""
    response = pb.ChatResponse(
        id=str(body.get("id") or ""),
        created=int(body.get("created") or 0),
        model=str(body.get("model") or ""),
        system_fingerprint=str(body.get("system_fingerprint") or ""),
    )
    for i, choice in enumerate(body.get("choices") or ()):
        response.choices.append(
            pb.Choice(
                index=int(choice.get("index", i)),
                message=_upstream_message(choice.get("message") or {}),
                finish_reason=FINISH_FROM_WIRE.get(choice.get("finish_reason") or "stop", pb.FINISH_REASON_STOP),
                logprobs_json=f.json_or_empty(choice.get("logprobs")),
            )
        )
    response.usage.CopyFrom(usage_from_json(body.get("usage")))
    extra = {k: v for k, v in body.items() if k in ("service_tier",) and v is not None}
    if extra:
        response.extra_json = f.dumps(extra)
    return response


def _upstream_tool_calls(raw: object) -> list[pb.ToolCall]:
    """Tool calls of a message or a stream delta, as an upstream sent them."""
    calls = []
    for j, call in enumerate(raw if isinstance(raw, list) else ()):
        function = call.get("function") or {}
        calls.append(
            pb.ToolCall(
                id=str(call.get("id") or ""),
                type=str(call.get("type") or ""),
                index=int(call.get("index", j)),
                function=pb.FunctionCall(
                    name=str(function.get("name") or ""), arguments=str(function.get("arguments") or "")
                ),
            )
        )
    return calls


def _upstream_message(raw: dict[str, Any]) -> pb.Message:
    message = pb.Message(role=ROLE_FROM_WIRE.get(raw.get("role") or "assistant", pb.ROLE_ASSISTANT))
    content = raw.get("content")
    if isinstance(content, str):
        message.content = content
    if isinstance(raw.get("refusal"), str):
        message.refusal = raw["refusal"]
    message.tool_calls.extend(_upstream_tool_calls(raw.get("tool_calls")))
    extra = {k: v for k, v in raw.items() if k not in _MESSAGE_KNOWN and v is not None}
    if extra:
        message.extra_json = f.dumps(extra)
    return message


# ---------------------------------------------------------------- stream chunks


def chunk_to_json(chunk: pb.ChatChunk) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": chunk.id,
        "object": "chat.completion.chunk",
        "created": chunk.created,
        "model": chunk.model,
        "choices": [
            {
                "index": c.index,
                "delta": _delta_to_json(c.delta),
                "logprobs": f.loads(c.logprobs_json) if c.logprobs_json else None,
                "finish_reason": FINISH_TO_WIRE.get(c.finish_reason),
            }
            for c in chunk.choices
        ],
    }
    if chunk.system_fingerprint:
        body["system_fingerprint"] = chunk.system_fingerprint
    if chunk.HasField("usage"):
        body["usage"] = usage_to_json(chunk.usage)
    if chunk.HasField("routing_decision"):
        body["routing_decision"] = routing_to_json(chunk.routing_decision)
    return body


def _delta_to_json(delta: pb.Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if delta.role:
        out["role"] = ROLE_TO_WIRE[delta.role]
    if delta.HasField("content"):
        out["content"] = delta.content
    if delta.HasField("refusal"):
        out["refusal"] = delta.refusal
    if delta.tool_calls:
        out["tool_calls"] = [_tool_call_to_json(c, with_index=True) for c in delta.tool_calls]
    return out


def chunk_from_json(body: dict[str, Any]) -> pb.ChatChunk:
    """Parse an upstream's chat.completion.chunk leniently."""
    chunk = pb.ChatChunk(
        id=str(body.get("id") or ""),
        created=int(body.get("created") or 0),
        model=str(body.get("model") or ""),
        system_fingerprint=str(body.get("system_fingerprint") or ""),
    )
    for i, choice in enumerate(body.get("choices") or ()):
        delta = choice.get("delta") or {}
        reason = choice.get("finish_reason")
        # Filled in place (this runs for every streamed token): no message built apart and copied in.
        added = chunk.choices.add(
            index=int(choice.get("index", i)),
            finish_reason=FINISH_FROM_WIRE.get(reason, pb.FINISH_REASON_STOP)
            if reason
            else pb.FINISH_REASON_UNSPECIFIED,
        )
        logprobs = choice.get("logprobs")
        if logprobs is not None:
            added.logprobs_json = f.json_or_empty(logprobs)
        message = added.delta
        role = delta.get("role")
        if role in ROLE_FROM_WIRE:
            message.role = ROLE_FROM_WIRE[role]
        content = delta.get("content")
        if isinstance(content, str):
            message.content = content
        refusal = delta.get("refusal")
        if isinstance(refusal, str):
            message.refusal = refusal
        if delta.get("tool_calls"):
            message.tool_calls.extend(_upstream_tool_calls(delta["tool_calls"]))
    if body.get("usage"):
        chunk.usage.CopyFrom(usage_from_json(body["usage"]))
    return chunk
