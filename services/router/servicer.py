"""RouterService: plan, try targets in order, account, and record usage."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import grpc
import orjson

from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.router.v1 import router_pb2 as pb
from interlock.router.v1 import router_pb2_grpc
from interlock.usage.v1 import usage_pb2 as upb
from services.common import tokens
from services.common.clock import Clock
from services.common.errors import InvalidRequestError, UpstreamError
from services.common.wire.chat import message_text
from services.router import metrics
from services.router.attempts import AttemptRunner, single
from services.router.breaker import CircuitBreakers
from services.router.evaluation.runner import Evaluations
from services.router.ledger import Recorder
from services.router.providers.base import ProviderAdapter, Target
from services.router.routing import Demand, Plan, Planner, cost_usd, deployment_key
from services.router.usage_emitter import UsageEmitter

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
R = TypeVar("R")
C = TypeVar("C", pb.ChatChunk, pb.CompleteResponse)
CHAT_TYPES = (cpb.MODEL_TYPE_CHAT,)
COMPLETION_TYPES = (cpb.MODEL_TYPE_COMPLETION,)
EMBEDDING_TYPES = (cpb.MODEL_TYPE_EMBEDDING,)
# The ledger's endpoint for judge calls: recorded like requests, under no key or project,
# so they are visible and costed but never billed to (or limited as) the evaluated caller.
JUDGE_ENDPOINT = "/internal/evaluate"
# A judge answers with a short JSON object; this bounds its cost.
JUDGE_MAX_TOKENS = 256
# Called once a request has succeeded: (its answer text, built only if an evaluator was chosen;
# the model that answered; its usage event).
Evaluate = Callable[[Callable[[], str], cpb.Model, upb.UsageEvent], None]


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(
        self,
        planner: Planner,
        runner: AttemptRunner,
        breakers: CircuitBreakers,
        emitter: UsageEmitter,
        clock: Clock,
        *,
        evaluations: Evaluations | None = None,
    ) -> None:
        self._planner = planner
        self._runner = runner
        self._breakers = breakers
        self._emitter = emitter
        self._clock = clock
        self._evaluations = evaluations

    def _plan(self, spec: Spec) -> Plan:
        sampling = spec.sampling
        demand = Demand(
            prompt_tokens=spec.prompt_tokens or 0,
            max_output_tokens=sampling.max_completion_tokens or sampling.max_tokens,
            stream=spec.stream,
        )
        plan = self._planner.plan(spec.model, spec.types, spec.route, demand)
        if spec.prompt_tokens is not None:
            self._check_context(plan.model, spec.prompt_tokens, sampling)
        return plan

    def _check_context(self, model: cpb.Model, prompt_tokens: int, sampling: pb.Sampling) -> None:
        wanted = sampling.max_completion_tokens or sampling.max_tokens
        if model.context_window and prompt_tokens + wanted > model.context_window:
            raise InvalidRequestError(
                f"This model's maximum context length is {model.context_window} tokens; the request has "
                f"{prompt_tokens} prompt tokens and asks for {wanted} completion tokens.",
                code="context_length_exceeded",
                param="messages",
            )

    def _finish(
        self, rec: Recorder, error: BaseException | None, context: Context | None, watch: metrics.RequestMetrics
    ) -> upb.UsageEvent:
        """Close the request: its one usage event, its metrics, and the trailers that
        tell the edge how long the providers took."""
        event = rec.finish(error)
        trailers = watch.finish(event, error, self._clock.monotonic() - rec.started)
        if context is not None:
            context.set_trailing_metadata(trailers)
        self._emitter.emit(event)
        return event

    def _settle(self, usage: pb.Usage, model: cpb.Model, rec: Recorder) -> None:
        usage.total_tokens = usage.total_tokens or usage.prompt_tokens + usage.completion_tokens
        usage.cost_usd = cost_usd(model, usage)
        usage.latency_ms = rec.elapsed_ms()
        rec.usage(usage)

    # ------------------------------------------------------------ the two request shapes

    async def _serve_unary(
        self,
        spec: Spec,
        context: Context | None,
        call: Callable[[ProviderAdapter, Target], Awaitable[R]],
        *,
        evaluate: Callable[[R, cpb.Model, upb.UsageEvent], None] | None = None,
    ) -> R:
        """Plan, try targets, settle usage and record exactly one usage event."""
        rec = Recorder(self._clock, spec.caller, spec.model, spec.endpoint, stream=False)
        decision = pb.RoutingDecision()
        watch = metrics.RequestMetrics(self._clock, spec.endpoint)
        error: BaseException | None = None
        answered: tuple[R, cpb.Model] | None = None
        try:
            plan = self._plan(spec)
            watch.planned = plan.model.id
            decision.reason = plan.reason
            opened = await self._runner.open(
                plan,
                decision,
                lambda a, t: watch.timer.wrap(single(lambda: call(a, t))),
                first_token=False,
                time_left=context.time_remaining() if context is not None else None,
            )
            await opened.rest.aclose()
            answer = cast(_Answer, opened.first)
            answer.model = answer.model or opened.target.model.id
            self._settle(answer.usage, opened.target.model, rec)
            answer.routing_decision.CopyFrom(decision)
            answered = (opened.first, opened.target.model)
            return opened.first
        except BaseException as exc:
            error = exc
            raise
        finally:
            rec.routed(decision)
            event = self._finish(rec, error, context, watch)
            if evaluate is not None and answered is not None and error is None:
                with _never_raises("scheduling the evaluation of %s", event.request_id):
                    evaluate(answered[0], answered[1], event)

    async def _serve_stream(
        self,
        spec: Spec,
        context: Context,
        open_stream: Callable[[ProviderAdapter, Target], AsyncGenerator[C, None]],
        texts: Callable[[C], list[str]],
        usage_chunk: Callable[[C, pb.RoutingDecision, pb.Usage], C],
        *,
        evaluate: Evaluate | None = None,
    ) -> AsyncGenerator[C, None]:
        """Relay chunks as they come; failover only before the first one. The last
        chunk always carries usage (counted here if the provider sent none)."""
        rec = Recorder(self._clock, spec.caller, spec.model, spec.endpoint, stream=True)
        decision = pb.RoutingDecision()
        watch = metrics.RequestMetrics(self._clock, spec.endpoint)
        error: BaseException | None = None
        target: Target | None = None
        streamed: list[str] = []
        try:
            plan = self._plan(spec)
            watch.planned = plan.model.id
            decision.reason = plan.reason
            opened = await self._runner.open(
                plan,
                decision,
                lambda a, t: watch.timer.wrap(open_stream(a, t)),
                first_token=True,
                time_left=context.time_remaining() if context is not None else None,
            )
            first, target = opened.first, opened.target
            cast(_Answer, first).routing_decision.CopyFrom(decision)
            if context is not None:
                # Headers go out before the body: tell the edge now what the first chunk waited on providers.
                await context.send_initial_metadata(metrics.first_chunk_metadata(watch.timer.seconds))
            usage_seen = False
            async with contextlib.aclosing(opened.rest):
                chunk: C | None = first
                while chunk is not None:
                    answer = cast(_Answer, chunk)
                    answer.model = answer.model or target.model.id
                    pieces = texts(chunk)
                    if pieces:
                        rec.first_token()
                        if evaluate is not None:  # the text is kept only when evaluation hooks are on
                            streamed.extend(pieces)
                    if answer.HasField("usage"):
                        usage_seen = True
                        self._settle(answer.usage, target.model, rec)
                        answer.routing_decision.CopyFrom(decision)
                    yield chunk
                    chunk = await anext(opened.rest, None)
            if not usage_seen:
                # The provider ignored include_usage: count what was streamed so the ledger stays whole.
                usage = pb.Usage(
                    prompt_tokens=spec.prompt_tokens or 0, completion_tokens=tokens.count_text("".join(streamed))
                )
                self._settle(usage, target.model, rec)
                yield usage_chunk(first, decision, usage)
        except BaseException as exc:
            error = exc
            if isinstance(exc, UpstreamError) and target is not None:
                # Failed after its first byte: too late to fail over, but the breaker should know.
                self._breakers.failure(deployment_key(target), exc.retry_after)
            raise
        finally:
            rec.routed(decision)
            event = self._finish(rec, error, context, watch)
            if evaluate is not None and target is not None and error is None:
                with _never_raises("scheduling the evaluation of %s", event.request_id):
                    evaluate(lambda: "".join(streamed), target.model, event)

    # ------------------------------------------------------------ evaluation hooks

    def _chat_evaluation(self, request: pb.ChatRequest) -> Evaluate | None:
        """What runs the model's and the request's evaluators once the answer is out."""
        evaluations = self._evaluations
        if evaluations is None:
            return None

        def evaluate(answer: Callable[[], str], model: cpb.Model, event: upb.UsageEvent) -> None:
            # Most requests have no evaluator sampled: the texts are built only for those that do.
            chosen = evaluations.choose(model.evaluators, request.evaluators, event)
            if chosen:
                evaluations.start(chosen, _last_user_text(request), answer(), event=event, judge=self._judge)

        return evaluate

    async def _judge(self, model_id: str, messages: list[pb.Message], evaluated: upb.UsageEvent) -> str:
        """One judge call through the ordinary provider path (planned, retried, ledgered),
        under its own request id; never evaluated itself, so judges cannot recurse."""
        request = pb.ChatRequest(model=model_id, messages=messages, sampling=pb.Sampling(max_tokens=JUDGE_MAX_TOKENS))
        request.caller.request_id = "eval_" + uuid.uuid4().hex
        request.caller.endpoint = JUDGE_ENDPOINT
        # Who the evaluation was for, for tracing: the row itself is under no key.
        request.caller.metadata_json = orjson.dumps(
            {"evaluates": evaluated.request_id, "key_id": evaluated.key_id, "project": evaluated.project}
        ).decode()
        spec = Spec.of(request, JUDGE_ENDPOINT, CHAT_TYPES, _chat_prompt_tokens(request))
        response = await self._serve_unary(spec, None, lambda a, t: a.chat(request, t))
        return _chat_answer(response)

    # ------------------------------------------------------------ the RPCs

    async def Chat(self, request: pb.ChatRequest, context: Context) -> pb.ChatResponse:
        spec = Spec.of(request, "/v1/chat/completions", CHAT_TYPES, _chat_prompt_tokens(request))
        evaluate = self._chat_evaluation(request)
        return await self._serve_unary(
            spec,
            context,
            lambda a, t: a.chat(request, t),
            evaluate=(lambda response, model, event: evaluate(lambda: _chat_answer(response), model, event))
            if evaluate
            else None,
        )

    async def ChatStream(self, wrapped: pb.ChatStreamRequest, context: Context) -> AsyncIterator[pb.ChatStreamResponse]:
        request = wrapped.request
        spec = Spec.of(
            request,
            "/v1/chat/completions",
            CHAT_TYPES,
            _chat_prompt_tokens(request),
            stream=True,
        )
        chunks = self._serve_stream(
            spec,
            context,
            lambda a, t: _as_generator(a.chat_stream(request, t)),
            _chat_texts,
            _chat_usage_chunk,
            evaluate=self._chat_evaluation(request),
        )
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield pb.ChatStreamResponse(chunk=chunk)

    async def Complete(self, request: pb.CompleteRequest, context: Context) -> pb.CompleteResponse:
        prompt_tokens = max((tokens.count_prompt_text(p, request.model) for p in request.prompts), default=0)
        spec = Spec.of(request, "/v1/completions", COMPLETION_TYPES, prompt_tokens)
        return await self._serve_unary(spec, context, lambda a, t: a.complete(request, t))

    async def CompleteStream(
        self, wrapped: pb.CompleteStreamRequest, context: Context
    ) -> AsyncIterator[pb.CompleteStreamResponse]:
        request = wrapped.request
        prompt_tokens = sum(tokens.count_prompt_text(p, request.model) for p in request.prompts)
        spec = Spec.of(request, "/v1/completions", COMPLETION_TYPES, prompt_tokens, stream=True)
        chunks = self._serve_stream(
            spec,
            context,
            lambda a, t: _as_generator(a.complete_stream(request, t)),
            _completion_texts,
            _completion_usage_chunk,
        )
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield pb.CompleteStreamResponse(chunk=chunk)

    async def Embed(self, request: pb.EmbedRequest, context: Context) -> pb.EmbedResponse:
        spec = Spec.of(request, "/v1/embeddings", EMBEDDING_TYPES, None)
        return await self._serve_unary(spec, context, lambda a, t: a.embed(request, t))


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
    stream: bool = False

    @classmethod
    def of(
        cls, request: _Routed, endpoint: str, types: Collection[int], prompt_tokens: int | None, *, stream: bool = False
    ) -> Spec:
        sampling = getattr(request, "sampling", None) or pb.Sampling()
        return cls(request.caller, request.model, request.route, sampling, endpoint, types, prompt_tokens, stream)


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


@contextlib.contextmanager
def _never_raises(what: str, *args: object) -> Iterator[None]:
    """Evaluation is a side job: its failure is logged, never the request's."""
    try:
        yield
    except Exception:
        log.exception("failed " + what, *args)


def _chat_answer(response: pb.ChatResponse) -> str:
    """The text evaluators see: the first choice's."""
    return message_text(response.choices[0].message) if response.choices else ""


def _last_user_text(request: pb.ChatRequest) -> str:
    for message in reversed(request.messages):
        if message.role == pb.ROLE_USER:
            return message_text(message)
    return ""


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


async def _as_generator(stream: AsyncIterator[C]) -> AsyncGenerator[C, None]:
    """An adapter's stream as a generator the engine can close (closing it closes the upstream call)."""
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        async for item in stream:
            yield item


def _chat_prompt_tokens(request: pb.ChatRequest) -> int:
    """The edge's count when it made one (it counted for its quotas); else count here."""
    return request.caller.prompt_tokens or tokens.count_messages(request.messages, request.model)
