"""The harness shared by the fake providers: a local uvicorn server plus the test controls.

A fake provider (FakeOpenAI, FakeAnthropic, FakeGemini) is a plain ASGI callable
(Starlette is used only for its response classes) served by uvicorn in a daemon thread
with its own event loop, so sync tests can drive it over real sockets, real chunked SSE
framing and real disconnects. This module holds everything that is not the provider's
wire format: the server's lifecycle, request recording, injected failures, mid-stream
deaths, pacing, cancellation counting and the API key gate. A subclass says what
differs through a few hooks:

- ``provider`` / ``api_prefix``: the name used in messages, the path ``base_url`` ends with;
- ``_route(request)``: answer an authorised request (the provider's endpoints);
- ``_failure_body(status)``: the provider's error body for ``fail_next`` without a body;
- ``_check_key(request, key)``: the provider's API key check and its refusal;
- ``response_headers``: headers the provider puts on every response;
- ``_record(request)``: what ``requests`` keeps of a request.

Streams are sent by ``_stream`` as ready-made SSE frames, so each provider keeps its own
framing (named events, CRLF separators, a ``[DONE]`` sentinel).

A "token" is a whitespace-separated word everywhere: ``split_reply`` cuts replies into
one-word pieces that concatenate back to the whole text.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import math
import re
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypedDict
from urllib.parse import parse_qs

import orjson
import uvicorn
from starlette.responses import Response, StreamingResponse

JSON = dict[str, Any]
# One SSE frame as sent on the wire, and whether it is paced: a paced frame first waits
# first_token_delay (the stream's first frame) or token_delay (any later one).
Frame = tuple[bytes, bool]

# A word plus its trailing whitespace: streamed pieces concatenate back to exactly the
# non-stream content, and each piece is one "token".
_WORD = re.compile(r"\S+\s*")


class ServerOptions(TypedDict, total=False):
    """FakeServer's keyword options, for subclasses that add their own and pass these on."""

    token_delay: float
    first_token_delay: float
    required_api_key: str | None
    record_requests: bool
    shutdown_timeout: int


@dataclass(frozen=True, slots=True)
class Request:
    """A request as the fake sees it, after the body has been read and parsed."""

    method: str
    path: str
    query: dict[str, str]  # last value of each query parameter
    headers: dict[str, str]  # names lower-cased
    json: Any  # the parsed body; the raw text if it is not JSON; None if empty


class _Died(Exception):
    """Raised inside a stream generator to drop the connection without finishing the stream."""


