"""A Messages API request as the router's ChatRequest (OpenAI-shaped chat messages).

- `system` (a string or text blocks) becomes one system message;
- a user turn's text and image blocks become a user message's parts (images as data: or
  http(s) URLs); its tool_result blocks become tool messages, placed first because they must
  directly follow the assistant's calls; images inside a tool_result, which a tool message
  cannot hold, join the user message after them;
- an assistant turn's text and tool_use blocks become its content and tool calls.

Errors name the field in the request as sent (`messages[0].content[1].source.media_type`).
"""

from __future__ import annotations

import re
from typing import Any

from interlock.router.v1 import router_pb2 as pb
from services.common.errors import InvalidRequestError
from services.common.wire import fields as f
from services.common.wire.common import parse_route

JSON = dict[str, Any]
ROLES = {"user": pb.ROLE_USER, "assistant": pb.ROLE_ASSISTANT}
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
TOOL_CHOICES = ("auto", "any", "tool", "none")
# Accepted and dropped: they tune Anthropic's own serving (prompt caching, extended thinking,
# service tiers, speed, region, cache diagnostics); top_k has no equivalent in the chat
# request every provider understands.
_IGNORED = {"cache_control", "thinking", "service_tier", "speed", "inference_geo", "diagnostics", "top_k"}
_KNOWN = {
    "model",
    "max_tokens",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "stop_sequences",
    "temperature",
    "top_p",
    "metadata",
    "output_config",
    "stream",
    # Interlock's routing hints, as on the chat API.
    "route",
} | _IGNORED
# Blocks of Anthropic's own extended thinking: only Anthropic can read them back, so a
# conversation moved to another model simply goes without them.
_THINKING_BLOCKS = ("thinking", "redacted_thinking")
_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def check_version(version: str | None) -> None:
    """The SDKs always send anthropic-version; any dated version is served the same way."""
    if version is not None and not _VERSION.match(version.strip()):
        raise InvalidRequestError(
            f"anthropic-version: '{version}' is not a version; send a date such as 2023-06-01.",
            code=f.INVALID_VALUE,
            param="anthropic-version",
        )


def parse_messages_request(body: JSON, *, counting: bool = False) -> tuple[pb.ChatRequest, bool]:
    """Validate a Messages request; returns the chat request and its `stream` flag.
    For count_tokens (`counting`) max_tokens is not required."""
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise InvalidRequestError(
            f"'{unknown[0]}': extra inputs are not permitted.", code=f.INVALID_VALUE, param=unknown[0]
        )
    request = pb.ChatRequest(model=f.req_str(body, "model"))
    max_tokens = f.opt_int(body, "max_tokens", lo=1)
    if max_tokens is None and not counting:
        raise f.missing("max_tokens")
    if max_tokens is not None:
        request.sampling.max_tokens = max_tokens
    system = _system(body.get("system"))
    if system is not None:
        request.messages.append(system)
    messages = f.opt_list(body, "messages")
    if messages is None:
        raise f.missing("messages")
    if not messages:
        raise f.bad_value("messages", "must contain at least one message")
    for i, raw in enumerate(messages):
        request.messages.extend(_turn(raw, f"messages[{i}]"))
    _sampling(body, request.sampling)
    for i, raw in enumerate(f.opt_list(body, "tools") or ()):
        request.tools.append(_tool(raw, f"tools[{i}]"))
    _tool_choice(body, request)
    _output_config(body, request)
    route = parse_route(body)
    if route is not None:
        request.route.CopyFrom(route)
    return request, bool(f.opt_bool(body, "stream"))


def _sampling(body: JSON, sampling: pb.Sampling) -> None:
    if (v := f.opt_number(body, "temperature", lo=0, hi=1)) is not None:
        sampling.temperature = v
    if (v := f.opt_number(body, "top_p", lo=0, hi=1)) is not None:
        sampling.top_p = v
    f.opt_int(body, "top_k", lo=0)  # validated, then ignored (see _IGNORED)
    stops = f.opt_list(body, "stop_sequences")
    if stops is not None:
        if not all(isinstance(s, str) and s for s in stops):
            raise f.wrong_type("stop_sequences", "an array of non-empty strings")
        sampling.stop.extend(stops)
    metadata = f.opt_object(body, "metadata")
    if metadata is not None:
        user = f.opt_str(metadata, "user_id", "metadata.user_id")
        if user:
            sampling.user = user


