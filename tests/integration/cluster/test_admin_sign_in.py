"""Behind a load balancer, each request of one admin browser may land on another instance: the sign-in
form, the session and the brake on wrong management tokens must be the same on all of them."""

from __future__ import annotations

import re
from http.cookies import SimpleCookie

from aiohttp import ClientResponse

from tests.integration.cluster.conftest import MANAGEMENT_TOKEN, Instance, MakeInstance

_FORM_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
_META_TOKEN = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


class Browser:
    """One browser's cookies, sent to whichever instance it is told to use."""

    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}

    def keep(self, response: ClientResponse) -> None:
        for header in response.headers.getall("Set-Cookie", []):
            jar: SimpleCookie = SimpleCookie()
            jar.load(header)
            for name, morsel in jar.items():
                if morsel.value:
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)

    def headers(self) -> dict[str, str]:
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}

    async def get(self, instance: Instance, path: str) -> ClientResponse:
        response = await instance.client.get(path, headers=self.headers(), allow_redirects=False)
        await response.read()
        self.keep(response)
        return response

    async def post(self, instance: Instance, path: str, form: dict[str, str]) -> ClientResponse:
        response = await instance.client.post(path, data=form, headers=self.headers(), allow_redirects=False)
        await response.read()
        self.keep(response)
        return response

    async def sign_in(self, form_from: Instance, post_to: Instance, token: str) -> ClientResponse:
        page = await self.get(form_from, "/admin/login")
        found = _FORM_TOKEN.search(await page.text())
        assert found, "no CSRF token in the sign-in form"
        return await self.post(
            post_to, "/admin/login", {"csrf_token": found.group(1), "management_token": token}
        )

    async def page_csrf_token(self, instance: Instance) -> str:
        page = await self.get(instance, "/admin/projects")
        assert page.status == 200, page.headers.get("Location")
        found = _META_TOKEN.search(await page.text())
        assert found
        return found.group(1)


async def test_a_sign_in_form_served_by_one_instance_is_accepted_by_another(
    start_instance: MakeInstance,
) -> None:
    first, second = await start_instance(), await start_instance()
    response = await Browser().sign_in(first, second, MANAGEMENT_TOKEN)
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/admin/projects"


async def test_a_session_opened_on_one_instance_is_honoured_by_the_others(
    start_instance: MakeInstance,
) -> None:
    first, second, third = await start_instance(), await start_instance(), await start_instance()
    browser = Browser()
    assert (await browser.sign_in(first, first, MANAGEMENT_TOKEN)).status == 303
    assert (await browser.get(second, "/admin/projects")).status == 200
    csrf = await browser.page_csrf_token(third)
    created = await second.client.post(
        "/manage/projects",
        json={"name": "made-through-a-session", "api_key": "sk-upstream"},
        headers={**browser.headers(), "X-CSRF-Token": csrf},
    )
    assert created.status == 201, await created.text()


async def test_signing_out_on_one_instance_ends_the_session_on_every_instance(
    start_instance: MakeInstance,
) -> None:
    first, second, third = await start_instance(), await start_instance(), await start_instance()
    browser = Browser()
    assert (await browser.sign_in(first, first, MANAGEMENT_TOKEN)).status == 303
    replay = browser.headers()
    csrf = await browser.page_csrf_token(second)
    for instance in (second, third):  # each has seen the session
        assert (await instance.client.get("/manage/projects", headers=replay)).status == 200
    signed_out = await browser.post(first, "/admin/logout", {"csrf_token": csrf})
    assert signed_out.status == 303
    for instance in (first, second, third):
        assert (await instance.client.get("/manage/projects", headers=replay)).status == 401
        page = await instance.client.get("/admin/projects", headers=replay, allow_redirects=False)
        assert (page.status, page.headers["Location"]) == (303, "/admin/login")


async def test_wrong_tokens_spread_over_the_instances_lock_the_address_on_all_of_them(
    start_instance: MakeInstance,
) -> None:
    instances = [await start_instance(), await start_instance(), await start_instance()]
    for n in range(5):  # five guesses, spread round-robin: under the limit of each instance alone
        guess = await instances[n % 3].client.get(
            "/manage/projects", headers={"Authorization": f"Bearer guess-{n}"}
        )
        assert guess.status == 401
    for instance in instances:
        locked = await instance.client.get(
            "/manage/projects", headers={"Authorization": f"Bearer {MANAGEMENT_TOKEN}"}
        )
        assert locked.status == 429, await locked.text()
        assert (await locked.json())["error"]["code"] == "too_many_attempts"
    refused = await Browser().sign_in(instances[1], instances[1], MANAGEMENT_TOKEN)
    assert refused.status == 429
