"""Pieces shared by the chat, completion and embedding codecs."""

from __future__ import annotations

from typing import Any

from interlock.router.v1 import router_pb2 as pb
from services.common.wire import fields as f

FINISH_TO_WIRE = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
    pb.FINISH_REASON_CONTENT_FILTER: "content_filter",
    pb.FINISH_REASON_FUNCTION_CALL: "function_call",
}
FINISH_FROM_WIRE = {v: k for k, v in FINISH_TO_WIRE.items()}

_SAMPLING_KEYS = {
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "user",
}
# Parameters the codecs type; anything else is carried in extra_json.
CHAT_KNOWN = _SAMPLING_KEYS | {
    "model",
    "messages",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "stream",
    "stream_options",
    "route",
    "metadata",
    # The gateway's evaluation hooks (services.common.evaluators); never sent upstream.
    "evaluate",
}
COMPLETION_KNOWN = _SAMPLING_KEYS | {
    "model",
    "prompt",
    "suffix",
    "echo",
    "best_of",
    "stream",
    "stream_options",
    "route",
    "metadata",
}
MAX_STOP_SEQUENCES = 4


def parse_sampling(body: dict[str, Any], *, legacy_logprobs: bool = False) -> pb.Sampling:
    sampling = pb.Sampling()
    if (v := f.opt_number(body, "temperature", lo=0, hi=2)) is not None:
        sampling.temperature = v
    if (v := f.opt_number(body, "top_p", lo=0, hi=1)) is not None:
        sampling.top_p = v
    if (i := f.opt_int(body, "max_tokens", lo=1)) is not None:
        sampling.max_tokens = i
    if (i := f.opt_int(body, "max_completion_tokens", lo=1)) is not None:
        sampling.max_completion_tokens = i
    if (i := f.opt_int(body, "n", lo=1, hi=128)) is not None:
        sampling.n = i
    stop = body.get("stop")
    if isinstance(stop, str):
        sampling.stop.append(stop)
    elif isinstance(stop, list):
        if len(stop) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) for s in stop):
            raise f.bad_value("stop", f"must be a string or up to {MAX_STOP_SEQUENCES} strings")
        sampling.stop.extend(stop)
    elif stop is not None:
        raise f.wrong_type("stop", "a string or an array of strings")
    if (i := f.opt_int(body, "seed")) is not None:
        sampling.seed = i
    if (v := f.opt_number(body, "presence_penalty", lo=-2, hi=2)) is not None:
        sampling.presence_penalty = v
    if (v := f.opt_number(body, "frequency_penalty", lo=-2, hi=2)) is not None:
        sampling.frequency_penalty = v
    if legacy_logprobs:
        # The legacy API's logprobs is a count (0..5), not a flag.
        if (i := f.opt_int(body, "logprobs", lo=0, hi=5)) is not None:
            sampling.top_logprobs = i
    else:
        if (b := f.opt_bool(body, "logprobs")) is not None:
            sampling.logprobs = b
        if (i := f.opt_int(body, "top_logprobs", lo=0, hi=20)) is not None:
            sampling.top_logprobs = i
    bias = f.opt_object(body, "logit_bias")
    if bias is not None:
        sampling.logit_bias_json = f.dumps(bias)
    if (s := f.opt_str(body, "user")) is not None:
        sampling.user = s
    return sampling


def sampling_to_json(sampling: pb.Sampling, *, legacy_logprobs: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in (
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "seed",
        "presence_penalty",
        "frequency_penalty",
    ):
        if sampling.HasField(name):
            out[name] = getattr(sampling, name)
    if sampling.stop:
        out["stop"] = list(sampling.stop)
    if legacy_logprobs:
        if sampling.HasField("top_logprobs"):
            out["logprobs"] = sampling.top_logprobs
    else:
        if sampling.HasField("logprobs"):
            out["logprobs"] = sampling.logprobs
        if sampling.HasField("top_logprobs"):
            out["top_logprobs"] = sampling.top_logprobs
    if sampling.logit_bias_json:
        out["logit_bias"] = f.loads(sampling.logit_bias_json)
    if sampling.user:
        out["user"] = sampling.user
    return out


def parse_route(body: dict[str, Any]) -> pb.RouteHints | None:
    route = f.opt_object(body, "route")
    if route is None:
        return None
    hints = pb.RouteHints()
    if (s := f.opt_str(route, "provider", "route.provider")) is not None:
        hints.provider = s
    if (i := f.opt_int(route, "latency_budget_ms", lo=0, param="route.latency_budget_ms")) is not None:
        hints.latency_budget_ms = i
    if (v := f.opt_number(route, "cost_ceiling_usd", lo=0, param="route.cost_ceiling_usd")) is not None:
        hints.cost_ceiling_usd = v
    fallback = f.opt_list(route, "fallback", "route.fallback")
    if fallback is not None:
        if not all(isinstance(m, str) and m for m in fallback):
            raise f.wrong_type("route.fallback", "an array of model ids")
        hints.fallbacks.extend(fallback)
    return hints


def parse_metadata(body: dict[str, Any]) -> str:
    """The client's metadata object as JSON text ("" when absent)."""
    metadata = f.opt_object(body, "metadata")
    return "" if metadata is None else f.dumps(metadata)


def usage_to_json(usage: pb.Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cached_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    if usage.reasoning_tokens:
        out["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    out["cost_usd"] = round(usage.cost_usd, 10)
    out["latency_ms"] = usage.latency_ms
    return out


def usage_from_json(raw: object) -> pb.Usage:
    if not isinstance(raw, dict):
        return pb.Usage()
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    return pb.Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=int(raw.get("total_tokens") or prompt + completion),
        cached_tokens=int(prompt_details.get("cached_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )


def routing_to_json(decision: pb.RoutingDecision) -> dict[str, Any]:
    return {
        "provider": decision.provider,
        "model": decision.model,
        "deployment": decision.deployment,
        "reason": decision.reason,
        "attempts": [
            {"provider": a.provider, "model": a.model, "outcome": a.outcome, "latency_ms": a.latency_ms}
            for a in decision.attempts
        ],
    }