def _system(value: object) -> pb.Message | None:
    if value is None:
        return None
    if isinstance(value, str):
        return pb.Message(role=pb.ROLE_SYSTEM, content=value) if value else None
    if not isinstance(value, list):
        raise f.wrong_type("system", "a string or an array of text blocks")
    parts = []
    for j, block in enumerate(value):
        param = f"system[{j}]"
        if _block_type(block, param) != "text":
            raise f.bad_value(f"{param}.type", "must be text")
        parts.append(pb.ContentPart(text=_text(block, param)))
    return pb.Message(role=pb.ROLE_SYSTEM, parts=parts) if parts else None


def _turn(raw: object, param: str) -> list[pb.Message]:
    if not isinstance(raw, dict):
        raise f.wrong_type(param, "an object")
    role = raw.get("role")
    if role is None:
        raise f.missing(f"{param}.role")
    if role not in ROLES:
        raise f.bad_value(f"{param}.role", "must be user or assistant (a system prompt goes in 'system')")
    content = raw.get("content")
    if content is None:
        raise f.missing(f"{param}.content")
    if isinstance(content, str):
        return [pb.Message(role=ROLES[role], content=content)]
    if not isinstance(content, list):
        raise f.wrong_type(f"{param}.content", "a string or an array of content blocks")
    if not content:
        raise f.bad_value(f"{param}.content", "must contain at least one content block")
    if role == "user":
        return _user_turn(content, param)
    return [_assistant_turn(content, param)]


def _user_turn(blocks: list[Any], param: str) -> list[pb.Message]:
    results: list[pb.Message] = []
    parts: list[pb.ContentPart] = []
    for j, block in enumerate(blocks):
        at = f"{param}.content[{j}]"
        kind = _block_type(block, at)
        if kind == "text":
            parts.append(pb.ContentPart(text=_text(block, at)))
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "tool_result":
            result, images = _tool_result(block, at)
            results.append(result)
            parts.extend(images)
        else:
            raise _unsupported(kind, at, "a user message")
    return [*results, pb.Message(role=pb.ROLE_USER, parts=parts)] if parts else results


def _assistant_turn(blocks: list[Any], param: str) -> pb.Message:
    texts: list[str] = []
    message = pb.Message(role=pb.ROLE_ASSISTANT)
    for j, block in enumerate(blocks):
        at = f"{param}.content[{j}]"
        kind = _block_type(block, at)
        if kind == "text":
            texts.append(_text(block, at))
        elif kind == "tool_use":
            message.tool_calls.append(_tool_use(block, at, len(message.tool_calls)))
        elif kind not in _THINKING_BLOCKS:
            raise _unsupported(kind, at, "an assistant message")
    if texts or not message.tool_calls:
        message.content = "".join(texts)
    return message


def _block_type(block: object, param: str) -> str:
    if not isinstance(block, dict):
        raise f.wrong_type(param, "an object")
    kind = block.get("type")
    if kind is None:
        raise f.missing(f"{param}.type")
    if not isinstance(kind, str):
        raise f.wrong_type(f"{param}.type", "a string")
    return kind


