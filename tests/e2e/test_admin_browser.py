"""The admin UI in a real headless Chromium against the installed `llm-proxy server`: an operator signs
in, creates a project, hands out a token, sees the proxy honour it, revokes it, and reads the audit log.

Needs Debian's ``chromium`` at /usr/bin/chromium and the ``playwright`` package (scripts/test.sh
installs both; Playwright's own browser download is never used). Screenshots of each page go to
``$LLMPROXY_SCREENSHOTS`` when set (docs/screenshots/ was made that way), else to the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from llmproxy.store.sqlite import SqliteStore
from tests.e2e.conftest import MANAGEMENT_TOKEN
from tests.fakes.upstream import FakeUpstream

try:
    from playwright.async_api import Page, async_playwright, expect
except ImportError:  # pragma: no cover - depends on the machine
    async_playwright = None

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
UPSTREAM_KEY = "sk-upstream-browser-project-key-0123456789"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
WAIT_MS = 15_000

pytestmark = [
    pytest.mark.skipif(
        async_playwright is None, reason="playwright is not installed (pip install playwright)"
    ),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium)"),
]


async def shot(page: Page, folder: Path, name: str) -> None:
    await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


async def chat(url: str, token: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as client:
        async with client.post(f"{url}/v1/chat/completions", json=CHAT, headers=headers) as response:
            return response.status, await response.json()


async def create_project(page: Page, name: str, api_key: str) -> None:
    await page.click("#new-project")
    await page.fill("#project-form [name=name]", name)
    await page.fill("#project-form [name=api_key]", api_key)
    await page.click("#project-form button[type=submit]")
    await expect(page.locator("#projects tbody tr", has_text=name)).to_be_visible(timeout=WAIT_MS)


async def audit_actions(page: Page, wanted: set[str]) -> list[str]:
    """The actions listed on the audit page, reloading while the background writer catches up."""
    deadline = time.monotonic() + 20
    while True:
        await page.goto(page.url)
        await page.wait_for_selector("#page-info:not(:empty)", timeout=WAIT_MS)
        actions = await page.locator("#audit tbody tr td:nth-child(2)").all_text_contents()
        if wanted <= set(actions) or time.monotonic() > deadline:
            return actions
        await page.wait_for_timeout(200)


async def test_an_operator_hands_out_and_revokes_a_token_in_the_browser_and_the_proxy_obeys(
    make_server: Any, tmp_path: Path
) -> None:
    screenshots = Path(os.environ.get("LLMPROXY_SCREENSHOTS") or tmp_path)
    screenshots.mkdir(parents=True, exist_ok=True)
    async with FakeUpstream() as upstream:
        server = await make_server(UPSTREAM_BASE_URL=upstream.url)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
            )
            try:
                page = await (await browser.new_context(viewport={"width": 1280, "height": 760})).new_page()
                problems: list[str] = []  # script errors and CSP violations would show up here
                page.on("pageerror", lambda error: problems.append(str(error)))
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)

                # sign in: the first visit lands on the sign-in page
                await page.goto(f"{server.url}/admin/")
                assert page.url == f"{server.url}/admin/login"
                await shot(page, screenshots, "login")
                await page.fill("#management_token", MANAGEMENT_TOKEN)
                await page.click("button[type=submit]")
                await page.wait_for_url("**/admin/projects", timeout=WAIT_MS)

                # projects: create two
                await create_project(page, "Acme chat assistant", UPSTREAM_KEY)
                await create_project(page, "Internal tools", "sk-upstream-internal-tools-key-987654")
                row = page.locator("#projects tbody tr", has_text="Acme chat assistant")
                await expect(row.locator("code").nth(1)).to_have_text("sk-…6789")
                await shot(page, screenshots, "projects")

                # tokens: generate one and read it from the one-time box
                await page.click("nav >> text=Tokens")
                await page.wait_for_url("**/admin/tokens", timeout=WAIT_MS)
                await page.wait_for_selector(
                    "#token-form option >> text=Acme chat assistant", state="attached"
                )
                await page.select_option("#token-form [name=project_id]", label="Acme chat assistant")
                await page.fill("#token-form [name=duration_minutes]", "60")
                await page.click("#token-form button[type=submit]")
                await expect(page.locator("#created-token")).to_be_visible(timeout=WAIT_MS)
                token = (await page.text_content("#created-token-value") or "").strip()
                assert token.startswith("sk-") and len(token) >= 40
                await expect(page.locator("#tokens tbody tr")).to_have_count(1, timeout=WAIT_MS)
                await shot(page, screenshots, "tokens")

                # the token works through the proxy, with the project's upstream key
                status, body = await chat(server.url, token)
                assert status == 200, body
                assert upstream.requests[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"

                # revoke it in the UI: the proxy refuses it at once
                await page.click("#dismiss-token")
                await expect(page.locator("#created-token")).to_be_hidden()
                assert token not in await page.content()  # gone from the page once dismissed
                page.once("dialog", lambda dialog: dialog.accept())
                await page.click("#tokens tbody tr >> text=Revoke")
                await expect(page.locator("#tokens tbody tr .badge")).to_have_text("revoked", timeout=WAIT_MS)
                status, body = await chat(server.url, token)
                assert status == 401
                assert body["error"]["code"] == "token_revoked"
                assert len(upstream.requests) == 1

                # the audit log shows what was done, and by whom
                await page.click("nav >> text=Audit log")
                await page.wait_for_url("**/admin/audit", timeout=WAIT_MS)
                wanted = {"admin.login", "project.create", "token.create", "token.revoke"}
                actions = await audit_actions(page, wanted)
                assert wanted <= set(actions), actions
                actors = await page.locator("#audit tbody tr td:nth-child(5)").all_text_contents()
                assert set(actors) == {"admin_ui"}
                await shot(page, screenshots, "audit")

                # the live tail shows the proxied request once the file dispatcher wrote it
                await page.click("nav >> text=Events")
                await expect(page.locator("#events tbody tr")).to_have_count(1, timeout=WAIT_MS)
                cells = await page.locator("#events tbody tr td").all_text_contents()
                assert cells[1:5] == ["200", "POST", "/v1/chat/completions", "gpt-4o-mini"]
                assert cells[7] == "Acme chat assistant"
                await shot(page, screenshots, "events")

                await page.click("nav >> text=Dispatchers")
                await expect(page.locator("#dispatchers tbody tr", has_text="file")).to_be_visible(
                    timeout=WAIT_MS
                )
                await shot(page, screenshots, "dispatchers")

                # signing out ends the session: the pages are closed again
                await page.click("text=Sign out")
                await page.wait_for_url("**/admin/login", timeout=WAIT_MS)
                await page.goto(f"{server.url}/admin/tokens")
                assert page.url == f"{server.url}/admin/login"
                assert problems == []
            finally:
                await browser.close()
        assert await server.stop() == 0

    on_disk = server.audit_file.read_text() + server.log()
    assert MANAGEMENT_TOKEN not in on_disk and token not in on_disk
    logins = [json.loads(line) for line in server.audit_file.read_text().splitlines()]
    assert [r["result"] for r in logins if r["action"] == "admin.login"] == ["success"]


async def test_the_tokens_page_shows_the_api_s_status_and_active_only_hides_unusable_tokens(
    make_server: Any,
) -> None:
    async with FakeUpstream() as upstream:
        server = await make_server(UPSTREAM_BASE_URL=upstream.url)
        auth = {"Authorization": f"Bearer {MANAGEMENT_TOKEN}"}
        async with aiohttp.ClientSession(base_url=server.url, headers=auth) as api:
            async with api.post("/manage/projects", json={"name": "acme", "api_key": UPSTREAM_KEY}) as r:
                project_id = (await r.json())["id"]
            tokens = {}
            for name, limits in (("active", {}), ("exhausted", {"max_requests": 1}), ("expired", {})):
                async with api.post("/manage/tokens", json={"project_id": project_id, **limits}) as r:
                    tokens[name] = await r.json()
        assert (await chat(server.url, tokens["exhausted"]["token"]))[0] == 200  # its one request
        store = SqliteStore(str(server.dir / "llm-proxy.db"), None)
        await store.open()
        try:  # expired a second ago: an expiry the API would not accept as a new one
            await store.update_token(
                tokens["expired"]["id"], {"expires_at": datetime.now(UTC) - timedelta(seconds=1)}
            )
        finally:
            await store.close()
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
            )
            try:
                page = await browser.new_page()
                await page.goto(f"{server.url}/admin/login")
                await page.fill("#management_token", MANAGEMENT_TOKEN)
                await page.click("button[type=submit]")
                await page.wait_for_url("**/admin/projects", timeout=WAIT_MS)
                await page.goto(f"{server.url}/admin/tokens")
                for name, token in tokens.items():
                    row = page.locator("#tokens tbody tr", has_text=token["token_hint"])
                    await expect(row.locator(".badge")).to_have_text(name, timeout=WAIT_MS)
                await page.check("#token-filter [name=active_only]")
                await expect(page.locator("#tokens tbody tr")).to_have_count(1, timeout=WAIT_MS)
                await expect(page.locator("#tokens tbody tr")).to_contain_text(tokens["active"]["token_hint"])
            finally:
                await browser.close()
        assert await server.stop() == 0


async def settled_tokens(api: aiohttp.ClientSession, token_id: str, tokens: int) -> None:
    """Until the server has written the token's usage (its 1 s flush): ``tokens`` in all."""
    deadline = time.monotonic() + 30
    while True:
        async with api.get(f"/manage/tokens/{token_id}") as r:
            shown = await r.json()
        if shown["prompt_tokens"] + shown["completion_tokens"] == tokens:
            return
        assert time.monotonic() < deadline, f"usage not written: {shown}"
        await asyncio.sleep(0.1)


