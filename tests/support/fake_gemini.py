"""A local fake of Google's Gemini API (generativelanguage v1beta) speaking its real wire format.

The server harness and the test controls (``base_url``, ``requests``, ``fail_next``,
``die_mid_stream_after``, ``token_delay``/``first_token_delay``, ``cancelled``,
``required_api_key``, ``reset``) live in FakeServer (tests/support/fake_server.py);
this module is Gemini's wire format::

    with FakeGemini(required_api_key="k") as fake:
        httpx.post(f"{fake.base_url}/models/gemini-x:generateContent",
                   headers={"x-goog-api-key": "k"}, json={"contents": [...]})

    python -m tests.support.fake_gemini --port 9001 --token-delay 0.01

Endpoints: ``models/{m}:generateContent`` (one GenerateContentResponse),
``models/{m}:streamGenerateContent`` (``?alt=sse``: ``data:`` events, each a
GenerateContentResponse; without it a JSON array), ``models/{m}:batchEmbedContents``
and ``models/{m}:embedContent``. Errors are google.rpc.Status bodies
(``{"error": {"code", "message", "status", "details"}}``).

Behaviour: the reply is "Echo: " + the last user turn's text (or "Tool said: <json>"
when the last turn carries a functionResponse), a "token" being a whitespace-separated
word; toolConfig mode ANY answers with a functionCall (carrying a thoughtSignature, as
thinking models do); user text containing "unsafe-trigger" ends with finishReason SAFETY
and no content, "blocked-prompt-trigger" blocks the prompt (promptFeedback, no
candidates). Requests are validated like the real API validates them: unknown fields
(``additionalProperties`` in a schema, ``max_tokens`` in generationConfig, ...), a
missing ``contents``, empty parts or a role other than user/model answer 400.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, ClassVar, Unpack

import orjson
from starlette.responses import Response

from tests.support.fake_server import (
    JSON,
    FakeServer,
    Request,
    ServerOptions,
    cut_at_stop,
    embedding,
    run_cli,
    split_reply,
)

_ROUTE = re.compile(r"^/v1beta/(?P<model>(?:models|tunedModels)/[^/:]+):(?P<method>[A-Za-z]+)$")
_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
TOOL_ARGS: JSON = {"x": 1}
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
UNSAFE_TRIGGER = "unsafe-trigger"
BLOCKED_TRIGGER = "blocked-prompt-trigger"
MAX_EMBED_BATCH = 100
MAX_EMBED_DIMS = 3072

_REQUEST_KEYS = {"contents", "systemInstruction", "tools", "toolConfig", "safetySettings", "generationConfig"}
_REQUEST_KEYS |= {"cachedContent", "model"}
_PART_DATA = {"text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode"}
_PART_DATA |= {"codeExecutionResult"}
_PART_EXTRA = {"thought", "thoughtSignature", "videoMetadata", "partMetadata"}
_GENERATION_KEYS = {
    "candidateCount", "stopSequences", "maxOutputTokens", "temperature", "topP", "topK", "seed",
    "responseMimeType", "responseSchema", "responseJsonSchema", "presencePenalty", "frequencyPenalty",
    "responseLogprobs", "logprobs", "enableEnhancedCivicAnswers", "responseModalities", "speechConfig",
    "thinkingConfig", "mediaResolution", "imageConfig",
}  # fmt: skip
_SCHEMA_KEYS = {
    "type", "format", "title", "description", "nullable", "enum", "items", "minItems", "maxItems",
    "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern",
    "minimum", "maximum", "anyOf", "propertyOrdering", "default", "example",
}  # fmt: skip
_SCHEMA_TYPES = {"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"}
_MODES = {"AUTO", "ANY", "NONE", "VALIDATED"}


class _Invalid(Exception):
    """A request the real API would refuse with 400 INVALID_ARGUMENT."""


def google_error(status: int, message: str, details: list[JSON] | None = None) -> JSON:
    error: JSON = {"code": status, "message": message, "status": STATUS_NAMES.get(status, "UNKNOWN")}
    if details:
        error["details"] = details
    return {"error": error}


def _unknown(name: str, where: str) -> _Invalid:
    at = f" at '{where}'" if where else ""
    return _Invalid(f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.')


# ------------------------------------------------------------------ validation


def _check_schema(schema: Any, where: str) -> None:
    if not isinstance(schema, dict):
        raise _Invalid(f"Invalid value at '{where}': expected an object")
    for key, value in schema.items():
        if key not in _SCHEMA_KEYS:
            raise _unknown(key, where)
        if key == "type" and (not isinstance(value, str) or value.upper() not in _SCHEMA_TYPES):
            raise _Invalid(f"Invalid value at '{where}.type' ({value!r})")
        if key == "properties":
            if not isinstance(value, dict):
                raise _Invalid(f"Invalid value at '{where}.properties'")
            for name, sub in value.items():
                _check_schema(sub, f"{where}.properties[{name}].value")
        elif key == "items":
            _check_schema(value, f"{where}.items")
        elif key == "anyOf":
            for i, sub in enumerate(value if isinstance(value, list) else [None]):
                _check_schema(sub, f"{where}.any_of[{i}]")
        elif key == "enum" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise _Invalid(f"Invalid value at '{where}.enum' (TYPE_STRING)")
    kind = str(schema.get("type", "")).upper()
    if kind == "STRING" and schema.get("format") not in (None, "enum", "date-time"):
        raise _Invalid(f"* {where}.format: only 'enum' and 'date-time' are supported for STRING type")
    if kind == "OBJECT" and "properties" in schema and not schema["properties"]:
        raise _Invalid(f"* {where}.properties: should be non-empty for OBJECT type")


def _check_part(part: Any, where: str, *, text_only: bool = False) -> None:
    if not isinstance(part, dict):
        raise _Invalid(f"Invalid value at '{where}': expected an object")
    for key in part:
        if key not in _PART_DATA and key not in _PART_EXTRA:
            raise _unknown(key, where)
    data = [k for k in part if k in _PART_DATA]
    if len(data) != 1:
        raise _Invalid(f"* {where}: a part must have exactly one of its data fields set")
    kind = data[0]
    value = part[kind]
    if text_only and kind != "text":
        raise _Invalid(f"* {where}: system instructions may only contain text")
    if kind == "text" and not isinstance(value, str):
        raise _Invalid(f"Invalid value at '{where}.text' (TYPE_STRING)")
    if kind == "inlineData":
        if not isinstance(value, dict) or not value.get("mimeType") or not isinstance(value.get("data"), str):
            raise _Invalid(f"* {where}.inline_data: mime_type and data are required")
        try:
            base64.b64decode(value["data"], validate=True)
        except binascii.Error as exc:
            raise _Invalid(f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), Base64 decoding failed") from exc
    if kind == "fileData" and (not isinstance(value, dict) or not value.get("fileUri")):
        raise _Invalid(f"* {where}.file_data.file_uri: file_uri is required")
    if kind == "functionCall":
        if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
            raise _Invalid(f"* {where}.function_call.name: Name cannot be empty.")
        if "args" in value and not isinstance(value["args"], dict):
            raise _Invalid(
                f"Invalid value at '{where}.function_call.args' (type.googleapis.com/google.protobuf.Struct)"
            )
    if kind == "functionResponse":
        if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
            raise _Invalid(f"* {where}.function_response.name: Name cannot be empty.")
        if not isinstance(value.get("response"), dict):
            raise _Invalid(
                f"Invalid value at '{where}.function_response.response' (type.googleapis.com/google.protobuf.Struct)"
            )


def _check_content(content: Any, where: str, *, system: bool = False) -> None:
    if not isinstance(content, dict):
        raise _Invalid(f"Invalid value at '{where}': expected an object")
    for key in content:
        if key not in ("role", "parts"):
            raise _unknown(key, where)
    role = content.get("role")
    if not system and role not in (None, "", "user", "model"):
        raise _Invalid("Please use a valid role: user, model.")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise _Invalid(f"* {where}.parts: contents.parts must not be empty.")
    for i, part in enumerate(parts):
        _check_part(part, f"{where}.parts[{i}]", text_only=system)


def check_generate_request(body: JSON) -> None:
    """Raise _Invalid for what generateContent would refuse."""
    for key in body:
        if key not in _REQUEST_KEYS:
            raise _unknown(key, "")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _Invalid("* GenerateContentRequest.contents: contents is not specified")
    for i, content in enumerate(contents):
        _check_content(content, f"contents[{i}]")
    if "systemInstruction" in body:
        _check_content(body["systemInstruction"], "system_instruction", system=True)
    declared: list[str] = []
    for i, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, dict):
            raise _Invalid(f"Invalid value at 'tools[{i}]'")
        for j, declaration in enumerate(tool.get("functionDeclarations") or ()):
            where = f"tools[{i}].function_declarations[{j}]"
            for key in declaration:
                if key not in ("name", "description", "parameters", "parametersJsonSchema", "response", "behavior"):
                    raise _unknown(key, where)
            name = declaration.get("name")
            if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
                raise _Invalid(f"* GenerateContentRequest.{where}.name: Invalid function name.")
            declared.append(name)
            if "parameters" in declaration:
                _check_schema(declaration["parameters"], f"{where}.parameters")
    config = (body.get("toolConfig") or {}).get("functionCallingConfig")
    if config is not None:
        if config.get("mode", "AUTO") not in _MODES:
            raise _Invalid(f"Invalid value at 'tool_config.function_calling_config.mode' ({config.get('mode')!r})")
        for name in config.get("allowedFunctionNames") or ():
            if name not in declared:
                raise _Invalid(f"* allowed_function_names: function {name!r} is not declared")
    generation = body.get("generationConfig") or {}
    for key in generation:
        if key not in _GENERATION_KEYS:
            raise _unknown(key, "generation_config")
    if "responseSchema" in generation:
        _check_schema(generation["responseSchema"], "generation_config.response_schema")
        if generation.get("responseMimeType") != "application/json":
            raise _Invalid("* GenerationConfig.response_schema: response_mime_type must be application/json")
    count = generation.get("candidateCount", 1)
    if not isinstance(count, int) or not 1 <= count <= 8:
        raise _Invalid("* GenerationConfig.candidate_count: must be between 1 and 8")


# ------------------------------------------------------------------ the server


class FakeGemini(FakeServer):
    """Fake Gemini API. Behaviour attributes may be changed from the test thread at any time."""

    provider: ClassVar[str] = "Gemini"
    api_prefix: ClassVar[str] = "/v1beta"

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, embed_dims: int = 8, **options: Unpack[ServerOptions]
    ) -> None:
        super().__init__(host, port, **options)
        self.embed_dims = embed_dims  # default outputDimensionality
        self.thoughts_tokens = 0  # reported as usageMetadata.thoughtsTokenCount when > 0
        self.cached_tokens = 0  # reported as usageMetadata.cachedContentTokenCount when > 0
        self._default_embed_dims = embed_dims

    # -- FakeServer hooks ---------------------------------------------------------------

    async def _route(self, request: Request) -> Response:
        method, path, payload = request.method, request.path, request.json
        match = _ROUTE.match(path)
        if method != "POST" or match is None:
            return self._error(404, f"Method not found: {method} {path}")
        model, action = match["model"], match["method"]
        if not isinstance(payload, dict):
            return self._error(400, "Invalid JSON payload received. Expected an object.")
        try:
            if action == "generateContent":
                check_generate_request(payload)
                return await self._answer(self._generate(model, payload, stream=False)[0])
            if action == "streamGenerateContent":
                check_generate_request(payload)
                events = self._generate(model, payload, stream=True)
                if request.query.get("alt") != "sse":
                    return await self._answer(events)  # without alt=sse the API answers a JSON array
                # Gemini separates its SSE events with CRLF pairs; every event is paced.
                return self._stream([(b"data: " + orjson.dumps(event) + b"\r\n\r\n", True) for event in events])
            if action == "batchEmbedContents":
                return await self._answer(self._batch_embed(model, payload))
            if action == "embedContent":
                return await self._answer({"embedding": self._embed_one(model, payload, "")})
        except _Invalid as exc:
            return self._error(400, str(exc))
        return self._error(404, f"Method not found: {action}")

    def _failure_body(self, status: int) -> JSON:
        return google_error(status, "fake failure")

    def _check_key(self, request: Request, key: str) -> Response | None:
        # The key may come as the x-goog-api-key header or as ?key=.
        sent = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not sent:
            message = (
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API."
            )
            return self._error(403, message)
        if sent != key:
            info = {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
            return self._error(400, "API key not valid. Please pass a valid API key.", [info])
        return None

    def _record(self, request: Request) -> JSON:
        # The query matters here: it carries alt=sse and may carry the key.
        return {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": request.headers,
            "json": request.json,
        }

    # -- controls -----------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        body: JSON | None = None,
        times: int = 1,
        retry_after: str | None = None,
        retry_delay: str | None = None,
    ) -> None:
        """The next `times` requests (any endpoint) get `status` with a Google error body.

        `retry_after` sets the Retry-After header; `retry_delay` ("7s") adds a
        google.rpc.RetryInfo detail, as the real API does on 429."""
        if body is None and retry_delay:
            details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}]
            body = google_error(status, "fake failure", details)
        super().fail_next(status, body, times, retry_after)

    def reset(self) -> None:
        super().reset()
        self.embed_dims = self._default_embed_dims
        self.thoughts_tokens = self.cached_tokens = 0

    def _error(self, status: int, message: str, details: list[JSON] | None = None) -> Response:
        return self._json(google_error(status, message, details), status)

    # -- generation -------------------------------------------------------------------

    def _generate(self, model: str, body: JSON, *, stream: bool) -> list[JSON]:
        """The GenerateContentResponse (or, streaming, each event) for a valid request."""
        contents: list[JSON] = body["contents"]
        system = (body.get("systemInstruction") or {}).get("parts") or []
        prompt_tokens = sum(len(str(p.get("text", "")).split()) for c in contents for p in c["parts"]) + sum(
            len(str(p.get("text", "")).split()) for p in system
        )
        last = contents[-1]
        user_text = next(
            (
                "".join(p.get("text", "") for p in c["parts"])
                for c in reversed(contents)
                if c.get("role", "user") == "user" and any("text" in p for p in c["parts"])
            ),
            "",
        )
        generation = body.get("generationConfig") or {}
        n = int(generation.get("candidateCount") or 1)
        head: JSON = {"modelVersion": model.split("/", 1)[1] + "-001", "responseId": f"fake-resp-{next(self._ids)}"}

        def usage(candidates: int) -> JSON:
            meta: JSON = {"promptTokenCount": prompt_tokens, "candidatesTokenCount": candidates}
            total = prompt_tokens + candidates
            if self.thoughts_tokens:
                meta["thoughtsTokenCount"] = self.thoughts_tokens
                total += self.thoughts_tokens
            if self.cached_tokens:
                meta["cachedContentTokenCount"] = self.cached_tokens
            meta["totalTokenCount"] = total
            return meta

        if BLOCKED_TRIGGER in user_text:
            feedback = {"blockReason": "SAFETY", "safetyRatings": [_rating(blocked=True)]}
            return [{"promptFeedback": feedback, "usageMetadata": usage(0), **head}]
        if UNSAFE_TRIGGER in user_text:
            candidates = [
                {"finishReason": "SAFETY", "index": i, "safetyRatings": [_rating(blocked=True)]} for i in range(n)
            ]
            return [{"candidates": candidates, "usageMetadata": usage(0), **head}]

        config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
        declared = [d["name"] for t in body.get("tools") or () for d in t.get("functionDeclarations") or ()]
        if config.get("mode") == "ANY" and declared:
            name = (config.get("allowedFunctionNames") or declared)[0]
            signature = base64.b64encode(f"fake-signature:{head['responseId']}".encode()).decode()
            part = {"functionCall": {"name": name, "args": TOOL_ARGS}, "thoughtSignature": signature}
            candidates = [
                {"content": {"parts": [part], "role": "model"}, "finishReason": "STOP", "index": i} for i in range(n)
            ]
            return [{"candidates": candidates, "usageMetadata": usage(n * 3), **head}]

        responses = [p["functionResponse"] for p in last["parts"] if "functionResponse" in p]
        text = "Echo: " + user_text
        if responses:
            text = "Tool said: " + orjson.dumps(responses[0]["response"]).decode()
        pieces, finish = _reply(text, generation.get("stopSequences") or [], generation.get("maxOutputTokens"))
        completion = n * len(pieces)
        if not stream:
            candidates = [
                {"content": {"parts": [{"text": "".join(pieces)}], "role": "model"}, "finishReason": finish, "index": i}
                for i in range(n)
            ]
            return [{"candidates": candidates, "usageMetadata": usage(completion), **head}]
        events = []
        for step, piece in enumerate(pieces or [""]):
            final = step == max(len(pieces), 1) - 1
            candidates = []
            for i in range(n):
                candidate: JSON = {"content": {"parts": [{"text": piece}], "role": "model"}, "index": i}
                if final:
                    candidate["finishReason"] = finish
                candidates.append(candidate)
            # Like the real API: running usage on every event, the complete count on the last.
            meta = usage(completion) if final else {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens}
            events.append({"candidates": candidates, "usageMetadata": meta, **head})
        return events

    # -- embeddings -------------------------------------------------------------------

    def _embed_one(self, model: str, request: Any, where: str) -> JSON:
        if not isinstance(request, dict):
            raise _Invalid(f"Invalid value at '{where}': expected an object")
        for key in request:
            if key not in ("model", "content", "taskType", "title", "outputDimensionality"):
                raise _unknown(key, where)
        if request.get("model", model) != model:
            raise _Invalid(f"* BatchEmbedContentsRequest.model: {where}.model must be {model!r}")
        content = request.get("content")
        if not isinstance(content, dict):
            raise _Invalid(f"* {where}.content: content is required")
        _check_content(content, f"{where}.content")
        dims = request.get("outputDimensionality", self.embed_dims)
        if not isinstance(dims, int) or not 1 <= dims <= MAX_EMBED_DIMS:
            raise _Invalid(f"* {where}.output_dimensionality: must be between 1 and {MAX_EMBED_DIMS}")
        text = "".join(p.get("text", "") for p in content["parts"])
        return {"values": embedding(text, dims)}

    def _batch_embed(self, model: str, body: JSON) -> JSON:
        for key in body:
            if key != "requests":
                raise _unknown(key, "")
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise _Invalid("* BatchEmbedContentsRequest.requests: requests is required")
        if len(requests) > MAX_EMBED_BATCH:
            raise _Invalid(
                f"* BatchEmbedContentsRequest.requests: at most {MAX_EMBED_BATCH} requests can be in one batch"
            )
        return {"embeddings": [self._embed_one(model, r, f"requests[{i}]") for i, r in enumerate(requests)]}


def _rating(*, blocked: bool) -> JSON:
    rating: JSON = {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH" if blocked else "NEGLIGIBLE"}
    if blocked:
        rating["blocked"] = True
    return rating


def _reply(text: str, stops: list[str], limit: Any) -> tuple[list[str], str]:
    """Pieces (one word each) of the reply after stop sequences and maxOutputTokens; and finishReason."""
    pieces, cut = split_reply(cut_at_stop(text, stops)[0], limit)
    return pieces, "MAX_TOKENS" if cut else "STOP"


def main(argv: list[str] | None = None) -> None:
    run_cli(
        FakeGemini, argv, description="Run the fake Gemini API in the foreground.", port=9001,
        key_help="require 'x-goog-api-key: <key>'",
    )  # fmt: skip


if __name__ == "__main__":
    main()