def _text(block: JSON, param: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise f.missing(f"{param}.text") if text is None else f.wrong_type(f"{param}.text", "a string")
    return text


def _image(block: JSON, param: str) -> pb.ContentPart:
    source = block.get("source")
    if not isinstance(source, dict):
        raise f.missing(f"{param}.source") if source is None else f.wrong_type(f"{param}.source", "an object")
    kind = source.get("type")
    if kind == "base64":
        media_type = f.req_str(source, "media_type", f"{param}.source.media_type")
        if media_type not in IMAGE_TYPES:
            raise f.bad_value(f"{param}.source.media_type", "must be one of " + ", ".join(IMAGE_TYPES))
        data = f.req_str(source, "data", f"{param}.source.data")
        url = f"data:{media_type};base64,{data}"
    elif kind == "url":
        url = f.req_str(source, "url", f"{param}.source.url")
        if not url.startswith(("https://", "http://")):
            raise f.bad_value(f"{param}.source.url", "must be an http(s) URL")
    else:
        raise f.bad_value(f"{param}.source.type", "must be base64 or url")
    return pb.ContentPart(image_url=pb.ImageUrl(url=url))


def _tool_use(block: JSON, param: str, index: int) -> pb.ToolCall:
    arguments = block.get("input")
    if not isinstance(arguments, dict):
        raise f.missing(f"{param}.input") if arguments is None else f.wrong_type(f"{param}.input", "an object")
    return pb.ToolCall(
        id=f.req_str(block, "id", f"{param}.id"),
        type="function",
        index=index,
        function=pb.FunctionCall(name=f.req_str(block, "name", f"{param}.name"), arguments=f.dumps(arguments)),
    )


def _tool_result(block: JSON, param: str) -> tuple[pb.Message, list[pb.ContentPart]]:
    """The tool message for a tool_result block, and the images it carried."""
    call_id = f.req_str(block, "tool_use_id", f"{param}.tool_use_id")
    content = block.get("content")
    texts: list[str] = []
    images: list[pb.ContentPart] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for k, inner in enumerate(content):
            at = f"{param}.content[{k}]"
            kind = _block_type(inner, at)
            if kind == "text":
                texts.append(_text(inner, at))
            elif kind == "image":
                images.append(_image(inner, at))
            else:
                raise _unsupported(kind, at, "a tool_result")
    elif content is not None:
        raise f.wrong_type(f"{param}.content", "a string or an array of text and image blocks")
    text = "\n".join(texts)
    if f.opt_bool(block, "is_error", f"{param}.is_error"):
        # A tool message has no error flag: say it in words, as the model would have read it.
        text = f"Error: {text}" if text else "Error"
    return pb.Message(role=pb.ROLE_TOOL, tool_call_id=call_id, content=text), images


def _tool(raw: object, param: str) -> pb.Tool:
    if not isinstance(raw, dict):
        raise f.wrong_type(param, "an object")
    kind = raw.get("type")
    if kind not in (None, "custom"):
        # Anthropic's server tools (web search, bash, text editor, ...) run at Anthropic only.
        raise InvalidRequestError(
            f"'{param}.type' {kind!r} is not supported: only client tools (name, description, input_schema) are.",
            code="unsupported_parameter",
            param=f"{param}.type",
        )
    definition = pb.FunctionDefinition(name=f.req_str(raw, "name", f"{param}.name"))
    description = f.opt_str(raw, "description", f"{param}.description")
    if description:
        definition.description = description
    schema = f.opt_object(raw, "input_schema", f"{param}.input_schema")
    if schema is None:
        raise f.missing(f"{param}.input_schema")
    definition.parameters_json = f.dumps(schema)
    return pb.Tool(type="function", function=definition)


def _tool_choice(body: JSON, request: pb.ChatRequest) -> None:
    """Anthropic's tool_choice as OpenAI's: auto, required (any), a named function (tool) or none."""
    choice = f.opt_object(body, "tool_choice")
    if choice is None:
        return
    kind = choice.get("type")
    if kind not in TOOL_CHOICES:
        raise f.bad_value("tool_choice.type", "must be one of " + ", ".join(TOOL_CHOICES))
    if not request.tools:
        raise f.bad_value("tool_choice", "may only be given together with tools")
    wire: object = {"auto": "auto", "any": "required", "none": "none"}.get(kind)
    if kind == "tool":
        name = f.req_str(choice, "name", "tool_choice.name")
        if name not in {t.function.name for t in request.tools}:
            raise f.bad_value("tool_choice.name", f"names no tool in 'tools' ({name!r})")
        wire = {"type": "function", "function": {"name": name}}
    request.tool_choice_json = f.dumps(wire)
    if f.opt_bool(choice, "disable_parallel_tool_use", "tool_choice.disable_parallel_tool_use"):
        request.parallel_tool_calls = False


def _output_config(body: JSON, request: pb.ChatRequest) -> None:
    """output_config.format (structured outputs) as OpenAI's json_schema response_format.
    Its effort is dropped: not every provider has one."""
    config = f.opt_object(body, "output_config")
    form = None if config is None else f.opt_object(config, "format", "output_config.format")
    if form is None:
        return
    if form.get("type") != "json_schema":
        raise f.bad_value("output_config.format.type", "must be json_schema")
    schema = f.opt_object(form, "schema", "output_config.format.schema")
    if schema is None:
        raise f.missing("output_config.format.schema")
    request.response_format_json = f.dumps({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}})


def _unsupported(kind: str, param: str, where: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"'{param}.type' {kind!r} is not supported in {where}.", code="unsupported_content", param=f"{param}.type"
    )
