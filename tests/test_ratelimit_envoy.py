"""The ratelimit service answers Envoy's rate limit service
(envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit) as Envoy's global
rate limit filter calls it, from the same counters as the edge's Check.

The service runs as its own process (python -m services.ratelimit): 3 requests a
minute per client IP, 2 a minute for chat and 5 for other endpoint classes, so
nothing drips back while a test runs (one unit every 20 seconds at most).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import redis.asyncio as aioredis
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as common_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from envoy.type.v3 import ratelimit_unit_pb2
from google.protobuf import duration_pb2, wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from interlock.ratelimit.v1 import ratelimit_pb2, ratelimit_pb2_grpc
from services.common.clock import ManualClock
from services.ratelimit.backends.memory import MemoryBackend
from services.ratelimit.envoy import EnvoyRateLimitServicer
from services.ratelimit.limiter import Limiter
from services.ratelimit.policy import Rules
from tests.support.stack import free_port

pytestmark = pytest.mark.e2e

REDIS_URL = "redis://127.0.0.1:6379/0"
SERVICE = "envoy.service.ratelimit.v3.RateLimitService"
# The method path Envoy's filter calls (its grpc_service names only the cluster).
METHOD = f"/{SERVICE}/ShouldRateLimit"
STARTUP_SECONDS = 30.0

Code = rls_pb2.RateLimitResponse.Code
Unit = rls_pb2.RateLimitResponse.RateLimit.Unit
Descriptor_ = common_pb2.RateLimitDescriptor


class Service:
    """One ratelimit process."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        port = free_port()
        self.addr = f"127.0.0.1:{port}"
        self.log_path = log_dir / f"ratelimit-{port}.log"
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("INTERLOCK_")}
        child_env |= {
            "INTERLOCK_RATELIMIT_LISTEN": self.addr,
            "INTERLOCK_RATELIMIT_IP_RPM": "3",
            "INTERLOCK_RATELIMIT_ENDPOINT_RPM": "chat=2,default=5",
            "INTERLOCK_LOG_LEVEL": "warning",
            **env,
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.ratelimit"], env=child_env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_serving()
        except BaseException:
            self.stop()
            raise

    def _wait_serving(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        with grpc.insecure_channel(self.addr) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"ratelimit exited with {self.process.returncode}:\n{self.log_path.read_text()}")
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"ratelimit did not serve {SERVICE} in {STARTUP_SECONDS}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    running = Service(tmp_path_factory.mktemp("ratelimit-envoy"), {})
    yield running
    running.stop()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"test-envoy-{uuid.uuid4().hex[:8]}"
    yield prefix
    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def descriptor(*entries: tuple[str, str], **fields: Any) -> common_pb2.RateLimitDescriptor:
    return Descriptor_(entries=[Descriptor_.Entry(key=k, value=v) for k, v in entries], **fields)


def ip(address: str, *more: tuple[str, str], **fields: Any) -> common_pb2.RateLimitDescriptor:
    """What Envoy's remote_address action makes, with any entries after it."""
    return descriptor(("remote_address", address), *more, **fields)


def unique_ip() -> str:
    raw = uuid.uuid4().bytes
    return f"10.{raw[0]}.{raw[1]}.{raw[2]}"


async def should(
    addr: str, *descriptors: common_pb2.RateLimitDescriptor, hits_addend: int = 0, domain: str = "interlock"
) -> rls_pb2.RateLimitResponse:
    """One ShouldRateLimit call, made as Envoy makes it."""
    async with grpc.aio.insecure_channel(addr) as channel:
        call = channel.unary_unary(
            METHOD,
            request_serializer=rls_pb2.RateLimitRequest.SerializeToString,
            response_deserializer=rls_pb2.RateLimitResponse.FromString,
        )
        request = rls_pb2.RateLimitRequest(domain=domain, descriptors=descriptors, hits_addend=hits_addend)
        response: rls_pb2.RateLimitResponse = await call(request, timeout=5)
        return response


def headers(response: rls_pb2.RateLimitResponse) -> dict[str, str]:
    return {h.key: h.value for h in response.response_headers_to_add}


def seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


async def test_an_ip_is_limited_then_refused_with_the_edges_429(service: Service) -> None:
    address = unique_ip()
    remaining = []
    for _ in range(3):
        response = await should(service.addr, ip(address))
        assert response.overall_code == Code.OK
        assert not response.response_headers_to_add
        assert not response.raw_body
        (status,) = response.statuses
        assert status.code == Code.OK
        assert status.current_limit.requests_per_unit == 3
        assert status.current_limit.unit == Unit.MINUTE
        assert status.current_limit.name == "ip:requests"
        assert 0 < seconds(status.duration_until_reset) <= 60
        remaining.append(status.limit_remaining)
    assert remaining == [2, 1, 0]

    before = int(time.time())
    refused = await should(service.addr, ip(address))
    assert refused.overall_code == Code.OVER_LIMIT
    (status,) = refused.statuses
    assert status.code == Code.OVER_LIMIT
    assert status.limit_remaining == 0
    assert status.current_limit.requests_per_unit == 3
    assert 0 < seconds(status.duration_until_reset) <= 60

    sent = headers(refused)
    assert sent["content-type"] == "application/json"
    assert sent["x-ratelimit-limit"] == "3"
    assert sent["x-ratelimit-remaining"] == "0"
    # Unix seconds when the bucket is full again, as the edge sends it.
    assert before + 40 <= int(sent["x-ratelimit-reset"]) <= before + 62
    assert 1 <= int(sent["retry-after"]) <= 21
    body = orjson.loads(refused.raw_body)
    assert set(body) == {"error", "request_id", "status"}
    assert body["status"] == 429
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["param"] is None
    assert "ip:requests" in body["error"]["message"]
    assert "3 per minute" in body["error"]["message"]
    assert body["request_id"].startswith("req_")
    assert sent["x-request-id"] == body["request_id"]

    # Another client IP has its own counter.
    other = await should(service.addr, ip(unique_ip()))
    assert other.overall_code == Code.OK
    assert other.statuses[0].limit_remaining == 2


async def test_the_endpoint_class_limit_beside_the_ip_limit(service: Service) -> None:
    address = unique_ip()
    # Envoy commonly sends the bare IP descriptor and a finer one in one request:
    # the IP's own counter is taken once per request, not once per descriptor.
    first = await should(service.addr, ip(address), ip(address, ("endpoint_class", "chat")))
    assert first.overall_code == Code.OK
    assert [s.limit_remaining for s in first.statuses] == [2, 1]
    assert first.statuses[1].current_limit.name == "ip:chat:requests"
    assert first.statuses[1].current_limit.requests_per_unit == 2
    second = await should(service.addr, ip(address), ip(address, ("endpoint_class", "chat")))
    assert [s.limit_remaining for s in second.statuses] == [1, 0]

    third = await should(service.addr, ip(address), ip(address, ("endpoint_class", "chat")))
    assert third.overall_code == Code.OVER_LIMIT
    assert [s.code for s in third.statuses] == [Code.OK, Code.OVER_LIMIT]
    # Refused as a whole: the IP's counter was not taken either.
    assert [s.limit_remaining for s in third.statuses] == [1, 0]
    assert "ip:chat:requests" in orjson.loads(third.raw_body)["error"]["message"]
    assert headers(third)["x-ratelimit-limit"] == "2"

    # Another class (the default rule, 5) still passes, and takes the IP's last one.
    embeddings = await should(service.addr, ip(address, ("endpoint_class", "embeddings")))
    assert embeddings.overall_code == Code.OK
    assert embeddings.statuses[0].current_limit.name == "ip:requests"
    assert embeddings.statuses[0].limit_remaining == 0


async def test_the_class_from_a_path_entry(service: Service) -> None:
    address = unique_ip()
    response = await should(service.addr, ip(address, ("path", "/v1/chat/completions?stream=true")))
    status = response.statuses[0]
    assert status.current_limit.name == "ip:chat:requests"
    assert status.limit_remaining == 1
    await should(service.addr, ip(address, (":path", "/v1/chat/completions")))
    refused = await should(service.addr, ip(address, ("path", "/v1/chat/completions")))
    assert refused.overall_code == Code.OVER_LIMIT


async def test_a_refusal_on_the_messages_api_is_in_anthropics_shape(service: Service) -> None:
    address = unique_ip()
    request_id = "req_" + uuid.uuid4().hex
    path = ip(address, ("path", "/v1/messages?beta=true"))
    await should(service.addr, path)
    await should(service.addr, path)
    refused = await should(service.addr, path, descriptor(("request_id", request_id)))
    assert refused.overall_code == Code.OVER_LIMIT
    body = orjson.loads(refused.raw_body)
    assert body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": body["error"]["message"]},
        "request_id": request_id,
    }
    assert "ip:chat:requests" in body["error"]["message"]


