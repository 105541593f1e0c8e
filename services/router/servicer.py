"""RouterService: plan, try targets in order, account, and record usage."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import grpc

from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.router.v1 import router_pb2 as pb
from interlock.router.v1 import router_pb2_grpc
from services.common.clock import Clock
from services.common.errors import InterlockError, InvalidRequestError, UpstreamError
from services.router import tokens
from services.router.ledger import Recorder
from services.router.providers.base import ProviderAdapter, Target
from services.router.routing import Plan, Planner, cost_usd
from services.router.usage_emitter import UsageEmitter

Context = grpc.aio.ServicerContext[Any, Any]
R = TypeVar("R")
C = TypeVar("C", pb.ChatChunk, pb.CompleteResponse)
CHAT_TYPES = (cpb.MODEL_TYPE_CHAT,)
COMPLETION_TYPES = (cpb.MODEL_TYPE_COMPLETION,)
EMBEDDING_TYPES = (cpb.MODEL_TYPE_EMBEDDING,)


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(
        self,
        planner: Planner,
        adapters: Mapping[int, ProviderAdapter],
        emitter: UsageEmitter,
        clock: Clock,
    ) -> None:
        self._planner = planner
        self._adapters = adapters
        self._emitter = emitter
        self._clock = clock

    # ------------------------------------------------------------ attempts

    def _adapter(self, target: Target) -> ProviderAdapter:
        return self._adapters[target.provider.kind]

    def _attempt(self, decision: pb.RoutingDecision, target: Target, outcome: str, started: float) -> None:
        decision.attempts.add(
            provider=target.provider.id,
            model=target.model.id,
            outcome=outcome,
            latency_ms=int((self._clock.monotonic() - started) * 1000),
        )
        decision.provider = target.provider.id
        decision.model = target.model.id
        decision.deployment = target.deployment.upstream_model

    async def _unary(
        self, plan: Plan, rec: Recorder, call: Callable[[ProviderAdapter, Target], Awaitable[R]]
    ) -> tuple[R, Target, pb.RoutingDecision]:
        decision = pb.RoutingDecision(reason=plan.reason)
        last: InterlockError | None = None
        try:
            for target in plan.targets:
                started = self._clock.monotonic()
                try:
                    result = await call(self._adapter(target), target)
                except UpstreamError as exc:
                    self._attempt(decision, target, exc.code, started)
                    last = exc
                    continue
                except InterlockError as exc:
                    self._attempt(decision, target, exc.code, started)
                    raise
                self._attempt(decision, target, "ok", started)
                return result, target, decision
            assert last is not None  # plan.targets is never empty
            raise last
        finally:
            rec.routed(decision)

    async def _open_stream(
        self, plan: Plan, rec: Recorder, open_stream: Callable[[ProviderAdapter, Target], AsyncIterator[R]]
    ) -> tuple[R, AsyncIterator[R], Target, pb.RoutingDecision]:
        """Open the first target that produces a first item; later ones only if earlier fail before it."""
        decision = pb.RoutingDecision(reason=plan.reason)
        last: InterlockError | None = None
        try:
            for target in plan.targets:
                started = self._clock.monotonic()
                stream = open_stream(self._adapter(target), target)
                try:
                    first = await anext(stream)
                except (UpstreamError, StopAsyncIteration) as exc:
                    await stream.aclose()  # type: ignore[attr-defined]
                    error = exc if isinstance(exc, UpstreamError) else UpstreamError("provider sent an empty stream")
                    self._attempt(decision, target, error.code, started)
                    last = error
                    continue
                except InterlockError as exc:
                    self._attempt(decision, target, exc.code, started)
                    raise
                self._attempt(decision, target, "ok", started)
                return first, stream, target, decision
            assert last is not None
            raise last
        finally:
            rec.routed(decision)

    def _check_context(self, model: cpb.Model, prompt_tokens: int, sampling: pb.Sampling) -> None:
        wanted = sampling.max_completion_tokens or sampling.max_tokens
        if model.context_window and prompt_tokens + wanted > model.context_window:
            raise InvalidRequestError(
                f"This model's maximum context length is {model.context_window} tokens; the request has "
                f"{prompt_tokens} prompt tokens and asks for {wanted} completion tokens.",
                code="context_length_exceeded",
                param="messages",
            )

    def _settle(self, usage: pb.Usage, model: cpb.Model, rec: Recorder) -> None:
        usage.total_tokens = usage.total_tokens or usage.prompt_tokens + usage.completion_tokens
        usage.cost_usd = cost_usd(model, usage)
        usage.latency_ms = rec.elapsed_ms()
        rec.usage(usage)

    # ------------------------------------------------------------ the two request shapes

    async def _serve_unary(self, spec: Spec, call: Callable[[ProviderAdapter, Target], Awaitable[R]]) -> R:
        """Plan, try targets, settle usage and record exactly one usage event."""
        rec = Recorder(self._clock, spec.caller, spec.model, spec.endpoint, stream=False)
        error: BaseException | None = None
        try:
            plan = self._planner.plan(spec.model, spec.types, spec.route)
            if spec.prompt_tokens is not None:
                self._check_context(plan.model, spec.prompt_tokens, spec.sampling)
            response, target, decision = await self._unary(plan, rec, call)
            answer = cast(_Answer, response)
            answer.model = answer.model or target.model.id
            self._settle(answer.usage, target.model, rec)
            answer.routing_decision.CopyFrom(decision)
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._emitter.emit(rec.finish(error))

    async def _serve_stream(
        self,
        spec: Spec,
        open_stream: Callable[[ProviderAdapter, Target], AsyncIterator[C]],
        texts: Callable[[C], list[str]],
        usage_chunk: Callable[[C, pb.RoutingDecision, pb.Usage], C],
    ) -> AsyncGenerator[C, None]:
        """Relay chunks as they come; failover only before the first one. The last
        chunk always carries usage (counted here if the provider sent none)."""
        rec = Recorder(self._clock, spec.caller, spec.model, spec.endpoint, stream=True)
        error: BaseException | None = None
        try:
            plan = self._planner.plan(spec.model, spec.types, spec.route)
            prompt_tokens = spec.prompt_tokens or 0
            self._check_context(plan.model, prompt_tokens, spec.sampling)
            first, stream, target, decision = await self._open_stream(plan, rec, open_stream)
            cast(_Answer, first).routing_decision.CopyFrom(decision)
            streamed: list[str] = []
            usage_seen = False
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                chunk: C | None = first
                while chunk is not None:
                    answer = cast(_Answer, chunk)
                    answer.model = answer.model or target.model.id
                    pieces = texts(chunk)
                    if pieces:
                        rec.first_token()
                        streamed.extend(pieces)
                    if answer.HasField("usage"):
                        usage_seen = True
                        self._settle(answer.usage, target.model, rec)
                        answer.routing_decision.CopyFrom(decision)
                    yield chunk
                    chunk = await anext(stream, None)
            if not usage_seen:
                # The provider ignored include_usage: count what was streamed so the ledger stays whole.
                usage = pb.Usage(prompt_tokens=prompt_tokens, completion_tokens=tokens.count_text("".join(streamed)))
                self._settle(usage, target.model, rec)
                yield usage_chunk(first, decision, usage)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._emitter.emit(rec.finish(error))

    # ------------------------------------------------------------ the RPCs

    async def Chat(self, request: pb.ChatRequest, context: Context) -> pb.ChatResponse:
        spec = Spec.of(request, "/v1/chat/completions", CHAT_TYPES, tokens.count_messages(request.messages))
        return await self._serve_unary(spec, lambda a, t: a.chat(request, t))

    async def ChatStream(self, wrapped: pb.ChatStreamRequest, context: Context) -> AsyncIterator[pb.ChatStreamResponse]:
        request = wrapped.request
        spec = Spec.of(request, "/v1/chat/completions", CHAT_TYPES, tokens.count_messages(request.messages))
        chunks = self._serve_stream(spec, lambda a, t: a.chat_stream(request, t), _chat_texts, _chat_usage_chunk)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield pb.ChatStreamResponse(chunk=chunk)

    async def Complete(self, request: pb.CompleteRequest, context: Context) -> pb.CompleteResponse:
        prompt_tokens = max((tokens.count_text(p) for p in request.prompts), default=0)
        spec = Spec.of(request, "/v1/completions", COMPLETION_TYPES, prompt_tokens)
        return await self._serve_unary(spec, lambda a, t: a.complete(request, t))

    async def CompleteStream(
        self, wrapped: pb.CompleteStreamRequest, context: Context
    ) -> AsyncIterator[pb.CompleteStreamResponse]:
        request = wrapped.request
        spec = Spec.of(request, "/v1/completions", COMPLETION_TYPES, sum(tokens.count_text(p) for p in request.prompts))
        chunks = self._serve_stream(
            spec, lambda a, t: a.complete_stream(request, t), _completion_texts, _completion_usage_chunk
        )
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield pb.CompleteStreamResponse(chunk=chunk)

    async def Embed(self, request: pb.EmbedRequest, context: Context) -> pb.EmbedResponse:
        spec = Spec.of(request, "/v1/embeddings", EMBEDDING_TYPES, None)
        return await self._serve_unary(spec, lambda a, t: a.embed(request, t))


@dataclass(frozen=True)
class Spec:
    """What the shared request paths need to know of one request."""

    caller: pb.CallerContext
    model: str
    route: pb.RouteHints
    sampling: pb.Sampling
    endpoint: str
    types: Collection[int]
    # Counted prompt tokens, for the context-window check; None skips it.
    prompt_tokens: int | None

    @classmethod
    def of(cls, request: _Routed, endpoint: str, types: Collection[int], prompt_tokens: int | None) -> Spec:
        sampling = getattr(request, "sampling", None) or pb.Sampling()
        return cls(request.caller, request.model, request.route, sampling, endpoint, types, prompt_tokens)


class _Routed(Protocol):
    @property
    def caller(self) -> pb.CallerContext: ...
    @property
    def model(self) -> str: ...
    @property
    def route(self) -> pb.RouteHints: ...


class _Answer(Protocol):
    """The fields every response and chunk message shares."""

    model: str

    @property
    def usage(self) -> pb.Usage: ...
    @property
    def routing_decision(self) -> pb.RoutingDecision: ...
    def HasField(self, field_name: str) -> bool: ...


def _chat_texts(chunk: pb.ChatChunk) -> list[str]:
    return [c.delta.content for c in chunk.choices if c.delta.content or c.delta.tool_calls]


def _chat_usage_chunk(first: pb.ChatChunk, decision: pb.RoutingDecision, usage: pb.Usage) -> pb.ChatChunk:
    return pb.ChatChunk(id=first.id, created=first.created, model=first.model, routing_decision=decision, usage=usage)


def _completion_texts(chunk: pb.CompleteResponse) -> list[str]:
    return [c.text for c in chunk.choices if c.text]


def _completion_usage_chunk(
    first: pb.CompleteResponse, decision: pb.RoutingDecision, usage: pb.Usage
) -> pb.CompleteResponse:
    return pb.CompleteResponse(
        id=first.id, created=first.created, model=first.model, routing_decision=decision, usage=usage
    )
