"""One set of rules for secrets: the same shapes are kept out of events, log lines and the audit trail.

Each shape below was missed by at least one of the three rules this module replaced (logs took sk- keys
from 12 characters on and no Basic credential; audit only lower-case keys and no Basic; events no
credential glued to a word): now every caller masks all of them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmproxy import logs
from llmproxy.audit import Auditor, audit_record
from llmproxy.config import AuditSettings
from llmproxy.redact import redact_headers, redact_text
from llmproxy.store.base import AuditRecord

SECRET_TOKEN = "sk-withering0123456789abcdefghijklmnop"
SECRET_KEY = "sk-proj-UPSTREAMKEY0123456789abcdefghij"
KEY = "sk-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"

# (text holding a secret, the part of it that must not be written)
SECRETS = [
    ("key sk-ab12CD34 used", "ab12CD34"),  # 8 characters: logs took 12+
    ("key SK-AB12CD34EF56GH78 used", "AB12CD34EF56GH78"),  # upper case: audit took sk- only
    ("Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),  # Basic: neither logs nor audit
    ("Authorization: bearer abc.def", "abc.def"),
    ("proxy-sk-abcdefgh1234 set", "abcdefgh1234"),  # after a dash: audit skipped it
    ("x:Bearer\tzyx.wvu", "zyx.wvu"),
    ("id_bearer qwerty123", "qwerty123"),  # glued to a word: events skipped it
]


@pytest.fixture
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


class AuditRows:
    def __init__(self) -> None:
        self.rows: list[AuditRecord] = []

    async def insert_audit(self, records: list[AuditRecord]) -> None:
        self.rows.extend(records)


@pytest.mark.parametrize(("text", "secret"), SECRETS)
@pytest.mark.usefixtures("_restore_root_logger")
def test_a_secret_never_reaches_a_log_line(tmp_path: Path, text: str, secret: str) -> None:
    log_file = tmp_path / "server.log"
    logs.configure("info", "json", str(log_file))
    logging.getLogger("llmproxy.test").warning("upstream said %s", text)
    assert logs.flush()
    [line] = log_file.read_text().splitlines()
    assert secret not in line and json.loads(line)["msg"].startswith("upstream said ")


@pytest.mark.parametrize(("text", "secret"), SECRETS)
async def test_a_secret_never_reaches_an_audit_line_or_row(tmp_path: Path, text: str, secret: str) -> None:
    log_file, rows = tmp_path / "audit.log", AuditRows()
    auditor = Auditor(AuditSettings(enabled=True, log_file=str(log_file), store_in_db=True), rows)  # type: ignore[arg-type]
    auditor.record(audit_record("token.create", "success", details={"note": text, text: "as a key"}))
    await auditor.flush()
    assert secret not in log_file.read_text()
    [row] = rows.rows
    assert secret not in json.dumps(row.details)


@pytest.mark.parametrize(("text", "secret"), SECRETS)
def test_a_secret_never_reaches_an_event_header_under_an_innocent_name(text: str, secret: str) -> None:
    assert redact_headers({"X-Note": text}) == {"x-note": "[REDACTED]"}


def test_free_text_keeps_a_key_hint_and_hides_credentials() -> None:
    assert redact_text(f"key {KEY} used") == "key sk-AbCd… used"
    assert redact_text("Authorization: Bearer abc.def") == "Authorization: Bearer [redacted]"
    assert redact_text(f"key {KEY} used", key_tail=True) == "key sk-AbCd…6789 used"
    assert redact_text("key sk-ab12CD34 used", key_tail=True) == "key sk-… used"  # too short to show
    assert redact_text("Authorization: Basic dXNlcjpwYXNz") == "Authorization: Basic [redacted]"


def test_words_ending_in_sk_are_not_keys_anywhere() -> None:
    text = "task-management-dashboard"  # as audit had it; logs and events masked it
    assert redact_text(text) == redact_text(text, key_tail=True) == text
    assert redact_headers({"X-Note": text}) == {"x-note": text}


# --- headers -------------------------------------------------------------------------------------


def test_credentials_are_redacted_and_header_names_lowercased() -> None:
    headers = {
        "Authorization": f"Bearer {SECRET_TOKEN}",
        "Proxy-Authorization": "Basic dXNlcjpwYXNz",
        "Cookie": "session=abc",
        "Set-Cookie": "session=abc; HttpOnly",
        "X-Api-Key": SECRET_KEY,
        "Api-Key": SECRET_KEY,
        "Helicone-Auth": "Bearer whatever",
        "X-Session-Token": "t0k3n",
        "X-Client-Secret": "shh",
        "X-Forwarded-Credential": f"Bearer {SECRET_TOKEN}",  # an innocent name with a bearer value
        "X-Note": f"key was {SECRET_KEY}",
        "OpenAI-Organization": "org-123",
        "X-Ratelimit-Remaining-Tokens": "149984",
        "Content-Type": "application/json",
    }
    assert redact_headers(headers) == {
        "authorization": "[REDACTED]",
        "proxy-authorization": "[REDACTED]",
        "cookie": "[REDACTED]",
        "set-cookie": "[REDACTED]",
        "x-api-key": "[REDACTED]",
        "api-key": "[REDACTED]",
        "helicone-auth": "[REDACTED]",
        "x-session-token": "[REDACTED]",
        "x-client-secret": "[REDACTED]",
        "x-forwarded-credential": "[REDACTED]",
        "x-note": "[REDACTED]",
        "openai-organization": "org-123",
        "x-ratelimit-remaining-tokens": "149984",
        "content-type": "application/json",
    }


@pytest.mark.parametrize(
    "value",
    [
        "BEARER abc",  # any case
        "x SK-abcdefgh12345",
        "Basic\tdXNlcjpwYXNz",
        "Bearer tökén",  # not ASCII: the regex alone decides
        "\u017fk-abcdefgh12345",  # the long s matches s case-insensitively, as re does
        "note: sk-abcdefgh1234 ünïcode",
    ],
)
def test_a_secret_value_is_redacted_under_an_innocent_name_whatever_its_case_or_script(value: str) -> None:
    assert redact_headers({"X-Note": value}) == {"x-note": "[REDACTED]"}


@pytest.mark.parametrize("value", ["basically fine", "sk-short", "bearer", "ünïcode text", "Mozilla/5.0"])
def test_a_value_that_only_resembles_a_secret_is_kept(value: str) -> None:
    assert redact_headers({"X-Note": value}) == {"x-note": value}
