"""Builds the one usage event of a request as it moves through the router."""

from __future__ import annotations

import uuid

from interlock.router.v1 import router_pb2 as pb
from interlock.usage.v1 import usage_pb2 as upb
from services.common.clock import Clock
from services.common.errors import InterlockError


class Recorder:
    def __init__(self, clock: Clock, caller: pb.CallerContext, model: str, endpoint: str, *, stream: bool) -> None:
        self._clock = clock
        self.started = clock.monotonic()
        self.event = upb.UsageEvent(
            request_id=caller.request_id or "req_" + uuid.uuid4().hex,
            time_unix_ms=int(clock.now() * 1000),
            key_id=caller.key_id,
            project=caller.project,
            client_ip=caller.client_ip,
            endpoint=caller.endpoint or endpoint,
            model_requested=model,
            metadata_json=caller.metadata_json,
            stream=stream,
            status=upb.STATUS_UNSPECIFIED,
        )

    def elapsed_ms(self) -> int:
        return int((self._clock.monotonic() - self.started) * 1000)

    def first_token(self) -> None:
        if not self.event.ttft_ms:
            self.event.ttft_ms = max(1, self.elapsed_ms())

    def routed(self, decision: pb.RoutingDecision) -> None:
        self.event.model = decision.model
        self.event.provider = decision.provider
        self.event.deployment = decision.deployment
        self.event.attempts = len(decision.attempts)
        if not decision.provider and decision.attempts:
            # Nothing answered: charge the failure to the last model and provider tried, so
            # per-model and per-provider error rates see it.
            self.event.model = decision.attempts[-1].model
            self.event.provider = decision.attempts[-1].provider

    def usage(self, usage: pb.Usage) -> None:
        self.event.prompt_tokens = usage.prompt_tokens
        self.event.completion_tokens = usage.completion_tokens
        self.event.cached_tokens = usage.cached_tokens
        self.event.cost_usd = usage.cost_usd

    def finish(self, error: BaseException | None = None) -> upb.UsageEvent:
        """Close the event: ok, error with its code, or cancelled."""
        if self.event.status == upb.STATUS_UNSPECIFIED:
            if error is None:
                self.event.status = upb.STATUS_OK
            elif isinstance(error, InterlockError):
                self.event.status = upb.STATUS_ERROR
                self.event.error_code = error.code
            elif isinstance(error, (GeneratorExit, KeyboardInterrupt)) or type(error).__name__ == "CancelledError":
                self.event.status = upb.STATUS_CANCELLED
                self.event.error_code = "client_cancelled"
            else:
                self.event.status = upb.STATUS_ERROR
                self.event.error_code = "internal_error"
        self.event.latency_ms = self.elapsed_ms()
        return self.event