async def test_one_counter_whether_envoy_or_the_edge_asks(service: Service) -> None:
    address = unique_ip()
    async with grpc.aio.insecure_channel(service.addr) as channel:
        edge: ratelimit_pb2_grpc.RateLimitServiceAsyncStub = ratelimit_pb2_grpc.RateLimitServiceStub(channel)
        check = ratelimit_pb2.CheckRequest(client_ip=address, endpoint="/v1/chat/completions")
        assert (await edge.Check(check, timeout=5)).allowed
    response = await should(service.addr, ip(address), ip(address, ("endpoint_class", "chat")))
    assert [s.limit_remaining for s in response.statuses] == [1, 0]
    async with grpc.aio.insecure_channel(service.addr) as channel:
        edge = ratelimit_pb2_grpc.RateLimitServiceStub(channel)
        refused = await edge.Check(check, timeout=5)
    assert not refused.allowed
    assert refused.quota == "ip:chat:requests"


async def test_a_limit_override_has_a_counter_of_its_own(service: Service) -> None:
    key = ("generic_key", f"upload-{uuid.uuid4().hex[:6]}")
    override = Descriptor_.RateLimitOverride(requests_per_unit=2, unit=ratelimit_unit_pb2.HOUR)
    for left in (1, 0):
        response = await should(service.addr, descriptor(key, limit=override))
        assert response.overall_code == Code.OK
        status = response.statuses[0]
        assert status.current_limit.requests_per_unit == 2
        assert status.current_limit.unit == Unit.HOUR
        assert status.limit_remaining == left
        assert 0 < seconds(status.duration_until_reset) <= 3600
    refused = await should(service.addr, descriptor(key, limit=override))
    assert refused.overall_code == Code.OVER_LIMIT
    assert "2 per hour" in orjson.loads(refused.raw_body)["error"]["message"]
    assert headers(refused)["x-ratelimit-limit"] == "2"
    assert 1700 <= int(headers(refused)["retry-after"]) <= 1800

    # Another domain, or other entries, are other counters.
    assert (await should(service.addr, descriptor(key, limit=override), domain="other")).overall_code == Code.OK
    assert (await should(service.addr, descriptor(key, ("user", "u1"), limit=override))).overall_code == Code.OK
    # An override wins over the IP rules: its own rate, and not the IP's counter.
    address = unique_ip()
    per_day = Descriptor_.RateLimitOverride(requests_per_unit=10, unit=ratelimit_unit_pb2.DAY)
    overridden = await should(service.addr, ip(address, limit=per_day))
    assert overridden.statuses[0].current_limit.unit == Unit.DAY
    assert overridden.statuses[0].limit_remaining == 9
    assert (await should(service.addr, ip(address))).statuses[0].limit_remaining == 2


