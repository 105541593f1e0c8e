"""The usage dashboard end to end: real traffic through the edge, recorded by the
ledger, drawn by the page in headless Chromium from GET /v1/usage."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page

from gateway.dashboard import CONTENT_SECURITY_POLICY
from tests.support.browser import PageWatch, chromium_context, require_chromium
from tests.support.fake_openai import FakeOpenAI
from tests.support.limits import auth, create_key_record, create_project
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e
KEY_STORAGE = "interlock.dashboard.key"
SETTLED = "body[data-state=ready], body[data-state=auth], body[data-state=error]"
WAIT_MS = 15_000


@dataclass
class Traffic:
    """What this module sent through its own key, as the responses told it."""

    key_id: str
    masked: str
    models: set[str]
    requests: int
    failed: int
    tokens: int
    cost_usd: float


@pytest.fixture(scope="module")
def traffic(stack: Stack, fake_upstream: FakeOpenAI) -> Traffic:
    """Chats on two models under a key of our own, one of them failing upstream."""
    fake_upstream.reset()
    secret, key_id = create_key_record(stack, [stack.url], project=create_project(stack))
    listing = httpx.get(f"{stack.url}/v1/keys", headers=stack.admin_headers(), timeout=10).json()
    masked = next(k["masked"] for k in listing["keys"] if k["id"] == key_id)
    request_ids, tokens, cost = [], 0, 0.0
    for model in ["demo-chat", "demo-chat", "demo-chat", "fake-chat", "fake-chat"]:
        reply = _chat(stack, secret, model)
        assert reply.status_code == 200, reply.text
        usage = reply.json()["usage"]
        tokens += usage["prompt_tokens"] + usage["completion_tokens"]
        cost += usage["cost_usd"]
        request_ids.append(reply.headers["x-request-id"])
    fake_upstream.fail_next(500, times=20)  # outlasts every retry
    failed = _chat(stack, secret, "fake-chat")
    fake_upstream.reset()
    assert failed.status_code == 502, failed.text
    request_ids.append(failed.headers["x-request-id"])
    assert stack.events_per_request(request_ids) == dict.fromkeys(request_ids, 1)
    return Traffic(key_id, masked, {"demo-chat", "fake-chat"}, len(request_ids), 1, tokens, cost)


def _chat(stack: Stack, secret: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "chart me"}], "max_tokens": 6}
    return httpx.post(f"{stack.base_url}/chat/completions", json=body, headers=auth(secret), timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserContext]:
    require_chromium()
    with chromium_context() as context:
        yield context


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[tuple[Page, PageWatch]]:
    """A fresh tab (so a fresh sessionStorage), watched."""
    watch = PageWatch()
    tab = watch.attach(browser.new_page())
    tab.set_default_timeout(WAIT_MS)
    yield tab, watch
    tab.close()


def _ledger_totals(stack: Stack) -> dict[str, int | float]:
    """The ledger's totals over the page's default window (the last 24 hours, by hour),
    summed from the usage API's own rows."""
    now = dt.datetime.now(dt.UTC)
    first_hour = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=23)
    params = {"start_day": first_hour.date().isoformat(), "end_day": now.date().isoformat(), "group_by": "hour"}
    reply = httpx.get(f"{stack.base_url}/usage", params=params, headers=stack.admin_headers(), timeout=10)
    assert reply.status_code == 200, reply.text
    rows = [r for r in reply.json()["rows"] if dt.datetime.fromisoformat(r["hour"]) >= first_hour]
    return {
        "requests": sum(int(r["requests"]) for r in rows),
        "failed": sum(int(r["failed_requests"]) for r in rows),
        "tokens": sum(int(r["prompt_tokens"]) + int(r["completion_tokens"]) for r in rows),
        "cost": sum(r["cost_usd"] for r in rows),
    }


def _settled_ledger(tab: Page, stack: Stack) -> dict[str, int | float]:
    """The ledger's totals, unchanged from before the page's last load to after it: a late
    event of an earlier test in the session may still land, and the page reloads then."""
    for _ in range(5):
        before = _ledger_totals(stack)
        tab.click("#refresh")
        tab.wait_for_selector("body[data-state=ready]")
        if _ledger_totals(stack) == before:
            return before
    raise AssertionError("the ledger kept changing")


