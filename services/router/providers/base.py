"""The interface every provider adapter implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.router.v1 import router_pb2 as pb


@dataclass(frozen=True)
class Target:
    """One deployment of one model at one provider: what a single attempt calls."""

    model: cpb.Model
    deployment: cpb.Deployment
    provider: cpb.Provider


class ProviderAdapter(Protocol):
    async def chat(self, request: pb.ChatRequest, target: Target) -> pb.ChatResponse: ...

    def chat_stream(self, request: pb.ChatRequest, target: Target) -> AsyncIterator[pb.ChatChunk]:
        """Chunks as the provider sends them; the last one carries usage."""
        ...

    async def complete(self, request: pb.CompleteRequest, target: Target) -> pb.CompleteResponse: ...

    def complete_stream(self, request: pb.CompleteRequest, target: Target) -> AsyncIterator[pb.CompleteResponse]: ...

    async def embed(self, request: pb.EmbedRequest, target: Target) -> pb.EmbedResponse: ...
