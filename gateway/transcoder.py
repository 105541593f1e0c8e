"""REST routes served straight from gRPC services' google.api.http rules.

The same annotations drive Envoy's gRPC-JSON transcoder in production, so the
two agree by construction: JSON body, path and query parameters become the
request message; the response (or its `response_body` field) is written as
proto3 JSON with every field present, under proto field names or, for services
whose REST contract is camelCase (seed 002's stats), the proto3 JSON names.
A method answering google.api.HttpBody writes that body as it is (CSV exports).
A service may ask for an HTTP status other than 200 with the `x-http-code`
initial metadata, grpc-gateway's convention.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.api import annotations_pb2  # type: ignore[attr-defined]  # protos/google/api (vendored .proto) shadows it for mypy
from google.protobuf import descriptor, json_format, message, message_factory
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.body import read_json_object
from gateway.responses import json_response
from services.common.errors import InvalidRequestError
from services.common.rpc import HTTP_CODE_KEY

# Headers passed on to the service as gRPC metadata; the service authorises.
FORWARDED_HEADERS = ("authorization", "x-api-key")
_VERBS = ("get", "post", "put", "patch", "delete")
_TEMPLATE_VAR = re.compile(r"\{([a-z_][a-z0-9_]*)(?:=[^}]*)?\}")
UNARY_TIMEOUT_SECONDS = 30.0
HTTP_BODY = "google.api.HttpBody"


@dataclass(frozen=True)
class Binding:
    verb: str
    path: str
    body: str
    response_body: str
    method: descriptor.MethodDescriptor


def bindings(service: descriptor.ServiceDescriptor) -> list[Binding]:
    """Every method of service that has an http rule, as (verb, path, body)."""
    found = []
    for method in service.methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        rule = options.Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        if verb not in _VERBS:
            continue
        found.append(Binding(verb.upper(), getattr(rule, verb), rule.body, rule.response_body, method))
    return found


def _set_scalar(msg: message.Message, name: str, raw: str, param: str) -> None:
    field = msg.DESCRIPTOR.fields_by_name.get(name)
    if field is None or field.message_type is not None:
        raise InvalidRequestError(f"Unknown parameter '{param}'.", code="ERR_INVALID_VALUE", param=param)
    try:
        value: Any = raw
        if field.type == descriptor.FieldDescriptor.TYPE_BOOL:
            if raw not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            value = raw in ("true", "1")
        elif field.cpp_type in (descriptor.FieldDescriptor.CPPTYPE_INT32, descriptor.FieldDescriptor.CPPTYPE_INT64):
            value = int(raw)
        elif field.cpp_type in (descriptor.FieldDescriptor.CPPTYPE_DOUBLE, descriptor.FieldDescriptor.CPPTYPE_FLOAT):
            value = float(raw)
        if field.is_repeated:
            getattr(msg, name).append(value)
        else:
            setattr(msg, name, value)
    except ValueError as exc:
        raise InvalidRequestError(f"'{param}' has an invalid value.", code="ERR_INVALID_VALUE", param=param) from exc


class Transcoder:
    """Routes for every annotated method of services; bind() a channel before serving."""

    def __init__(
        self, services: Sequence[descriptor.ServiceDescriptor], max_body: int, *, proto_field_names: bool = True
    ) -> None:
        self._services = services
        self._max_body = max_body
        self._proto_field_names = proto_field_names
        self._stubs: dict[str, Callable[..., Any]] = {}

    def bind(self, channel: grpc.aio.Channel) -> None:
        """Create the callables on channel (inside the running event loop)."""
        for service in self._services:
            for binding in bindings(service):
                response_class = message_factory.GetMessageClass(binding.method.output_type)
                self._stubs[binding.method.full_name] = channel.unary_unary(
                    f"/{service.full_name}/{binding.method.name}",
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=response_class.FromString,
                )

    def routes(self) -> list[Route]:
        found = []
        for service in self._services:
            for binding in bindings(service):
                path = _TEMPLATE_VAR.sub(lambda m: "{" + m.group(1) + "}", binding.path)
                found.append(Route(path, self._handler(binding), methods=[binding.verb]))
        return found

    def _handler(self, binding: Binding) -> Callable[[Request], Any]:
        request_class = message_factory.GetMessageClass(binding.method.input_type)

        async def handle(request: Request) -> Response:
            msg = request_class()
            if binding.body:
                payload = await read_json_object(request, self._max_body)
                target = msg if binding.body == "*" else getattr(msg, binding.body)
                try:
                    json_format.ParseDict(payload, target)
                except json_format.ParseError as exc:
                    raise InvalidRequestError(str(exc), code="ERR_INVALID_VALUE") from exc
            for name, value in request.path_params.items():
                _set_scalar(msg, name, value, name)
            if binding.body != "*":
                for name, value in request.query_params.multi_items():
                    _set_scalar(msg, name, value, name)
            metadata = [(h, request.headers[h]) for h in FORWARDED_HEADERS if h in request.headers]
            metadata.append(("x-request-id", request.scope["state"]["request_id"]))
            call = self._stubs[binding.method.full_name](msg, metadata=metadata, timeout=UNARY_TIMEOUT_SECONDS)
            response = await call
            status = _http_status(await call.initial_metadata())
            if binding.method.output_type.full_name == HTTP_BODY:
                return Response(response.data, status_code=status, media_type=response.content_type)
            body = json_format.MessageToDict(
                response,
                preserving_proto_field_name=self._proto_field_names,
                always_print_fields_with_no_presence=True,
            )
            if binding.response_body:
                # The field may be repeated (a bare JSON array, as seed 002 answers).
                field = response.DESCRIPTOR.fields_by_name[binding.response_body]
                body = body[field.name if self._proto_field_names else field.json_name]
            return json_response(body, status)

        return handle


def _http_status(metadata: Any) -> int:
    for name, value in metadata or ():
        if name == HTTP_CODE_KEY and isinstance(value, str) and value.isdigit() and 200 <= int(value) < 300:
            return int(value)
    return 200
