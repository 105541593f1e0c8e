"""POST /v1/embeddings"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.body import read_json_object
from gateway.context import EdgeContext
from gateway.responses import json_response
from services.common.wire.common import parse_metadata
from services.common.wire.embeddings import embeddings_to_json, parse_embedding_request

ENDPOINT = "/v1/embeddings"


async def create_embeddings(request: Request) -> Response:
    edge: EdgeContext = request.app.state.edge
    key = edge.authenticate(request)
    body = await read_json_object(request, edge.settings.max_body_bytes)
    embed, encoding = parse_embedding_request(body)
    edge.check_model_access(key, embed.model, embed.route)
    admitted = await edge.admit(request, ENDPOINT, key, lambda: edge.estimator.embedding(embed))
    admitted.caller.metadata_json = parse_metadata(body)
    embed.caller.CopyFrom(admitted.caller)
    with edge.settling(admitted) as used:
        response = await edge.router.Embed(embed, timeout=edge.settings.request_timeout_seconds)
        used.usage = response.usage
    return json_response(embeddings_to_json(response, encoding))
