"""The admin UI's HTML shells and static files, loaded once from the package and rendered by substitution.

Most pages carry no data: the browser fetches it from /manage/* and inserts it as text. The Usage
page and an event's detail are drawn on the server instead (a chart without a script library; bodies
a client wrote, escaped in one place): their markup comes from ``usage_html``/``event_page``, which
escape every value. Every response of the UI gets the same strict headers: no inline script or
style, no framing, no referrer, no caching.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Mapping
from importlib import resources
from string import Template

from aiohttp import web

from llmproxy import __version__

__all__ = ("DRAWN", "LINKED", "NAV", "SECURITY_HEADERS", "Pages", "html_response")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

# (page name, path, label): the navigation bar, in order
NAV = (
    ("projects", "/admin/projects", "Projects"),
    ("tokens", "/admin/tokens", "Tokens"),
    ("usage", "/admin/usage", "Usage"),
    ("audit", "/admin/audit", "Audit log"),
    ("events", "/admin/events", "Events"),
    ("dispatchers", "/admin/dispatchers", "Dispatchers"),
)

# pages reached by a link, not from the navigation bar: (page name → title)
LINKED = {"dead-letters": "Dead letters", "event": "Event"}

# pages drawn on the server by a handler of their own (usage_page, event_page), not plain shells
DRAWN = frozenset({"usage", "event"})

_CONTENT_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


def html_response(text: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A page of the UI, with the UI's headers."""
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={**SECURITY_HEADERS, **(headers or {})},
    )


def _package_files(folder: str) -> dict[str, bytes]:
    root = resources.files("llmproxy.admin") / folder
    return {f.name: f.read_bytes() for f in root.iterdir() if f.is_file() and not f.name.startswith(".")}


class Pages:
    """Renders the sign-in page and the page shells; serves the static files from memory."""

    def __init__(self) -> None:
        # read once at start-up (a few KiB), so no request reads the disk
        self._templates = {
            name.removesuffix(".html"): Template(raw.decode())
            for name, raw in _package_files("templates").items()
        }
        self._static = {
            name: (raw, _CONTENT_TYPES[suffix], '"' + hashlib.sha256(raw).hexdigest()[:16] + '"')
            for name, raw in _package_files("static").items()
            if (suffix := name[name.rfind(".") :]) in _CONTENT_TYPES
        }

    def static(self, name: str) -> tuple[bytes, str, str] | None:
        """(content, content type, ETag) of a static file, None if there is no such file."""
        return self._static.get(name)

    def login(self, *, form_token: str, error: str | None = None) -> str:
        error_html = f'<p class="alert error" role="alert">{html.escape(error)}</p>' if error else ""
        return self._templates["login"].substitute(
            form_token=html.escape(form_token), error=error_html, version=html.escape(__version__)
        )

    def page(
        self, name: str, *, csrf_token: str, markup: Mapping[str, str] | None = None, **values: str
    ) -> str:
        """A signed-in page: the layout around the page's own template. ``values`` are escaped here;
        ``markup`` is HTML already built by a renderer of this package (which escaped what it holds)."""
        content = self._templates[name].substitute(
            {**{k: html.escape(v) for k, v in values.items()}, **(markup or {})}
        )
        script = f"{name}.js"
        page_script = (
            f'<script src="/admin/static/{script}" defer></script>' if script in self._static else ""
        )
        title = LINKED.get(name) or next(label for page, _, label in NAV if page == name)
        nav = "\n".join(
            f'<a href="{path}"{" aria-current=page" if page == name else ""}>{label}</a>'
            for page, path, label in NAV
        )
        return self._templates["layout"].substitute(
            title=title,
            page=name,
            page_script=page_script,
            nav=nav,
            content=content,
            csrf_token=html.escape(csrf_token),
            version=html.escape(__version__),
        )

    def message(self, title: str, message: str) -> str:
        """A bare page with a title and one sentence (not found, refused)."""
        return self._templates["message"].substitute(
            title=html.escape(title), message=html.escape(message), version=html.escape(__version__)
        )
