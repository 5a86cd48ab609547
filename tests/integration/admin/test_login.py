"""Signing in to the admin UI: a form guarded by CSRF, a server-side session behind a strict cookie,
every attempt audited as admin.login, guessing slowed down, signing out ending the session."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.integration.admin.conftest import MANAGEMENT_TOKEN, Admin, MakeAdmin, set_cookie

STRICT_HEADERS = {
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


async def test_the_sign_in_page_is_served_with_a_form_token_and_strict_headers(admin: Admin) -> None:
    response = await admin.client.get("/admin/login")
    assert response.status == 200
    assert response.content_type == "text/html"
    page = await response.text()
    assert 'name="management_token" type="password"' in page
    assert 'name="csrf_token" value="' in page
    for name, value in STRICT_HEADERS.items():
        assert response.headers[name] == value
    csp = response.headers["Content-Security-Policy"]
    for directive in (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ):
        assert directive in csp
    nonce = set_cookie(response, "llmproxy_admin_login")
    assert nonce["httponly"] and nonce["samesite"] == "Strict" and nonce["path"] == "/admin/login"


async def test_a_wrong_token_is_refused_with_401_and_audited_as_denied(admin: Admin, tmp_path: Path) -> None:
    response = await admin.submit_login("not-the-management-token")
    assert response.status == 401
    assert "Wrong management token." in await response.text()
    assert "llmproxy_admin" not in {c.key for c in admin.client.session.cookie_jar}

    [record] = await admin.audit("admin.login")
    assert (record.result, record.reason, record.actor) == ("denied", "invalid_token", "admin_ui")
    assert (record.method, record.path, record.client_ip) == ("POST", "/admin/login", "127.0.0.1")
    assert "not-the-management-token" not in (tmp_path / "audit.log").read_text()
    assert (await admin.client.get("/manage/projects")).status == 401


async def test_the_right_token_opens_a_session_whose_cookie_is_httponly_strict_and_holds_no_token(
    admin: Admin, tmp_path: Path
) -> None:
    response = await admin.submit_login(MANAGEMENT_TOKEN)
    assert response.status == 303
    assert response.headers["Location"] == "/admin/projects"
    cookie = set_cookie(response, "llmproxy_admin")
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/"
    assert not cookie["secure"]  # plain http here: a Secure cookie would never come back
    assert len(cookie.value) >= 43 and MANAGEMENT_TOKEN not in cookie.value
    assert all(MANAGEMENT_TOKEN not in h for h in response.headers.getall("Set-Cookie"))

    [record] = await admin.audit("admin.login")
    assert (record.result, record.reason, record.actor) == ("success", None, "admin_ui")
    assert MANAGEMENT_TOKEN not in (tmp_path / "audit.log").read_text()
    page = await admin.client.get("/admin/projects", allow_redirects=False)
    assert page.status == 200


async def test_the_session_cookie_is_secure_when_the_request_came_over_https(admin: Admin) -> None:
    response = await admin.submit_login(MANAGEMENT_TOKEN, **{"X-Forwarded-Proto": "https"})
    assert response.status == 303
    assert set_cookie(response, "llmproxy_admin")["secure"] is True


async def test_a_sign_in_without_the_form_token_is_refused_with_403(admin: Admin) -> None:
    await admin.login_form_token()  # the browser has the nonce cookie, but the form lacks the token
    form = {"management_token": MANAGEMENT_TOKEN}
    response = await admin.client.post("/admin/login", data=form, allow_redirects=False)
    assert response.status == 403
    assert admin.session_cookie() is None
    forged = {"management_token": MANAGEMENT_TOKEN, "csrf_token": "0" * 64}
    response = await admin.client.post("/admin/login", data=forged, allow_redirects=False)
    assert response.status == 403
    assert admin.session_cookie() is None
    records = await admin.audit("admin.login", count=2)
    assert [(r.result, r.reason) for r in records] == [("denied", "csrf_failed")] * 2


async def test_repeated_wrong_tokens_from_one_address_are_slowed_down_with_429(admin: Admin) -> None:
    for _ in range(5):
        assert (await admin.submit_login("guess")).status == 401
    response = await admin.submit_login(MANAGEMENT_TOKEN)  # even the right token waits now
    assert response.status == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert admin.session_cookie() is None
    records = await admin.audit("admin.login", count=6)
    assert records[0].reason == "rate_limited"


async def test_wrong_tokens_at_the_management_api_lock_the_sign_in_form_too(admin: Admin) -> None:
    for n in range(5):
        guess = await admin.client.get("/manage/projects", headers={"Authorization": f"Bearer guess-{n}"})
        assert guess.status == 401
    response = await admin.submit_login(MANAGEMENT_TOKEN)
    assert response.status == 429
    assert admin.session_cookie() is None


async def test_wrong_sign_ins_lock_the_management_api_too(admin: Admin) -> None:
    for _ in range(5):
        assert (await admin.submit_login("guess")).status == 401
    bearer = {"Authorization": f"Bearer {MANAGEMENT_TOKEN}"}
    response = await admin.client.get("/manage/projects", headers=bearer)
    assert response.status == 429
    assert (await response.json())["error"]["code"] == "too_many_attempts"


async def test_a_signed_in_browser_keeps_working_while_its_address_is_locked(signed_in: Admin) -> None:
    admin = signed_in
    async with aiohttp.ClientSession() as stranger:  # same address, no session cookie
        for n in range(6):
            headers = {"Authorization": f"Bearer guess-{n}"}
            async with stranger.get(admin.client.make_url("/manage/projects"), headers=headers) as guess:
                assert guess.status == (401 if n < 5 else 429)
    assert (await admin.client.get("/manage/projects")).status == 200


async def test_a_page_without_a_session_redirects_to_the_sign_in_page(admin: Admin) -> None:
    for path in ("/admin/", "/admin", "/admin/projects", "/admin/tokens", "/admin/audit", "/admin/events"):
        response = await admin.client.get(path, allow_redirects=False)
        assert response.status == 303, path
        assert response.headers["Location"] == "/admin/login"


async def test_the_admin_api_without_a_session_answers_401_json(admin: Admin) -> None:
    response = await admin.client.get("/admin/api/events")
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "unauthorized"


async def test_signing_out_ends_the_session_on_the_server(signed_in: Admin) -> None:
    admin = signed_in
    old_cookie = admin.session_cookie()
    assert old_cookie
    response = await admin.client.post(
        "/admin/logout", data={"csrf_token": admin.csrf_token}, allow_redirects=False
    )
    assert response.status == 303
    assert response.headers["Location"] == "/admin/login"
    assert set_cookie(response, "llmproxy_admin").value == ""

    # the old cookie, replayed, opens nothing any more
    replay = {"Cookie": f"llmproxy_admin={old_cookie}"}
    assert (await admin.client.get("/manage/projects", headers=replay)).status == 401
    page = await admin.client.get("/admin/projects", headers=replay, allow_redirects=False)
    assert page.status == 303


async def test_signing_out_without_the_csrf_token_is_refused_and_the_session_stays(signed_in: Admin) -> None:
    admin = signed_in
    response = await admin.client.post("/admin/logout", data={}, allow_redirects=False)
    assert response.status == 403
    assert (await admin.client.get("/admin/projects", allow_redirects=False)).status == 200


async def test_without_a_management_token_configured_nobody_can_sign_in(make_admin: MakeAdmin) -> None:
    admin = await make_admin(MANAGEMENT_TOKEN="")
    response = await admin.submit_login("")
    assert response.status == 401
    assert admin.session_cookie() is None


UNREADABLE_FORMS = {
    "not UTF-8": ("application/x-www-form-urlencoded", b"csrf_token=\xff\xfe&management_token=x"),
    "gzip, unannounced to the form parser": ("application/x-www-form-urlencoded", b"\x1f\x8b\x08\x00\xed"),
    "unknown charset": ("application/x-www-form-urlencoded; charset=klingon", b"csrf_token=x"),
    "multipart without a boundary": ("multipart/form-data", b"--x\r\n\r\nx\r\n--x--\r\n"),
    "multipart": ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--x--\r\n'),
}  # fmt: skip


@pytest.mark.parametrize("form", list(UNREADABLE_FORMS))
@pytest.mark.parametrize("path", ["/admin/login", "/admin/logout"])
async def test_a_sign_in_or_out_form_that_is_not_a_urlencoded_text_form_is_a_400(
    signed_in: Admin, caplog: pytest.LogCaptureFixture, path: str, form: str
) -> None:
    content_type, body = UNREADABLE_FORMS[form]
    response = await signed_in.client.post(path, data=body, headers={"Content-Type": content_type})
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "bad_request"
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
