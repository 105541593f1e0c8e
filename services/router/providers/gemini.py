"""Google's Gemini API (generativelanguage v1beta) behind the OpenAI-shaped router.

Wire format, as the API defines it:

* chat: ``POST {base}/models/{model}:generateContent`` answers one
  ``GenerateContentResponse``; ``POST {base}/models/{model}:streamGenerateContent?alt=sse``
  answers server-sent events whose ``data:`` lines are each one ``GenerateContentResponse``
  (text parts are deltas; ``usageMetadata`` is repeated and complete on the last event).
* embeddings: ``POST {base}/models/{model}:batchEmbedContents`` with ``requests[]`` of
  ``EmbedContentRequest``; answers ``embeddings[].values``.
* the key goes in the ``x-goog-api-key`` header; errors are
  ``{"error": {"code", "message", "status", "details"}}`` (google.rpc.Status).

Translation choices (OpenAI -> Gemini):

* system and developer messages, wherever they appear, become ``systemInstruction``
  parts in order; user -> role ``user``; assistant -> role ``model``; tool (and legacy
  function) results -> role ``user`` with ``functionResponse`` parts, which is what the
  current API and Google's own SDK send. Consecutive turns of one role are merged, so
  parallel tool results travel in one turn as the API asks.
* a ``functionResponse`` carries the function name (looked up from the assistant tool
  call with that id) and ``{"content": <the tool text, parsed when it is a JSON object>}``.
* images: ``data:`` URLs -> ``inlineData``; other URLs -> ``fileData`` with a MIME type
  guessed from the extension (default image/jpeg). ``input_audio`` and ``file`` parts with
  inline data are sent as ``inlineData`` too; any other part type is refused.
* JSON Schemas (tool parameters, ``json_schema`` response formats) are reduced to the
  OpenAPI subset Gemini's ``Schema`` accepts: unknown keys such as ``additionalProperties``,
  ``$schema`` or ``strict`` are dropped, local ``$ref``s are inlined, ``oneOf`` becomes
  ``anyOf``, ``const`` becomes ``enum``, a ``null`` type becomes ``nullable``, and string
  formats other than ``enum``/``date-time`` are dropped (the API refuses them).
* not forwarded (no Gemini equivalent): logprobs/top_logprobs, logit_bias, user,
  parallel_tool_calls and unknown OpenAI parameters carried in ``extra_json``.

Translation choices (Gemini -> OpenAI):

* tool call ids are ours (``call_<random>``): the Gemini API does not give ids to unary
  function calls. When a ``functionCall`` part carries a ``thoughtSignature`` (Gemini 3
  requires it back, 2.5 accepts it), the signature is appended to the id after
  ``__thought__`` and restored on the ``functionCall`` part when the client sends the
  call back, so multi-step tool use keeps working across the OpenAI wire.
* ``thought`` parts (thought summaries) are not content and are left out.
* usage: prompt = promptTokenCount (+ toolUsePromptTokenCount), completion =
  candidatesTokenCount + thoughtsTokenCount (thoughts also reported as reasoning tokens),
  cached = cachedContentTokenCount.
* embeddings: the API returns no token counts, so prompt tokens are estimated with the
  router's own tokenizer (``services.router.tokens.count_text``) per input.
"""

from __future__ import annotations

import base64
import contextlib
import mimetypes
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import httpx
import orjson

from interlock.router.v1 import router_pb2 as pb
from services.common.errors import InterlockError, InvalidRequestError, UpstreamError
from services.common.wire import fields
from services.common.wire.chat import message_text
from services.router import tokens
from services.router.providers.base import Target
from services.router.providers.openai import transport_error

JSON = dict[str, Any]

# The API takes at most this many requests in one batchEmbedContents call.
EMBED_BATCH = 100
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
# Keys of Gemini's `Schema` (an OpenAPI 3.0 subset); anything else is dropped.
_SCHEMA_KEYS = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "items",
        "minItems",
        "maxItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "anyOf",
        "propertyOrdering",
        "default",
    }
)
_FORMATS = {"string": {"enum", "date-time"}, "number": {"float", "double"}, "integer": {"int32", "int64"}}
_MAX_SCHEMA_DEPTH = 32
_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)$", re.DOTALL)
_AUDIO_MIME = {"wav": "audio/wav", "mp3": "audio/mp3"}


# ---------------------------------------------------------------- errors


