"""Seed 002's agents API: POST /v2/agents/{agent_id}/run starts a turn of a catalog
agent as a job and answers with its requestId, poll URL and sessionId;
GET /sdk/agents/{request_id}/result polls it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway import jobs
from gateway.body import read_json_object
from gateway.context import EdgeContext
from gateway.responses import json_response
from interlock.jobs.v1 import jobs_pb2 as jpb
from interlock.router.v1 import router_pb2 as pb
from services.common.errors import NotFoundError
from services.common.wire import fields as f
from services.common.wire.chat import parse_chat_request

ENDPOINT = "/v2/agents/run"
_HISTORY_ROLES = (pb.ROLE_USER, pb.ROLE_ASSISTANT, pb.ROLE_SYSTEM)


async def run_agent(request: Request) -> Response:
    edge: EdgeContext = request.app.state.edge
    key = edge.authenticate(request)
    agent_id = request.path_params["agent_id"]
    body = await read_json_object(request, edge.settings.max_body_bytes)
    query = f.req_str(body, "query")
    session_id = f.opt_str(body, "sessionId") or ""
    history = f.opt_list(body, "history") or []
    if session_id and history:
        raise f.bad_value("history", "send either sessionId or history, not both")
    agent = edge.cache.agents.get(agent_id)
    if agent is None:
        raise NotFoundError(f"The agent '{agent_id}' does not exist.", code="agent_not_found", param="agent_id")
    # Validated as chat messages, and estimated for the token quota as one request.
    chat, _stream = parse_chat_request(
        {"model": agent.model, "messages": [*history, {"role": "user", "content": query}]}
    )
    if any(m.role not in _HISTORY_ROLES for m in chat.messages):
        raise f.bad_value("history", "roles must be user, assistant or system")
    for model_id in (agent.model, *agent.tools):
        edge.check_model_access(key, model_id)
    admitted = await edge.admit(request, ENDPOINT, key, lambda: edge.estimator.chat(chat))
    turn = jpb.AgentTurn(agent_id=agent_id, query=query, session_id=session_id, history=chat.messages[:-1])
    spec = jpb.JobSpec(agent=turn, caller=admitted.caller)
    # Agent turns are always polled, as aiXplain's are: no wait.
    job = await jobs.submit(edge, admitted, spec, 0.0)
    return json_response(jobs.agent_json(job, jobs.poll_url(request, f"/sdk/agents/{job.id}/result")))


async def agent_result(request: Request) -> Response:
    edge: EdgeContext = request.app.state.edge
    job = await jobs.fetch(edge, request, request.path_params["request_id"])
    if not job.spec.HasField("agent"):
        raise NotFoundError(f"No agent run with id '{job.id}'.", code="request_not_found", param="request_id")
    return json_response(jobs.agent_json(job, str(request.url)))
