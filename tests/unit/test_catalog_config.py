"""Catalog YAML loading: availability from the env, and errors naming file and key path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from interlock.catalog.v1 import catalog_pb2 as pb
from services.catalog.config import CatalogConfigError, load_catalog, parse_catalog
from services.catalog.settings import DEFAULT_CONFIG

SOURCE = "test-catalog.yaml"


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


def test_null_owned_by_falls_back_to_the_provider() -> None:
    doc = valid_doc()
    doc["models"][1]["owned_by"] = None
    assert by_id(parse_catalog(doc, SOURCE, {}).models)["remote"].owned_by == "acme"
