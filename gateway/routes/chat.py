"""POST /v1/chat/completions"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.body import read_json_object
from gateway.context import EdgeContext
from gateway.responses import json_response
from gateway.sse import relay
from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.router.v1 import router_pb2 as pb
from services.common.errors import PermissionDeniedError
from services.common.wire.chat import chat_response_to_json, chunk_to_json, parse_chat_request
from services.common.wire.common import parse_metadata
from services.common.wire.fields import bad_value

ENDPOINT = "/v1/chat/completions"


def _check_judges(edge: EdgeContext, key: cpb.ApiKey, chat: pb.ChatRequest) -> None:
    """A request's judge must be a chat model here that its key may use (judges run unbilled)."""
    for i, spec in enumerate(chat.evaluators):
        if spec.kind != "judge":
            continue
        judge = edge.cache.models.get(spec.judge_model)
        if judge is None or judge.type != cpb.MODEL_TYPE_CHAT:
            raise bad_value(f"evaluate[{i}].model", f"names no chat model here ({spec.judge_model!r})")
        if not edge.may_use(key, spec.judge_model):
            raise PermissionDeniedError(
                f"This API key may not use the judge model '{spec.judge_model}'.",
                code="model_not_allowed",
                param=f"evaluate[{i}].model",
            )


async def create_chat_completion(request: Request) -> Response:
    edge: EdgeContext = request.app.state.edge
    key = edge.authenticate(request)
    body = await read_json_object(request, edge.settings.max_body_bytes)
    chat, stream = parse_chat_request(body)
    edge.check_model_access(key, chat.model, chat.route)
    _check_judges(edge, key, chat)
    admitted = await edge.admit(request, ENDPOINT, key, lambda: edge.estimator.chat(chat))
    admitted.caller.metadata_json = parse_metadata(body)
    chat.caller.CopyFrom(admitted.caller)
    if not stream:
        with edge.settling(admitted) as used:
            response = await edge.router.Chat(chat, timeout=edge.settings.request_timeout_seconds)
            used.usage = response.usage
        return json_response(chat_response_to_json(response))

    include_usage = chat.stream_options.include_usage
    call = edge.router.ChatStream(pb.ChatStreamRequest(request=chat))
    first, rest, used, settle = await edge.open_settled_stream(admitted, call)

    def render(message: pb.ChatStreamResponse) -> dict[str, Any] | None:
        chunk = message.chunk
        if chunk.HasField("usage"):
            used.usage = chunk.usage
        is_usage = chunk.HasField("usage") and not chunk.choices
        if is_usage and not include_usage:
            return None  # the router always gets usage; the client only when it asked
        payload = chunk_to_json(chunk)
        if include_usage:
            # As OpenAI does: usage is null on every chunk but the last.
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