def _tile(page: Page, name: str) -> tuple[str, str]:
    value = page.locator(f"#tile-{name} .value")
    return value.inner_text(), value.get_attribute("data-value") or ""


def _drawn(page: Page, selector: str) -> int:
    """How many of the chart's marks have a visible size."""
    return int(
        page.eval_on_selector_all(
            selector,
            "nodes => nodes.filter(n => { const b = n.getBBox(); return b.width > 0 && b.height > 0; }).length",
        )
    )


def _cells(page: Page, row: str) -> list[str]:
    return [cell.strip() for cell in page.locator(f"{row} td").all_inner_texts()]


def _assert_real_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000, len(data)
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 1000 and height >= 900, (width, height)
    pixels, offset = bytearray(), 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        if data[offset + 4 : offset + 8] == b"IDAT":
            pixels += data[offset + 8 : offset + 8 + length]
        offset += 12 + length
    assert len(set(zlib.decompress(bytes(pixels)))) > 32  # many colours, not a blank page


def test_page_and_assets_carry_security_headers(stack: Stack) -> None:
    page = httpx.get(f"{stack.url}/dashboard", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    # No inline script or style: every <script> has a src, no style attributes.
    assert re.findall(r"<script(?![^>]*\ssrc=)[^>]*>", page.text) == []
    assert " style=" not in page.text
    links = re.findall(r'(?:src|href)="(/dashboard/static/[^"]+)"', page.text)
    assert {link.split("?")[0].rsplit("/", 1)[1] for link in links} >= {"dashboard.js", "dashboard.css"}
    for link in links:
        asset = httpx.get(f"{stack.url}{link}", timeout=10)
        assert asset.status_code == 200, link
        assert asset.headers["x-content-type-options"] == "nosniff"
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    script = httpx.get(f"{stack.url}/dashboard/static/dashboard.js", timeout=10)
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.headers["cache-control"] == "no-cache"  # not pinned to this build: revalidate
    missing = httpx.get(f"{stack.url}/dashboard/static/..%2Fapp.py", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    slash = httpx.get(f"{stack.url}/dashboard/?range=7d", timeout=10)
    assert slash.status_code == 308 and slash.headers["location"] == "/dashboard?range=7d"


def test_dashboard_draws_recorded_traffic(
    stack: Stack, traffic: Traffic, page: tuple[Page, PageWatch], tmp_path: Path
) -> None:
    tab, watch = page
    tab.goto(f"{stack.url}/dashboard#key={stack.admin_key}")
    tab.wait_for_selector(SETTLED)
    assert tab.evaluate("document.body.dataset.state") == "ready", tab.inner_text("body")

    # The key left the address bar for this tab's sessionStorage, and went out only as a header.
    assert "#" not in tab.url and stack.admin_key not in tab.url
    assert tab.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") == stack.admin_key
    assert tab.evaluate("localStorage.length") == 0
    usage_calls = [r for r in watch.requests if "/v1/usage" in r.url]
    assert len(usage_calls) == 2
    for request in watch.requests:
        assert stack.admin_key not in request.url
    for request in usage_calls:
        assert request.header_value("authorization") == f"Bearer {stack.admin_key}"

    # Tiles: the whole ledger (this session's traffic, ours included).
    ledger = _settled_ledger(tab, stack)
    assert ledger["requests"] >= traffic.requests
    assert _tile(tab, "requests") == (f"{ledger['requests']:,}", str(ledger["requests"]))
    assert _tile(tab, "tokens") == (f"{ledger['tokens']:,}", str(ledger["tokens"]))
    assert float(_tile(tab, "cost")[1]) == pytest.approx(ledger["cost"])
    assert float(_tile(tab, "error-rate")[1]) == pytest.approx(ledger["failed"] / ledger["requests"])
    assert float(_tile(tab, "latency")[1]) > 0

    # Every chart drew marks from the data.
    for chart in ("requests", "tokens", "cost"):
        assert _drawn(tab, f"#chart-{chart} rect.bar") > 0, chart
    assert _drawn(tab, "#chart-latency .marks circle, #chart-latency .marks path") > 0
    assert _drawn(tab, "#chart-errors .marks circle, #chart-errors .marks path") > 0
    legend = set(tab.locator("#chart-requests .legend li").all_inner_texts())
    assert traffic.models <= legend or any(item.startswith("Other") for item in legend)

    # The tables list our models, and our key with exactly what we sent.
    listed_models = set(tab.locator("#table-models tbody tr").evaluate_all("rows => rows.map(r => r.dataset.model)"))
    assert traffic.models <= listed_models
    ours = f'#table-keys tbody tr[data-key-id="{traffic.key_id}"]'
    cells = _cells(tab, ours)
    assert cells[0] == traffic.masked
    assert cells[2] == str(traffic.requests)
    assert cells[4] == f"{traffic.tokens:,}"
    assert cells[6] == f"{100 * traffic.failed / traffic.requests:.1f}%"

    tab.screenshot(path=tmp_path / "dashboard.png", full_page=True)
    _assert_real_png(tmp_path / "dashboard.png")
    if os.environ.get("INTERLOCK_ARTIFACTS_DIR"):
        artifacts = Path(os.environ["INTERLOCK_ARTIFACTS_DIR"])
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "dashboard.png", artifacts / "dashboard.png")

    # Picking our key narrows everything to exactly the traffic we sent.
    tab.click(ours)
    tab.wait_for_selector('#filters .chip[data-filter="key_id"]')
    tab.wait_for_selector("body[data-state=ready]")
    assert "key_id=" in tab.url
    assert _tile(tab, "requests") == (str(traffic.requests), str(traffic.requests))
    assert _tile(tab, "tokens") == (f"{traffic.tokens:,}", str(traffic.tokens))
    assert float(_tile(tab, "cost")[1]) == pytest.approx(traffic.cost_usd)
    assert _tile(tab, "error-rate")[0] == f"{100 * traffic.failed / traffic.requests:.1f}%"
    assert set(tab.locator("#table-models tbody tr").evaluate_all("rows => rows.map(r => r.dataset.model)")) == (
        traffic.models
    )
    tab.hover("#chart-requests rect.bar >> nth=-1", force=True)
    tooltip = tab.locator("#tooltip")
    tooltip.wait_for(state="visible")
    assert "Total" in tooltip.inner_text()

    assert watch.problems() == []


def test_no_key_or_a_wrong_key_shows_the_auth_form_and_no_data(
    stack: Stack, traffic: Traffic, page: tuple[Page, PageWatch]
) -> None:
    tab, watch = page
    tab.goto(f"{stack.url}/dashboard")
    tab.wait_for_selector(SETTLED)
    assert tab.evaluate("document.body.dataset.state") == "auth"
    assert tab.locator("#key-input").is_visible() and not tab.locator("#auth-message").is_visible()
    assert not tab.locator("#dashboard").is_visible()
    assert not [r for r in watch.requests if "/v1/usage" in r.url]  # nothing asked without a key

    tab.goto(f"{stack.url}/dashboard#key=il-not-a-real-key")
    tab.wait_for_selector(SETTLED)
    assert tab.evaluate("document.body.dataset.state") == "auth"
    message = tab.locator("#auth-message")
    assert message.is_visible()
    assert "refused (401)" in message.inner_text(), message.inner_text()
    assert not tab.locator("#dashboard").is_visible()
    assert _tile(tab, "requests") == ("–", "")
    assert tab.locator("#table-keys tbody tr").count() == 0
    assert tab.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") is None
    # The browser itself logs the refused calls; nothing else may go wrong.
    assert watch.page_errors == []
    assert all("status of 401" in error for error in watch.console_errors), watch.console_errors

    # The form takes the right key.
    tab.fill("#key-input", stack.admin_key)
    tab.click("#auth-form button[type=submit]")
    tab.wait_for_selector("body[data-state=ready]")
    assert not tab.locator("#auth").is_visible()
    assert int(_tile(tab, "requests")[1]) >= traffic.requests
