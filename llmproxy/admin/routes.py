"""The admin UI at /admin/: sign-in and sign-out, the page shells, the server-drawn Usage and event
pages, the Events page's reads of the event log, static files.

The pages do their work through the management API itself (validation and audit live there once):
``AdminUI.authenticate`` is handed to ``ManageAPI`` so a signed-in browser may call /manage/* with its
session cookie, each change carrying the session's CSRF token in ``X-CSRF-Token``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import MultiDictProxy
from redis.exceptions import RedisError

from llmproxy.admin.dead_letters import read_dead_letters
from llmproxy.admin.event_log import EventFilter, EventMatcher, EventPage, is_text, read_page
from llmproxy.admin.event_page import EventDetail
from llmproxy.admin.login import LoginFormGuard
from llmproxy.admin.markup import filled
from llmproxy.admin.pages import DRAWN, LINKED, NAV, SECURITY_HEADERS, Pages, html_response
from llmproxy.admin.sessions import AdminSession, SessionStore
from llmproxy.admin.usage_page import UsagePage
from llmproxy.audit import audit_record
from llmproxy.auth.throttle import SharedAuthThrottle
from llmproxy.config_values import is_decimal
from llmproxy.errors import ProxyError, Refusal, StoreUnavailable
from llmproxy.manage.decoding import decode_query

if TYPE_CHECKING:
    from llmproxy.audit import Auditor
    from llmproxy.config_sections import AdminSettings
    from llmproxy.openai.prices import PriceTable
    from llmproxy.store.base import Store

__all__ = ("ACTOR", "COOKIE", "CSRF_HEADER", "AdminUI")

log = logging.getLogger(__name__)

ACTOR = "admin_ui"
COOKIE = "llmproxy_admin"
LOGIN_COOKIE = "llmproxy_admin_login"
CSRF_HEADER = "X-CSRF-Token"
FAILED_LOGIN_DELAY = 0.3  # seconds: every wrong guess costs the guesser this much
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_HOME = "/admin/projects"
_LOGIN = "/admin/login"


def _secret(value: object) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else b""


async def _form(request: web.Request) -> MultiDictProxy[Any]:
    """The posted form as the sign-in and sign-out pages send it (urlencoded text). 400 for multipart
    (never sent here, and no parser for it on a route open to anyone) or bytes that do not decode."""
    if request.content_type.startswith("multipart/"):
        raise ProxyError(Refusal.BAD_REQUEST, "Forms are sent urlencoded here")
    try:
        return await request.post()
    except (ValueError, LookupError):  # not text in its charset (UnicodeDecodeError), an unknown charset
        raise ProxyError(Refusal.BAD_REQUEST, "Form body does not decode") from None


def _https(request: web.Request) -> bool:
    """Over TLS here or at a proxy in front: only then may the cookie be marked Secure."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


SignedInHandler = Callable[[web.Request, str], Awaitable[web.Response]]  # (request, CSRF token)


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={**SECURITY_HEADERS, "Location": location})


