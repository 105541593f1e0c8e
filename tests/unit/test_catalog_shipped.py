"""The catalog shipped with the package: it loads, and holds what the README promises."""

from __future__ import annotations

from typing import Any

from interlock.catalog.v1 import catalog_pb2 as pb
from services.catalog.config import default_plans, load_catalog
from services.catalog.settings import DEFAULT_CONFIG


def by_id(items: list[Any]) -> dict[str, Any]:
    return {item.id: item for item in items}


SHIPPED_MODELS = {
    # id: (type, provider of its deployment)
    "gpt-5": ("chat", "openai"),
    "gpt-5-mini": ("chat", "openai"),
    "gpt-5-nano": ("chat", "openai"),
    "gpt-4.1": ("chat", "openai"),
    "gpt-4.1-mini": ("chat", "openai"),
    "gpt-4.1-nano": ("chat", "openai"),
    "gpt-4o": ("chat", "openai"),
    "gpt-4o-mini": ("chat", "openai"),
    "o3": ("chat", "openai"),
    "o4-mini": ("chat", "openai"),
    "gpt-3.5-turbo-instruct": ("completion", "openai"),
    "text-embedding-3-small": ("embedding", "openai"),
    "text-embedding-3-large": ("embedding", "openai"),
    "claude-opus-4-1": ("chat", "anthropic"),
    "claude-sonnet-4-5": ("chat", "anthropic"),
    "claude-sonnet-4": ("chat", "anthropic"),
    "claude-haiku-4-5": ("chat", "anthropic"),
    "claude-3-5-haiku": ("chat", "anthropic"),
    "gemini-2.5-pro": ("chat", "gemini"),
    "gemini-2.5-flash": ("chat", "gemini"),
    "gemini-2.5-flash-lite": ("chat", "gemini"),
    "gemini-embedding-001": ("embedding", "gemini"),
}
TYPE_NAMES = {pb.MODEL_TYPE_CHAT: "chat", pb.MODEL_TYPE_COMPLETION: "completion", pb.MODEL_TYPE_EMBEDDING: "embedding"}


def test_shipped_default_catalog() -> None:
    catalog = load_catalog(DEFAULT_CONFIG, {})
    models = by_id(catalog.models)
    for mid in ("demo-chat", "demo-embed", "demo-instruct"):
        assert models[mid].available is True, mid
    assert models["demo-chat"].type == pb.MODEL_TYPE_CHAT
    assert models["demo-instruct"].type == pb.MODEL_TYPE_COMPLETION
    assert models["demo-embed"].type == pb.MODEL_TYPE_EMBEDDING and models["demo-embed"].dims > 0
    profiles = {m.id: m.strategy for m in catalog.models if m.type == pb.MODEL_TYPE_PROFILE}
    assert profiles == {"router:fast": "fast", "router:quality": "quality", "router:cheap": "cheap"}
    assert by_id(catalog.providers)["openai"].available is False
    assert by_id(load_catalog(DEFAULT_CONFIG, {"OPENAI_API_KEY": "sk-x"}).providers)["openai"].available is True


def test_shipped_demo_models_are_unchanged() -> None:
    models = by_id(load_catalog(DEFAULT_CONFIG, {}).models)
    chat = models["demo-chat"]
    assert chat.context_window == 8192
    assert (chat.pricing.input_per_million, chat.pricing.output_per_million) == (0.10, 0.40)
    assert models["demo-embed"].dims == 256
    for mid in ("demo-chat", "demo-instruct", "demo-embed"):
        assert [(d.provider, d.upstream_model) for d in models[mid].deployments] == [("demo", mid)]


def test_shipped_providers_without_keys_are_listed_as_unavailable() -> None:
    catalog = load_catalog(DEFAULT_CONFIG, {})
    providers = by_id(catalog.providers)
    assert {p: (v.base_url, v.api_key_env, v.available) for p, v in providers.items()} == {
        "demo": ("", "", True),
        "openai": ("https://api.openai.com/v1", "OPENAI_API_KEY", False),
        "anthropic": ("https://api.anthropic.com/v1", "ANTHROPIC_API_KEY", False),
        "gemini": ("https://generativelanguage.googleapis.com/v1beta", "GEMINI_API_KEY", False),
    }
    models = by_id(catalog.models)
    for mid in SHIPPED_MODELS:
        assert models[mid].available is False, mid  # listed, not hidden
    keyed = by_id(load_catalog(DEFAULT_CONFIG, {"ANTHROPIC_API_KEY": "k", "GEMINI_API_KEY": "k"}).models)
    assert keyed["claude-sonnet-4-5"].available and keyed["gemini-2.5-pro"].available
    assert not keyed["gpt-5"].available


def test_shipped_public_models() -> None:
    catalog = load_catalog(DEFAULT_CONFIG, {})
    assert catalog.taken_at == "2025-10"
    models = by_id(catalog.models)
    for mid, (mtype, provider) in SHIPPED_MODELS.items():
        model = models[mid]
        assert (TYPE_NAMES[model.type], model.provider) == (mtype, provider), mid
        assert model.owned_by == {"gemini": "google"}.get(provider, provider), mid
        assert model.context_window > 0 and model.pricing.input_per_million > 0, mid
        if mtype == "chat":
            assert model.pricing.output_per_million > 0 and model.quality > models["demo-chat"].quality, mid
    dims = {mid: models[mid].dims for mid in ("text-embedding-3-small", "text-embedding-3-large")}
    assert dims == {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072}
    assert models["gemini-embedding-001"].dims == 3072
    assert models["claude-sonnet-4-5"].deployments[0].upstream_model.startswith("claude-sonnet-4-5")


def test_shipped_profiles_end_with_the_demo_model() -> None:
    models = by_id(load_catalog(DEFAULT_CONFIG, {}).models)
    for pid in ("router:fast", "router:cheap"):
        assert models[pid].candidates[-1] == "demo-chat", pid
        assert models[pid].available is True, pid  # works offline
    cheap = [models[c] for c in models["router:cheap"].candidates[:-1]]
    assert all(m.pricing.output_per_million <= 1.0 for m in cheap)
    quality = [models[c].quality for c in models["router:quality"].candidates]
    assert quality == sorted(quality, reverse=True)


def test_shipped_plans() -> None:
    catalog = load_catalog(DEFAULT_CONFIG, {})
    assert catalog.plans == default_plans()
    assert catalog.default_plan == "developer"
