"""The agent loop on its own (services/usage/jobs/agent.py), with a scripted model:
what each call is sent, ledger ids per step, usage summed, and the step limit."""

from __future__ import annotations

import pytest

from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.jobs.v1 import jobs_pb2 as jpb
from interlock.router.v1 import router_pb2 as pb
from services.common.errors import InvalidRequestError, UpstreamError
from services.usage.jobs.agent import history_from, run_turn

AGENT = cpb.Agent(id="helper", model="main", instructions="Be brief.", tools=["acme/tool"], max_steps=3)
CALLER = pb.CallerContext(request_id="req_1", key_id="key_a")


def answer(text: str = "", tool: str = "", cost: float = 0.5) -> pb.ChatResponse:
    message = pb.Message(role=pb.ROLE_ASSISTANT)
    if tool:
        call = pb.ToolCall(
            id="call_1", type="function", function=pb.FunctionCall(name=tool, arguments='{"text": "x?"}')
        )
        message.tool_calls.append(call)
    else:
        message.content = text
    return pb.ChatResponse(choices=[pb.Choice(message=message)], usage=pb.Usage(total_tokens=10, cost_usd=cost))


class Script:
    def __init__(self, *answers: pb.ChatResponse) -> None:
        self.answers = list(answers)
        self.sent: list[pb.ChatRequest] = []

    async def __call__(self, request: pb.ChatRequest) -> pb.ChatResponse:
        self.sent.append(request)
        return self.answers.pop(0)


async def test_a_tool_call_runs_the_tool_model_and_feeds_its_answer_back() -> None:
    script = Script(answer(tool="acme_tool"), answer("from the tool"), answer("final"))
    history = [pb.Message(role=pb.ROLE_USER, content="before")]
    done = await run_turn(AGENT, jpb.AgentTurn(agent_id="helper", query="q"), history, CALLER, script)
    assert done.output == "final" and done.steps == 3
    assert done.usage.total_tokens == 30 and done.usage.cost_usd == pytest.approx(1.5)
    first, tool, last = script.sent
    assert [(m.role, m.content) for m in first.messages] == [
        (pb.ROLE_SYSTEM, "Be brief."),
        (pb.ROLE_USER, "before"),
        (pb.ROLE_USER, "q"),
    ]
    assert [t.function.name for t in first.tools] == ["acme_tool"]
    assert tool.model == "acme/tool" and not tool.tools and tool.messages[0].content == "x?"
    assert last.messages[-1] == pb.Message(role=pb.ROLE_TOOL, tool_call_id="call_1", content="from the tool")
    # Each model call is its own ledger event.
    assert [r.caller.request_id for r in script.sent] == ["req_1.1", "req_1.2", "req_1.3"]
    assert [m.content for m in done.messages] == ["q", "final"]


async def test_a_turn_that_keeps_calling_tools_stops_at_max_steps() -> None:
    script = Script(answer(tool="acme_tool"), answer("t"), answer(tool="acme_tool"), answer("t"))
    with pytest.raises(UpstreamError) as info:
        await run_turn(AGENT, jpb.AgentTurn(agent_id="helper", query="q"), [], CALLER, script)
    assert info.value.code == "agent_step_limit"


def test_the_session_wins_over_history_and_history_roles_are_checked() -> None:
    session = jpb.Session(id="s", messages=[pb.Message(role=pb.ROLE_USER, content="kept")])
    turn = jpb.AgentTurn(history=[pb.Message(role=pb.ROLE_USER, content="sent")])
    assert [m.content for m in history_from(turn, session)] == ["kept"]
    assert [m.content for m in history_from(turn, None)] == ["sent"]
    with pytest.raises(InvalidRequestError):
        history_from(jpb.AgentTurn(history=[pb.Message(role=pb.ROLE_TOOL, content="x")]), None)
