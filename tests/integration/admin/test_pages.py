"""The page shells and static files of the admin UI: served to a session only, with strict headers,
and scripts that never put data into the page as HTML."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from llmproxy.admin.pages import NAV
from tests.integration.admin.conftest import Admin, MakeAdmin

PAGES = [path for _, path, _ in NAV]


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_is_served_to_a_session_with_its_csrf_token_and_strict_headers(
    signed_in: Admin, path: str
) -> None:
    response = await signed_in.client.get(path, allow_redirects=False)
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    page = await response.text()
    assert f'<meta name="csrf-token" content="{signed_in.csrf_token}">' in page
    assert f'<a href="{path}" aria-current=page>' in page
    assert "<script>" not in page and " style=" not in page  # nothing inline: the CSP would block it


async def test_the_dispatchers_page_says_when_metrics_are_disabled(make_admin: MakeAdmin) -> None:
    admin = await make_admin(ENABLE_METRICS="false")
    await admin.sign_in()
    page = await (await admin.client.get("/admin/dispatchers")).text()
    assert 'data-metrics="disabled"' in page
    assert (await admin.client.get("/metrics")).status == 404


async def test_static_files_are_served_with_their_type_and_revalidated_by_etag(admin: Admin) -> None:
    response = await admin.client.get("/admin/static/admin.css")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/css; charset=utf-8"
    etag = response.headers["ETag"]
    again = await admin.client.get("/admin/static/admin.css", headers={"If-None-Match": etag})
    assert again.status == 304
    script = await admin.client.get("/admin/static/tokens.js")
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"


@pytest.mark.parametrize(
    "path", ["/admin/static/nope.js", "/admin/static/..%2Fsessions.py", "/admin/nowhere"]
)
async def test_unknown_admin_paths_are_404_pages(admin: Admin, path: str) -> None:
    response = await admin.client.get(path, allow_redirects=False)
    assert response.status == 404
    assert response.content_type == "text/html"


def test_no_script_inserts_markup_so_data_can_never_become_html() -> None:
    static = resources.files("llmproxy.admin") / "static"
    scripts = {f.name: f.read_text() for f in static.iterdir() if f.name.endswith(".js")}
    assert {"admin.js", "projects.js", "tokens.js", "audit.js", "events.js", "dispatchers.js"} <= set(scripts)
    sinks = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function")
    assert {name: sinks.findall(text) for name, text in scripts.items() if sinks.search(text)} == {}
