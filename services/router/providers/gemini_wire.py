"""Gemini's generateContent API in the router's OpenAI terms: request bodies, answers, stream events; no I/O."""

from __future__ import annotations

import base64
import contextlib
import mimetypes
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import orjson

from interlock.router.v1 import router_pb2 as pb
from services.common.errors import InvalidRequestError
from services.common.wire import fields
from services.common.wire.chat import message_text
from services.router.providers.gemini_schema import clean_schema

JSON = dict[str, Any]

# Tool call ids are ours (call_<random>): the API gives unary function calls none. A functionCall's
# thoughtSignature (Gemini 3 requires it back, 2.5 accepts it) rides in the id after this separator and
# goes back on the functionCall part when the client sends the call back, so multi-step tool use
# keeps working across the OpenAI wire.
THOUGHT_SEPARATOR = "__thought__"
DEFAULT_IMAGE_MIME = "image/jpeg"

_CONTENT_FILTER = {
    "SAFETY",
    "RECITATION",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "IMAGE_RECITATION",
}
_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)$", re.DOTALL)
_AUDIO_MIME = {"wav": "audio/wav", "mp3": "audio/mp3"}


# ---------------------------------------------------------------- requests


def _data_url_blob(url: str, param: str) -> JSON:
    match = _DATA_URL.match(url)
    if match is None:
        raise InvalidRequestError("a data: URL must look like data:<mime>;base64,<data>", param=param)
    data = match["data"]
    if "base64" not in match["params"].split(";"):
        data = base64.b64encode(unquote_to_bytes(data)).decode("ascii")
    return {"inlineData": {"mimeType": match["mime"] or "application/octet-stream", "data": data}}


def _image_part(url: str, param: str) -> JSON:
    if url.startswith("data:"):
        return _data_url_blob(url, param)
    mime = mimetypes.guess_type(urlsplit(url).path)[0] or DEFAULT_IMAGE_MIME
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _other_part(raw: JSON, param: str) -> JSON:
    kind = raw.get("type")
    if kind == "input_audio":
        audio = raw.get("input_audio") or {}
        fmt = str(audio.get("format") or "wav")
        mime = _AUDIO_MIME.get(fmt, f"audio/{fmt}")
        return {"inlineData": {"mimeType": mime, "data": str(audio.get("data") or "")}}
    if kind == "file":
        data = (raw.get("file") or {}).get("file_data")
        if isinstance(data, str) and data.startswith("data:"):
            return _data_url_blob(data, param)
    raise InvalidRequestError(f"content part type {kind!r} is not supported by Gemini models", param=param)


def _content_parts(message: pb.Message, param: str) -> list[JSON]:
    """Gemini parts of a message's content.

    Images: ``data:`` URLs become ``inlineData``, other URLs ``fileData`` with a MIME type guessed
    from the extension (default image/jpeg). ``input_audio`` and ``file`` parts with inline data
    are sent as ``inlineData`` too; any other part type is refused.
    """
    if not message.parts:
        return [{"text": message.content}] if message.content else []
    parts: list[JSON] = []
    for j, part in enumerate(message.parts):
        which = part.WhichOneof("part")
        if which == "text":
            if part.text:
                parts.append({"text": part.text})
        elif which == "image_url":
            parts.append(_image_part(part.image_url.url, f"{param}.content[{j}].image_url.url"))
        elif which == "other_json":
            parts.append(_other_part(fields.loads(part.other_json), f"{param}.content[{j}]"))
    return parts


def split_call_id(call_id: str) -> tuple[str, str]:
    """(our id, Gemini thought signature or "") of a tool call id we minted."""
    base, _, signature = call_id.partition(THOUGHT_SEPARATOR)
    return base, signature


def new_call_id(signature: str = "") -> str:
    base = "call_" + uuid.uuid4().hex[:24]
    return f"{base}{THOUGHT_SEPARATOR}{signature}" if signature else base


def _function_call_part(call: pb.ToolCall, param: str) -> JSON:
    raw = call.function.arguments.strip()
    try:
        args = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError("tool call arguments must be JSON", param=f"{param}.function.arguments") from exc
    if not isinstance(args, dict):
        raise InvalidRequestError("tool call arguments must be a JSON object", param=f"{param}.function.arguments")
    part: JSON = {"functionCall": {"name": call.function.name, "args": args}}
    _, signature = split_call_id(call.id)
    if signature:
        part["thoughtSignature"] = signature
    return part