async def test_descriptors_without_a_rule_are_ok(service: Service) -> None:
    unknown = descriptor(("generic_key", "anything"), ("destination_cluster", "edge"))
    response = await should(service.addr, unknown)
    assert response.overall_code == Code.OK
    (status,) = response.statuses
    assert status.code == Code.OK
    assert not status.HasField("current_limit")
    assert not (await should(service.addr)).statuses

    # Beside a refusing descriptor it stays OK, in its place.
    address = unique_ip()
    await should(service.addr, ip(address), hits_addend=3)
    mixed = await should(service.addr, unknown, ip(address))
    assert mixed.overall_code == Code.OVER_LIMIT
    assert [s.code for s in mixed.statuses] == [Code.OK, Code.OVER_LIMIT]


async def test_hits_addend_takes_several(service: Service) -> None:
    address = unique_ip()
    response = await should(service.addr, ip(address), hits_addend=2)
    assert response.overall_code == Code.OK
    assert response.statuses[0].limit_remaining == 1
    # Two do not fit in the one left, and nothing is taken.
    refused = await should(service.addr, ip(address), hits_addend=2)
    assert refused.overall_code == Code.OVER_LIMIT
    assert refused.statuses[0].limit_remaining == 1
    # The descriptor's own hits_addend wins over the request's.
    one = ip(address, hits_addend=wrappers_pb2.UInt64Value(value=1))
    last = await should(service.addr, one, hits_addend=2)
    assert last.overall_code == Code.OK
    assert last.statuses[0].limit_remaining == 0


