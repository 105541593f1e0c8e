"""What the Envoy tests share: clients to the public listener, the access log, comparisons."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from tests.support.fronted import FrontedStack


def verify_for(stack: FrontedStack) -> ssl.SSLContext | bool:
    """Trust the stack's own CA (httpx deprecates a path for verify)."""
    return ssl.create_default_context(cafile=str(stack.ca_cert)) if stack.ca_cert is not None else True


def client_for(stack: FrontedStack, source: str | None = None) -> httpx.Client:
    """An HTTP client to Envoy's public listener, from a loopback source address of its
    own when given (Envoy limits per client IP, so other tests keep their quota)."""
    verify = verify_for(stack)
    transport = httpx.HTTPTransport(verify=verify, local_address=source) if source else None
    return httpx.Client(base_url=stack.url, verify=verify, transport=transport, timeout=30)


def access_log_lines(
    stack: FrontedStack, wanted: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Every JSON line of Envoy's access log, once one that is wanted has been written."""
    deadline = time.monotonic() + timeout
    while True:
        text = stack.access_log.read_text() if stack.access_log.exists() else ""
        lines = [orjson.loads(line) for line in text.splitlines() if line.strip()]
        if any(wanted(line) for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def without_request_id(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: v for k, v in body.items() if k != "request_id"}
    return body
