"""One contract, two transports: every router RPC over a real grpc.aio server and channel on
loopback, and over the in-process channel (services.common.inprocess), against one real
router built in this process (build_router) on real catalog and usage services (port 0), the
built-in demo provider and the fake OpenAI upstream. Answers, errors (code, details, rich
trailers), metadata, deadlines, cancellation and client interceptors must agree."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import grpc
import pytest
import yaml
from google.protobuf.message import Message
from google.rpc import status_pb2

from gateway.metrics import exchange, router_interceptors
from interlock.router.v1 import router_pb2 as pb
from interlock.router.v1 import router_pb2_grpc
from interlock.usage.v1 import usage_pb2 as upb
from services.catalog.server import build_server as build_catalog
from services.catalog.settings import CatalogSettings
from services.common.errors import from_rpc_error
from services.common.grpc_server import GrpcService, create_server
from services.common.inprocess import InProcessChannel
from services.common.metrics import MODEL_KEY, UPSTREAM_FIRST_MS_KEY, UPSTREAM_MS_KEY
from services.common.rpc import ERROR_BODY_KEY, ERROR_STATUS_KEY
from services.router.server import Router, build_router
from services.router.settings import RouterSettings
from services.usage.server import build_server as build_usage
from services.usage.settings import UsageSettings
from tests.support.fake_openai import FakeOpenAI

TRANSPORTS = ("grpc", "inprocess")
UPSTREAM_KEY = "sk-transport-test"
WAIT_SECONDS = 10.0
# Only a type (the stubs' async stub class does not exist at run time).
Stub = Any


class Recorder:
    """Client interceptors that note each call's method: one object per kind, since a
    channel files an interceptor under the first kind it is."""

    def __init__(self) -> None:
        self.methods: list[str] = []
        self.interceptors = [_UnaryRecorder(self.methods), _StreamRecorder(self.methods)]


class _UnaryRecorder(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, methods: list[str]) -> None:
        self.methods = methods

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.methods.append(details.method.decode())
        return await continuation(details, request)


class _StreamRecorder(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, methods: list[str]) -> None:
        self.methods = methods

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self.methods.append(details.method.decode())
        return await continuation(details, request)


@dataclass
class Transport:
    name: str
    stub: Stub
    recorder: Recorder


@dataclass
class World:
    router: Router
    upstream: FakeOpenAI
    ledger: Path
    transports: dict[str, Transport]

    def _outcome(self, request_id: str) -> Outcome | None:
        # The store's find_event leaves the outcome out; the ledger's own table has it.
        with contextlib.closing(sqlite3.connect(self.ledger)) as db:
            row = db.execute(
                "SELECT status, error_code, latency_ms FROM events WHERE request_id = ?", (request_id,)
            ).fetchone()
        return None if row is None else Outcome(*row)

    async def event(self, request_id: str) -> Outcome:
        """How the ledger recorded a request, once the router's emitter has delivered it."""
        deadline = time.monotonic() + WAIT_SECONDS
        while (found := await asyncio.to_thread(self._outcome, request_id)) is None:
            assert time.monotonic() < deadline, f"no usage event for {request_id}"
            await asyncio.sleep(0.02)
        return found


class Outcome(NamedTuple):
    status: int
    error_code: str
    latency_ms: int


