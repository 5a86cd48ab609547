"""Credentials in headers never reach an event: by their name, or by their value under any name."""

from __future__ import annotations

import pytest

from llmproxy.redact import redact_headers

SECRET_TOKEN = "sk-withering0123456789abcdefghijklmnop"
SECRET_KEY = "sk-proj-UPSTREAMKEY0123456789abcdefghij"


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
