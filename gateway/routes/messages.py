"""POST /v1/messages and POST /v1/messages/count_tokens: Anthropic's Messages API,
served by the chat path (same auth, quotas, router call and ledger) for any chat model."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.anthropic.request import check_version, parse_messages_request
from gateway.anthropic.response import message_id, message_to_json
from gateway.anthropic.stream import Event, StreamTranslator, relay_events
from gateway.body import read_json_object
from gateway.context import EdgeContext
from gateway.responses import json_response
from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.router.v1 import router_pb2 as pb
from services.common.errors import InvalidRequestError, ModelNotFoundError
from services.common.wire.common import parse_metadata

ENDPOINT = "/v1/messages"
COUNT_ENDPOINT = "/v1/messages/count_tokens"
# Anthropic's SDKs read the request id from this header.
REQUEST_ID_HEADER = "request-id"


async def create_message(request: Request) -> Response:
    edge: EdgeContext = request.app.state.edge
    key = edge.authenticate(request)
    check_version(request.headers.get("anthropic-version"))
    body = await read_json_object(request, edge.settings.max_body_bytes)
    chat, stream = parse_messages_request(body)
    edge.check_model_access(key, chat.model, chat.route)
    admitted = await edge.admit(request, ENDPOINT, key, lambda: edge.estimator.chat(chat))
    caller = admitted.caller
    caller.metadata_json = parse_metadata(body)
    request_id = caller.request_id
    msg_id = message_id(request_id)
    if not stream:
        chat.caller.CopyFrom(caller)
        with edge.settling(admitted) as used:
            response = await edge.router.Chat(chat, timeout=edge.settings.request_timeout_seconds)
            used.usage = response.usage
        reply = json_response(message_to_json(response, msg_id, chat.model))
        reply.headers[REQUEST_ID_HEADER] = request_id
        return reply

    # message_start carries the prompt's size before any answer: count it now unless the
    # quotas already did (the router then uses this count rather than counting again).
    if not caller.prompt_tokens:
        caller.prompt_tokens = edge.estimator.chat(chat).prompt_tokens
    chat.caller.CopyFrom(caller)
    translator = StreamTranslator(msg_id, chat.model, caller.prompt_tokens)
    call = edge.router.ChatStream(pb.ChatStreamRequest(request=chat))
    first, rest, used, settle = await edge.open_settled_stream(admitted, call)

    def render(message: pb.ChatStreamResponse) -> list[Event]:
        if message.chunk.HasField("usage"):
            used.usage = message.chunk.usage
        return translator.on_chunk(message.chunk)

    return relay_events(
        call,
        first,
        rest,
        render,
        finish=translator.finish,
        request_id=request_id,
        headers={REQUEST_ID_HEADER: request_id},
        on_close=settle,
    )


async def count_message_tokens(request: Request) -> Response:
    """The prompt's tokens as the edge counts them for quotas (the model's tokenizer where
    it is known, an estimate otherwise); no model is called."""
    edge: EdgeContext = request.app.state.edge
    key = edge.authenticate(request)
    check_version(request.headers.get("anthropic-version"))
    body = await read_json_object(request, edge.settings.max_body_bytes)
    chat, _ = parse_messages_request(body, counting=True)
    edge.check_model_access(key, chat.model, chat.route)
    model = edge.cache.models.get(chat.model)
    if model is None:
        raise ModelNotFoundError(f"The model '{chat.model}' does not exist.", param="model")
    if model.type not in (cpb.MODEL_TYPE_CHAT, cpb.MODEL_TYPE_PROFILE):
        raise InvalidRequestError(
            f"The model '{chat.model}' is not a chat model.", code="model_not_supported", param="model"
        )
    admitted = await edge.admit(request, COUNT_ENDPOINT, key)
    reply = json_response({"input_tokens": edge.estimator.chat(chat).prompt_tokens})
    reply.headers[REQUEST_ID_HEADER] = admitted.caller.request_id
    return reply
