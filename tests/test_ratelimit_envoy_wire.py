"""Wire compatibility of the vendored Envoy protos (protos/envoy/): Envoy's field
numbers and types, written out by hand from the upstream protos, and bytes
encoded by hand as Envoy would send and read them."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as common_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from envoy.type.v3 import ratelimit_unit_pb2
from google.protobuf import duration_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

Code = rls_pb2.RateLimitResponse.Code
Unit = rls_pb2.RateLimitResponse.RateLimit.Unit

# Wire compatibility: Envoy's field numbers and types, written out by hand from
# the upstream protos, against the vendored copies.

T = FieldDescriptor
UPSTREAM: dict[Descriptor, dict[str, tuple[int, int, bool]]] = {
    rls_pb2.RateLimitRequest.DESCRIPTOR: {
        "domain": (1, T.TYPE_STRING, False),
        "descriptors": (2, T.TYPE_MESSAGE, True),
        "hits_addend": (3, T.TYPE_UINT32, False),
    },
    rls_pb2.RateLimitResponse.DESCRIPTOR: {
        "overall_code": (1, T.TYPE_ENUM, False),
        "statuses": (2, T.TYPE_MESSAGE, True),
        "response_headers_to_add": (3, T.TYPE_MESSAGE, True),
        "request_headers_to_add": (4, T.TYPE_MESSAGE, True),
        "raw_body": (5, T.TYPE_BYTES, False),
        "dynamic_metadata": (6, T.TYPE_MESSAGE, False),
        "quota": (7, T.TYPE_MESSAGE, False),
    },
    rls_pb2.RateLimitResponse.RateLimit.DESCRIPTOR: {
        "name": (3, T.TYPE_STRING, False),
        "requests_per_unit": (1, T.TYPE_UINT32, False),
        "unit": (2, T.TYPE_ENUM, False),
    },
    rls_pb2.RateLimitResponse.DescriptorStatus.DESCRIPTOR: {
        "code": (1, T.TYPE_ENUM, False),
        "current_limit": (2, T.TYPE_MESSAGE, False),
        "limit_remaining": (3, T.TYPE_UINT32, False),
        "duration_until_reset": (4, T.TYPE_MESSAGE, False),
        "quota": (5, T.TYPE_MESSAGE, False),
    },
    rls_pb2.RateLimitResponse.Quota.DESCRIPTOR: {
        "requests": (1, T.TYPE_UINT32, False),
        "valid_until": (2, T.TYPE_MESSAGE, False),
        "id": (3, T.TYPE_STRING, False),
    },
    common_pb2.RateLimitDescriptor.DESCRIPTOR: {
        "entries": (1, T.TYPE_MESSAGE, True),
        "limit": (2, T.TYPE_MESSAGE, False),
        "hits_addend": (3, T.TYPE_MESSAGE, False),
        "is_negative_hits": (4, T.TYPE_BOOL, False),
    },
    common_pb2.RateLimitDescriptor.Entry.DESCRIPTOR: {
        "key": (1, T.TYPE_STRING, False),
        "value": (2, T.TYPE_STRING, False),
    },
    common_pb2.RateLimitDescriptor.RateLimitOverride.DESCRIPTOR: {
        "requests_per_unit": (1, T.TYPE_UINT32, False),
        "unit": (2, T.TYPE_ENUM, False),
    },
    base_pb2.HeaderValue.DESCRIPTOR: {
        "key": (1, T.TYPE_STRING, False),
        "value": (2, T.TYPE_STRING, False),
        "raw_value": (3, T.TYPE_BYTES, False),
    },
}


def test_the_vendored_messages_have_envoys_numbers_and_types() -> None:
    for message, fields in UPSTREAM.items():
        assert message.full_name.startswith("envoy."), message.full_name
        for name, (number, kind, repeated) in fields.items():
            field = message.fields_by_name[name]
            assert (field.number, field.type, field.is_repeated) == (number, kind, repeated), (
                f"{message.full_name}.{name}"
            )
    hits = common_pb2.RateLimitDescriptor.DESCRIPTOR.fields_by_name["hits_addend"]
    assert hits.message_type.full_name == "google.protobuf.UInt64Value"
    reset = rls_pb2.RateLimitResponse.DescriptorStatus.DESCRIPTOR.fields_by_name["duration_until_reset"]
    assert reset.message_type.full_name == "google.protobuf.Duration"
    assert dict(rls_pb2.RateLimitResponse.Code.items()) == {"UNKNOWN": 0, "OK": 1, "OVER_LIMIT": 2}
    units = {"UNKNOWN": 0, "SECOND": 1, "MINUTE": 2, "HOUR": 3, "DAY": 4, "MONTH": 5, "YEAR": 6}
    assert dict(rls_pb2.RateLimitResponse.RateLimit.Unit.items()) == units
    assert dict(ratelimit_unit_pb2.RateLimitUnit.items()) == units
    method = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"].methods_by_name["ShouldRateLimit"]
    assert method.full_name == "envoy.service.ratelimit.v3.RateLimitService.ShouldRateLimit"
    assert method.input_type.full_name == "envoy.service.ratelimit.v3.RateLimitRequest"
    assert method.output_type.full_name == "envoy.service.ratelimit.v3.RateLimitResponse"
    assert rls_pb2.DESCRIPTOR.name == "envoy/service/ratelimit/v3/rls.proto"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _len(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_a_request_as_envoy_encodes_it() -> None:
    entry = _len(1, b"remote_address") + _len(2, b"10.1.2.3")
    override = _int(1, 7) + _int(2, 3)  # 7 per HOUR
    hits = _int(1, 4)  # google.protobuf.UInt64Value{value: 4}
    wire = _len(1, b"interlock") + _len(2, _len(1, entry) + _len(2, override) + _len(3, hits)) + _int(3, 2)
    request = rls_pb2.RateLimitRequest.FromString(wire)
    assert request.domain == "interlock"
    assert request.hits_addend == 2
    (parsed,) = request.descriptors
    assert [(e.key, e.value) for e in parsed.entries] == [("remote_address", "10.1.2.3")]
    assert (parsed.limit.requests_per_unit, parsed.limit.unit) == (7, ratelimit_unit_pb2.HOUR)
    assert parsed.HasField("hits_addend")
    assert parsed.hits_addend.value == 4
    assert request.SerializeToString(deterministic=True) == wire


def test_a_response_as_envoy_decodes_it() -> None:
    # Fields go out in number order (RateLimit declares name = 3 first).
    limit = _int(1, 3) + _int(2, 2) + _len(3, b"ip:requests")  # 3 per MINUTE
    status = _int(1, 2) + _len(2, limit) + _int(3, 5) + _len(4, _int(1, 20))  # 20 s
    header = _len(1, b"retry-after") + _len(2, b"20")
    wire = _int(1, 2) + _len(2, status) + _len(3, header) + _len(5, b"{}")
    response = rls_pb2.RateLimitResponse(
        overall_code=Code.OVER_LIMIT,
        statuses=[
            rls_pb2.RateLimitResponse.DescriptorStatus(
                code=Code.OVER_LIMIT,
                current_limit=rls_pb2.RateLimitResponse.RateLimit(
                    name="ip:requests", requests_per_unit=3, unit=Unit.MINUTE
                ),
                limit_remaining=5,
                duration_until_reset=duration_pb2.Duration(seconds=20),
            )
        ],
        response_headers_to_add=[base_pb2.HeaderValue(key="retry-after", value="20")],
        raw_body=b"{}",
    )
    assert response.SerializeToString(deterministic=True) == wire
    assert rls_pb2.RateLimitResponse.FromString(wire) == response
    # In declaration order, as another encoder may send it, it reads the same.
    declared = _len(3, b"ip:requests") + _int(1, 3) + _int(2, 2)
    reordered = _int(1, 2) + _len(2, _int(1, 2) + _len(2, declared) + _int(3, 5) + _len(4, _int(1, 20)))
    assert rls_pb2.RateLimitResponse.FromString(reordered + _len(3, header) + _len(5, b"{}")) == response
