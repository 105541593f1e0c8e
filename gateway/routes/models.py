"""GET /v1/models and GET /v1/models/{id}, served from the watched catalog cache."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.context import EdgeContext
from gateway.responses import json_response
from interlock.catalog.v1 import catalog_pb2 as cpb
from services.common.errors import InvalidRequestError, ModelNotFoundError

ENDPOINT = "/v1/models"
TYPE_NAMES = {
    cpb.MODEL_TYPE_CHAT: "chat",
    cpb.MODEL_TYPE_COMPLETION: "completion",
    cpb.MODEL_TYPE_EMBEDDING: "embedding",
    cpb.MODEL_TYPE_PROFILE: "profile",
}
TYPES_BY_NAME = {v: k for k, v in TYPE_NAMES.items()}


def model_to_json(model: cpb.Model) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": model.owned_by,
        "provider": model.provider,
        "type": TYPE_NAMES.get(model.type, "chat"),
        "available": model.available,
    }
    if model.type == cpb.MODEL_TYPE_PROFILE:
        out["strategy"] = model.strategy
        out["candidates"] = list(model.candidates)
        return out
    out["context_window"] = model.context_window
    out["context_length"] = model.context_window
    out["max_output_tokens"] = model.max_output_tokens
    out["capabilities"] = list(model.capabilities)
    out["pricing"] = {
        "input": model.pricing.input_per_million,
        "output": model.pricing.output_per_million,
        "unit": "usd_per_million_tokens",
    }
    if model.pricing.cached_input_per_million:
        out["pricing"]["cached_input"] = model.pricing.cached_input_per_million
    if model.pricing.cache_write_per_million:
        out["pricing"]["cache_write"] = model.pricing.cache_write_per_million
    if model.type == cpb.MODEL_TYPE_EMBEDDING:
        out["dims"] = model.dims
    return out


async def list_models(request: Request) -> Response:
    edge: EdgeContext = request.app.state.edge
    admitted = await edge.admit(request, ENDPOINT)
    provider = request.query_params.get("provider")
    type_name = request.query_params.get("type")
    if type_name is not None and type_name not in TYPES_BY_NAME:
        raise InvalidRequestError(
            f"Unknown model type '{type_name}'; use chat, completion, embedding or profile.",
            code="ERR_INVALID_VALUE",
            param="type",
        )
    data = [
        model_to_json(m)
        for m in edge.cache.models.values()
        if edge.may_use(admitted.key, m.id)
        and (provider is None or m.provider == provider or any(d.provider == provider for d in m.deployments))
        and (type_name is None or m.type == TYPES_BY_NAME[type_name])
    ]
    return json_response({"object": "list", "data": data})


async def get_model(request: Request) -> Response:
    edge: EdgeContext = request.app.state.edge
    admitted = await edge.admit(request, ENDPOINT)
    model_id = request.path_params["model_id"]
    model = edge.cache.models.get(model_id)
    if model is None or not edge.may_use(admitted.key, model_id):
        raise ModelNotFoundError(f"The model '{model_id}' does not exist.", param="model")
    return json_response(model_to_json(model))
