"""The catalog's agents section: one fixture file per bad-config case, as for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.catalog.agents import DEFAULT_MAX_STEPS, tool_name
from services.catalog.config import CatalogConfigError, load_catalog

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "catalog"
REPO = Path(__file__).resolve().parent.parent.parent


def _load_error(name: str) -> tuple[Path, str]:
    path = FIXTURES / name
    with pytest.raises(CatalogConfigError) as info:
        load_catalog(path, {})
    return path, str(info.value)


def test_fixture_agent_good() -> None:
    [agent] = load_catalog(FIXTURES / "agent_good.yaml", {}).agents
    assert (agent.id, agent.name, agent.model, agent.instructions) == ("helper", "helper", "router:fast", "Be brief.")
    assert list(agent.tools) == ["acme/tool.v1"] and agent.max_steps == DEFAULT_MAX_STEPS
    assert tool_name("acme/tool.v1") == "acme_tool_v1"


def test_fixture_agent_unknown_model() -> None:
    path, message = _load_error("agent_unknown_model.yaml")
    assert message == f"{path}: agents[0](helper).model: unknown model 'ghost'"


def test_fixture_agent_unknown_tool() -> None:
    path, message = _load_error("agent_unknown_tool.yaml")
    assert message == f"{path}: agents[0](helper).tools: unknown model 'ghost'"


def test_fixture_agent_embedding_tool() -> None:
    path, message = _load_error("agent_embedding_tool.yaml")
    assert message == f"{path}: agents[0](helper).tools: 'vectors' is not a chat model or profile"


def test_fixture_agent_unknown_key() -> None:
    path, message = _load_error("agent_unknown_key.yaml")
    assert message == (
        f"{path}: agents[0](helper).instruction: unknown key "
        "(expected one of: id, name, model, instructions, tools, max_steps)"
    )


def test_fixture_agent_duplicate_id() -> None:
    path, message = _load_error("agent_duplicate_id.yaml")
    assert message == f"{path}: agents[1](helper).id: duplicate agent id 'helper'"


def test_the_default_catalog_has_a_demo_agent() -> None:
    catalog = load_catalog(REPO / "services" / "catalog" / "default_catalog.yaml", {})
    assert [(a.id, a.model) for a in catalog.agents] == [("demo-agent", "demo-chat")]
