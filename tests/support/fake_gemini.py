"""A local fake of Google's Gemini API (generativelanguage v1beta) speaking its real wire format.

It has FakeOpenAI's control surface (``base_url``, ``requests``, ``fail_next``,
``die_mid_stream_after``, ``token_delay``/``first_token_delay``, ``cancelled``,
``required_api_key``, ``reset``) and is served the same way: a plain ASGI callable
run by uvicorn in a daemon thread::

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

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import itertools
import math
import re
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, Self
from urllib.parse import parse_qs

import orjson
import uvicorn
from starlette.responses import Response, StreamingResponse

JSON = dict[str, Any]

_WORD = re.compile(r"\S+\s*")
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


class _Died(Exception):
    """Raised inside a stream generator to drop the connection without finishing."""


class _Invalid(Exception):
    """A request the real API would refuse with 400 INVALID_ARGUMENT."""


def google_error(status: int, message: str, details: list[JSON] | None = None) -> JSON:
    error: JSON = {"code": status, "message": message, "status": STATUS_NAMES.get(status, "UNKNOWN")}
    if details:
        error["details"] = details
    return {"error": error}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, "application/json")


def _unknown(name: str, where: str) -> _Invalid:
    at = f" at '{where}'" if where else ""
    return _Invalid(f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.')


def _embedding(text: str, dims: int) -> list[float]:
    """Deterministic unit vector from a hash of the text."""
    raw = struct.unpack(f"<{dims}I", hashlib.shake_256(text.encode()).digest(4 * dims))
    vec = [v / 2147483648.0 - 1.0 for v in raw]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


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


class FakeGemini:
    """Fake Gemini API. Behaviour attributes may be changed from the test thread at any time."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token_delay: float = 0.0,
        first_token_delay: float = 0.0,
        required_api_key: str | None = None,
        record_requests: bool = True,
        shutdown_timeout: int = 1,
        embed_dims: int = 8,
    ) -> None:
        self.host, self.port = host, port
        self.token_delay = token_delay  # seconds between stream events
        self.first_token_delay = first_token_delay  # before the first event / a unary answer
        self.required_api_key = required_api_key
        self.record_requests = record_requests
        self.embed_dims = embed_dims  # default outputDimensionality
        self.thoughts_tokens = 0  # reported as usageMetadata.thoughtsTokenCount when > 0
        self.cached_tokens = 0  # reported as usageMetadata.cachedContentTokenCount when > 0
        self.requests: list[JSON] = []
        self.cancelled = 0  # streams whose client went away before the stream finished
        self._defaults = (token_delay, first_token_delay, required_api_key, embed_dims)
        self._shutdown_timeout = shutdown_timeout
        self._lock = threading.Lock()
        self._failure: tuple[int, JSON, dict[str, str]] | None = None
        self._fail_times = 0
        self._die_after: int | None = None
        self._ids = itertools.count(1)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- controls ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1beta"

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
        headers = {"retry-after": retry_after} if retry_after is not None else {}
        if body is None:
            details = (
                [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}]
                if retry_delay
                else None
            )
            body = google_error(status, "fake failure", details)
        with self._lock:
            self._failure = (status, body, headers)
            self._fail_times = times

    def die_mid_stream_after(self, n_events: int | None) -> None:
        """The next streamed response sends `n_events` SSE events, then drops the connection."""
        self._die_after = n_events

    def reset(self) -> None:
        """Clear records and one-shot behaviours, restore constructor settings (server keeps running)."""
        self.token_delay, self.first_token_delay, self.required_api_key, self.embed_dims = self._defaults
        self.thoughts_tokens = self.cached_tokens = 0
        self.requests.clear()
        self.cancelled = 0
        self._die_after = None
        with self._lock:
            self._failure, self._fail_times = None, 0

    # -- lifecycle --------------------------------------------------------------------

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(2048)
        self.port = sock.getsockname()[1]
        return sock

    def _make_server(self, log_level: str | None) -> uvicorn.Server:
        # As FakeOpenAI: leave the test process's logging alone, no websockets import.
        config = uvicorn.Config(
            self, lifespan="off", interface="asgi3", ws="none", log_config=None, log_level=log_level,
            access_log=False, proxy_headers=False, server_header=False,
            timeout_graceful_shutdown=self._shutdown_timeout,
        )  # fmt: skip
        return uvicorn.Server(config)

    def start(self) -> Self:
        sock = self._bind()
        self._server = server = self._make_server(None)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"fake-gemini:{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError("fake Gemini server did not start")
            time.sleep(0.002)
        return self

    def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(self._shutdown_timeout + 5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self, log_level: str = "warning") -> None:
        sock = self._bind()
        print(f"fake Gemini serving on {self.base_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            self._make_server(log_level).run(sockets=[sock])

    # -- ASGI -------------------------------------------------------------------------

    async def __call__(self, scope: JSON, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        method, path = scope["method"], scope["path"]
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            payload = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            payload = body.decode("utf-8", "replace")
        if self.record_requests:
            self.requests.append({"method": method, "path": path, "query": query, "headers": headers, "json": payload})

        response = self._gate(headers, query)
        if response is None:
            response = await self._route(method, path, query, payload)
        try:
            await response(scope, receive, send)
        except _Died:
            pass  # uvicorn sees an unfinished response and closes the socket
        finally:
            if isinstance(response, StreamingResponse):
                await response.body_iterator.aclose()  # type: ignore[attr-defined]

    def _gate(self, headers: dict[str, str], query: dict[str, str]) -> Response | None:
        """Injected failures first, then the API key (x-goog-api-key header or ?key=)."""
        if self._fail_times:
            with self._lock:
                failure = self._failure if self._fail_times > 0 else None
                if failure is not None:
                    self._fail_times -= 1
            if failure is not None:
                return _json(failure[1], failure[0], failure[2])
        key = self.required_api_key
        if key is None:
            return None
        sent = headers.get("x-goog-api-key") or query.get("key")
        if not sent:
            message = (
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API."
            )
            return _json(google_error(403, message), 403)
        if sent != key:
            info = {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
            return _json(google_error(400, "API key not valid. Please pass a valid API key.", [info]), 400)
        return None

    async def _route(self, method: str, path: str, query: dict[str, str], payload: Any) -> Response:
        match = _ROUTE.match(path)
        if method != "POST" or match is None:
            return _json(google_error(404, f"Method not found: {method} {path}"), 404)
        model, action = match["model"], match["method"]
        if not isinstance(payload, dict):
            return _json(google_error(400, "Invalid JSON payload received. Expected an object."), 400)
        try:
            if action == "generateContent":
                check_generate_request(payload)
                return await self._answer(self._generate(model, payload, stream=False)[0])
            if action == "streamGenerateContent":
                check_generate_request(payload)
                events = self._generate(model, payload, stream=True)
                if query.get("alt") != "sse":
                    return await self._answer(events)  # without alt=sse the API answers a JSON array
                return self._stream(events)
            if action == "batchEmbedContents":
                return await self._answer(self._batch_embed(model, payload))
            if action == "embedContent":
                return await self._answer({"embedding": self._embed_one(model, payload, "")})
        except _Invalid as exc:
            return _json(google_error(400, str(exc)), 400)
        return _json(google_error(404, f"Method not found: {action}"), 404)

    async def _answer(self, body: Any) -> Response:
        if self.first_token_delay > 0:
            await asyncio.sleep(self.first_token_delay)
        return _json(body)

    def _stream(self, events: list[JSON]) -> StreamingResponse:
        die_after, self._die_after = self._die_after, None

        async def generate() -> AsyncIterator[bytes]:
            finished = died = False
            try:
                for i, event in enumerate(events):
                    if i == die_after:
                        died = True
                        raise _Died
                    delay = self.first_token_delay if i == 0 else self.token_delay
                    if delay > 0:
                        await asyncio.sleep(delay)  # also where a client disconnect cancels us
                    yield b"data: " + orjson.dumps(event) + b"\r\n\r\n"
                finished = True
            finally:
                if not finished and not died:
                    self.cancelled += 1

        return StreamingResponse(generate(), media_type="text/event-stream")

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
        return {"values": _embedding(text, dims)}

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
    cut = min((i for s in stops if s and (i := text.find(s)) >= 0), default=-1)
    if cut >= 0:
        text = text[:cut]
    pieces = _WORD.findall(text)
    if isinstance(limit, int) and limit < len(pieces):
        pieces = pieces[: max(limit, 0)]
        if pieces:
            pieces[-1] = pieces[-1].rstrip()
        return pieces, "MAX_TOKENS"
    return pieces, "STOP"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the fake Gemini API in the foreground.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    parser.add_argument("--api-key", default=None, help="require 'x-goog-api-key: <key>'")
    parser.add_argument("--record", action="store_true", help="keep every request in memory")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    fake = FakeGemini(
        args.host, args.port, token_delay=args.token_delay, first_token_delay=args.first_token_delay,
        required_api_key=args.api_key, record_requests=args.record,
    )  # fmt: skip
    fake.serve_forever(args.log_level)


if __name__ == "__main__":
    main()