def _retry_seconds(header: str | None, details: Iterable[Any]) -> float | None:
    """Retry-After header, else a google.rpc.RetryInfo detail ("37s")."""
    if header:
        with contextlib.suppress(ValueError):
            return float(header)
    for detail in details:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                with contextlib.suppress(ValueError):
                    return float(delay[:-1])
    return None


def gemini_error(status: int, body: bytes, provider: str, retry_after: str | None = None) -> InterlockError:
    """Map a Gemini HTTP error (a google.rpc.Status body) to the client-facing error."""
    detail: JSON = {}
    with contextlib.suppress(orjson.JSONDecodeError):
        parsed = orjson.loads(body)
        if isinstance(parsed, list) and parsed:  # the non-SSE stream wraps errors in an array
            parsed = parsed[0]
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            detail = parsed["error"]
    text = detail.get("message") if isinstance(detail.get("message"), str) else ""
    message = f"provider {provider} answered HTTP {status}" + (f": {text}" if text else "")
    raw_details = detail.get("details")
    details: list[Any] = raw_details if isinstance(raw_details, list) else []
    reasons = {str(d.get("reason", "")) for d in details if isinstance(d, dict)}
    retry = _retry_seconds(retry_after, details)
    if status in (401, 403) or any(r.startswith("API_KEY_") for r in reasons):
        # Gemini answers a bad key with 400 INVALID_ARGUMENT + ErrorInfo API_KEY_INVALID: not the client's fault.
        return UpstreamError(
            f"provider {provider} refused the gateway's credentials", code="provider_auth_failed", http_status=502
        )
    if status == 429:
        return UpstreamError(message, code="upstream_rate_limited", http_status=503, retry_after=retry)
    if status == 503:
        return UpstreamError(message, code="upstream_overloaded", http_status=503, retry_after=retry)
    if status == 400 and detail.get("status") == "FAILED_PRECONDITION":
        # Region not served, billing not enabled: the provider cannot serve us, another one may.
        return UpstreamError(message, code="upstream_error", http_status=502)
    if status in (400, 404, 413, 422):
        return InvalidRequestError(message, code="upstream_rejected_request")
    return UpstreamError(message, code="upstream_error", http_status=502, retry_after=retry)


# ---------------------------------------------------------------- schemas


def _resolve_ref(ref: str, root: JSON) -> Any:
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for raw in ref[2:].split("/"):
        key = raw.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def clean_schema(schema: Any, root: JSON | None = None, depth: int = 0) -> Any:
    """A JSON Schema reduced to what Gemini's OpenAPI-subset `Schema` accepts."""
    if not isinstance(schema, dict):
        return schema
    root = schema if root is None else root
    if depth > _MAX_SCHEMA_DEPTH:
        return {}  # a recursive $ref: stop unrolling rather than loop
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = _resolve_ref(ref, root)
        if not isinstance(target, dict):
            raise InvalidRequestError(f"JSON Schema reference {ref!r} cannot be resolved", param="tools")
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return clean_schema(merged, root, depth + 1)
    out: JSON = {}
    any_of: list[Any] | None = None
    for key, value in schema.items():
        if key in ("anyOf", "oneOf") and isinstance(value, list):
            any_of = [clean_schema(branch, root, depth + 1) for branch in value]
        elif key == "const":
            out.setdefault("enum", [value])
        elif key not in _SCHEMA_KEYS:
            continue  # additionalProperties, $schema, strict, $defs, examples, ...
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: clean_schema(sub, root, depth + 1) for name, sub in value.items()}
        elif key == "items" and isinstance(value, dict):
            out[key] = clean_schema(value, root, depth + 1)
        elif key == "type" and isinstance(value, list):
            kinds = [t for t in value if t != "null"]
            if len(kinds) < len(value):
                out["nullable"] = True
            if len(kinds) == 1:
                out["type"] = kinds[0]
            elif kinds:
                any_of = [{"type": t} for t in kinds]
        else:
            out[key] = value
    if any_of is not None:
        branches = [b for b in any_of if not (isinstance(b, dict) and b.get("type") == "null" and len(b) == 1)]
        if len(branches) < len(any_of):
            out["nullable"] = True
        if len(branches) == 1 and isinstance(branches[0], dict):
            out = {**branches[0], **out}
        elif branches:
            out["anyOf"] = branches
    enum = out.get("enum")
    if enum is not None and not (isinstance(enum, list) and all(isinstance(v, str) for v in enum)):
        del out["enum"]  # Gemini enums are strings only
    fmt, kind = out.get("format"), out.get("type")
    if fmt is not None and fmt not in _FORMATS.get(str(kind).lower(), set()):
        del out["format"]
    return out


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
    """(contents, systemInstruction parts) for an OpenAI-shaped history."""
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
    """The GenerateContentRequest body for an OpenAI-shaped chat request."""
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
    """Turns each streamed GenerateContentResponse into OpenAI-shaped chunks."""

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


