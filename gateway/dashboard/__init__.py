"""The usage dashboard: one static page served by the edge.

The page, its scripts and its stylesheet hold no data, so they are served
without auth; every number on the page comes from `GET /v1/usage`, which the
page calls with the admin key the user gives it. The assets are read once, when
the routes are built, and every link to them carries a build hash, so browsers
may cache them for good while the HTML itself is never cached.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from services.common.errors import NotFoundError

PATH = "/dashboard"
STATIC_PATH = f"{PATH}/static"
_JS = "text/javascript; charset=utf-8"
_ASSET_TYPES = {
    "dashboard.js": _JS,
    "charts.js": _JS,
    "dom.js": _JS,
    "format.js": _JS,
    "usage.js": _JS,
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# A module's relative import, such as `from "./charts.js"`.
_IMPORT = re.compile(r'(from\s+"\./[\w-]+\.js)(")')
# Only same-origin scripts, styles, images and fetches; nothing inline, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Bundle:
    """The page and its assets as served, and the build hash their links carry."""

    page: bytes
    assets: dict[str, tuple[bytes, str]]
    build: str


def _pin_imports(name: str, body: bytes, build: str) -> bytes:
    """A module's relative imports, pinned to the build as the page's links are."""
    if not name.endswith(".js"):
        return body
    return _IMPORT.sub(rf"\1?v={build}\2", body.decode()).encode()


def load_bundle() -> Bundle:
    """Read the page and its assets from the package and link them to this build."""
    static = resources.files(__package__).joinpath("static")
    sources = {name: static.joinpath(name).read_bytes() for name in _ASSET_TYPES}
    html = static.joinpath("dashboard.html").read_bytes()
    digest = hashlib.sha256(html)
    for name, body in sources.items():
        digest.update(name.encode() + b"\0" + body)
    build = digest.hexdigest()[:16]
    assets = {name: (_pin_imports(name, body, build), _ASSET_TYPES[name]) for name, body in sources.items()}
    page = html.decode()
    for name in _ASSET_TYPES:
        page = page.replace("{{" + name + "}}", f"{STATIC_PATH}/{name}?v={build}")
    return Bundle(page.encode(), assets, build)


def routes() -> list[Route]:
    """The page at /dashboard and its assets under /dashboard/static/."""
    bundle = load_bundle()

    async def page(request: Request) -> Response:
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
        return Response(bundle.page, media_type="text/html; charset=utf-8", headers=headers)

    async def page_slash(request: Request) -> Response:
        query = request.url.query
        return RedirectResponse(f"{PATH}?{query}" if query else PATH, status_code=308)

    async def asset(request: Request) -> Response:
        found = bundle.assets.get(request.path_params["name"])
        if found is None:
            raise NotFoundError(f"Unknown request URL: GET {request.url.path}.", code="unknown_url")
        body, media_type = found
        # A link with this build's hash names these exact bytes; anything else revalidates.
        cache = IMMUTABLE if request.query_params.get("v") == bundle.build else "no-cache"
        return Response(body, media_type=media_type, headers={**SECURITY_HEADERS, "Cache-Control": cache})

    return [
        Route(PATH, page, methods=["GET"]),
        Route(f"{PATH}/", page_slash, methods=["GET"]),
        Route(STATIC_PATH + "/{name}", asset, methods=["GET"]),
    ]
