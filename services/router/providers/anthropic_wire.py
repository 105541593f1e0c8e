"""Anthropic's Messages API in the router's OpenAI-shaped terms: request bodies, answers and stream events, no I/O."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from interlock.router.v1 import router_pb2 as pb
from services.common.errors import InvalidRequestError, UpstreamError
from services.common.wire import fields
from services.router.providers.base import Target

# Anthropic requires max_tokens; used when neither the request nor the catalog model sets one.
DEFAULT_MAX_TOKENS = 4096

_FINISH = {
    "end_turn": pb.FINISH_REASON_STOP,
    "stop_sequence": pb.FINISH_REASON_STOP,
    "pause_turn": pb.FINISH_REASON_STOP,
    "max_tokens": pb.FINISH_REASON_LENGTH,
    "model_context_window_exceeded": pb.FINISH_REASON_LENGTH,
    "tool_use": pb.FINISH_REASON_TOOL_CALLS,
    "refusal": pb.FINISH_REASON_CONTENT_FILTER,
}
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")

JSON = dict[str, Any]


def unsupported(message: str, param: str) -> InvalidRequestError:
    """The error for a parameter or content this provider cannot honour."""
    return InvalidRequestError(message, code="unsupported_parameter", param=param)


# ---------------------------------------------------------------- requests


def _part_text(message: pb.Message) -> str:
    if message.parts:
        return "".join(p.text for p in message.parts if p.WhichOneof("part") == "text")
    return message.content


def _image_block(url: str, param: str) -> JSON:
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not sep or encoding != "base64" or media_type not in _IMAGE_TYPES:
            raise InvalidRequestError(
                f"'{param}' must be a base64 data: URL of a JPEG, PNG, GIF or WebP image for this provider.",
                code="invalid_image_url",
                param=param,
            )
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequestError(f"'{param}' must be an https or a data: URL.", code="invalid_image_url", param=param)


def _content_blocks(message: pb.Message, param: str) -> list[JSON]:
    blocks: list[JSON] = []
    if message.parts:
        for j, part in enumerate(message.parts):
            which = part.WhichOneof("part")
            if which == "text":
                if part.text:
                    blocks.append({"type": "text", "text": part.text})
            elif which == "image_url":
                blocks.append(_image_block(part.image_url.url, f"{param}.content[{j}].image_url.url"))
            else:
                kind = (fields.loads(part.other_json) or {}).get("type", "?") if part.other_json else "?"
                raise unsupported(
                    f"Content parts of type '{kind}' are not supported by this provider.", f"{param}.content[{j}]"
                )
    elif message.content:
        blocks.append({"type": "text", "text": message.content})
    return blocks


def _tool_use_block(call: pb.ToolCall, param: str) -> JSON:
    raw = call.function.arguments
    try:
        arguments = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise InvalidRequestError(
            f"'{param}.function.arguments' must be a JSON object for this provider.",
            code="invalid_tool_arguments",
            param=f"{param}.function.arguments",
        )
    return {"type": "tool_use", "id": call.id, "name": call.function.name, "input": arguments}


def _messages(request: pb.ChatRequest) -> tuple[str, list[JSON]]:
    """The `system` text and the alternating user/assistant turns of a chat request.

    System and developer messages become the top-level `system`; user, assistant and tool
    messages become turns of content blocks (text, image, tool_use, tool_result).
    """
    system: list[str] = []
    turns: list[JSON] = []
    for i, message in enumerate(request.messages):
        param = f"messages[{i}]"
        if message.role in (pb.ROLE_SYSTEM, pb.ROLE_DEVELOPER):
            text = _part_text(message)
            if text:
                system.append(text)
            continue
        if message.role == pb.ROLE_TOOL:
            result: JSON = {"type": "tool_result", "tool_use_id": message.tool_call_id}
            text = _part_text(message)
            if text:
                result["content"] = text
            role, blocks = "user", [result]
        elif message.role == pb.ROLE_ASSISTANT:
            role, blocks = "assistant", _content_blocks(message, param)
            blocks += [_tool_use_block(c, f"{param}.tool_calls[{j}]") for j, c in enumerate(message.tool_calls)]
        else:  # user, and the legacy function role, whose result is plain text
            role, blocks = "user", _content_blocks(message, param)
        if not blocks:
            continue  # Anthropic refuses empty content; an empty turn says nothing anyway
        if turns and turns[-1]["role"] == role:
            # Roles must alternate: consecutive turns of one role become one (tool results merge here).
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        # Tool results must open a user turn, before any text the user adds.
        turn["content"].sort(key=lambda b: b["type"] != "tool_result")
    return "\n\n".join(system), turns


def _tool_choice(request: pb.ChatRequest) -> JSON | None:
    choice: Any = fields.loads(request.tool_choice_json) if request.tool_choice_json else None
    out: JSON
    if choice is None or choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise InvalidRequestError(
            '\'tool_choice\' must be none, auto, required or {"type": "function", "function": {"name": ...}}.',
            code="invalid_tool_choice",
            param="tool_choice",
        )
    if request.HasField("parallel_tool_calls") and not request.parallel_tool_calls:
        out["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # Anthropic's default is auto
    return out


def _max_tokens(sampling: pb.Sampling, target: Target) -> int:
    return int(
        sampling.max_completion_tokens or sampling.max_tokens or target.model.max_output_tokens or DEFAULT_MAX_TOKENS
    )


def _sampling(sampling: pb.Sampling, target: Target) -> JSON:
    if sampling.HasField("n") and sampling.n > 1:
        raise unsupported("This provider returns one choice per request; 'n' must be 1.", "n")
    body: JSON = {"max_tokens": _max_tokens(sampling, target)}
    if sampling.HasField("temperature"):
        body["temperature"] = min(max(sampling.temperature, 0.0), 1.0)  # Anthropic's range is 0..1
    if sampling.HasField("top_p"):
        body["top_p"] = sampling.top_p
    if sampling.stop:
        body["stop_sequences"] = list(sampling.stop)
    if sampling.user:
        body["metadata"] = {"user_id": sampling.user}
    return body


def messages_request(request: pb.ChatRequest, target: Target, *, stream: bool) -> JSON:
    """The Messages API body for a chat request."""
    system, turns = _messages(request)
    body: JSON = {"model": target.deployment.upstream_model, "messages": turns}
    if system:
        body["system"] = system
    body.update(_sampling(request.sampling, target))
    if request.tools:
        body["tools"] = [
            {
                "name": t.function.name,
                **({"description": t.function.description} if t.function.description else {}),
                "input_schema": fields.loads(t.function.parameters_json)
                if t.function.parameters_json
                else {"type": "object", "properties": {}},
            }
            for t in request.tools
        ]
        choice = _tool_choice(request)
        if choice is not None:
            body["tool_choice"] = choice
    if stream:
        body["stream"] = True
    return body


def prompt_request(request: pb.CompleteRequest, prompt: str, target: Target, *, stream: bool) -> JSON:
    if request.suffix:
        raise unsupported("'suffix' is not supported by this provider.", "suffix")
    if request.HasField("best_of") and request.best_of > 1:
        raise unsupported("'best_of' is not supported by this provider.", "best_of")
    body: JSON = {"model": target.deployment.upstream_model, "messages": [{"role": "user", "content": prompt}]}
    body.update(_sampling(request.sampling, target))
    if stream:
        body["stream"] = True
    return body


# ---------------------------------------------------------------- answers


def _usage(raw: Any) -> pb.Usage:
    raw = raw if isinstance(raw, dict) else {}
    cache_read = int(raw.get("cache_read_input_tokens") or 0)
    cache_write = int(raw.get("cache_creation_input_tokens") or 0)
    # OpenAI's prompt_tokens include cached ones; Anthropic's input_tokens do not.
    prompt = int(raw.get("input_tokens") or 0) + cache_read + cache_write
    completion = int(raw.get("output_tokens") or 0)
    return pb.Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def _finish(stop_reason: Any) -> pb.FinishReason.ValueType:
    return _FINISH.get(stop_reason, pb.FINISH_REASON_STOP) if isinstance(stop_reason, str) else pb.FINISH_REASON_STOP


def _tool_call(block: JSON, index: int) -> pb.ToolCall:
    return pb.ToolCall(
        id=str(block.get("id") or ""),
        type="function",
        index=index,
        function=pb.FunctionCall(
            name=str(block.get("name") or ""), arguments=orjson.dumps(block.get("input") or {}).decode()
        ),
    )


def read_answer(body: Any) -> tuple[str, str, pb.Message, pb.FinishReason.ValueType, pb.Usage]:
    """(id, model, message, finish reason, usage) of a Messages API answer.

    Text blocks are joined into the message content and tool_use blocks become tool calls.
    """
    if not isinstance(body, dict):
        raise UpstreamError("provider sent an answer that is not a message", code="upstream_bad_response")
    blocks = [b for b in body.get("content") or () if isinstance(b, dict)]
    message = pb.Message(role=pb.ROLE_ASSISTANT)
    texts = [str(b.get("text") or "") for b in blocks if b.get("type") == "text"]
    calls = [b for b in blocks if b.get("type") == "tool_use"]
    if texts or not calls:
        message.content = "".join(texts)
    message.tool_calls.extend(_tool_call(b, j) for j, b in enumerate(calls))
    return (
        str(body.get("id") or ""),
        str(body.get("model") or ""),
        message,
        _finish(body.get("stop_reason")),
        _usage(body.get("usage")),
    )


@dataclass
class StreamState:
    """Turns Messages API stream events into OpenAI-shaped chat chunks; the last one carries usage."""

    provider: str
    id: str = ""
    model: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    usage: JSON = field(default_factory=dict)
    tools: dict[int, int] = field(default_factory=dict)  # content block index -> tool call index
    stopped: bool = False

    def _chunk(
        self, delta: pb.Message | None = None, finish: pb.FinishReason.ValueType = pb.FINISH_REASON_UNSPECIFIED
    ) -> pb.ChatChunk:
        chunk = pb.ChatChunk(id=self.id, created=self.created, model=self.model)
        if delta is not None or finish:
            chunk.choices.append(pb.ChunkChoice(index=0, delta=delta or pb.Message(), finish_reason=finish))
        return chunk

    def on_event(self, event: JSON) -> pb.ChatChunk | None:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.id, self.model = str(message.get("id") or ""), str(message.get("model") or "")
            self.usage.update(message.get("usage") or {})
            return self._chunk(pb.Message(role=pb.ROLE_ASSISTANT, content=""))
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self.tools[int(event.get("index", 0))] = len(self.tools)
                call = _tool_call({**block, "input": None}, index)
                call.function.arguments = ""
                return self._chunk(pb.Message(tool_calls=[call]))
            if block.get("type") == "text" and block.get("text"):
                return self._chunk(pb.Message(content=str(block["text"])))
            return None
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return self._chunk(pb.Message(content=str(delta["text"])))
            at = self.tools.get(int(event.get("index", 0)))
            if delta.get("type") == "input_json_delta" and delta.get("partial_json") and at is not None:
                call = pb.ToolCall(index=at, function=pb.FunctionCall(arguments=str(delta["partial_json"])))
                return self._chunk(pb.Message(tool_calls=[call]))
            return None  # thinking and signature deltas, empty fragments
        if kind == "message_delta":
            # message_delta usage counts are cumulative: they replace what message_start said.
            self.usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            reason = (event.get("delta") or {}).get("stop_reason")
            return self._chunk(finish=_finish(reason)) if reason else None
        if kind == "message_stop":
            self.stopped = True
            chunk = self._chunk()
            chunk.usage.CopyFrom(_usage(self.usage))
            return chunk
        if kind == "error":
            detail = event.get("error")
            detail = detail if isinstance(detail, dict) else {}
            raise UpstreamError(
                f"provider {self.provider} failed mid-stream: {detail.get('message') or detail.get('type') or ''}",
                code="upstream_stream_error",
            )
        return None  # ping, content_block_stop and event types added later


def completion_chunk(chunk: pb.ChatChunk) -> pb.CompleteResponse | None:
    out = pb.CompleteResponse(id=chunk.id, created=chunk.created, model=chunk.model)
    for choice in chunk.choices:
        if choice.delta.tool_calls:
            continue
        out.choices.append(pb.CompletionChoice(index=0, text=choice.delta.content, finish_reason=choice.finish_reason))
    if chunk.HasField("usage"):
        out.usage.CopyFrom(chunk.usage)
    return out if out.choices or out.HasField("usage") else None