async def chat_saying(url: str, token: str, content: str) -> tuple[int, Any]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    async with aiohttp.ClientSession() as client:
        headers = {"Authorization": f"Bearer {token}"}
        async with client.post(f"{url}/v1/chat/completions", json=body, headers=headers) as response:
            return response.status, await response.json()


async def test_a_budget_set_in_the_ui_refuses_the_next_request_once_spent_and_the_chart_shows_the_day(
    make_server: Any, tmp_path: Path
) -> None:
    screenshots = Path(os.environ.get("LLMPROXY_SCREENSHOTS") or tmp_path)
    screenshots.mkdir(parents=True, exist_ok=True)
    prices = tmp_path / "prices.yaml"  # the fake upstream reports 9 prompt + 3 completion tokens
    prices.write_text("gpt-4o-mini:\n  input: 2.0\n  output: 8.0\n")  # so $0.000042 a request
    async with FakeUpstream() as upstream:
        server = await make_server(UPSTREAM_BASE_URL=upstream.url, PRICES_PATH=str(prices))
        auth = {"Authorization": f"Bearer {MANAGEMENT_TOKEN}"}
        async with aiohttp.ClientSession(base_url=server.url, headers=auth) as api:
            async with api.post("/manage/projects", json={"name": "acme", "api_key": UPSTREAM_KEY}) as r:
                project_id = (await r.json())["id"]
            async with api.post("/manage/tokens", json={"project_id": project_id}) as r:
                token = await r.json()
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
                )
                try:
                    page = await (
                        await browser.new_context(viewport={"width": 1280, "height": 900})
                    ).new_page()
                    problems: list[str] = []
                    page.on("pageerror", lambda error: problems.append(str(error)))
                    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                    await page.goto(f"{server.url}/admin/login")
                    await page.fill("#management_token", MANAGEMENT_TOKEN)
                    await page.click("button[type=submit]")
                    await page.wait_for_url("**/admin/projects", timeout=WAIT_MS)

                    # a budget of 20 tokens and a name, set in the limits form
                    await page.goto(f"{server.url}/admin/tokens")
                    row = page.locator("#tokens tbody tr", has_text=token["token_hint"])
                    await row.locator("text=Limits").click()
                    await page.fill("#limits-form [name=name]", "browser <b>budget</b>")
                    await page.fill("#limits-form [name=max_tokens]", "20")
                    await page.click("#limits-form button[type=submit]")
                    await expect(page.locator("#flash")).to_contain_text("saved", timeout=WAIT_MS)
                    await expect(row.locator(".spend")).to_contain_text("0 / 20 tokens", timeout=WAIT_MS)
                    await expect(row.locator("strong")).to_have_text("browser <b>budget</b>")

                    # 12 tokens, then 24 (the request crossing 20 completes), then refused
                    status, _ = await chat_saying(
                        server.url, token["token"], "<script>window.pwned = 1</script>"
                    )
                    assert status == 200
                    await settled_tokens(api, token["id"], 12)
                    assert (await chat(server.url, token["token"]))[0] == 200
                    await settled_tokens(api, token["id"], 24)
                    status, body = await chat(server.url, token["token"])
                    assert status == 429, body
                    assert body["error"]["code"] == "budget_exceeded"
                    assert len(upstream.requests) == 2

                    await page.reload()
                    await expect(row.locator(".badge")).to_have_text("exhausted", timeout=WAIT_MS)
                    await expect(row.locator(".spend")).to_contain_text("24 / 20 tokens")
                    assert await row.locator("meter").last.get_attribute("max") == "20"
                    await shot(page, screenshots, "tokens-budget")

                    # the Usage page's chart shows the day's spend: two requests at $0.000042
                    async with api.get("/manage/usage?group_by=day") as r:
                        [day] = (await r.json())["groups"]
                    await page.click("nav >> text=Usage")
                    await page.wait_for_url("**/admin/usage", timeout=WAIT_MS)
                    today = page.locator(f'#cost-chart g.day[data-day="{day["key"]}"]')
                    assert await today.locator("title").text_content() == f"{day['key']}: cost $0.000084"
                    bar = await today.locator("rect.bar").bounding_box()
                    assert bar is not None and bar["height"] > 10
                    cost_today = page.locator(".figures div", has_text="Cost today")
                    await expect(cost_today.locator("dd")).to_have_text("$0.000084")
                    await shot(page, screenshots, "usage")

                    # the Events page: the budget's requests; the first one in full, its prompt as text
                    await page.click("nav >> text=Events")
                    await expect(page.locator("#events tbody tr")).to_have_count(2, timeout=WAIT_MS)
                    await page.fill("#events-filter [name=q]", "window.pwned")
                    await page.click("#events-filter button[type=submit]")
                    await expect(page.locator("#events tbody tr")).to_have_count(1, timeout=WAIT_MS)
                    await shot(page, screenshots, "events-filtered")
                    await page.locator("#events tbody tr td.path").click()
                    await page.wait_for_url("**/admin/events/*", timeout=WAIT_MS)
                    await expect(page.locator("#request-body")).to_contain_text(
                        "<script>window.pwned = 1</script>"
                    )
                    assert await page.evaluate("typeof window.pwned") == "undefined"
                    await expect(page.locator("#event-facts")).to_contain_text("$0.000042")
                    await expect(page.locator("#event-facts")).to_contain_text("browser <b>budget</b>")
                    await shot(page, screenshots, "event")
                    assert problems == []
                finally:
                    await browser.close()
        assert await server.stop() == 0