def _function_response_part(name: str, text: str) -> JSON:
    result: Any = text
    with contextlib.suppress(orjson.JSONDecodeError):
        parsed = orjson.loads(text)
        if isinstance(parsed, dict):
            result = parsed
    return {"functionResponse": {"name": name, "response": {"content": result}}}


def build_contents(messages: Iterable[pb.Message]) -> tuple[list[JSON], list[JSON]]:
    """(contents, systemInstruction parts) for an OpenAI-shaped history.

    System and developer messages, wherever they appear, become ``systemInstruction`` parts in
    order; user -> role ``user``; assistant -> role ``model``; tool (and legacy function) results
    -> role ``user`` with ``functionResponse`` parts, which is what the current API and Google's
    own SDK send. A ``functionResponse`` carries the function name (looked up from the assistant
    tool call with that id) and ``{"content": <the tool text, parsed when it is a JSON object>}``.
    Consecutive turns of one role are merged, so parallel tool results travel in one turn as the
    API asks.
    """
    messages = list(messages)
    names = {c.id: c.function.name for m in messages for c in m.tool_calls if c.id}
    system: list[JSON] = []
    turns: list[tuple[str, list[JSON]]] = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        role = message.role
        parts: list[JSON]
        if role in (pb.ROLE_SYSTEM, pb.ROLE_DEVELOPER):
            text = message_text(message)
            if text:
                system.append({"text": text})
            continue
        if role == pb.ROLE_TOOL:
            name = names.get(message.tool_call_id) or message.name
            if not name:
                raise InvalidRequestError(
                    f"tool message answers tool call {message.tool_call_id!r}, which no assistant message made",
                    param=f"{param}.tool_call_id",
                )
            turn_role, parts = "user", [_function_response_part(name, message_text(message))]
        elif role == pb.ROLE_FUNCTION:
            if not message.name:
                raise InvalidRequestError("a function message needs a name", param=f"{param}.name")
            turn_role, parts = "user", [_function_response_part(message.name, message_text(message))]
        elif role == pb.ROLE_ASSISTANT:
            turn_role = "model"
            parts = _content_parts(message, param)
            parts += [_function_call_part(c, f"{param}.tool_calls[{j}]") for j, c in enumerate(message.tool_calls)]
        else:
            turn_role, parts = "user", _content_parts(message, param)
        if not parts:
            continue  # the API refuses a turn without parts
        if turns and turns[-1][0] == turn_role:
            turns[-1][1].extend(parts)
        else:
            turns.append((turn_role, parts))
    return [{"role": r, "parts": p} for r, p in turns], system


def _tool_config(choice_json: str) -> JSON | None:
    if not choice_json:
        return None
    choice = fields.loads(choice_json)
    config: JSON
    if choice == "none":
        config = {"mode": "NONE"}
    elif choice == "auto":
        config = {"mode": "AUTO"}
    elif choice == "required":
        config = {"mode": "ANY"}
    elif isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools") or {}
        names = [str((t.get("function") or {}).get("name")) for t in allowed.get("tools") or () if isinstance(t, dict)]
        config = {"mode": "AUTO"}
        if allowed.get("mode") == "required":
            config = {"mode": "ANY", "allowedFunctionNames": names}
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequestError("tool_choice must name a function", param="tool_choice")
        config = {"mode": "ANY", "allowedFunctionNames": [name]}
    else:
        return None
    return {"functionCallingConfig": config}


def _generation_config(sampling: pb.Sampling, response_format_json: str) -> JSON:
    config: JSON = {}
    if sampling.HasField("temperature"):
        config["temperature"] = sampling.temperature
    if sampling.HasField("top_p"):
        config["topP"] = sampling.top_p
    limit = sampling.max_completion_tokens or sampling.max_tokens
    if limit:
        config["maxOutputTokens"] = limit
    if sampling.stop:
        config["stopSequences"] = list(sampling.stop)
    if sampling.HasField("n"):
        config["candidateCount"] = sampling.n
    if sampling.HasField("seed"):
        config["seed"] = sampling.seed
    if sampling.HasField("presence_penalty"):
        config["presencePenalty"] = sampling.presence_penalty
    if sampling.HasField("frequency_penalty"):
        config["frequencyPenalty"] = sampling.frequency_penalty
    if response_format_json:
        response_format = fields.loads(response_format_json)
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind in ("json_object", "json_schema"):
            config["responseMimeType"] = "application/json"
        if kind == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema")
            if isinstance(schema, dict) and schema:
                config["responseSchema"] = clean_schema(schema)
    return config