def _catalog(upstream: FakeOpenAI) -> dict[str, object]:
    demo = {"provider": "demo"}
    chat = {"type": "chat", "capabilities": ["chat"]}
    return {
        "providers": {
            "demo": {"kind": "demo"},
            "fake": {"kind": "openai", "base_url": upstream.base_url, "api_key_env": "FAKE_UPSTREAM_KEY"},
        },
        "models": [
            {**chat, "id": "demo-chat", "context_window": 8192, "deployments": [{**demo, "model": "demo-chat"}]},
            {"id": "demo-instruct", "type": "completion", "deployments": [{**demo, "model": "demo-instruct"}]},
            {"id": "demo-embed", "type": "embedding", "dims": 16, "deployments": [{**demo, "model": "demo-embed"}]},
            {**chat, "id": "tiny-context", "context_window": 40, "deployments": [{**demo, "model": "demo-chat"}]},
            {**chat, "id": "fake-chat", "deployments": [{"provider": "fake", "model": "fake-model"}]},
        ],
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(required_api_key=UPSTREAM_KEY) as fake:
        yield fake


async def _started(service: GrpcService) -> str:
    await service.start()
    return f"127.0.0.1:{service.port}"


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI) -> AsyncIterator[World]:
    root = tmp_path_factory.mktemp("transports")
    config = root / "catalog.yaml"
    config.write_text(yaml.safe_dump(_catalog(upstream)))
    base = {
        "INTERLOCK_DATA_DIR": str(root),
        "INTERLOCK_KEY_PEPPER": "transport-pepper",
        "INTERLOCK_LOG_LEVEL": "warning",
        "FAKE_UPSTREAM_KEY": UPSTREAM_KEY,
    }
    catalog = await build_catalog(
        CatalogSettings.from_env(
            {**base, "INTERLOCK_CATALOG_LISTEN": "127.0.0.1:0", "INTERLOCK_CATALOG_CONFIG": str(config)}
        )
    )
    catalog_addr = await _started(catalog)
    usage_env = {**base, "INTERLOCK_USAGE_LISTEN": "127.0.0.1:0", "INTERLOCK_CATALOG_ADDR": catalog_addr}
    usage = await build_usage(UsageSettings.from_env(usage_env))
    usage_addr = await _started(usage)
    router = await build_router(
        RouterSettings.from_env(
            {
                **base,
                "INTERLOCK_ROUTER_LISTEN": "127.0.0.1:0",
                "INTERLOCK_CATALOG_ADDR": catalog_addr,
                "INTERLOCK_USAGE_ADDR": usage_addr,
                "INTERLOCK_DEMO_TOKEN_DELAY_MS": "1",
                "INTERLOCK_ROUTER_MAX_ATTEMPTS": "1",
            }
        )
    )
    served = create_server("127.0.0.1:0", router.registrations)
    await served.start()
    wire_recorder, local_recorder = Recorder(), Recorder()
    wire = grpc.aio.insecure_channel(
        f"127.0.0.1:{served.port}", interceptors=[*wire_recorder.interceptors, *router_interceptors()]
    )
    local = InProcessChannel(router.registrations, interceptors=[*local_recorder.interceptors, *router_interceptors()])
    try:
        yield World(
            router,
            upstream,
            root / "usage.db",
            {
                "grpc": Transport("grpc", router_pb2_grpc.RouterServiceStub(wire), wire_recorder),
                "inprocess": Transport("inprocess", router_pb2_grpc.RouterServiceStub(local), local_recorder),
            },
        )
    finally:
        await local.close()
        await wire.close(grace=None)
        await served.stop(0)
        await router.close()
        await usage.stop(0)
        await catalog.stop(0)


@pytest.fixture
def fake(world: World) -> Iterator[FakeOpenAI]:
    world.upstream.reset()
    yield world.upstream
    world.upstream.reset()


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest, world: World) -> Transport:
    return world.transports[request.param]


def caller(request_id: str | None = None) -> pb.CallerContext:
    return pb.CallerContext(request_id=request_id or uuid.uuid4().hex, key_id="k-transport", endpoint="/test")


def chat(model: str = "demo-chat", text: str = "hello there", **fields: Any) -> pb.ChatRequest:
    return pb.ChatRequest(
        model=model, messages=[pb.Message(role=pb.ROLE_USER, content=text)], caller=caller(), **fields
    )


def _normalized(message: Message) -> Message:
    """The message without what differs between any two calls (ids, clocks, latencies)."""
    copy = type(message)()
    copy.CopyFrom(message)
    stack: list[Message] = [copy]
    while stack:
        current = stack.pop()
        for field, value in current.ListFields():
            if field.name in {"id", "created", "latency_ms"}:
                current.ClearField(field.name)
            elif field.message_type is not None:
                if field.is_repeated and not field.message_type.GetOptions().map_entry:
                    stack.extend(value)
                elif not field.is_repeated:
                    stack.append(value)
    return copy


