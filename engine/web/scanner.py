"""The browser scanner at ``/scanner``: a progressive web app any venue can open on a phone (docs/scanner.md).

Everything the page needs ships in ``engine/web/scanner_static/`` and is served from memory here: the HTML, its
ES modules, the web app manifest, the service worker that keeps it usable offline, and the vendored zxing-cpp
WebAssembly reader (``vendor/zxing-wasm``, an npm artefact with its licence and version). Nothing is loaded
from another origin, and the Content-Security-Policy says so to the browser: scripts only from this origin
(``'wasm-unsafe-eval'`` lets it compile the decoder and nothing else), requests only to this origin, no frames,
no inline script or style, no HTML or script URL built from strings (Trusted Types: one policy, for
``sw.js``).

The page holds no privilege the device contract does not give: it enrols with a one-time code
(``engine.web.enroll``) and then signs ``POST /v1/scans`` like any scanner (``engine.devices.auth``).

The canonical URL is ``/scanner/`` (with the slash): the service worker's scope is the directory its script is
in, and a page at ``/scanner`` would sit outside ``/scanner/``. ``/scanner`` redirects there (relatively, so
it also works behind a proxy that mounts the engine under a path prefix).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable

from aiohttp import web

from engine.web.openapi import documented, error, text_body

PACKAGE = "engine.web.scanner_static"

#: Served file types; anything else in the package (``__init__.py``, caches) is never served.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".webmanifest": "application/manifest+json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}
NOT_SERVED = ("__init__.py",)
#: Files served by exact name whatever their suffix: the vendored decoder's licence travels with it.
BY_NAME = {"LICENSE": "text/plain; charset=utf-8", "LICENSE.zxing-cpp": "text/plain; charset=utf-8"}

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob: mediastream:",
        "connect-src 'self'",
        "worker-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        # one policy, which lets the page register its own service worker script and nothing else (app.js)
        "trusted-types scanner-sw",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(self), microphone=(), geolocation=(), payment=(), usb=()",
    # the service worker decides what is cached for offline use; the browser's HTTP cache always revalidates
    "Cache-Control": "no-cache",
}
VERSION_PLACEHOLDER = "__ASSETS_VERSION__"


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str


def _walk(node: Traversable, prefix: str = "") -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for child in node.iterdir():
        name = prefix + child.name
        if child.is_dir():
            if child.name != "__pycache__":
                files.update(_walk(child, name + "/"))
        elif child.name not in NOT_SERVED and (
            child.name in BY_NAME or any(child.name.endswith(s) for s in CONTENT_TYPES)
        ):
            files[name] = child.read_bytes()
    return files


def load_assets() -> dict[str, Asset]:
    """Every servable file by its path under ``/scanner/``; ``sw.js`` is stamped with a hash of all the others,
    so any change to the page makes browsers install the new service worker (and drop the old cache)."""
    files = _walk(resources.files(PACKAGE))
    digest = hashlib.sha256()
    for name in sorted(files):
        if name != "sw.js":
            digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    version = digest.hexdigest()[:16]
    if "sw.js" in files:
        files["sw.js"] = files["sw.js"].replace(VERSION_PLACEHOLDER.encode(), version.encode())
    out: dict[str, Asset] = {}
    for name, body in files.items():
        base = name.rsplit("/", 1)[-1]
        out[name] = Asset(body, BY_NAME.get(base) or CONTENT_TYPES[base[base.rfind(".") :]])
    return out


ASSETS = web.AppKey("scanner_assets", dict)


def _serve(asset: Asset) -> web.Response:
    # content_type and charset go in the header as written (aiohttp's content_type= would split them again)
    return web.Response(body=asset.body, headers={**SECURITY_HEADERS, "Content-Type": asset.content_type})


@documented(
    summary="Redirect to /scanner/",
    audience="public",
    responses={302: {"description": "to scanner/", "headers": {"Location": {"schema": {"type": "string"}}}}},
)
async def scanner_redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("scanner/", headers=SECURITY_HEADERS)


@documented(summary="The browser scanner (PWA)", audience="public", responses={200: text_body("page", "text/html")})
async def scanner_page(request: web.Request) -> web.Response:
    return _serve(request.app[ASSETS]["index.html"])


@documented(
    summary="The browser scanner's scripts, styles, manifest, decoder and icons",
    audience="public",
    responses={
        200: lambda cfg: {
            "description": "the asset",
            "content": {t.split(";")[0]: {"schema": {"type": "string"}} for t in CONTENT_TYPES.values()},
        },
        404: error("No such asset"),
    },
)
async def scanner_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    asset = request.app[ASSETS].get(name)
    if asset is None:
        raise web.HTTPNotFound(text=f"no scanner asset {name!r}")
    return _serve(asset)


def setup(app: web.Application) -> None:
    app[ASSETS] = load_assets()
    app.router.add_get("/scanner", scanner_redirect)
    app.router.add_get("/scanner/", scanner_page)
    app.router.add_get("/scanner/{name:.+}", scanner_asset)