async def test_a_negative_hit_takes_nothing(service: Service) -> None:
    # A refund (is_negative_hits): the engine gives back only what a reservation
    # holds, so the descriptor is answered OK and counts for nothing.
    address = unique_ip()
    refund = ip(address, hits_addend=wrappers_pb2.UInt64Value(value=2), is_negative_hits=True)
    response = await should(service.addr, refund)
    assert response.overall_code == Code.OK
    assert not response.statuses[0].HasField("current_limit")
    assert (await should(service.addr, ip(address))).statuses[0].limit_remaining == 2


async def test_without_ip_rules_an_ip_is_not_limited() -> None:
    limiter = Limiter(MemoryBackend(), ManualClock(), fail_open=True, hold_seconds=60)
    servicer = EnvoyRateLimitServicer(limiter, Rules(endpoint_rpm={"chat": 2}))
    request = rls_pb2.RateLimitRequest(domain="interlock", descriptors=[ip("10.0.0.1")])
    response = await servicer.ShouldRateLimit(request, None)  # type: ignore[arg-type]
    assert response.overall_code == Code.OK
    assert not response.statuses[0].HasField("current_limit")
    assert limiter.stats.checks == 0
    # With a class, the class rule alone applies.
    request.descriptors[0].entries.add(key="endpoint_class", value="chat")
    response = await servicer.ShouldRateLimit(request, None)  # type: ignore[arg-type]
    assert response.statuses[0].current_limit.name == "ip:chat:requests"
    assert response.statuses[0].limit_remaining == 1


async def test_two_processes_share_one_ip_counter_through_redis(tmp_path: Path, redis_prefix: str) -> None:
    env = {"INTERLOCK_RATELIMIT_REDIS_URL": REDIS_URL, "INTERLOCK_RATELIMIT_REDIS_PREFIX": redis_prefix}
    first, second = Service(tmp_path, env), Service(tmp_path, env)
    try:
        address = unique_ip()
        answers = [await should(replica.addr, ip(address)) for replica in (first, second, first, second)]
        assert [a.overall_code for a in answers] == [Code.OK, Code.OK, Code.OK, Code.OVER_LIMIT]
        assert [a.statuses[0].limit_remaining for a in answers] == [2, 1, 0, 0]
        # The edge's Check on either replica sees the same counter.
        async with grpc.aio.insecure_channel(first.addr) as channel:
            edge = ratelimit_pb2_grpc.RateLimitServiceStub(channel)
            check = await edge.Check(ratelimit_pb2.CheckRequest(client_ip=address, endpoint="/v1/models"), timeout=5)
        assert not check.allowed
        assert check.quota == "ip:requests"
    finally:
        first.stop()
        second.stop()


async def test_an_unreachable_backend_fails_as_configured(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    closed = Service(
        tmp_path, {"INTERLOCK_RATELIMIT_REDIS_URL": dead, "INTERLOCK_RATELIMIT_ON_BACKEND_FAILURE": "closed"}
    )
    opened = Service(
        tmp_path, {"INTERLOCK_RATELIMIT_REDIS_URL": dead, "INTERLOCK_RATELIMIT_ON_BACKEND_FAILURE": "open"}
    )
    try:
        unknown = descriptor(("generic_key", "x"))
        refused = await should(closed.addr, ip(unique_ip()), unknown)
        assert refused.overall_code == Code.OVER_LIMIT
        assert [s.code for s in refused.statuses] == [Code.OVER_LIMIT, Code.OK]
        assert headers(refused)["retry-after"] == "1"
        assert orjson.loads(refused.raw_body)["error"]["type"] == "rate_limit_error"
        admitted = await should(opened.addr, ip(unique_ip()), unknown)
        assert admitted.overall_code == Code.OK
        assert [s.code for s in admitted.statuses] == [Code.OK, Code.OK]
    finally:
        closed.stop()
        opened.stop()
