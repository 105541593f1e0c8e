"""Headless Chromium for end-to-end page tests: Debian's /usr/bin/chromium driven
by Playwright, which is never allowed to download a browser of its own."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, ConsoleMessage, Error, Page, Request, ViewportSize, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1280, "height": 900}


def require_chromium() -> None:
    """Skip without the browser on a workstation; in CI (CI set) its absence is a failure."""
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class PageWatch:
    """What a page did: the requests it made, its console errors and its uncaught exceptions."""

    requests: list[Request] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> Page:
        page.on("request", self._on_request)
        page.on("console", self._on_console)
        page.on("pageerror", self._on_page_error)
        return page

    def _on_request(self, request: Request) -> None:
        self.requests.append(request)

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(f"{message.text} at {message.location}")

    def _on_page_error(self, error: Error) -> None:
        self.page_errors.append(f"{error.name}: {error.message}")

    def problems(self) -> list[str]:
        return [*self.console_errors, *self.page_errors]


@contextmanager
def chromium_context() -> Iterator[BrowserContext]:
    """A browser context in a fresh profile directory, gone afterwards."""
    with tempfile.TemporaryDirectory(prefix="interlock-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
            device_scale_factor=1,
            color_scheme="light",
            timezone_id="UTC",
            locale="en-US",
        )
        try:
            yield context
        finally:
            context.close()
