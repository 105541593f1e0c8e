"""One fixture file per bad-config case, each with its own test and message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.catalog.config import CatalogConfigError, load_catalog

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "catalog"


def by_id(items: list[Any]) -> dict[str, Any]:
    return {item.id: item for item in items}


# --- one fixture file per bad-config case ----------------------------------------------


def _load_error(name: str) -> tuple[Path, str]:
    path = FIXTURES / name
    with pytest.raises(CatalogConfigError) as info:
        load_catalog(path, {})
    return path, str(info.value)


def test_fixture_good_loads() -> None:
    catalog = load_catalog(FIXTURES / "good.yaml", {"ACME_KEY": "sk-1"})
    models = by_id(catalog.models)
    assert list(models) == ["local", "remote", "router:fast"]
    assert [(d.provider, d.priority, d.weight) for d in models["remote"].deployments] == [
        ("acme", 0, 3.0),
        ("demo", 1, 1.0),
    ]
    assert [(p.id, p.requests_per_minute, p.tokens_per_minute, p.burst) for p in catalog.plans] == [
        ("hobby", 10, 10_000, 20),
        ("team", 100, 0, 0),
        ("custom", 0, 0, 0),
    ]
    assert catalog.default_plan == "team"
    assert catalog.taken_at == "2025-10"
    assert all(p.available for p in catalog.providers)


def test_fixture_unknown_provider_kind() -> None:
    path, message = _load_error("unknown_provider_kind.yaml")
    assert message == (
        f"{path}: providers.acme.kind: unknown provider kind 'bogus' "
        "(expected one of demo, openai, anthropic, gemini, azure)"
    )


def test_fixture_model_without_deployment() -> None:
    path, message = _load_error("model_without_deployment.yaml")
    assert message == f"{path}: models[0](lonely).deployments: a model needs at least one deployment"


def test_fixture_deployment_unknown_provider() -> None:
    path, message = _load_error("deployment_unknown_provider.yaml")
    assert message == f"{path}: models[0](local).deployments[1].provider: unknown provider 'nope'"


def test_fixture_negative_price() -> None:
    path, message = _load_error("negative_price.yaml")
    assert message == f"{path}: models[0](local).pricing.input: must not be negative (got -1)"


def test_fixture_duplicate_model_id() -> None:
    path, message = _load_error("duplicate_model_id.yaml")
    assert message == f"{path}: models[2](local).id: duplicate model id 'local'"


def test_fixture_profile_unknown_model() -> None:
    path, message = _load_error("profile_unknown_model.yaml")
    assert message == f"{path}: profiles[0](router:fast).candidates: unknown model 'ghost'"


def test_fixture_unknown_key() -> None:
    path, message = _load_error("unknown_key.yaml")
    assert message == (
        f"{path}: models[0](local).context_windw: unknown key (expected one of: id, type, owned_by, "
        "context_window, max_output_tokens, dims, capabilities, pricing, quality, created, deployments, hedging, "
        "evaluators)"
    )


def test_fixture_duplicate_plan() -> None:
    path, message = _load_error("duplicate_plan.yaml")
    assert message == f"{path}: plans[2](developer).id: duplicate plan id 'developer'"


def test_fixture_default_plan_unknown() -> None:
    path, message = _load_error("default_plan_unknown.yaml")
    assert message == f"{path}: default_plan: unknown plan 'gold' (defined: developer, pro)"


def test_fixture_not_yaml() -> None:
    path, message = _load_error("not_yaml.yaml")
    # The wording of the problem is the YAML parser's (libyaml or pure Python); where it is, is ours.
    assert message.startswith(f"{path}: not valid YAML: line 6, column 1: "), message
    assert message.endswith("(while parsing a flow mapping that started at line 5)"), message


def test_fixture_duplicate_provider_key() -> None:
    path, message = _load_error("duplicate_provider_key.yaml")
    assert message == f"{path}: not valid YAML: line 5, column 3: duplicate key 'acme' (first at line 3)"
