"""One agent turn: the model answers under the agent's instructions, with the
session's (or the given) history, and may call other catalog models as function
tools; each tool call runs that model on the text the model gave and feeds its
answer back. At most the agent's max_steps model calls, tool calls included."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.jobs.v1 import jobs_pb2 as jpb
from interlock.router.v1 import router_pb2 as pb
from services.catalog.agents import tool_name
from services.common.errors import InvalidRequestError, UpstreamError

# Calls a model: the request (its caller context set), returning the answer.
ChatCall = Callable[[pb.ChatRequest], Awaitable[pb.ChatResponse]]
_TOOL_PARAMETERS = json.dumps(
    {
        "type": "object",
        "properties": {"text": {"type": "string", "description": "The input for the model."}},
        "required": ["text"],
    }
)


@dataclass
class TurnResult:
    result: pb.ChatResponse
    output: str
    usage: pb.Usage
    steps: int
    # The turn as the session keeps it: the query and the final answer.
    messages: list[pb.Message] = field(default_factory=list)


def text_of(message: pb.Message) -> str:
    if message.HasField("content"):
        return message.content
    return "".join(part.text for part in message.parts if part.WhichOneof("part") == "text")


def add_usage(total: pb.Usage, usage: pb.Usage) -> None:
    total.prompt_tokens += usage.prompt_tokens
    total.completion_tokens += usage.completion_tokens
    total.total_tokens += usage.total_tokens
    total.cost_usd += usage.cost_usd
    total.latency_ms += usage.latency_ms


def _tools(agent: cpb.Agent) -> list[pb.Tool]:
    return [
        pb.Tool(
            type="function",
            function=pb.FunctionDefinition(
                name=tool_name(model_id),
                description=f"Ask the model {model_id}; give it the full text to answer.",
                parameters_json=_TOOL_PARAMETERS,
            ),
        )
        for model_id in agent.tools
    ]


def _tool_text(arguments: str) -> str:
    try:
        parsed = json.loads(arguments or "{}")
    except ValueError:
        return arguments
    if isinstance(parsed, dict) and isinstance(parsed.get("text"), str):
        return str(parsed["text"])
    return arguments


async def run_turn(
    agent: cpb.Agent,
    turn: jpb.AgentTurn,
    history: list[pb.Message],
    caller: pb.CallerContext,
    chat: ChatCall,
) -> TurnResult:
    messages: list[pb.Message] = []
    if agent.instructions:
        messages.append(pb.Message(role=pb.ROLE_SYSTEM, content=agent.instructions))
    messages += history
    query = pb.Message(role=pb.ROLE_USER, content=turn.query)
    messages.append(query)
    tools = _tools(agent)
    by_name = {tool_name(model_id): model_id for model_id in agent.tools}
    total = pb.Usage()
    steps = 0

    async def call(model: str, conversation: list[pb.Message], offer_tools: bool) -> pb.ChatResponse:
        nonlocal steps
        steps += 1
        if steps > agent.max_steps:
            raise UpstreamError(
                f"The agent '{agent.id}' used its {agent.max_steps} steps without a final answer.",
                code="agent_step_limit",
            )
        request = pb.ChatRequest(model=model, messages=conversation, tools=tools if offer_tools else ())
        request.caller.CopyFrom(caller)
        # One ledger event per model call: the job's id with the step number.
        request.caller.request_id = f"{caller.request_id}.{steps}"
        response = await chat(request)
        add_usage(total, response.usage)
        return response

    while True:
        response = await call(agent.model, messages, bool(tools))
        if not response.choices:
            raise UpstreamError("The model returned no answer.", code="empty_answer")
        answer = response.choices[0].message
        if not answer.tool_calls:
            output = text_of(answer)
            final = pb.Message(role=pb.ROLE_ASSISTANT, content=output)
            return TurnResult(response, output, total, steps, [query, final])
        messages.append(answer)
        for tool_call in answer.tool_calls:
            model_id = by_name.get(tool_call.function.name)
            if model_id is None:
                reply = f"Unknown tool {tool_call.function.name!r}."
            else:
                asked = pb.Message(role=pb.ROLE_USER, content=_tool_text(tool_call.function.arguments))
                tool_response = await call(model_id, [asked], False)
                reply = text_of(tool_response.choices[0].message) if tool_response.choices else ""
            messages.append(pb.Message(role=pb.ROLE_TOOL, tool_call_id=tool_call.id, content=reply))


def history_from(turn: jpb.AgentTurn, session: jpb.Session | None) -> list[pb.Message]:
    """The session's conversation, else the history the client sent."""
    if session is not None and session.messages:
        return list(session.messages)
    for message in turn.history:
        if message.role not in (pb.ROLE_USER, pb.ROLE_ASSISTANT, pb.ROLE_SYSTEM):
            raise InvalidRequestError("history roles must be user, assistant or system", param="history")
    return list(turn.history)
