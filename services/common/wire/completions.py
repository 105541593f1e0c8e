"""Legacy completions: OpenAI JSON <-> interlock.router.v1 messages."""

from __future__ import annotations

from typing import Any

from interlock.router.v1 import router_pb2 as pb
from services.common.wire import fields as f
from services.common.wire.common import (
    COMPLETION_KNOWN,
    FINISH_FROM_WIRE,
    FINISH_TO_WIRE,
    parse_route,
    parse_sampling,
    routing_to_json,
    sampling_to_json,
    usage_from_json,
    usage_to_json,
)

# OpenAI's default for the legacy endpoint when max_tokens is absent.
DEFAULT_MAX_TOKENS = 16


def parse_completion_request(body: dict[str, Any]) -> tuple[pb.CompleteRequest, bool]:
    request = pb.CompleteRequest(model=f.req_str(body, "model"))
    prompt = body.get("prompt")
    if prompt is None:
        raise f.missing("prompt")
    if isinstance(prompt, str):
        request.prompts.append(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        request.prompts.extend(prompt)
    elif isinstance(prompt, list) and prompt and all(f.is_int(t) for t in prompt):
        raise f.bad_value("prompt", "as token ids is not supported by this gateway; send text")
    else:
        raise f.wrong_type("prompt", "a string or a non-empty array of strings")
    request.sampling.CopyFrom(parse_sampling(body, legacy_logprobs=True))
    if (s := f.opt_str(body, "suffix")) is not None:
        request.suffix = s
    if (b := f.opt_bool(body, "echo")) is not None:
        request.echo = b
    if (i := f.opt_int(body, "best_of", lo=1, hi=20)) is not None:
        request.best_of = i
    stream = f.opt_bool(body, "stream") or False
    stream_options = f.opt_object(body, "stream_options")
    if stream_options is not None:
        request.stream_options.include_usage = bool(
            f.opt_bool(stream_options, "include_usage", "stream_options.include_usage")
        )
    route = parse_route(body)
    if route is not None:
        request.route.CopyFrom(route)
    extra = {k: v for k, v in body.items() if k not in COMPLETION_KNOWN}
    if extra:
        request.extra_json = f.dumps(extra)
    return request, stream


def completion_request_to_json(request: pb.CompleteRequest, upstream_model: str, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = f.loads(request.extra_json) if request.extra_json else {}
    body["model"] = upstream_model
    body["prompt"] = request.prompts[0] if len(request.prompts) == 1 else list(request.prompts)
    body.update(sampling_to_json(request.sampling, legacy_logprobs=True))
    if request.suffix:
        body["suffix"] = request.suffix
    if request.HasField("echo"):
        body["echo"] = request.echo
    if request.HasField("best_of"):
        body["best_of"] = request.best_of
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def completion_to_json(response: pb.CompleteResponse, *, chunk: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": response.id,
        "object": "text_completion",
        "created": response.created,
        "model": response.model,
        "choices": [
            {
                "text": c.text,
                "index": c.index,
                "logprobs": f.loads(c.logprobs_json) if c.logprobs_json else None,
                "finish_reason": FINISH_TO_WIRE.get(c.finish_reason)
                if chunk
                else FINISH_TO_WIRE.get(c.finish_reason, "stop"),
            }
            for c in response.choices
        ],
    }
    if response.system_fingerprint:
        body["system_fingerprint"] = response.system_fingerprint
    if response.HasField("usage"):
        body["usage"] = usage_to_json(response.usage)
    if response.HasField("routing_decision"):
        body["routing_decision"] = routing_to_json(response.routing_decision)
    return body


def completion_from_json(body: dict[str, Any]) -> pb.CompleteResponse:
    response = pb.CompleteResponse(
        id=str(body.get("id") or ""),
        created=int(body.get("created") or 0),
        model=str(body.get("model") or ""),
        system_fingerprint=str(body.get("system_fingerprint") or ""),
    )
    for i, choice in enumerate(body.get("choices") or ()):
        reason = choice.get("finish_reason")
        response.choices.append(
            pb.CompletionChoice(
                index=int(choice.get("index", i)),
                text=str(choice.get("text") or ""),
                finish_reason=FINISH_FROM_WIRE.get(reason, pb.FINISH_REASON_STOP)
                if reason
                else pb.FINISH_REASON_UNSPECIFIED,
                logprobs_json=f.json_or_empty(choice.get("logprobs")),
            )
        )
    if body.get("usage"):
        response.usage.CopyFrom(usage_from_json(body["usage"]))
    return response
