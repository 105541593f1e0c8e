"""RouterService: plan, try targets in order, account, and record usage."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

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

    # ------------------------------------------------------------ chat

    async def Chat(self, request: pb.ChatRequest, context: Context) -> pb.ChatResponse:
        rec = Recorder(self._clock, request.caller, request.model, "/v1/chat/completions", stream=False)
        error: BaseException | None = None
        try:
            plan = self._planner.plan(request.model, CHAT_TYPES, request.route)
            self._check_context(plan.model, tokens.count_messages(request.messages), request.sampling)
            response, target, decision = await self._unary(plan, rec, lambda a, t: a.chat(request, t))
            response.model = response.model or target.model.id
            self._settle(response.usage, target.model, rec)
            response.routing_decision.CopyFrom(decision)
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._emitter.emit(rec.finish(error))

    async def ChatStream(self, wrapped: pb.ChatStreamRequest, context: Context) -> AsyncIterator[pb.ChatStreamResponse]:
        request = wrapped.request
        rec = Recorder(self._clock, request.caller, request.model, "/v1/chat/completions", stream=True)
        error: BaseException | None = None
        try:
            plan = self._planner.plan(request.model, CHAT_TYPES, request.route)
            prompt_tokens = tokens.count_messages(request.messages)
            self._check_context(plan.model, prompt_tokens, request.sampling)
            first, stream, target, decision = await self._open_stream(plan, rec, lambda a, t: a.chat_stream(request, t))
            streamed: list[str] = []
            usage_seen = False
            first.routing_decision.CopyFrom(decision)
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                chunk: pb.ChatChunk | None = first
                while chunk is not None:
                    chunk.model = chunk.model or target.model.id
                    for choice in chunk.choices:
                        if choice.delta.content or choice.delta.tool_calls:
                            rec.first_token()
                            streamed.append(choice.delta.content)
                    if chunk.HasField("usage"):
                        usage_seen = True
                        self._settle(chunk.usage, target.model, rec)
                        chunk.routing_decision.CopyFrom(decision)
                    yield pb.ChatStreamResponse(chunk=chunk)
                    chunk = await anext(stream, None)
            if not usage_seen:
                # The provider ignored include_usage: count what was streamed so the ledger stays whole.
                completion = tokens.count_text("".join(streamed))
                last = pb.ChatChunk(id=first.id, created=first.created, model=first.model, routing_decision=decision)
                last.usage.CopyFrom(pb.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion))
                self._settle(last.usage, target.model, rec)
                yield pb.ChatStreamResponse(chunk=last)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._emitter.emit(rec.finish(error))

    # ------------------------------------------------------------ legacy completions

    async def Complete(self, request: pb.CompleteRequest, context: Context) -> pb.CompleteResponse:
        rec = Recorder(self._clock, request.caller, request.model, "/v1/completions", stream=False)
        error: BaseException | None = None
        try:
            plan = self._planner.plan(request.model, COMPLETION_TYPES, request.route)
            prompt_tokens = max((tokens.count_text(p) for p in request.prompts), default=0)
            self._check_context(plan.model, prompt_tokens, request.sampling)
            response, target, decision = await self._unary(plan, rec, lambda a, t: a.complete(request, t))
            response.model = response.model or target.model.id
            self._settle(response.usage, target.model, rec)
            response.routing_decision.CopyFrom(decision)
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._emitter.emit(rec.finish(error))

    async def CompleteStream(
        self, wrapped: pb.CompleteStreamRequest, context: Context
    ) -> AsyncIterator[pb.CompleteStreamResponse]:
        request = wrapped.request
        rec = Recorder(self._clock, request.caller, request.model, "/v1/completions", stream=True)
        error: BaseException | None = None
        try:
            plan = self._planner.plan(request.model, COMPLETION_TYPES, request.route)
            prompt_tokens = sum(tokens.count_text(p) for p in request.prompts)
            self._check_context(plan.model, prompt_tokens, request.sampling)
            first, stream, target, decision = await self._open_stream(
                plan, rec, lambda a, t: a.complete_stream(request, t)
            )
            streamed: list[str] = []
            usage_seen = False
            first.routing_decision.CopyFrom(decision)
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                chunk: pb.CompleteResponse | None = first
                while chunk is not None:
                    chunk.model = chunk.model or target.model.id
                    for choice in chunk.choices:
                        if choice.text:
                            rec.first_token()
                            streamed.append(choice.text)
                    if chunk.HasField("usage"):
                        usage_seen = True
                        self._settle(chunk.usage, target.model, rec)
                        chunk.routing_decision.CopyFrom(decision)
                    yield pb.CompleteStreamResponse(chunk=chunk)
                    chunk = await anext(stream, None)
            if not usage_seen:
                last = pb.CompleteResponse(
                    id=first.id, created=first.created, model=first.model, routing_decision=decision
                )
                completion = tokens.count_text("".join(streamed))
                last.usage.CopyFrom(pb.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion))
                self._settle(last.usage, target.model, rec)
                yield pb.CompleteStreamResponse(chunk=last)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._emitter.emit(rec.finish(error))

    # ------------------------------------------------------------ embeddings

    async def Embed(self, request: pb.EmbedRequest, context: Context) -> pb.EmbedResponse:
        rec = Recorder(self._clock, request.caller, request.model, "/v1/embeddings", stream=False)
        error: BaseException | None = None
        try:
            plan = self._planner.plan(request.model, EMBEDDING_TYPES, request.route)
            response, target, decision = await self._unary(plan, rec, lambda a, t: a.embed(request, t))
            response.model = response.model or target.model.id
            self._settle(response.usage, target.model, rec)
            response.routing_decision.CopyFrom(decision)
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._emitter.emit(rec.finish(error))
