"""POST /v1/completions (the legacy prompt API)"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.body import read_json_object
from gateway.context import EdgeContext
from gateway.responses import json_response
from gateway.sse import relay
from interlock.router.v1 import router_pb2 as pb
from services.common.wire.common import parse_metadata
from services.common.wire.completions import completion_to_json, parse_completion_request

ENDPOINT = "/v1/completions"


async def create_completion(request: Request) -> Response:
    edge: EdgeContext = request.app.state.edge
    key = edge.authenticate(request)
    body = await read_json_object(request, edge.settings.max_body_bytes)
    completion, stream = parse_completion_request(body)
    edge.check_model_access(key, completion.model, completion.route)
    admitted = await edge.admit(request, ENDPOINT, key, lambda: edge.estimator.completion(completion))
    admitted.caller.metadata_json = parse_metadata(body)
    completion.caller.CopyFrom(admitted.caller)
    if not stream:
        with edge.settling(admitted) as used:
            response = await edge.router.Complete(completion, timeout=edge.settings.request_timeout_seconds)
            used.usage = response.usage
        return json_response(completion_to_json(response))

    include_usage = completion.stream_options.include_usage
    call = edge.router.CompleteStream(pb.CompleteStreamRequest(request=completion))
    first, rest, used, settle = await edge.open_settled_stream(admitted, call)

    def render(message: pb.CompleteStreamResponse) -> dict[str, Any] | None:
        chunk = message.chunk
        if chunk.HasField("usage"):
            used.usage = chunk.usage
        is_usage = chunk.HasField("usage") and not chunk.choices
        if is_usage and not include_usage:
            return None
        payload = completion_to_json(chunk, chunk=True)
        if include_usage:
            payload.setdefault("usage", None)
        return payload

    return relay(
        call,
        first,
        rest,
        render,
        admitted.caller.request_id,
        on_close=settle,
    )