def _prompt_request(request: pb.CompleteRequest, prompt: str) -> pb.ChatRequest:
    return pb.ChatRequest(
        model=request.model, messages=[pb.Message(role=pb.ROLE_USER, content=prompt)], sampling=request.sampling
    )


def _sum_usage(usages: Iterable[pb.Usage]) -> pb.Usage:
    total = pb.Usage()
    for usage in usages:
        total.prompt_tokens += usage.prompt_tokens
        total.completion_tokens += usage.completion_tokens
        total.total_tokens += usage.total_tokens
        total.cached_tokens += usage.cached_tokens
        total.reasoning_tokens += usage.reasoning_tokens
    return total


# ---------------------------------------------------------------- the adapter


class GeminiProvider:
    def __init__(self, client: httpx.AsyncClient, env: Mapping[str, str]) -> None:
        self._client = client
        self._env = env

    def _headers(self, target: Target) -> dict[str, str]:
        headers = dict(target.provider.headers)
        if target.provider.api_key_env:
            key = self._env.get(target.provider.api_key_env)
            if not key:
                raise UpstreamError(
                    f"provider {target.provider.id} is not configured: set {target.provider.api_key_env}",
                    code="provider_unavailable",
                    http_status=503,
                )
            headers["x-goog-api-key"] = key
        headers["Content-Type"] = "application/json"
        return headers

    @staticmethod
    def _model(target: Target) -> str:
        """The model's resource name: models/<id> unless the catalog gave a full name (tunedModels/...)."""
        model = target.deployment.upstream_model
        return model if "/" in model else f"models/{model}"

    def _url(self, target: Target, method: str) -> str:
        return f"{target.provider.base_url}/{self._model(target)}:{method}"

    async def _post(self, target: Target, method: str, body: JSON) -> JSON:
        try:
            response = await self._client.post(
                self._url(target, method), content=orjson.dumps(body), headers=self._headers(target),
                timeout=target.provider.timeout_seconds or 60.0,
            )  # fmt: skip
        except httpx.HTTPError as exc:
            raise transport_error(exc, target.provider.id) from exc
        if response.status_code >= 400:
            raise gemini_error(
                response.status_code, response.content, target.provider.id, response.headers.get("retry-after")
            )
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(
                f"provider {target.provider.id} sent invalid JSON", code="upstream_bad_response"
            ) from exc
        if not isinstance(answer, dict):
            raise UpstreamError(
                f"provider {target.provider.id} sent an unexpected answer", code="upstream_bad_response"
            )
        return answer

    async def _events(self, target: Target, body: JSON) -> AsyncGenerator[JSON, None]:
        """Each streamed GenerateContentResponse, as soon as its SSE line arrives."""
        request = self._client.build_request(
            "POST", self._url(target, "streamGenerateContent"), params={"alt": "sse"}, content=orjson.dumps(body),
            headers={**self._headers(target), "Accept": "text/event-stream"},
            timeout=httpx.Timeout(target.provider.timeout_seconds or 60.0),
        )  # fmt: skip
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise transport_error(exc, target.provider.id) from exc
        try:
            if response.status_code >= 400:
                raise gemini_error(
                    response.status_code,
                    await response.aread(),
                    target.provider.id,
                    response.headers.get("retry-after"),
                )
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments
                event = orjson.loads(line[5:].strip())
                if not isinstance(event, dict):
                    continue
                if isinstance(event.get("error"), dict):
                    raise UpstreamError(
                        f"provider {target.provider.id} failed mid-stream: {event['error'].get('message', '')}",
                        code="upstream_stream_error",
                    )
                yield event
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"provider {target.provider.id} broke off the stream", code="upstream_stream_error", http_status=502
            ) from exc
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(
                f"provider {target.provider.id} sent invalid JSON", code="upstream_bad_response"
            ) from exc
        finally:
            # Closing the response tells the upstream we are gone (the client may have left).
            await response.aclose()

    # ------------------------------------------------------------ chat

    async def chat(self, request: pb.ChatRequest, target: Target) -> pb.ChatResponse:
        body = build_generate_request(request)
        answer = await self._post(target, "generateContent", body)
        return chat_response_from_gemini(answer, target.deployment.upstream_model)

    async def chat_stream(self, request: pb.ChatRequest, target: Target) -> AsyncIterator[pb.ChatChunk]:
        body = build_generate_request(request)
        translator = ChatStreamTranslator(target.deployment.upstream_model)
        async with contextlib.aclosing(self._events(target, body)) as events:
            async for event in events:
                for chunk in translator.feed(event):
                    yield chunk
        last = translator.usage_chunk()
        if last is not None:
            yield last

    # ------------------------------------------------------------ legacy completions

    async def complete(self, request: pb.CompleteRequest, target: Target) -> pb.CompleteResponse:
        """Each prompt is one user turn; choices are numbered prompt by prompt, n per prompt."""
        response = pb.CompleteResponse(
            id="cmpl-" + uuid.uuid4().hex, created=int(time.time()), model=target.deployment.upstream_model
        )
        n = request.sampling.n if request.sampling.HasField("n") else 1
        usages = []
        for p_index, prompt in enumerate(request.prompts):
            chat = await self.chat(_prompt_request(request, prompt), target)
            response.model = chat.model
            usages.append(chat.usage)
            for choice in chat.choices:
                text = (prompt if request.echo else "") + choice.message.content
                response.choices.append(
                    pb.CompletionChoice(index=p_index * n + choice.index, text=text, finish_reason=choice.finish_reason)
                )
        response.usage.CopyFrom(_sum_usage(usages))
        return response

    async def complete_stream(self, request: pb.CompleteRequest, target: Target) -> AsyncIterator[pb.CompleteResponse]:
        n = request.sampling.n if request.sampling.HasField("n") else 1
        head = pb.CompleteResponse(
            id="cmpl-" + uuid.uuid4().hex, created=int(time.time()), model=target.deployment.upstream_model
        )
        usages = []
        for p_index, prompt in enumerate(request.prompts):
            translator = ChatStreamTranslator(target.deployment.upstream_model)
            body = build_generate_request(_prompt_request(request, prompt))
            async with contextlib.aclosing(self._events(target, body)) as events:
                async for event in events:
                    out = pb.CompleteResponse()
                    out.CopyFrom(head)
                    for chunk in translator.feed(event):
                        out.model = chunk.model
                        for choice in chunk.choices:
                            text = choice.delta.content
                            if request.echo and choice.delta.role:  # a choice's first delta
                                text = prompt + text
                            if text or choice.finish_reason:
                                out.choices.append(
                                    pb.CompletionChoice(
                                        index=p_index * n + choice.index, text=text, finish_reason=choice.finish_reason
                                    )
                                )
                    if out.choices:
                        yield out
            if isinstance(translator.usage, dict):
                usages.append(usage_from_gemini(translator.usage))
        last = pb.CompleteResponse()
        last.CopyFrom(head)
        if usages:
            last.usage.CopyFrom(_sum_usage(usages))
            yield last

    # ------------------------------------------------------------ embeddings

    async def embed(self, request: pb.EmbedRequest, target: Target) -> pb.EmbedResponse:
        """batchEmbedContents, 100 inputs per call. Gemini reports no token counts for
        embeddings, so prompt tokens are estimated with the router's tokenizer."""
        if request.token_inputs:
            raise InvalidRequestError("Gemini embeds text only: send strings, not token ids", param="input")
        model = self._model(target)
        texts = list(request.inputs)
        response = pb.EmbedResponse(model=target.deployment.upstream_model)
        for start in range(0, len(texts), EMBED_BATCH):
            batch = texts[start : start + EMBED_BATCH]
            requests = []
            for text in batch:
                item: JSON = {"model": model, "content": {"parts": [{"text": text}]}}
                if request.dimensions:
                    item["outputDimensionality"] = request.dimensions
                requests.append(item)
            answer = await self._post(target, "batchEmbedContents", {"requests": requests})
            vectors = answer.get("embeddings")
            if not isinstance(vectors, list) or len(vectors) != len(batch):
                raise UpstreamError(
                    f"provider {target.provider.id} answered a different number of embeddings",
                    code="upstream_bad_response",
                )
            for j, vector in enumerate(vectors):
                values = vector.get("values") if isinstance(vector, dict) else None
                response.embeddings.append(pb.Embedding(index=start + j, values=values or []))
        prompt = sum(tokens.count_text(text) for text in texts)
        response.usage.CopyFrom(pb.Usage(prompt_tokens=prompt, total_tokens=prompt))
        return response