class AdminUI:
    """The admin UI's routes and the session check the management API calls for cookie-bearing requests."""

    def __init__(
        self,
        settings: AdminSettings,
        auditor: Auditor,
        *,
        sessions: SessionStore,
        throttle: SharedAuthThrottle,
        store: Store,
        prices: PriceTable | None = None,
        failed_login_delay: float = FAILED_LOGIN_DELAY,
    ) -> None:
        self._management_token = settings.management_token.encode()
        self._bus = settings.bus
        self._event_log = settings.file_event_log
        self._metrics_enabled = settings.metrics_enabled
        self._auditor = auditor
        self._sessions = sessions
        self._throttle = throttle
        self._failed_login_delay = failed_login_delay
        self._form = LoginFormGuard.for_deployment(self._management_token)
        self._pages = Pages()
        self._usage = UsagePage(store, self._pages)
        self._event = EventDetail(self._event_log, store, prices, self._pages)

    def routes(self) -> list[web.RouteDef]:
        """Every /admin route, ending with a catch-all 404: add them before the proxy's catch-all."""
        return [
            web.get("/admin", self.home),
            web.get("/admin/", self.home),
            web.get(_LOGIN, self.login_page),
            web.post(_LOGIN, self.login),
            web.post("/admin/logout", self.logout),
            *(web.get(path, self._page(name)) for name, path, _ in NAV if name not in DRAWN),
            *(web.get(f"/admin/{name}", self._page(name)) for name in LINKED if name not in DRAWN),
            web.get("/admin/usage", self._signed_in(self._usage.page)),
            web.get("/admin/usage.csv", self._signed_in(self._usage.csv_file)),
            web.get("/admin/events/{event_id}", self._signed_in(self._event.page)),
            web.get("/admin/api/events", self.events),
            web.get("/admin/api/dead-letters", self.dead_letters),
            web.get("/admin/static/{name}", self.static),
            web.route("*", "/admin/{tail:.*}", self.not_found),
        ]

    # --- the management API's second way in --------------------------------------------------

    async def authenticate(self, request: web.Request) -> str | None:
        """``ACTOR`` when ``request`` comes from a signed-in admin browser, else None. A change
        (POST, PATCH, DELETE…) must also carry the session's CSRF token, or it is refused with 403."""
        session = await self._session(request)
        if session is None:
            return None
        if request.method not in _SAFE_METHODS:
            given = _secret(request.headers.get(CSRF_HEADER))
            if not hmac.compare_digest(given, session.csrf_token.encode()):
                raise ProxyError(
                    Refusal.CSRF_INVALID,
                    f"Missing or invalid {CSRF_HEADER} header: reload the admin page",
                    headers={"Cache-Control": "no-store"},
                )
        return ACTOR

    async def _session(self, request: web.Request) -> AdminSession | None:
        """The request's live session; 503 while the database that holds the sessions is down."""
        try:
            return await self._sessions.get(request.cookies.get(COOKIE))
        except StoreUnavailable as exc:
            log.warning("admin UI: cannot read sessions: %s", exc)
            raise ProxyError(
                Refusal.SERVICE_UNAVAILABLE, "The database is unavailable, try again later"
            ) from None

    # --- signing in and out ------------------------------------------------------------------

    async def home(self, request: web.Request) -> web.Response:
        return _redirect(_HOME if await self._session(request) else _LOGIN)

    async def login_page(self, request: web.Request) -> web.Response:
        if await self._session(request) is not None:
            return _redirect(_HOME)
        return self._login_form(request)

    async def login(self, request: web.Request) -> web.Response:
        client = request.remote or "unknown"
        wait = await self._throttle.retry_after(client)
        if wait is not None:
            self._audit_login(request, "denied", "rate_limited")
            message = f"Too many failed sign-ins: try again in {wait} seconds."
            return self._login_form(request, 429, message, headers={"Retry-After": str(wait)})
        form = await _form(request)
        if not self._form.valid(request.cookies.get(LOGIN_COOKIE), _text(form.get("csrf_token"))):
            self._audit_login(request, "denied", "csrf_failed")
            return self._login_form(request, 403, "The sign-in form had expired: please sign in again.")
        given = _secret(form.get("management_token"))
        # compare_digest always runs, so an empty configured token costs the same as a wrong guess
        if not (hmac.compare_digest(given, self._management_token) and self._management_token):
            await self._throttle.failed(client)
            self._audit_login(request, "denied", "invalid_token")
            await asyncio.sleep(self._failed_login_delay)
            return self._login_form(request, 401, "Wrong management token.")
        await self._throttle.succeeded(client)
        try:
            await self._sessions.end(request.cookies.get(COOKIE))
            session_id, _ = await self._sessions.create()
        except StoreUnavailable as exc:
            log.warning("admin UI: cannot store the new session: %s", exc)
            self._audit_login(request, "error", "service_unavailable")
            return self._login_form(request, 503, "The database is unavailable: try again later.")
        self._audit_login(request, "success")
        response = _redirect(_HOME)
        # no Max-Age: the cookie goes when the browser closes; the server ends the session anyway
        response.set_cookie(
            COOKIE, session_id, path="/", httponly=True, samesite="Strict", secure=_https(request)
        )
        response.del_cookie(LOGIN_COOKIE, path=_LOGIN)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        session_id = request.cookies.get(COOKIE)
        session = await self._session(request)
        if session is not None:
            form = await _form(request)
            given = _secret(form.get("csrf_token") or request.headers.get(CSRF_HEADER))
            if not hmac.compare_digest(given, session.csrf_token.encode()):
                return html_response(
                    self._pages.message("Sign-out refused", "Reload the page and sign out again."), 403
                )
            try:
                await self._sessions.end(session_id)
            except StoreUnavailable as exc:  # never claim a sign-out that did not happen
                log.warning("admin UI: cannot end a session: %s", exc)
                raise ProxyError(
                    Refusal.SERVICE_UNAVAILABLE, "The database is unavailable, try again later"
                ) from None
        response = _redirect(_LOGIN)
        response.del_cookie(COOKIE, path="/")
        return response

    def _login_form(
        self,
        request: web.Request,
        status: int = 200,
        error: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        nonce = request.cookies.get(LOGIN_COOKIE)
        if not nonce or len(nonce) > 64:
            nonce = self._form.new_nonce()
        page = self._pages.login(form_token=self._form.form_token(nonce), error=error)
        response = html_response(page, status, headers)
        response.set_cookie(
            LOGIN_COOKIE,
            nonce,
            path=_LOGIN,
            max_age=3600,
            httponly=True,
            samesite="Strict",
            secure=_https(request),
        )
        return response

    def _audit_login(self, request: web.Request, result: str, reason: str | None = None) -> None:
        self._auditor.record(audit_record("admin.login", result, reason=reason, actor=ACTOR, request=request))

    # --- pages and data ----------------------------------------------------------------------

    def _page(self, name: str) -> Handler:
        async def page(request: web.Request) -> web.Response:
            session = await self._session(request)
            if session is None:
                return _redirect(_LOGIN)
            metrics = "enabled" if self._metrics_enabled else "disabled"
            return html_response(self._pages.page(name, csrf_token=session.csrf_token, metrics=metrics))

        return page

    def _signed_in(self, handler: SignedInHandler) -> Handler:
        """``handler`` for a signed-in browser (given the session's CSRF token); others go to sign in."""

        async def page(request: web.Request) -> web.Response:
            session = await self._session(request)
            if session is None:
                return _redirect(_LOGIN)
            return await handler(request, session.csrf_token)

        return page

    async def events(self, request: web.Request) -> web.Response:
        """Up to 50 event summaries matching the filters: the newest, those appended after byte
        ``?after=`` (the live tail) or those older than byte ``?before=`` (the next page)."""
        if await self._session(request) is None:
            raise ProxyError(
                Refusal.UNAUTHORIZED, "Sign in to the admin UI first", headers={"Cache-Control": "no-store"}
            )
        query = decode_query(filled(request.query), EventFilter)
        if query.q is not None and not is_text(query.q):
            raise ProxyError(Refusal.INVALID_FIELD, "q must be text", param="q")
        if query.after is not None and query.before is not None:
            raise ProxyError(Refusal.INVALID_FIELD, "Give after or before, not both", param="before")
        if not self._event_log:
            page = EventPage(configured=False, events=[], cursor=0)
        else:
            try:
                page = await read_page(
                    self._event_log, EventMatcher(query), after=query.after, before=query.before
                )
            except OSError as exc:
                log.warning("admin UI: cannot read the event log %s: %s", self._event_log, exc)
                raise ProxyError(Refusal.SERVICE_UNAVAILABLE, "The event log cannot be read") from None
        return web.Response(
            body=msgspec.json.encode(page), content_type="application/json", headers=SECURITY_HEADERS
        )

    async def dead_letters(self, request: web.Request) -> web.Response:
        """How many dead letters there are and the newest ``?limit=`` (default 50, at most 500) of them."""
        if await self._session(request) is None:
            raise ProxyError(
                Refusal.UNAUTHORIZED, "Sign in to the admin UI first", headers={"Cache-Control": "no-store"}
            )
        raw = request.query.get("limit", "50")
        if not is_decimal(raw) or int(raw) > 500:
            raise ProxyError(Refusal.INVALID_FIELD, "limit must be an integer from 0 to 500", param="limit")
        try:
            page = await read_dead_letters(self._bus, int(raw))
        except (OSError, RedisError) as exc:
            log.warning("admin UI: cannot read the dead letters: %s", exc)
            raise ProxyError(Refusal.SERVICE_UNAVAILABLE, "The dead letters cannot be read") from None
        return web.Response(
            body=msgspec.json.encode(page), content_type="application/json", headers=SECURITY_HEADERS
        )

    async def static(self, request: web.Request) -> web.Response:
        found = self._pages.static(request.match_info["name"])
        if found is None:
            return html_response(self._pages.message("Not found", "There is no such file."), 404)
        body, content_type, etag = found
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": etag}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers={**headers, "Content-Type": content_type})

    async def not_found(self, request: web.Request) -> web.Response:
        return html_response(self._pages.message("Not found", "There is no such page in the admin UI."), 404)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