async def test_the_events_page_pages_back_beyond_the_first_50_and_filters_by_status(
    make_server: Any, tmp_path: Path
) -> None:
    from llmproxy.events.model import Event, encode_event

    def logged(n: int) -> Event:
        return Event(
            id=f"00000000-0000-4000-8000-{n:012d}",
            request_id=f"req-{n}",
            project_id="11111111-1111-4111-8111-111111111111",
            token_id="22222222-2222-4222-8222-222222222222",
            method="POST",
            path=f"/v1/chat/completions/{n}",
            status=503 if n % 40 == 7 else 200,
            started_at=f"2025-01-01T00:{n // 60:02d}:{n % 60:02d}.000000Z",
            duration_ms=1.0,
        )

    (tmp_path / "events.jsonl").write_bytes(b"".join(encode_event(logged(n)) + b"\n" for n in range(120)))
    server = await make_server()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            await page.goto(f"{server.url}/admin/login")
            await page.fill("#management_token", MANAGEMENT_TOKEN)
            await page.click("button[type=submit]")
            await page.wait_for_url("**/admin/projects", timeout=WAIT_MS)
            await page.goto(f"{server.url}/admin/events")
            rows = page.locator("#events tbody tr")
            await expect(rows).to_have_count(50, timeout=WAIT_MS)
            await page.click("#older-events")
            await expect(rows).to_have_count(100, timeout=WAIT_MS)
            await page.click("#older-events")
            await expect(rows).to_have_count(120, timeout=WAIT_MS)
            await expect(page.locator("#older-events")).to_be_hidden()
            paths = await page.locator("#events tbody td.path").all_text_contents()
            assert paths == [f"/v1/chat/completions/{n}" for n in reversed(range(120))]

            # a bad status is a clear message, a good one filters; the filter survives a reload
            await page.fill("#events-filter [name=status]", "6xx")
            await page.click("#events-filter button[type=submit]")
            await expect(page.locator("#flash")).to_contain_text("status", timeout=WAIT_MS)
            assert [p for p in problems if "422" in p] == [problems.pop()]  # the refusal, logged by Chromium
            await page.fill("#events-filter [name=status]", "5xx")
            await page.click("#events-filter button[type=submit]")
            await expect(rows).to_have_count(3, timeout=WAIT_MS)
            await page.reload()
            await expect(rows).to_have_count(3, timeout=WAIT_MS)
            assert await page.input_value("#events-filter [name=status]") == "5xx"
            await rows.first.locator("td.path").click()
            await page.wait_for_url(
                "**/admin/events/00000000-0000-4000-8000-000000000087?at=*", timeout=WAIT_MS
            )
            await expect(page.locator("#event-title")).to_contain_text("/v1/chat/completions/87")
            assert problems == []
        finally:
            await browser.close()
    assert await server.stop() == 0