async def _streamed(call: Any) -> list[Message]:
    return [_normalized(message) async for message in call]


RPCS: dict[str, Callable[[Stub], Awaitable[list[Message]]]] = {
    "Chat": lambda stub: _one(stub.Chat(chat(), timeout=10)),
    "ChatStream": lambda stub: _streamed(stub.ChatStream(pb.ChatStreamRequest(request=chat()), timeout=10)),
    "Complete": lambda stub: _one(
        stub.Complete(pb.CompleteRequest(model="demo-instruct", prompts=["say hi"], caller=caller()), timeout=10)
    ),
    "CompleteStream": lambda stub: _streamed(
        stub.CompleteStream(
            pb.CompleteStreamRequest(
                request=pb.CompleteRequest(model="demo-instruct", prompts=["a b"], caller=caller())
            )
        )
    ),
    "Embed": lambda stub: _one(
        stub.Embed(pb.EmbedRequest(model="demo-embed", inputs=["one", "two"], caller=caller()), timeout=10)
    ),
}


async def _one(call: Awaitable[Message]) -> list[Message]:
    return [_normalized(await call)]


@pytest.mark.parametrize("rpc", list(RPCS))
async def test_every_rpc_answers_the_same_on_both_transports(world: World, rpc: str) -> None:
    answers = [await RPCS[rpc](world.transports[name].stub) for name in TRANSPORTS]
    assert answers[0], f"{rpc} answered nothing"
    assert answers[0] == answers[1]


@dataclass(frozen=True)
class Failure:
    code: grpc.StatusCode
    details: str
    public: tuple[object, ...]
    trailers: dict[str, object]


def _failure(exc: grpc.aio.AioRpcError) -> Failure:
    error = from_rpc_error(exc)
    trailers: dict[str, object] = {}
    for key, value in cast(Iterable[tuple[str, str | bytes]], exc.trailing_metadata() or ()):
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(cast(bytes, value))
            trailers[key] = (status.code, status.message, [d.type_url for d in status.details])
        else:
            trailers[key] = value
    public = (type(error), error.message, error.code, error.param, error.http_status)
    return Failure(exc.code(), exc.details() or "", public, trailers)