def build_generate_request(request: pb.ChatRequest) -> JSON:
    """The GenerateContentRequest body for an OpenAI-shaped chat request.

    Not forwarded, for want of a Gemini equivalent: logprobs/top_logprobs, logit_bias, user,
    parallel_tool_calls and unknown OpenAI parameters carried in ``extra_json``.
    """
    contents, system = build_contents(request.messages)
    body: JSON = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    if request.tools:
        declarations = []
        for tool in request.tools:
            declaration: JSON = {"name": tool.function.name}
            if tool.function.description:
                declaration["description"] = tool.function.description
            if tool.function.parameters_json:
                parameters = clean_schema(fields.loads(tool.function.parameters_json))
                # A function without arguments is declared without parameters: the API
                # refuses an OBJECT schema with no properties.
                if parameters and (parameters.get("properties") or parameters.get("type") not in ("object", "OBJECT")):
                    declaration["parameters"] = parameters
            declarations.append(declaration)
        body["tools"] = [{"functionDeclarations": declarations}]
        tool_config = _tool_config(request.tool_choice_json)
        if tool_config is not None:
            body["toolConfig"] = tool_config
    generation = _generation_config(request.sampling, request.response_format_json)
    if generation:
        body["generationConfig"] = generation
    return body


# ---------------------------------------------------------------- responses


def usage_from_gemini(meta: object) -> pb.Usage:
    """prompt = promptTokenCount (+ toolUsePromptTokenCount), completion = candidatesTokenCount +
    thoughtsTokenCount (thoughts also reported as reasoning tokens), cached = cachedContentTokenCount."""
    if not isinstance(meta, dict):
        return pb.Usage()
    prompt = int(meta.get("promptTokenCount") or 0) + int(meta.get("toolUsePromptTokenCount") or 0)
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    completion = int(meta.get("candidatesTokenCount") or 0) + thoughts
    return pb.Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=int(meta.get("totalTokenCount") or 0) or prompt + completion,
        cached_tokens=int(meta.get("cachedContentTokenCount") or 0),
        reasoning_tokens=thoughts,
    )


def finish_from_gemini(reason: object, called: bool) -> pb.FinishReason.ValueType:
    """MAX_TOKENS -> length; the safety/recitation family -> content_filter; an answer with
    function calls -> tool_calls; STOP and the rest (OTHER, LANGUAGE, MALFORMED_FUNCTION_CALL, ...) -> stop."""
    if reason == "MAX_TOKENS":
        return pb.FINISH_REASON_LENGTH
    if reason in _CONTENT_FILTER:
        return pb.FINISH_REASON_CONTENT_FILTER
    if called:
        return pb.FINISH_REASON_TOOL_CALLS
    return pb.FINISH_REASON_STOP


def _candidate_parts(candidate: JSON) -> tuple[str, list[pb.ToolCall]]:
    """Answer text and tool calls of one candidate (thought parts left out)."""
    texts: list[str] = []
    calls: list[pb.ToolCall] = []
    for part in (candidate.get("content") or {}).get("parts") or ():
        if not isinstance(part, dict) or part.get("thought"):
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        call = part.get("functionCall")
        if isinstance(call, dict):
            signature = part.get("thoughtSignature")
            calls.append(
                pb.ToolCall(
                    id=new_call_id(signature if isinstance(signature, str) else ""),
                    type="function",
                    function=pb.FunctionCall(
                        name=str(call.get("name") or ""), arguments=fields.dumps(call.get("args") or {})
                    ),
                )
            )
    return "".join(texts), calls


def _blocked(body: JSON) -> bool:
    return bool((body.get("promptFeedback") or {}).get("blockReason"))


