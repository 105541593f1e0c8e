"""The stack behind real Envoy, two ways: `interlock up --envoy` ("local") and the
dev overlay rehearsed as local processes ("rehearsal"). Every test that takes
`fronted` runs against both, so the two configs answer alike."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.envoy.helpers import client_for, verify_for
from tests.support.envoy_stack import start_envoy_stack
from tests.support.fronted import FrontedStack
from tests.support.rehearsal import rehearse


@pytest.fixture(scope="session", params=["local", "rehearsal"])
def fronted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontedStack]:
    work_dir = tmp_path_factory.mktemp(f"fronted-{request.param}")
    if request.param == "local":
        with start_envoy_stack(work_dir) as stack:
            yield stack
        return
    with rehearse(work_dir) as stack:
        yield stack


@pytest.fixture
def public(fronted: FrontedStack) -> Iterator[httpx.Client]:
    with client_for(fronted) as client:
        yield client


@pytest.fixture
def edge(fronted: FrontedStack) -> Iterator[httpx.Client]:
    """The edge itself, behind Envoy: what Envoy's answers are compared with."""
    with httpx.Client(base_url=fronted.edge_url, timeout=30) as client:
        yield client


@pytest.fixture
def sdk(fronted: FrontedStack) -> Iterator[openai.OpenAI]:
    http = httpx.Client(verify=verify_for(fronted), timeout=30)
    with openai.OpenAI(base_url=fronted.base_url, api_key=fronted.api_key, max_retries=0, http_client=http) as client:
        yield client