class FakeServer:
    """A fake provider's server and controls. Behaviour attributes may be changed from the test thread at any time."""

    provider: ClassVar[str]  # "OpenAI": in the thread name and in messages
    api_prefix: ClassVar[str]  # "/v1": where the provider's API lives, as base_url ends
    response_headers: ClassVar[Mapping[str, str]] = {}

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
    ) -> None:
        self.host, self.port = host, port
        self.token_delay = token_delay  # seconds before each later paced stream frame
        self.first_token_delay = first_token_delay  # before a stream's first frame / a non-stream answer
        self.required_api_key = required_api_key
        self.record_requests = record_requests  # a benchmark turns this off to keep memory flat
        self.requests: list[JSON] = []
        self.cancelled = 0  # streams whose client went away before the stream finished
        self._defaults = (token_delay, first_token_delay, required_api_key)
        self._shutdown_timeout = shutdown_timeout
        self._lock = threading.Lock()  # fail_next is read-modify-write from two threads
        self._failure: tuple[int, JSON, dict[str, str]] | None = None
        self._fail_times = 0
        self._die_after: int | None = None
        self._ids = itertools.count(1)  # for response ids
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- hooks ------------------------------------------------------------------------

    async def _route(self, request: Request) -> Response:
        """The provider's answer to a request that passed the failure and key gate."""
        raise NotImplementedError

    def _failure_body(self, status: int) -> JSON:
        """The provider's error body for `fail_next` when the test gives none."""
        raise NotImplementedError

    def _check_key(self, request: Request, key: str) -> Response | None:
        """The provider's refusal if the request does not carry `key`, else None."""
        raise NotImplementedError

    def _record(self, request: Request) -> JSON:
        """What `requests` keeps of a request."""
        return {"method": request.method, "path": request.path, "headers": request.headers, "json": request.json}

    # -- controls ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.api_prefix}"

    def fail_next(self, status: int, body: JSON | None = None, times: int = 1, retry_after: str | None = None) -> None:
        """The next `times` requests (any endpoint) get `status` with the provider's error body."""
        headers = {"retry-after": retry_after} if retry_after is not None else {}
        with self._lock:
            self._failure = (status, body if body is not None else self._failure_body(status), headers)
            self._fail_times = times

    def die_mid_stream_after(self, n_events: int | None) -> None:
        """The next streamed response sends `n_events` SSE events, then drops the connection."""
        self._die_after = n_events

    def reset(self) -> None:
        """Clear records and one-shot behaviours, restore constructor settings (server keeps running)."""
        self.token_delay, self.first_token_delay, self.required_api_key = self._defaults
        self.requests.clear()
        self.cancelled = 0
        self._die_after = None
        with self._lock:
            self._failure, self._fail_times = None, 0

    # -- lifecycle --------------------------------------------------------------------

    def _bind(self) -> socket.socket:
        # Binding ourselves (rather than letting uvicorn bind port 0) makes the port known up front.
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(2048)
        self.port = sock.getsockname()[1]
        return sock

    def _make_server(self, log_level: str | None) -> uvicorn.Server:
        # log_config=None and log_level=None: do not touch the test process's logging setup.
        # ws="none" avoids importing websockets (its deprecation warnings break -W error).
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
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"fake-{self.provider.lower()}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:  # set once the listening server is accepting connections
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError(f"fake {self.provider} server did not start")
            time.sleep(0.002)
        return self

    def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(self._shutdown_timeout + 5)
        if thread.is_alive():  # a stuck stream: skip the graceful wait
            server.force_exit = True
            thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self, log_level: str = "warning") -> None:
        """Serve in the calling (main) thread until SIGINT/SIGTERM (uvicorn handles them)."""
        sock = self._bind()
        print(f"fake {self.provider} serving on {self.base_url}", flush=True)
        # uvicorn re-raises the SIGINT after its graceful shutdown
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
        try:
            payload = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            payload = body.decode("utf-8", "replace")  # recorded as-is; handlers reject non-objects
        request = Request(
            method=scope["method"],
            path=scope["path"],
            query={k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()},
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
            json=payload,
        )
        if self.record_requests:
            self.requests.append(self._record(request))

        response = self._gate(request)
        if response is None:
            response = await self._route(request)
        try:
            await response(scope, receive, send)
        except _Died:
            pass  # uvicorn sees an unfinished response and closes the socket: no last event
        finally:
            if isinstance(response, StreamingResponse):
                # If the send was cancelled the generator is parked at a `yield`; closing it runs
                # its `finally` now (which counts the cancellation) rather than at GC time.
                await response.body_iterator.aclose()  # type: ignore[attr-defined]

    def _gate(self, request: Request) -> Response | None:
        """Injected failures first, then the API key check."""
        if self._fail_times:  # unlocked peek keeps the common path cheap; the lock decides
            with self._lock:
                failure = self._failure if self._fail_times > 0 else None
                if failure is not None:
                    self._fail_times -= 1
            if failure is not None:
                return self._json(failure[1], failure[0], failure[2])
        key = self.required_api_key
        return None if key is None else self._check_key(request, key)

    # -- answering --------------------------------------------------------------------

    def _json(self, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return Response(orjson.dumps(body), status, {**self.response_headers, **(headers or {})}, "application/json")

    async def _answer(self, body: Any) -> Response:
        """A successful non-stream answer, after first_token_delay."""
        if self.first_token_delay > 0:
            await asyncio.sleep(self.first_token_delay)
        return self._json(body)

    def _stream(self, frames: Sequence[Frame]) -> StreamingResponse:
        """An SSE response sending `frames`, paced, honouring die_mid_stream_after and counting cancellations."""
        die_after, self._die_after = self._die_after, None  # one-shot, claimed by this stream

        async def generate() -> AsyncIterator[bytes]:
            finished = died = False
            try:
                for i, (frame, paced) in enumerate(frames):
                    if i == die_after:
                        died = True
                        raise _Died
                    # Delays are read per frame, so a test may change them mid-stream.
                    delay = self.first_token_delay if i == 0 else self.token_delay
                    if paced and delay > 0:
                        await asyncio.sleep(delay)  # also where a client disconnect cancels us
                    yield frame
                finished = True
            finally:
                if not finished and not died:
                    self.cancelled += 1

        return StreamingResponse(generate(), media_type="text/event-stream", headers=dict(self.response_headers))


# -- shared reply helpers ---------------------------------------------------------------


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, str | None]:
    """`text` up to the earliest stop sequence found in it, and that stop sequence (None if none)."""
    found = [(i, s) for s in stops if s and (i := text.find(s)) >= 0]
    if not found:
        return text, None
    cut, stop = min(found)
    return text[:cut], stop


def split_reply(text: str, limit: Any) -> tuple[list[str], bool]:
    """One-word pieces of `text`, cut to `limit` tokens when it is an int; and whether they were cut."""
    pieces = _WORD.findall(text)
    if isinstance(limit, int) and limit < len(pieces):
        pieces = pieces[: max(limit, 0)]
        if pieces:
            pieces[-1] = pieces[-1].rstrip()  # the cut reply does not end in whitespace
        return pieces, True
    return pieces, False


def embedding(text: str, dims: int) -> list[float]:
    """Deterministic unit vector from a hash of the text."""
    raw = struct.unpack(f"<{dims}I", hashlib.shake_256(text.encode()).digest(4 * dims))
    vec = [v / 2147483648.0 - 1.0 for v in raw]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


# -- command line -----------------------------------------------------------------------


def run_cli(server: type[FakeServer], argv: list[str] | None, *, description: str, port: int, key_help: str) -> None:
    """Parse the fakes' common command line and serve `server` in the foreground."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    parser.add_argument("--api-key", default=None, help=key_help)
    parser.add_argument("--record", action="store_true", help="keep every request in memory (off: flat memory)")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    fake = server(
        args.host, args.port, token_delay=args.token_delay, first_token_delay=args.first_token_delay,
        required_api_key=args.api_key, record_requests=args.record,
    )  # fmt: skip
    fake.serve_forever(args.log_level)