def chat_response_from_gemini(body: JSON, upstream_model: str) -> pb.ChatResponse:
    response = pb.ChatResponse(
        id=str(body.get("responseId") or "chatcmpl-" + uuid.uuid4().hex),
        created=int(time.time()),
        model=str(body.get("modelVersion") or upstream_model),
    )
    candidates = [c for c in body.get("candidates") or () if isinstance(c, dict)]
    for i, candidate in enumerate(candidates):
        text, calls = _candidate_parts(candidate)
        for j, call in enumerate(calls):
            call.index = j
        message = pb.Message(role=pb.ROLE_ASSISTANT, tool_calls=calls)
        if text or not calls:
            message.content = text
        response.choices.append(
            pb.Choice(
                index=int(candidate.get("index", i)),
                message=message,
                finish_reason=finish_from_gemini(candidate.get("finishReason"), bool(calls)),
            )
        )
    if not candidates:
        # The prompt itself was blocked (or nothing came back): one empty, filtered answer.
        reason = pb.FINISH_REASON_CONTENT_FILTER if _blocked(body) else pb.FINISH_REASON_STOP
        response.choices.append(
            pb.Choice(index=0, message=pb.Message(role=pb.ROLE_ASSISTANT, content=""), finish_reason=reason)
        )
    response.usage.CopyFrom(usage_from_gemini(body.get("usageMetadata")))
    return response


class ChatStreamTranslator:
    """Turns each streamed GenerateContentResponse into OpenAI-shaped chunks.

    Text parts are deltas; ``usageMetadata`` is repeated and complete on the last event, so only
    the last one seen is kept, for the final usage chunk.
    """

    def __init__(self, upstream_model: str) -> None:
        self.id = ""
        self.created = int(time.time())
        self.model = upstream_model
        self.usage: object = None
        self._seen: set[int] = set()
        self._calls: dict[int, int] = {}  # tool calls streamed so far, per choice

    def _chunk(self, choices: Iterable[pb.ChunkChoice] = ()) -> pb.ChatChunk:
        return pb.ChatChunk(id=self.id, created=self.created, model=self.model, choices=list(choices))

    def feed(self, event: JSON) -> list[pb.ChatChunk]:
        if event.get("usageMetadata"):
            self.usage = event["usageMetadata"]
        self.id = self.id or str(event.get("responseId") or "chatcmpl-" + uuid.uuid4().hex)
        self.model = str(event.get("modelVersion") or self.model)
        candidates = [c for c in event.get("candidates") or () if isinstance(c, dict)]
        blocked = not candidates and _blocked(event)
        indices = [int(c.get("index", i)) for i, c in enumerate(candidates)] or ([0] if blocked else [])
        out: list[pb.ChatChunk] = []
        if not self._seen and indices:
            # OpenAI's first chunk: the role and an empty content, for every choice.
            out.append(
                self._chunk(
                    pb.ChunkChoice(index=i, delta=pb.Message(role=pb.ROLE_ASSISTANT, content="")) for i in indices
                )
            )
            self._seen.update(indices)
        if blocked:
            out.append(self._chunk([pb.ChunkChoice(index=0, finish_reason=pb.FINISH_REASON_CONTENT_FILTER)]))
            return out
        choices = []
        for index, candidate in zip(indices, candidates, strict=True):
            text, calls = _candidate_parts(candidate)
            delta = pb.Message()
            if index not in self._seen:
                delta.role = pb.ROLE_ASSISTANT
                self._seen.add(index)
            if text:
                delta.content = text
            for call in calls:
                call.index = self._calls.get(index, 0)
                self._calls[index] = call.index + 1
                delta.tool_calls.append(call)
            reason = candidate.get("finishReason")
            finish = finish_from_gemini(reason, index in self._calls) if reason else pb.FINISH_REASON_UNSPECIFIED
            if text or calls or delta.role or finish:
                choices.append(pb.ChunkChoice(index=index, delta=delta, finish_reason=finish))
        if choices:
            out.append(self._chunk(choices))
        return out

    def usage_chunk(self) -> pb.ChatChunk | None:
        """The last, choice-less chunk carrying usage (None when Gemini reported none)."""
        if not isinstance(self.usage, dict):
            return None
        last = self._chunk()
        last.usage.CopyFrom(usage_from_gemini(self.usage))
        return last


def prompt_request(request: pb.CompleteRequest, prompt: str) -> pb.ChatRequest:
    return pb.ChatRequest(
        model=request.model, messages=[pb.Message(role=pb.ROLE_USER, content=prompt)], sampling=request.sampling
    )


def sum_usage(usages: Iterable[pb.Usage]) -> pb.Usage:
    total = pb.Usage()
    for usage in usages:
        total.prompt_tokens += usage.prompt_tokens
        total.completion_tokens += usage.completion_tokens
        total.total_tokens += usage.total_tokens
        total.cached_tokens += usage.cached_tokens
        total.reasoning_tokens += usage.reasoning_tokens
    return total
