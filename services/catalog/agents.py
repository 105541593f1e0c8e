"""The catalog's `agents:` section: each agent answers with a catalog model (or
profile), under standing instructions, and may call other catalog chat models as tools."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from interlock.catalog.v1 import catalog_pb2 as pb

if TYPE_CHECKING:
    from services.catalog.config import _Reader

AGENT_KEYS: Final = ("id", "name", "model", "instructions", "tools", "max_steps")
DEFAULT_MAX_STEPS: Final = 6
MAX_STEPS_LIMIT: Final = 50
# A model's tool name must match OpenAI's function name rule.
_TOOL_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def tool_name(model_id: str) -> str:
    """The function name a tool model is offered under: its id with unsafe characters as '_'."""
    return _TOOL_NAME_UNSAFE.sub("_", model_id)[:64]


def parse_agents(r: _Reader, raw: object, models: Mapping[str, pb.Model]) -> list[pb.Agent]:
    agents: dict[str, pb.Agent] = {}
    for i, item in enumerate(r.seq(raw, "agents")):
        node: Mapping[Any, Any] = r.mapping(item, f"agents[{i}]")
        path = r.item_path("agents", i, node)
        r.only(node, AGENT_KEYS, path)
        agent_id = r.string(node, "id", path)
        if agent_id in agents:
            raise r.fail(f"{path}.id", f"duplicate agent id {agent_id!r}")
        model = r.string(node, "model", path)
        if model not in models:
            raise r.fail(f"{path}.model", f"unknown model {model!r}")
        if models[model].type not in (pb.MODEL_TYPE_CHAT, pb.MODEL_TYPE_PROFILE):
            raise r.fail(f"{path}.model", f"{model!r} is not a chat model or profile")
        instructions = node.get("instructions", "")
        if not isinstance(instructions, str):
            raise r.fail(f"{path}.instructions", "must be a string")
        tools = [str(t) for t in r.seq(node.get("tools"), f"{path}.tools")]
        names: set[str] = set()
        for tool in tools:
            if tool not in models:
                raise r.fail(f"{path}.tools", f"unknown model {tool!r}")
            if models[tool].type not in (pb.MODEL_TYPE_CHAT, pb.MODEL_TYPE_PROFILE):
                raise r.fail(f"{path}.tools", f"{tool!r} is not a chat model or profile")
            if tool_name(tool) in names:
                raise r.fail(f"{path}.tools", f"two tools share the function name {tool_name(tool)!r}")
            names.add(tool_name(tool))
        agents[agent_id] = pb.Agent(
            id=agent_id,
            name=r.string(node, "name", path, agent_id),
            model=model,
            instructions=instructions,
            tools=tools,
            max_steps=r.integer(node, "max_steps", path, DEFAULT_MAX_STEPS, MAX_STEPS_LIMIT) or DEFAULT_MAX_STEPS,
        )
    return list(agents.values())
