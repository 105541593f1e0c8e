"""The gRPC descriptor set Envoy's transcoder reads, and the REST bindings it serves.

The set is built at render time from the descriptors compiled into the generated
modules (protos/interlock/**/*_pb2.py), with every import they pull in. Those
modules are what the services and the edge run, and `protos/generate.py --check`
already keeps them in step with the .proto files, so the set cannot drift from
the protos and there is no second generated artifact to keep fresh. google/rpc
is added so the transcoder can print a status's ErrorInfo details.

Envoy's transcoder refuses a `response_body` that is not a google.api.HttpBody,
so the set carries the http rules without it, and each such route names the field
in its metadata instead: errors.lua unwraps it (the response messages concerned
have that one field, which rest_routes() checks).

Which services are transcoded, and with which JSON names, is the edge's own
list (gateway.app): Envoy and the edge answer the same REST paths the same way.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from google.api import annotations_pb2  # type: ignore[attr-defined]  # see gateway/transcoder.py
from google.protobuf import descriptor, descriptor_pb2
from google.rpc import error_details_pb2, status_pb2

from gateway.app import ADMIN_SERVICES, STATS_SERVICES, USAGE_SERVICES
from gateway.transcoder import HTTP_BODY, Binding, bindings
from interlock.catalog.v1 import catalog_pb2
from interlock.ratelimit.v1 import ratelimit_pb2
from interlock.router.v1 import router_pb2
from interlock.usage.v1 import usage_pb2

_ROOTS = (
    catalog_pb2.DESCRIPTOR,
    router_pb2.DESCRIPTOR,
    ratelimit_pb2.DESCRIPTOR,
    usage_pb2.DESCRIPTOR,
    status_pb2.DESCRIPTOR,
    error_details_pb2.DESCRIPTOR,
)
_TEMPLATE_VAR = re.compile(r"\{[^}]*\}")


@dataclass(frozen=True)
class TranscodedService:
    full_name: str
    # The gRPC cluster that serves it.
    cluster: str
    # Proto field names (snake_case) or proto3 JSON names (lowerCamelCase), as the edge prints them.
    proto_field_names: bool


@dataclass(frozen=True)
class RestRoute:
    verb: str
    # Anchored regex of the path template ({id} -> one segment), matched without the query.
    regex: str
    template: str
    service: TranscodedService
    # The JSON key whose value is the whole answer (the rule's response_body), or "".
    response_key: str


TRANSCODED = (
    *(TranscodedService(s.full_name, "catalog", True) for s in ADMIN_SERVICES),
    *(TranscodedService(s.full_name, "usage", True) for s in USAGE_SERVICES),
    *(TranscodedService(s.full_name, "usage", False) for s in STATS_SERVICES),
)
_BY_NAME = {s.full_name: s for s in (*ADMIN_SERVICES, *USAGE_SERVICES, *STATS_SERVICES)}


def descriptor_set() -> bytes:
    """A FileDescriptorSet of every interlock proto and its imports, dependencies first."""
    ordered: list[descriptor.FileDescriptor] = []
    seen: set[str] = set()

    def visit(files: Iterable[descriptor.FileDescriptor]) -> None:
        for file in sorted(files, key=lambda f: f.name):
            if file.name in seen:
                continue
            seen.add(file.name)
            visit(file.dependencies)
            ordered.append(file)

    visit(_ROOTS)
    out = descriptor_pb2.FileDescriptorSet()
    for file in ordered:
        proto = out.file.add()
        proto.ParseFromString(file.serialized_pb)
        for service in proto.service:
            for method in service.method:
                if method.options.HasExtension(annotations_pb2.http):
                    method.options.Extensions[annotations_pb2.http].ClearField("response_body")
    return out.SerializeToString(deterministic=True)


@functools.cache
def descriptor_set_base64() -> str:
    return base64.b64encode(descriptor_set()).decode("ascii")


def rest_routes() -> list[RestRoute]:
    """One route per annotated method of the transcoded services."""
    found = []
    for service in TRANSCODED:
        for binding in bindings(_BY_NAME[service.full_name]):
            parts = _TEMPLATE_VAR.split(binding.path)
            regex = "^" + "[^/]+".join(re.escape(part) for part in parts) + "$"
            found.append(RestRoute(binding.verb, regex, binding.path, service, _response_key(binding, service)))
    return found


def _response_key(binding: Binding, service: TranscodedService) -> str:
    if not binding.response_body:
        return ""
    output = binding.method.output_type
    if output.full_name != HTTP_BODY and [f.name for f in output.fields] != [binding.response_body]:
        # With other fields beside it, the printed object could not be unwrapped by its one key.
        raise ValueError(f"{binding.method.full_name}: response_body must be the response's only field")
    field = output.fields_by_name[binding.response_body]
    return field.name if service.proto_field_names else field.json_name
