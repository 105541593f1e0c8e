"""The edge translator: the public OpenAI-compatible HTTP API (JSON + SSE)
mapped onto the router, ratelimit and catalog gRPC services."""
