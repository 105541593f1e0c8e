"""Seed 002's model API, as aiXplain serves it: POST /api/v2/execute/{model_id} runs a
chat model as a job and answers with the result, or with a requestId to poll at
GET /api/v2/data/{request_id} when it outlives the edge's wait; GET /sdk/models/{id}
describes a model the way aiXplain's SDK (ModelFactory.get) reads it."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway import jobs
from gateway.body import read_json_object
from gateway.context import EdgeContext
from gateway.responses import json_response
from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.jobs.v1 import jobs_pb2 as jpb
from services.common.errors import ModelNotFoundError
from services.common.wire import fields as f
from services.common.wire.chat import parse_chat_request

ENDPOINT = "/api/v2/execute"
# Sampling fields passed through as the chat API takes them.
_SAMPLING = ("max_tokens", "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty")


def chat_body(model_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """The execute body as a chat request: `text` (or the SDK's `data`) is a string or a
    chat history; the SDK's `context` is the system message, `history` earlier turns and
    `prompt` a prefix of the text."""
    text = body.get("text", body.get("data"))
    if text is None:
        raise f.missing("text")
    messages: list[Any] = []
    context = f.opt_str(body, "context")
    if context:
        messages.append({"role": "system", "content": context})
    messages += f.opt_list(body, "history") or []
    if isinstance(text, list):
        messages += text
    elif isinstance(text, str):
        prompt = f.opt_str(body, "prompt")
        messages.append({"role": "user", "content": f"{prompt}\n{text}" if prompt else text})
    else:
        raise f.wrong_type("text", "a string or an array of {role, content} messages")
    chat = {"model": model_id, "messages": messages}
    chat.update({key: body[key] for key in _SAMPLING if body.get(key) is not None})
    if isinstance(body.get("response_format"), dict):
        chat["response_format"] = body["response_format"]
    return chat


def known_model(edge: EdgeContext, model_id: str) -> cpb.Model:
    model = edge.cache.models.get(model_id)
    if model is None:
        raise ModelNotFoundError(f"The model '{model_id}' does not exist.", param="model_id", code="model_not_found")
    return model


async def execute(request: Request) -> Response:
    edge: EdgeContext = request.app.state.edge
    key = edge.authenticate(request)
    model_id = request.path_params["model_id"]
    body = await read_json_object(request, edge.settings.max_body_bytes)
    chat, _stream = parse_chat_request(chat_body(model_id, body))
    known_model(edge, model_id)
    edge.check_model_access(key, chat.model)
    admitted = await edge.admit(request, ENDPOINT, key, lambda: edge.estimator.chat(chat))
    chat.caller.CopyFrom(admitted.caller)
    job = await jobs.submit(edge, admitted, jpb.JobSpec(chat=chat), edge.settings.execute_wait_seconds)
    if job.status == jpb.JOB_STATUS_FAILED:
        raise jobs.failure(job)
    return json_response(jobs.execute_json(job, jobs.poll_url(request, f"/api/v2/data/{job.id}")))


async def execute_result(request: Request) -> Response:
    edge: EdgeContext = request.app.state.edge
    job = await jobs.fetch(edge, request, request.path_params["request_id"])
    return json_response(jobs.execute_json(job, str(request.url)))


async def model_info(request: Request) -> Response:
    """A catalog model in the shape aiXplain's SDK builds its Model from (an LLM when chat)."""
    edge: EdgeContext = request.app.state.edge
    key = edge.authenticate(request)
    model = known_model(edge, request.path_params["model_id"])
    edge.check_model_access(key, model.id)
    chat = model.type in (cpb.MODEL_TYPE_CHAT, cpb.MODEL_TYPE_PROFILE)
    return json_response(
        {
            "id": model.id,
            "name": model.id,
            "description": "",
            "function": {"id": "text-generation" if chat else "text-embedding"},
            "functionType": "ai",
            "supplier": model.owned_by or model.provider,
            "pricing": {
                "input_per_million_usd": model.pricing.input_per_million,
                "output_per_million_usd": model.pricing.output_per_million,
            },
            "version": {"id": model.id},
            "params": [],
            "status": "onboarded",
            "supportsStreaming": False,
        }
    )
