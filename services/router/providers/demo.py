"""The built-in demo provider: deterministic answers without network.

It streams token by token with a small delay, counts tokens with the
router's tokenizer (so usage matches what was streamed), honours max_tokens,
stop, n and forced tool calls, and makes embeddings of any requested size.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import struct
import time
import uuid
from collections.abc import AsyncIterator

from interlock.router.v1 import router_pb2 as pb
from services.common import tokens
from services.common.errors import InvalidRequestError
from services.common.wire import fields
from services.common.wire.chat import message_text
from services.router.providers.base import Target

DEFAULT_EMBED_DIMS = 256
_FINGERPRINT = "fp_interlock_demo"


def _reply_for(messages: list[pb.Message]) -> str:
    last = messages[-1] if messages else pb.Message()
    if last.role == pb.ROLE_TOOL:
        return f"The tool answered: {message_text(last)[:200]}"
    said = next((message_text(m) for m in reversed(messages) if m.role == pb.ROLE_USER), "")
    said = " ".join(said.split())[:200]
    return (
        f'Hello! You said: "{said}". I am the Interlock demo model: I answer without a network '
        "so that you can try the whole gateway on your own machine."
    )


def _forced_tool(request: pb.ChatRequest) -> str | None:
    """The function a request forces a call to, if it does."""
    if not request.tools or not request.tool_choice_json:
        return None
    choice = fields.loads(request.tool_choice_json)
    if choice == "required":
        return request.tools[0].function.name
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return name if isinstance(name, str) else None
    return None


def _shape(text: str, sampling: pb.Sampling, default_limit: int) -> tuple[list[str], pb.FinishReason.ValueType]:
    """Apply stop sequences and the token limit; returns pieces and finish reason."""
    finish: pb.FinishReason.ValueType = pb.FINISH_REASON_STOP
    cut = min((i for s in sampling.stop if s and (i := text.find(s)) >= 0), default=-1)
    if cut >= 0:
        text = text[:cut]
    pieces = tokens.tokenize(text)
    limit = sampling.max_completion_tokens or sampling.max_tokens or default_limit
    if limit and len(pieces) > limit:
        pieces = pieces[:limit]
        finish = pb.FINISH_REASON_LENGTH
    return pieces, finish


class DemoProvider:
    def __init__(self, token_delay_seconds: float) -> None:
        self._delay = token_delay_seconds

    # ------------------------------------------------------------ chat

    def _plan_chat(
        self, request: pb.ChatRequest, target: Target
    ) -> tuple[list[str], pb.FinishReason.ValueType, pb.ToolCall | None]:
        tool = _forced_tool(request)
        if tool:
            call = pb.ToolCall(
                id="call_" + uuid.uuid4().hex[:24],
                type="function",
                function=pb.FunctionCall(
                    name=tool, arguments=fields.dumps({"input": message_text(request.messages[-1])[:100]})
                ),
            )
            return [], pb.FINISH_REASON_TOOL_CALLS, call
        pieces, finish = _shape(
            _reply_for(list(request.messages)), request.sampling, int(target.model.max_output_tokens)
        )
        return pieces, finish, None

    async def chat(self, request: pb.ChatRequest, target: Target) -> pb.ChatResponse:
        pieces, finish, call = self._plan_chat(request, target)
        n = request.sampling.n if request.sampling.HasField("n") else 1
        response = pb.ChatResponse(
            id="chatcmpl-" + uuid.uuid4().hex, created=int(time.time()), model=target.deployment.upstream_model,
            system_fingerprint=_FINGERPRINT,
        )  # fmt: skip
        completion = 0
        for index in range(n):
            message = pb.Message(role=pb.ROLE_ASSISTANT)
            if call is not None:
                message.tool_calls.append(call)
                completion += tokens.count_text(call.function.name) + tokens.count_text(call.function.arguments)
            else:
                message.content = "".join(pieces)
                completion += len(pieces)
            response.choices.append(pb.Choice(index=index, message=message, finish_reason=finish))
        prompt = tokens.count_messages(request.messages)
        response.usage.CopyFrom(
            pb.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
        )
        return response

    async def chat_stream(self, request: pb.ChatRequest, target: Target) -> AsyncIterator[pb.ChatChunk]:
        pieces, finish, call = self._plan_chat(request, target)
        n = request.sampling.n if request.sampling.HasField("n") else 1
        base = pb.ChatChunk(
            id="chatcmpl-" + uuid.uuid4().hex, created=int(time.time()), model=target.deployment.upstream_model,
            system_fingerprint=_FINGERPRINT,
        )  # fmt: skip

        def chunk(*choices: pb.ChunkChoice) -> pb.ChatChunk:
            out = pb.ChatChunk()
            out.CopyFrom(base)
            out.choices.extend(choices)
            return out

        yield chunk(*(pb.ChunkChoice(index=i, delta=pb.Message(role=pb.ROLE_ASSISTANT, content="")) for i in range(n)))
        completion = 0
        if call is not None:
            await asyncio.sleep(self._delay)
            yield chunk(*(pb.ChunkChoice(index=i, delta=pb.Message(tool_calls=[call])) for i in range(n)))
            completion = n * (tokens.count_text(call.function.name) + tokens.count_text(call.function.arguments))
        else:
            for piece in pieces:
                await asyncio.sleep(self._delay)
                yield chunk(*(pb.ChunkChoice(index=i, delta=pb.Message(content=piece)) for i in range(n)))
            completion = n * len(pieces)
        yield chunk(*(pb.ChunkChoice(index=i, delta=pb.Message(), finish_reason=finish) for i in range(n)))
        prompt = tokens.count_messages(request.messages)
        last = chunk()
        last.usage.CopyFrom(
            pb.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
        )
        yield last

    # ------------------------------------------------------------ legacy completions

    def _plan_completion(
        self, request: pb.CompleteRequest, target: Target, prompt: str
    ) -> tuple[list[str], pb.FinishReason.ValueType]:
        text = " and so the demo model continues your prompt, one token at a time, without a network."
        sampling = pb.Sampling()
        sampling.CopyFrom(request.sampling)
        if not sampling.HasField("max_tokens"):
            sampling.max_tokens = 16  # OpenAI's default for this endpoint
        pieces, finish = _shape(text, sampling, int(target.model.max_output_tokens))
        if request.echo:
            pieces = [prompt, *pieces]
        return pieces, finish

    def _completion_usage(self, request: pb.CompleteRequest, completion: int) -> pb.Usage:
        prompt = sum(tokens.count_text(p) for p in request.prompts)
        return pb.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    async def complete(self, request: pb.CompleteRequest, target: Target) -> pb.CompleteResponse:
        response = pb.CompleteResponse(
            id="cmpl-" + uuid.uuid4().hex, created=int(time.time()), model=target.deployment.upstream_model,
            system_fingerprint=_FINGERPRINT,
        )  # fmt: skip
        n = request.sampling.n if request.sampling.HasField("n") else 1
        completion = 0
        for p_index, prompt in enumerate(request.prompts):
            pieces, finish = self._plan_completion(request, target, prompt)
            for j in range(n):
                response.choices.append(
                    pb.CompletionChoice(index=p_index * n + j, text="".join(pieces), finish_reason=finish)
                )
                completion += len(pieces) - (1 if request.echo else 0)
        response.usage.CopyFrom(self._completion_usage(request, completion))
        return response

    async def complete_stream(self, request: pb.CompleteRequest, target: Target) -> AsyncIterator[pb.CompleteResponse]:
        base = pb.CompleteResponse(
            id="cmpl-" + uuid.uuid4().hex, created=int(time.time()), model=target.deployment.upstream_model,
            system_fingerprint=_FINGERPRINT,
        )  # fmt: skip
        n = request.sampling.n if request.sampling.HasField("n") else 1
        plans = [self._plan_completion(request, target, p) for p in request.prompts]
        completion = 0
        for step in range(max(len(pieces) for pieces, _ in plans)):
            if step:
                await asyncio.sleep(self._delay)
            out = pb.CompleteResponse()
            out.CopyFrom(base)
            for p_index, (pieces, finish) in enumerate(plans):
                if step < len(pieces):
                    last = step == len(pieces) - 1
                    for j in range(n):
                        out.choices.append(
                            pb.CompletionChoice(
                                index=p_index * n + j,
                                text=pieces[step],
                                finish_reason=finish if last else pb.FINISH_REASON_UNSPECIFIED,
                            )
                        )
                    completion += n if not (request.echo and step == 0) else 0
            yield out
        last_chunk = pb.CompleteResponse()
        last_chunk.CopyFrom(base)
        last_chunk.usage.CopyFrom(self._completion_usage(request, completion))
        yield last_chunk

    # ------------------------------------------------------------ embeddings

    async def embed(self, request: pb.EmbedRequest, target: Target) -> pb.EmbedResponse:
        native = int(target.model.dims) or DEFAULT_EMBED_DIMS
        dims = request.dimensions or native
        if dims > native:
            raise InvalidRequestError(
                f"This model supports at most {native} dimensions.", code="ERR_INVALID_VALUE", param="dimensions"
            )
        texts = list(request.inputs) or [" ".join(map(str, t.tokens)) for t in request.token_inputs]
        response = pb.EmbedResponse(model=target.deployment.upstream_model)
        prompt = 0
        for index, text in enumerate(texts):
            response.embeddings.append(pb.Embedding(index=index, values=_vector(text, dims)))
            prompt += tokens.count_text(text) if request.inputs else len(request.token_inputs[index].tokens)
        response.usage.CopyFrom(pb.Usage(prompt_tokens=prompt, total_tokens=prompt))
        return response


def _vector(text: str, dims: int) -> list[float]:
    """A deterministic unit vector derived from the text."""
    raw: list[float] = []
    counter = 0
    while len(raw) < dims:
        digest = hashlib.blake2b(f"{counter}:{text}".encode(), digest_size=64).digest()
        raw.extend(v / 2**31 for v in struct.unpack("<16i", digest))
        counter += 1
    raw = raw[:dims]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]
