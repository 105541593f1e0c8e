"""The ratelimit service's side of Envoy's descriptors: the rule for callers
without a key (`anonymous` + `remote_address`, its own anon:<ip> counters) and
the request id Envoy passes along for the 429 body. The servicer runs on the
in-memory backend with a pinned clock."""

from __future__ import annotations

import orjson
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as common_pb2
from envoy.service.ratelimit.v3 import rls_pb2

from services.common.clock import ManualClock
from services.common.errors import ConfigError
from services.ratelimit.backends.memory import MemoryBackend
from services.ratelimit.envoy import EnvoyRateLimitServicer
from services.ratelimit.limiter import Limiter
from services.ratelimit.policy import Rules
from services.ratelimit.settings import RateLimitSettings

Code = rls_pb2.RateLimitResponse.Code
Descriptor = common_pb2.RateLimitDescriptor


def descriptor(*entries: tuple[str, str]) -> common_pb2.RateLimitDescriptor:
    return Descriptor(entries=[Descriptor.Entry(key=k, value=v) for k, v in entries])


def anonymous(ip: str) -> common_pb2.RateLimitDescriptor:
    """What the config's header_value_match + remote_address actions make."""
    return descriptor(("anonymous", "true"), ("remote_address", ip))


def per_ip(ip: str) -> common_pb2.RateLimitDescriptor:
    return descriptor(("remote_address", ip), ("path", "/v1/models"))


def servicer(rules: Rules) -> tuple[EnvoyRateLimitServicer, ManualClock]:
    clock = ManualClock()
    limiter = Limiter(MemoryBackend(), clock, fail_open=True, hold_seconds=60)
    return EnvoyRateLimitServicer(limiter, rules), clock


async def ask(
    service: EnvoyRateLimitServicer, *descriptors: common_pb2.RateLimitDescriptor
) -> rls_pb2.RateLimitResponse:
    request = rls_pb2.RateLimitRequest(domain="interlock", descriptors=descriptors)
    return await service.ShouldRateLimit(request, None)  # type: ignore[arg-type]


async def test_callers_without_a_key_have_a_rule_of_their_own() -> None:
    service, _ = servicer(Rules(ip_rpm=100, anonymous_rpm=2))
    for left in (1, 0):
        response = await ask(service, per_ip("10.0.0.1"), anonymous("10.0.0.1"))
        assert response.overall_code == Code.OK
        assert response.statuses[1].current_limit.name == "anon:requests"
        assert response.statuses[1].current_limit.requests_per_unit == 2
        assert response.statuses[1].limit_remaining == left
    refused = await ask(service, per_ip("10.0.0.1"), anonymous("10.0.0.1"))
    assert refused.overall_code == Code.OVER_LIMIT
    assert [s.code for s in refused.statuses] == [Code.OK, Code.OVER_LIMIT]
    body = orjson.loads(refused.raw_body)
    assert body["status"] == 429
    assert body["error"]["type"] == "rate_limit_error"
    assert "anon:requests" in body["error"]["message"]
    assert "2 per minute" in body["error"]["message"]

    # A caller with a key from the same address sends no anonymous descriptor: only the IP rule.
    keyed = await ask(service, per_ip("10.0.0.1"))
    assert keyed.overall_code == Code.OK
    # Refused as a whole, nothing was taken: two admitted plus this one.
    assert keyed.statuses[0].limit_remaining == 97
    # Another address has its own anonymous counter.
    assert (await ask(service, anonymous("10.0.0.2"))).overall_code == Code.OK


async def test_the_anonymous_counter_refills_at_its_rate() -> None:
    service, clock = servicer(Rules(anonymous_rpm=2, anonymous_burst=3))
    answers = [(await ask(service, anonymous("10.0.0.3"))).overall_code for _ in range(4)]
    assert answers == [Code.OK, Code.OK, Code.OK, Code.OVER_LIMIT]
    clock.advance(30)  # one request's worth at 2 a minute
    assert (await ask(service, anonymous("10.0.0.3"))).overall_code == Code.OK
    assert (await ask(service, anonymous("10.0.0.3"))).overall_code == Code.OVER_LIMIT


async def test_without_the_setting_anonymous_callers_are_not_limited_apart() -> None:
    service, _ = servicer(Rules(ip_rpm=1))
    response = await ask(service, anonymous("10.0.0.4"))
    assert response.overall_code == Code.OK
    assert not response.statuses[0].HasField("current_limit")
    # The IP rule still applies to them through the per-IP descriptor.
    assert (await ask(service, per_ip("10.0.0.4"))).overall_code == Code.OK
    assert (await ask(service, per_ip("10.0.0.4"))).overall_code == Code.OVER_LIMIT


async def test_the_refusal_names_the_request_id_envoy_sent() -> None:
    service, _ = servicer(Rules(ip_rpm=1))
    request_id = descriptor(("request_id", "0f1e2d3c-aaaa-bbbb-cccc-123456789abc"))
    first = await ask(service, per_ip("10.0.0.5"), request_id)
    # The id's own descriptor limits nothing.
    assert [s.code for s in first.statuses] == [Code.OK, Code.OK]
    refused = await ask(service, per_ip("10.0.0.5"), request_id)
    assert refused.overall_code == Code.OVER_LIMIT
    assert orjson.loads(refused.raw_body)["request_id"] == "0f1e2d3c-aaaa-bbbb-cccc-123456789abc"
    # Envoy sets x-request-id itself from the request's id; the service adds none.
    headers = {h.key: h.value for h in refused.response_headers_to_add}
    assert "x-request-id" not in headers
    assert headers["retry-after"] == "60"
    assert headers["x-ratelimit-limit"] == "1"

    # An id not in the edge's format is not echoed: the body gets one of its own, sent back too.
    odd = await ask(service, per_ip("10.0.0.5"), descriptor(("request_id", "has spaces <and> tags")))
    own = orjson.loads(odd.raw_body)["request_id"]
    assert own.startswith("req_")
    assert {h.key: h.value for h in odd.response_headers_to_add}["x-request-id"] == own


def test_the_anonymous_settings() -> None:
    settings = RateLimitSettings.from_env(
        {"INTERLOCK_RATELIMIT_ANONYMOUS_RPM": "30", "INTERLOCK_RATELIMIT_ANONYMOUS_BURST": "45"}
    )
    assert (settings.rules.anonymous_rpm, settings.rules.anonymous_burst) == (30, 45)
    assert RateLimitSettings.from_env({}).rules.anonymous_rpm == 0
    with pytest.raises(ConfigError, match="anonymous"):
        RateLimitSettings.from_env({"INTERLOCK_RATELIMIT_ANONYMOUS_RPM": "-1"})
