"""Embeddings: OpenAI JSON <-> interlock.router.v1 messages."""

from __future__ import annotations

import base64
import struct
from typing import Any

from interlock.router.v1 import router_pb2 as pb
from services.common.wire import fields as f
from services.common.wire.common import parse_route, routing_to_json, usage_from_json

# Token ids are vocabulary indices; anything past int32 is not a token.
MAX_TOKEN_ID = 2**31 - 1
_KNOWN = {"model", "input", "encoding_format", "dimensions", "user", "route", "metadata"}
MAX_INPUTS = 2048


def _is_token(value: object) -> bool:
    return f.is_int(value) and 0 <= value <= MAX_TOKEN_ID  # type: ignore[operator]


def parse_embedding_request(body: dict[str, Any]) -> tuple[pb.EmbedRequest, str]:
    """Validate a client's embeddings request; returns it and the encoding format."""
    request = pb.EmbedRequest(model=f.req_str(body, "model"))
    raw = body.get("input")
    if raw is None:
        raise f.missing("input")
    if isinstance(raw, str):
        request.inputs.append(raw)
    elif isinstance(raw, list) and raw:
        if len(raw) > MAX_INPUTS:
            raise f.bad_value("input", f"must have at most {MAX_INPUTS} entries")
        if all(isinstance(x, str) for x in raw):
            request.inputs.extend(raw)
        elif all(_is_token(x) for x in raw):
            request.token_inputs.append(pb.TokenList(tokens=raw))
        elif all(isinstance(x, list) and x and all(_is_token(t) for t in x) for x in raw):
            request.token_inputs.extend(pb.TokenList(tokens=x) for x in raw)
        else:
            raise f.wrong_type("input", "a string, an array of strings, or token arrays")
    else:
        raise f.wrong_type("input", "a string or a non-empty array")
    if any(not text for text in request.inputs):
        raise f.bad_value("input", "must not contain empty strings")
    encoding = f.opt_str(body, "encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise f.bad_value("encoding_format", "must be float or base64")
    if (i := f.opt_int(body, "dimensions", lo=1, hi=65536)) is not None:
        request.dimensions = i
    if (s := f.opt_str(body, "user")) is not None:
        request.user = s
    route = parse_route(body)
    if route is not None:
        request.route.CopyFrom(route)
    extra = {k: v for k, v in body.items() if k not in _KNOWN}
    if extra:
        request.extra_json = f.dumps(extra)
    return request, encoding


def embedding_request_to_json(request: pb.EmbedRequest, upstream_model: str) -> dict[str, Any]:
    body: dict[str, Any] = f.loads(request.extra_json) if request.extra_json else {}
    body["model"] = upstream_model
    if request.token_inputs:
        body["input"] = [list(t.tokens) for t in request.token_inputs]
    else:
        body["input"] = list(request.inputs)
    # base64 is half the bytes of decimal floats; the edge re-encodes for the client.
    body["encoding_format"] = "base64"
    if request.dimensions:
        body["dimensions"] = request.dimensions
    if request.user:
        body["user"] = request.user
    return body


def encode_vector(values: Any, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return list(values)


def decode_vector(raw: object) -> list[float]:
    if isinstance(raw, str):
        data = base64.b64decode(raw)
        return list(struct.unpack(f"<{len(data) // 4}f", data))
    if isinstance(raw, list):
        return [float(x) for x in raw]
    return []


def embeddings_to_json(response: pb.EmbedResponse, encoding: str) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": e.index, "embedding": encode_vector(e.values, encoding)}
            for e in response.embeddings
        ],
        "model": response.model,
        "usage": {
            "prompt_tokens": response.usage.prompt_tokens,
            "total_tokens": response.usage.total_tokens,
            "cost_usd": round(response.usage.cost_usd, 10),
            "latency_ms": response.usage.latency_ms,
        },
        "routing_decision": routing_to_json(response.routing_decision),
    }


def embeddings_from_json(body: dict[str, Any]) -> pb.EmbedResponse:
    response = pb.EmbedResponse(model=str(body.get("model") or ""))
    for i, item in enumerate(body.get("data") or ()):
        response.embeddings.append(
            pb.Embedding(index=int(item.get("index", i)), values=decode_vector(item.get("embedding")))
        )
    response.usage.CopyFrom(usage_from_json(body.get("usage")))
    return response
