"""Catalog YAML loading: availability from the env, and errors naming file and key path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from interlock.catalog.v1 import catalog_pb2 as pb
from services.catalog.config import (
    DEFAULT_PLANS,
    Catalog,
    CatalogConfigError,
    default_plans,
    load_catalog,
    parse_catalog,
)

SOURCE = "test-catalog.yaml"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "catalog"


def valid_doc() -> dict[str, Any]:
    return {
        "taken_at": "2026-01-01",
        "providers": {
            "demo": {"kind": "demo"},
            "acme": {
                "kind": "openai",
                "base_url": "https://acme.example/v1/",
                "api_key_env": "ACME_KEY",
                "headers": {"X-Team": "core"},
                "timeout_seconds": 30,
            },
        },
        "models": [
            {
                "id": "local",
                "type": "chat",
                "max_output_tokens": 100,
                "pricing": {"input": 0.1, "output": 0.4},
                "quality": 1,
                "deployments": [{"provider": "demo"}],
            },
            {
                "id": "remote",
                "type": "chat",
                "owned_by": "acme",
                "pricing": {"input": 2, "output": 8},
                "deployments": [{"provider": "acme", "model": "acme-large", "weight": 3, "priority": 1}],
            },
            {"id": "embed", "type": "embedding", "dims": 64, "deployments": [{"provider": "demo"}]},
        ],
        "profiles": [
            {"id": "router:fast", "strategy": "fast", "candidates": ["local", "remote"]},
            {"id": "router:best", "strategy": "quality", "candidates": ["remote"]},
        ],
    }


def by_id(items: list[Any]) -> dict[str, Any]:
    return {item.id: item for item in items}


def test_valid_document_without_key() -> None:
    catalog = parse_catalog(valid_doc(), SOURCE, {})
    providers, models = by_id(catalog.providers), by_id(catalog.models)
    assert list(providers) == ["demo", "acme"]
    assert providers["demo"].available is True
    assert providers["acme"].available is False
    assert providers["acme"].base_url == "https://acme.example/v1"
    assert providers["acme"].kind == pb.PROVIDER_KIND_OPENAI
    assert dict(providers["acme"].headers) == {"X-Team": "core"}
    assert providers["acme"].timeout_seconds == 30.0
    assert list(models) == ["local", "remote", "embed", "router:fast", "router:best"]
    assert models["local"].available is True
    assert models["remote"].available is False
    assert models["router:fast"].available is True  # one candidate is available
    assert models["router:best"].available is False


def test_setting_the_key_makes_provider_and_models_available() -> None:
    catalog = parse_catalog(valid_doc(), SOURCE, {"ACME_KEY": "sk-1"})
    assert by_id(catalog.providers)["acme"].available is True
    assert by_id(catalog.models)["remote"].available is True
    assert by_id(catalog.models)["router:best"].available is True


def test_empty_key_value_counts_as_unset() -> None:
    assert by_id(parse_catalog(valid_doc(), SOURCE, {"ACME_KEY": ""}).providers)["acme"].available is False


def test_model_fields_and_defaults() -> None:
    models = by_id(parse_catalog(valid_doc(), SOURCE, {}).models)
    local, remote, embed = models["local"], models["remote"], models["embed"]
    assert local.type == pb.MODEL_TYPE_CHAT and local.provider == "demo" and local.owned_by == "demo"
    assert local.deployments[0].upstream_model == "local" and local.deployments[0].weight == 1.0
    assert local.max_output_tokens == 100 and local.context_window == 8192
    assert local.pricing.input_per_million == pytest.approx(0.1)
    assert remote.owned_by == "acme" and remote.deployments[0].upstream_model == "acme-large"
    assert (remote.deployments[0].weight, remote.deployments[0].priority) == (3.0, 1)
    assert embed.type == pb.MODEL_TYPE_EMBEDDING and embed.dims == 64
    fast = models["router:fast"]
    assert fast.type == pb.MODEL_TYPE_PROFILE and fast.strategy == "fast"
    assert list(fast.candidates) == ["local", "remote"]


def test_load_catalog_reads_yaml(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(valid_doc()))
    catalog = load_catalog(path, {"ACME_KEY": "x"})
    assert [m.id for m in catalog.models][:3] == ["local", "remote", "embed"]


def _mutated(change: Any) -> dict[str, Any]:
    doc = copy.deepcopy(valid_doc())
    change(doc)
    return doc


BAD_DOCS = [
    pytest.param(
        lambda d: d["providers"]["acme"].update(kind="bogus"),
        "providers.acme.kind",
        "unknown provider kind 'bogus'",
        id="provider-kind",
    ),
    pytest.param(
        lambda d: d["providers"]["acme"].pop("base_url"), "providers.acme.base_url", "is required", id="base-url"
    ),
    pytest.param(
        lambda d: d["models"][1].pop("deployments"),
        "models[1](remote).deployments",
        "at least one deployment",
        id="no-deployments",
    ),
    pytest.param(
        lambda d: d["models"][1].update(deployments=[]),
        "models[1](remote).deployments",
        "at least one deployment",
        id="empty-deployments",
    ),
    pytest.param(
        lambda d: d["models"][0]["deployments"][0].update(provider="nope"),
        "models[0](local).deployments[0].provider",
        "unknown provider 'nope'",
        id="deployment-provider",
    ),
    pytest.param(
        lambda d: d["models"][0]["pricing"].update(input=-1),
        "models[0](local).pricing.input",
        "must not be negative",
        id="negative-price",
    ),
    pytest.param(
        lambda d: d["models"][0]["pricing"].update(output="cheap"),
        "models[0](local).pricing.output",
        "must be a number",
        id="price-string",
    ),
    pytest.param(
        lambda d: d["models"][2].update(id="local"),
        "models[2](local).id",
        "duplicate model id 'local'",
        id="duplicate-model",
    ),
    pytest.param(
        lambda d: d["models"][0].update(type="image"),
        "models[0](local).type",
        "unknown model type 'image'",
        id="model-type",
    ),
    pytest.param(
        lambda d: d["profiles"][0]["candidates"].append("ghost"),
        "profiles[0](router:fast).candidates",
        "unknown model 'ghost'",
        id="profile-model",
    ),
    pytest.param(
        lambda d: d["profiles"][1].update(strategy="slow"),
        "profiles[1](router:best).strategy",
        "unknown strategy 'slow'",
        id="strategy",
    ),
    pytest.param(
        lambda d: d["profiles"][1].update(id="local"),
        "profiles[1](local).id",
        "duplicate model id 'local'",
        id="profile-clashes-model",
    ),
    pytest.param(lambda d: d.update(extras=1), "extras", "unknown top-level key", id="top-level-key"),
    pytest.param(
        lambda d: d["profiles"][1]["candidates"].append("router:fast"),
        "profiles[1](router:best).candidates",
        "is a profile",
        id="profile-of-profile",
    ),
    pytest.param(
        lambda d: d["profiles"][0]["candidates"].append("embed"),
        "profiles[0](router:fast).candidates",
        "of one type",
        id="profile-mixed-types",
    ),
    pytest.param(
        lambda d: d["models"][0].update(context_window=True),
        "models[0](local).context_window",
        "must be an integer",
        id="bool-int",
    ),
    pytest.param(
        lambda d: d["providers"]["acme"].update(base_ulr="https://x"),
        "providers.acme.base_ulr",
        "unknown key (expected one of: kind, base_url, api_key_env, headers, timeout_seconds, api_version)",
        id="provider-unknown-key",
    ),
    pytest.param(
        lambda d: d["providers"]["acme"].update(api_version="2024-10-21"),
        "providers.acme.api_version",
        "is only for azure providers",
        id="provider-api-version-not-azure",
    ),
    pytest.param(
        lambda d: d["providers"]["acme"].update(kind="azure"),
        "providers.acme.api_version",
        "is required for azure providers",
        id="azure-without-api-version",
    ),
    pytest.param(
        lambda d: d["models"][0].update(hedging="yes"),
        "models[0](local).hedging",
        "must be true or false",
        id="hedging-not-bool",
    ),
    pytest.param(
        lambda d: d["models"][0]["pricing"].update(cache_read=0.01),
        "models[0](local).pricing.cache_read",
        "unknown key (expected one of: input, output, cached_input, cache_write)",
        id="pricing-unknown-key",
    ),
    pytest.param(
        lambda d: d["models"][1]["deployments"][0].update(wieght=2),
        "models[1](remote).deployments[0].wieght",
        "unknown key (expected one of: provider, model, weight, priority)",
        id="deployment-unknown-key",
    ),
    pytest.param(
        lambda d: d["profiles"][0].update(candiates=["local"]),
        "profiles[0](router:fast).candiates",
        "unknown key (expected one of: id, strategy, candidates, use_live_scores, min_live_scores)",
        id="profile-unknown-key",
    ),
    pytest.param(
        lambda d: d["models"][0].pop("id"),
        "models[0].id",
        "is required",
        id="model-without-id",
    ),
    pytest.param(
        lambda d: d["models"][0].update(evaluators=[{"type": "regex", "pattern": "("}]),
        "models[0](local).evaluators[0].pattern",
        "is not a valid regular expression",
        id="evaluator-bad-regex",
    ),
    pytest.param(
        lambda d: d["models"][0].update(evaluators=[{"type": "judge", "model": "embed", "rubric": "r"}]),
        "models[0](local).evaluators[0].model",
        "'embed' is not a chat model here",
        id="evaluator-judge-not-chat",
    ),
    pytest.param(
        lambda d: d.update(evaluators={"teams": {}}),
        "evaluators.teams",
        "unknown key (expected one of: projects, keys)",
        id="scoped-evaluators-unknown-section",
    ),
    pytest.param(
        lambda d: d.update(evaluators={"projects": {"p1": [{"type": "judge", "model": "nope", "rubric": "r"}]}}),
        "evaluators.projects.p1[0].model",
        "'nope' is not a chat model here",
        id="scoped-evaluators-unknown-judge",
    ),
    pytest.param(
        lambda d: d.update(evaluators={"keys": {"k1": [{"type": "length"}]}}),
        "evaluators.keys.k1[0]",
        "needs min_chars or max_chars",
        id="scoped-evaluators-bad-spec",
    ),
    pytest.param(
        lambda d: d["profiles"][1].update(use_live_scores="yes"),
        "profiles[1](router:best).use_live_scores",
        "must be true or false",
        id="profile-live-scores-not-bool",
    ),
    pytest.param(
        lambda d: d["providers"]["acme"].update(headers={"X-Team": None}),
        "providers.acme.headers.X-Team",
        "must be a string",
        id="header-value",
    ),
    pytest.param(
        lambda d: d["models"][0]["pricing"].update(input=float("nan")),
        "models[0](local).pricing.input",
        "must be a number",
        id="nan-price",
    ),
    pytest.param(
        lambda d: d["models"][2].update(dims=2**31),
        "models[2](embed).dims",
        f"must be at most {2**31 - 1}",
        id="int32-overflow",
    ),
    pytest.param(lambda d: d.update(plans=[]), "plans", "needs at least one plan", id="plans-empty"),
    pytest.param(lambda d: d.update(plans={"pro": {}}), "plans", "must be a list", id="plans-mapping"),
    pytest.param(lambda d: d.update(plans=[{"requests_per_minute": 1}]), "plans[0].id", "is required", id="plan-id"),
    pytest.param(
        lambda d: d.update(plans=[{"id": "pro", "burst": -5}]),
        "plans[0](pro).burst",
        "must not be negative (got -5)",
        id="plan-negative",
    ),
    pytest.param(
        lambda d: d.update(plans=[{"id": "pro", "tokens_per_minute": 1.5}]),
        "plans[0](pro).tokens_per_minute",
        "must be an integer",
        id="plan-float",
    ),
    pytest.param(
        lambda d: d.update(plans=[{"id": "pro", "rpm": 300}]),
        "plans[0](pro).rpm",
        "unknown key (expected one of: id, requests_per_minute, tokens_per_minute, burst)",
        id="plan-unknown-key",
    ),
    pytest.param(lambda d: d.update(default_plan=""), "default_plan", "must be a non-empty string", id="default-plan"),
    pytest.param(
        lambda d: d.update(default_plan="team"),
        "default_plan",
        "unknown plan 'team' (defined: developer, pro, enterprise)",
        id="default-plan-not-builtin",
    ),
    pytest.param(lambda d: d.update(taken_at=2025), "taken_at", "must be a date or a string", id="taken-at"),
]


@pytest.mark.parametrize(("change", "path", "problem"), BAD_DOCS)
def test_errors_name_source_path_and_problem(change: Any, path: str, problem: str) -> None:
    with pytest.raises(CatalogConfigError) as info:
        parse_catalog(_mutated(change), SOURCE, {})
    message = str(info.value)
    assert message.startswith(f"{SOURCE}: {path}: "), message
    assert problem in message


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("providers: {demo: {kind: demo}\nmodels: [\n")
    with pytest.raises(CatalogConfigError, match=r"broken\.yaml: not valid YAML"):
        load_catalog(path, {})


def test_non_mapping_top_level(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- demo\n- chat\n")
    with pytest.raises(CatalogConfigError) as info:
        load_catalog(path, {})
    assert str(info.value) == f"{path}: (top level): must be a mapping"


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogConfigError, match=r"absent\.yaml: cannot read"):
        load_catalog(tmp_path / "absent.yaml", {})


def test_non_string_provider_id_is_a_config_error() -> None:
    # YAML turns `123:` into an int key; the loader promises a CatalogConfigError naming it.
    with pytest.raises(CatalogConfigError, match=r"test-catalog\.yaml: providers\.123"):
        parse_catalog({"providers": {123: {"kind": "demo"}}}, SOURCE, {})


def test_null_owned_by_falls_back_to_the_provider() -> None:
    doc = valid_doc()
    doc["models"][1]["owned_by"] = None
    assert by_id(parse_catalog(doc, SOURCE, {}).models)["remote"].owned_by == "acme"


# --- plans -----------------------------------------------------------------------------


def test_without_a_plans_section_the_builtin_plans_apply() -> None:
    catalog = parse_catalog(valid_doc(), SOURCE, {})
    plans = {p.id: (p.requests_per_minute, p.tokens_per_minute, p.burst) for p in catalog.plans}
    assert plans == {"developer": (60, 60_000, 120), "pro": (300, 300_000, 600), "enterprise": (0, 0, 0)}
    assert [p[0] for p in DEFAULT_PLANS] == list(plans)
    assert catalog.default_plan == "developer"
    assert parse_catalog({**valid_doc(), "plans": None}, SOURCE, {}).plans == default_plans()


def test_builtin_plans_are_fresh_copies() -> None:
    first = default_plans()
    first[0].requests_per_minute = 1
    assert default_plans()[0].requests_per_minute == 60
    assert Catalog(providers=[], models=[]).plans == default_plans()


def test_plans_section_replaces_the_builtin_plans() -> None:
    doc = valid_doc()
    doc["plans"] = [{"id": "starter", "requests_per_minute": 5, "burst": 10}, {"id": "custom"}]
    catalog = parse_catalog(doc, SOURCE, {})
    assert [(p.id, p.requests_per_minute, p.tokens_per_minute, p.burst) for p in catalog.plans] == [
        ("starter", 5, 0, 10),
        ("custom", 0, 0, 0),
    ]
    assert catalog.default_plan == "starter"  # the first plan when default_plan is not given
    doc["default_plan"] = "custom"
    assert parse_catalog(doc, SOURCE, {}).default_plan == "custom"


def test_taken_at_accepts_a_yaml_date(tmp_path: Path) -> None:
    path = tmp_path / "dated.yaml"
    path.write_text("taken_at: 2025-10-01\nproviders: {demo: {kind: demo}}\n")
    assert load_catalog(path, {}).taken_at == "2025-10-01"
    assert parse_catalog(valid_doc(), SOURCE, {}).taken_at == "2026-01-01"


def test_empty_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    with pytest.raises(CatalogConfigError) as info:
        load_catalog(path, {})
    assert str(info.value) == (
        f"{path}: (top level): is empty (expected a mapping with providers, models and profiles)"
    )


def test_non_utf8_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"providers: {caf\xe9: {kind: demo}}\n")
    with pytest.raises(CatalogConfigError, match=r"latin1\.yaml: not UTF-8 text"):
        load_catalog(path, {})


def test_evaluators_and_live_scores_are_loaded() -> None:
    doc = valid_doc()
    doc["models"][1]["evaluators"] = [
        {"type": "json_schema", "name": "shape", "schema": {"type": "object"}, "sample_rate": 0.5},
        {"type": "judge", "model": "local", "rubric": "Correct?"},
    ]
    doc["profiles"][1].update(use_live_scores=True, min_live_scores=3)
    models = by_id(parse_catalog(doc, SOURCE, {}).models)
    shape, judge = models["remote"].evaluators
    assert (shape.name, shape.kind, shape.sample_rate, shape.schema_json) == (
        "shape",
        "json_schema",
        0.5,
        '{"type":"object"}',
    )
    assert (judge.name, judge.judge_model, judge.rubric, judge.sample_rate) == ("judge", "local", "Correct?", 1.0)
    assert (models["router:best"].use_live_scores, models["router:best"].min_live_scores) == (True, 3)
    assert not models["local"].evaluators and not models["router:fast"].use_live_scores


def test_project_and_key_evaluators_are_loaded() -> None:
    doc = valid_doc()
    doc["evaluators"] = {"projects": {"p1": [{"type": "refusal"}]}, "keys": {"key_1": [{"type": "json"}]}}
    scoped = parse_catalog(doc, SOURCE, {}).scoped_evaluators
    assert [(s.project, s.key_id, [e.kind for e in s.evaluators]) for s in scoped] == [
        ("p1", "", ["refusal"]),
        ("", "key_1", ["json"]),
    ]