FAILURES: dict[str, tuple[Callable[[Stub], Awaitable[object]], grpc.StatusCode]] = {
    "unknown model": (lambda stub: stub.Chat(chat("no-such-model"), timeout=10), grpc.StatusCode.NOT_FOUND),
    "unknown model, stream": (
        lambda stub: _streamed(stub.ChatStream(pb.ChatStreamRequest(request=chat("no-such-model")), timeout=10)),
        grpc.StatusCode.NOT_FOUND,
    ),
    "context too long": (
        lambda stub: stub.Chat(chat("tiny-context", "word " * 60), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "wrong model type": (
        lambda stub: stub.Embed(pb.EmbedRequest(model="demo-chat", inputs=["x"], caller=caller()), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
async def test_domain_errors_are_identical_on_both_transports(world: World, case: str) -> None:
    make, expected = FAILURES[case]
    seen: list[Failure] = []
    for name in TRANSPORTS:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await make(world.transports[name].stub)
        seen.append(_failure(raised.value))
    assert seen[0].code == expected
    assert {ERROR_BODY_KEY, ERROR_STATUS_KEY, "grpc-status-details-bin"} <= set(seen[0].trailers)
    assert seen[0] == seen[1]


async def test_a_unary_answer_carries_the_routers_trailers(transport: Transport) -> None:
    call = transport.stub.Chat(chat(), timeout=10)
    await call
    trailers = await call.trailing_metadata()
    assert trailers is not None
    assert trailers[MODEL_KEY] == "demo-chat"
    assert float(trailers[UPSTREAM_MS_KEY]) >= 0
    assert await call.code() == grpc.StatusCode.OK


async def test_a_stream_sends_initial_metadata_then_trailers(transport: Transport) -> None:
    call = transport.stub.ChatStream(pb.ChatStreamRequest(request=chat()), timeout=10)
    initial = await call.initial_metadata()
    assert initial is not None
    assert float(initial[UPSTREAM_FIRST_MS_KEY]) >= 0
    assert [message async for message in call]
    trailers = await call.trailing_metadata()
    assert trailers is not None
    assert trailers[MODEL_KEY] == "demo-chat"
    assert await call.code() == grpc.StatusCode.OK


async def test_the_edges_client_interceptors_run(transport: Transport) -> None:
    before = len(transport.recorder.methods)
    with exchange() as seen:
        await transport.stub.Chat(chat(), timeout=10)
    assert seen.model == "demo-chat"
    assert seen.upstream_seconds is not None
    with exchange() as seen_stream:
        assert [message async for message in transport.stub.ChatStream(pb.ChatStreamRequest(request=chat()))]
    assert seen_stream.model == "demo-chat"
    assert seen_stream.upstream_first_seconds is not None
    assert transport.recorder.methods[before:] == [
        "/interlock.router.v1.RouterService/Chat",
        "/interlock.router.v1.RouterService/ChatStream",
    ]


async def test_a_deadline_shorter_than_the_upstream_stops_the_provider_call(
    world: World, transport: Transport, fake: FakeOpenAI
) -> None:
    fake.first_token_delay = 5.0
    request = chat("fake-chat")
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await transport.stub.Chat(request, timeout=0.3)
    assert time.monotonic() - started < 2
    event = await world.event(request.caller.request_id)
    # The router takes time_remaining() as its own budget, so at the deadline its answer
    # (UNAVAILABLE, deadline_exceeded) and the transport's DEADLINE_EXCEEDED race, over the
    # wire as in process; either way the provider call ends there, not when the upstream answers.
    assert raised.value.code() in {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE}
    assert (event.status, event.error_code) in {
        (upb.STATUS_CANCELLED, "client_cancelled"),
        (upb.STATUS_ERROR, "deadline_exceeded"),
    }
    assert 250 <= event.latency_ms < 2000


async def test_a_stream_deadline_cancels_the_upstream_stream(
    world: World, transport: Transport, fake: FakeOpenAI
) -> None:
    fake.token_delay = 0.2
    request = chat("fake-chat", "one two three four five six seven eight nine ten")
    call = transport.stub.ChatStream(pb.ChatStreamRequest(request=request), timeout=0.5)
    got = 0
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in call:
            got += 1
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert got >= 1
    assert (await world.event(request.caller.request_id)).status == upb.STATUS_CANCELLED
    await _until(lambda: fake.cancelled == 1, "the upstream sees its stream cancelled")


async def test_a_client_that_cancels_a_stream_stops_the_routers_stream(
    world: World, transport: Transport, fake: FakeOpenAI
) -> None:
    fake.token_delay = 0.2
    request = chat("fake-chat", "one two three four five six seven eight nine ten")
    call = transport.stub.ChatStream(pb.ChatStreamRequest(request=request))
    messages = aiter(call)
    await anext(messages)
    # As the edge's relay() does when its client goes away.
    assert call.cancel()
    assert call.cancelled()
    assert await call.code() == grpc.StatusCode.CANCELLED
    event = await world.event(request.caller.request_id)
    assert (event.status, event.error_code) == (upb.STATUS_CANCELLED, "client_cancelled")
    await _until(lambda: fake.cancelled == 1, "the upstream sees its stream cancelled")


async def test_cancelling_the_callers_task_cancels_a_unary_call(
    world: World, transport: Transport, fake: FakeOpenAI
) -> None:
    fake.first_token_delay = 5.0
    request = chat("fake-chat")
    task = asyncio.ensure_future(transport.stub.Chat(request, timeout=10))
    await _until(lambda: len(fake.requests) == 1, "the upstream has the request")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    event = await world.event(request.caller.request_id)
    assert (event.status, event.error_code) == (upb.STATUS_CANCELLED, "client_cancelled")


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)
