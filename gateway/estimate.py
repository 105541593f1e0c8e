"""What a request may use at most, reserved from token and budget quotas
before the call and settled with the real usage after it.

Prompt tokens are counted exactly (the same tokenizer as the router);
completion tokens are the request's max_tokens times n, or the model's
output limit, or a configured default. Spend takes the dearest price among
the models the request could be routed to, so it is an upper bound.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.router.v1 import router_pb2 as pb
from services.common import tokens
from services.common.catalog_cache import CatalogCache

PER_MILLION = 1_000_000
# The legacy completions API's default max_tokens.
LEGACY_MAX_TOKENS = 16


@dataclass(frozen=True)
class Estimate:
    prompt_tokens: int
    completion_tokens: int
    input_per_million: float
    output_per_million: float

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def usd(self) -> float:
        return (
            self.prompt_tokens * self.input_per_million + self.completion_tokens * self.output_per_million
        ) / PER_MILLION


class Estimator:
    def __init__(self, cache: CatalogCache, default_completion_tokens: int) -> None:
        self._cache = cache
        self._default_completion = default_completion_tokens

    def chat(self, chat: pb.ChatRequest) -> Estimate:
        models = self._candidates(chat.model, chat.route)
        prompt = tokens.count_messages(chat.messages, _tokenizer_model(models))
        for tool in chat.tools:
            function = tool.function
            prompt += sum(tokens.count_text(t) for t in (function.name, function.description, function.parameters_json))
        completion = self._completion(chat.sampling, models, None) * max(chat.sampling.n, 1)
        return _priced(prompt, completion, models)

    def completion(self, request: pb.CompleteRequest) -> Estimate:
        models = self._candidates(request.model, request.route)
        encoding_model = _tokenizer_model(models)
        prompt = sum(tokens.count_prompt_text(p, encoding_model or "") for p in request.prompts)
        per_choice = self._completion(request.sampling, models, LEGACY_MAX_TOKENS)
        completion = per_choice * max(request.sampling.n, 1) * max(len(request.prompts), 1)
        return _priced(prompt, completion, models)

    def embedding(self, request: pb.EmbedRequest) -> Estimate:
        models = self._candidates(request.model, request.route)
        encoding_model = _tokenizer_model(models)
        prompt = sum(tokens.count_prompt_text(text, encoding_model or "") for text in request.inputs)
        prompt += sum(len(t.tokens) for t in request.token_inputs)
        return _priced(prompt, 0, models)

    def _candidates(self, model_id: str, route: pb.RouteHints) -> list[cpb.Model]:
        """The model, a profile's candidates, and the fallbacks the client named."""
        found: list[cpb.Model] = []
        for candidate_id in (model_id, *route.fallbacks):
            model = self._cache.models.get(candidate_id)
            if model is None:
                continue
            if model.type == cpb.MODEL_TYPE_PROFILE:
                found += [m for c in model.candidates if (m := self._cache.models.get(c)) is not None]
            else:
                found.append(model)
        return found

    def _completion(self, sampling: pb.Sampling, models: Iterable[cpb.Model], default: int | None) -> int:
        if sampling.HasField("max_completion_tokens"):
            return max(sampling.max_completion_tokens, 0)
        if sampling.HasField("max_tokens"):
            return max(sampling.max_tokens, 0)
        if default is not None:
            return default
        limits = [m.max_output_tokens for m in models if m.max_output_tokens > 0]
        return min(max(limits), self._default_completion) if limits else self._default_completion


def _tokenizer_model(models: list[cpb.Model]) -> str | None:
    return models[0].id if models else None


def _priced(prompt: int, completion: int, models: list[cpb.Model]) -> Estimate:
    return Estimate(
        prompt_tokens=prompt,
        completion_tokens=completion,
        # A prompt may be written to a provider cache, dearer than plain input.
        input_per_million=max(
            (max(m.pricing.input_per_million, m.pricing.cache_write_per_million) for m in models), default=0.0
        ),
        output_per_million=max((m.pricing.output_per_million for m in models), default=0.0),
    )
