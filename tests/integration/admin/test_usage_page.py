"""The Usage page and its CSV, on SQLite and PostgreSQL: the daily charts drawn from the stored usage
rows (the report GET /manage/usage answers), the top projects, tokens and models by cost, the filters,
every name escaped, every bad filter a clear 422 page."""

from __future__ import annotations

import csv
import html
import io
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from llmproxy.server.app import STORE
from llmproxy.store.base import UsageRow
from tests.integration.admin.conftest import MANAGEMENT_TOKEN, Admin

BEARER = {"Authorization": f"Bearer {MANAGEMENT_TOKEN}"}
SCRIPT_MODEL = "<script>alert(1)</script>"
FORMULA_MODEL = "=2+3"


async def manage(admin: Admin, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = await admin.client.request(method, path, json=body, headers=BEARER)
    assert response.status < 300, await response.text()
    return await response.json()


class Spending:
    """Two projects with a token each, and usage rows on three days (one outside the last 30)."""

    def __init__(self, acme: Any, beta: Any, web: Any, batch: Any, today: date) -> None:
        self.acme, self.beta, self.web, self.batch, self.today = acme, beta, web, batch, today


@pytest.fixture
async def spending(signed_in_on: Admin) -> Spending:
    admin = signed_in_on
    acme = await manage(
        admin, "POST", "/manage/projects", {"name": "Acme <b>", "api_key": "sk-upstream-a-0123456"}
    )
    beta = await manage(
        admin, "POST", "/manage/projects", {"name": "Beta", "api_key": "sk-upstream-b-0123456"}
    )
    web = await manage(admin, "POST", "/manage/tokens", {"project_id": acme["id"], "name": "web <i>app</i>"})
    batch = await manage(admin, "POST", "/manage/tokens", {"project_id": beta["id"]})
    today = datetime.now(UTC).date()

    def row(day: date, project: Any, token: Any, model: str, n: int, p: int, c: int, cost: float) -> UsageRow:
        return UsageRow(
            day=day,
            project_id=project["id"],
            token_id=token["id"],
            model=model,
            requests=n,
            prompt_tokens=p,
            completion_tokens=c,
            cost_usd=cost,
        )

    rows = [
        row(today, acme, web, "gpt-4o", 2, 1000, 200, 0.05),
        row(today, beta, batch, SCRIPT_MODEL, 1, 300, 100, 0.5),
        row(today - timedelta(days=3), acme, web, "gpt-4o", 4, 4000, 800, 0.2),
        row(today - timedelta(days=3), beta, batch, FORMULA_MODEL, 1, 10, 10, 0.0),
        row(today - timedelta(days=40), acme, web, "gpt-4o", 9, 9000, 9000, 9.0),
    ]
    await admin.client.app[STORE].add_usage([], rows)
    return Spending(acme, beta, web, batch, today)


async def usage_page(admin: Admin, query: str = "") -> str:
    response = await admin.client.get(f"/admin/usage{query}", allow_redirects=False)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
    return await response.text()


def section(page: str, css_id: str) -> str:
    """The markup of the element with ``css_id`` up to the next card."""
    start = page.index(f'id="{css_id}"')
    end = page.find('<section class="card"', start)
    return page[start : end if end > 0 else len(page)]


def days_of(chart: str) -> dict[str, str]:
    """Each day's group in a chart: data-day -> its markup."""
    return dict(re.findall(r'<g class="day" data-day="([0-9-]+)"[^>]*>(.*?)</g>', chart))


def figure(page: str, label: str) -> str:
    found = re.search(rf"<dt>{re.escape(label)}</dt><dd>([^<]*)</dd>", page)
    assert found, label
    return found.group(1)


async def test_the_spend_chart_has_a_bar_for_each_of_the_last_30_days_with_the_day_s_spend(
    signed_in_on: Admin, spending: Spending
) -> None:
    page = await usage_page(signed_in_on)
    days = days_of(section(page, "cost-chart"))
    today, three_ago = spending.today.isoformat(), (spending.today - timedelta(days=3)).isoformat()
    assert len(days) == 30 and list(days)[-1] == today
    assert f"<title>{today}: cost $0.55</title>" in days[today]
    assert f"<title>{three_ago}: cost $0.20</title>" in days[three_ago]
    assert '<rect class="bar cost"' in days[today]
    yesterday = (spending.today - timedelta(days=1)).isoformat()
    assert '<rect class="bar' not in days[yesterday] and "cost $0<" in days[yesterday]
    tokens = days_of(section(page, "token-chart"))
    assert f"<title>{today}: prompt 1,300, completion 300</title>" in tokens[today]
    assert figure(page, "Cost") == "$0.75"
    assert figure(page, "Cost today (UTC)") == "$0.55"
    assert figure(page, "Tokens") == "6,420"
    assert figure(page, "Requests") == "8"


async def test_the_page_shows_what_get_manage_usage_reports_for_the_same_days(
    signed_in_on: Admin, spending: Spending
) -> None:
    since = (spending.today - timedelta(days=29)).isoformat()
    report = await manage(signed_in_on, "GET", f"/manage/usage?since={since}&until={spending.today}")
    page = await usage_page(signed_in_on)
    assert report["total"]["cost_usd"] == pytest.approx(0.75)
    assert figure(page, "Tokens") == f"{report['total']['total_tokens']:,}"


async def test_the_top_tables_rank_projects_tokens_and_models_by_cost_with_names_escaped(
    signed_in_on: Admin, spending: Spending
) -> None:
    page = await usage_page(signed_in_on)
    projects = re.findall(r'<a href="[^"]*">([^<]*)</a>', section(page, "top-projects"))
    assert projects == ["Beta", "Acme &lt;b&gt;"]
    tokens = re.findall(r'<a href="[^"]*">([^<]*)</a>', section(page, "top-tokens"))
    assert tokens == [
        spending.batch["token_hint"],
        f"web &lt;i&gt;app&lt;/i&gt; ({spending.web['token_hint']})",
    ]
    models = re.findall(r'<a href="[^"]*">([^<]*)</a>', section(page, "top-models"))
    assert models == ["&lt;script&gt;alert(1)&lt;/script&gt;", "gpt-4o", "=2+3"]
    assert "<script>alert" not in page and "<b>" not in page and "<i>app" not in page
    # a name links to the page narrowed to it
    assert f'href="/admin/usage?project_id={spending.beta["id"]}"' in section(page, "top-projects")


@pytest.mark.parametrize(
    ("filters", "cost", "requests"),
    [
        ("project", "$0.25", "6"),
        ("token", "$0.50", "2"),
        ("model", "$0.25", "6"),
        ("days=90", "$9.75", "17"),
        ("days=1", "$0.55", "3"),
    ],
)
async def test_filters_narrow_the_figures_and_tables(
    signed_in_on: Admin, spending: Spending, filters: str, cost: str, requests: str
) -> None:
    query = {
        "project": f"?project_id={spending.acme['id']}",
        "token": f"?token_id={spending.batch['id'].upper()}",  # ids in any case, as the API takes them
        "model": "?model=gpt-4o&project_id=",  # an empty choice ("All projects") is no filter
    }.get(filters, f"?{filters}")
    page = await usage_page(signed_in_on, query)
    assert figure(page, "Cost") == cost
    assert figure(page, "Requests") == requests
    if filters in ("project", "model"):
        assert "&lt;script&gt;" not in section(page, "top-models")
        assert "selected>Acme &lt;b&gt;</option>" in page or filters == "model"


@pytest.mark.parametrize(
    ("query", "field", "says"),
    [
        ("?project_id=nope", "project_id", "a UUID"),
        ("?token_id=1234", "token_id", "a UUID"),
        ("?days=0", "days", ">= 1"),
        ("?days=367", "days", "<= 366"),
        ("?days=week", "days", "int"),
        ("?model=" + "m" * 257, "model", "length <= 256"),
        ("?colour=red", "colour", "unknown field"),
    ],
)
async def test_a_bad_filter_is_a_clear_422_page_never_a_500(
    signed_in_on: Admin, query: str, field: str, says: str
) -> None:
    response = await signed_in_on.client.get(f"/admin/usage{query}")
    assert response.status == 422
    assert response.content_type == "text/html"
    alert = re.search(r'<p class="alert error" role="alert">([^<]*)</p>', await response.text())
    assert alert, "no message on the page"
    message = html.unescape(alert.group(1))
    assert message.startswith("Invalid filter: ") and field in message and says in message


async def test_the_csv_has_one_row_per_group_and_quotes_what_a_spreadsheet_would_run(
    signed_in_on: Admin, spending: Spending
) -> None:
    response = await signed_in_on.client.get("/admin/usage.csv?group_by=model")
    assert response.status == 200
    assert response.content_type == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    by_model = {row["key"]: row for row in rows}
    assert set(by_model) == {"gpt-4o", SCRIPT_MODEL, "'" + FORMULA_MODEL}
    assert (by_model["gpt-4o"]["requests"], by_model["gpt-4o"]["total_tokens"]) == ("6", "6000")
    assert float(by_model["gpt-4o"]["cost_usd"]) == pytest.approx(0.25)


async def test_the_csv_per_project_names_them_and_keeps_the_page_s_filters(
    signed_in_on: Admin, spending: Spending
) -> None:
    query = f"group_by=project&days=90&project_id={spending.acme['id']}"
    rows = list(
        csv.DictReader(io.StringIO(await (await signed_in_on.client.get(f"/admin/usage.csv?{query}")).text()))
    )
    assert [(r["key"], r["name"], r["requests"]) for r in rows] == [(spending.acme["id"], "Acme <b>", "15")]


async def test_the_page_links_the_csv_with_its_filters(signed_in_on: Admin, spending: Spending) -> None:
    page = await usage_page(signed_in_on, f"?project_id={spending.acme['id']}&days=7")
    assert f'href="/admin/usage.csv?project_id={spending.acme["id"]}&amp;days=7&amp;group_by=day"' in page


async def test_a_bad_csv_grouping_is_refused_with_422(signed_in_on: Admin) -> None:
    response = await signed_in_on.client.get("/admin/usage.csv?group_by=week")
    assert response.status == 422
    assert (await response.json())["error"]["param"] == "group_by"


@pytest.mark.parametrize("path", ["/admin/usage", "/admin/usage.csv?group_by=day"])
async def test_without_a_session_the_usage_pages_send_to_sign_in(admin: Admin, path: str) -> None:
    response = await admin.client.get(path, allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/admin/login"


async def test_a_filter_naming_no_known_project_shows_nothing_and_keeps_the_choice(
    signed_in_on: Admin, spending: Spending
) -> None:
    unknown = "99999999-9999-4999-8999-999999999999"
    page = await usage_page(signed_in_on, f"?project_id={unknown}")
    assert figure(page, "Cost") == "$0" and figure(page, "Requests") == "0"
    assert f'<option value="{unknown}" selected>99999999…</option>' in page
