"""Sign in to the admin UI as a browser does and print what its Events page shows; exit 1 when the
page would say "No event log configured" or shows no event. Stdlib only: it runs in the doc sandbox.

    python3 tests/e2e/admin_events.py BASE_URL ENV_FILE   (ENV_FILE holds MANAGEMENT_TOKEN=...)
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import sys
import urllib.parse
import urllib.request
from pathlib import Path


def main(base_url: str, env_file: str) -> int:
    settings = dict(
        line.split("=", 1) for line in Path(env_file).read_text().splitlines() if re.match(r"[A-Z_]+=", line)
    )
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    form = browser.open(f"{base_url}/admin/login", timeout=10).read().decode()
    match = re.search(r'name="csrf_token" value="([^"]+)"', form)
    if match is None:
        print("no sign-in form at /admin/login")
        return 1
    fields = {"csrf_token": match.group(1), "management_token": settings["MANAGEMENT_TOKEN"]}
    browser.open(f"{base_url}/admin/login", urllib.parse.urlencode(fields).encode(), timeout=10).read()
    tail = json.loads(browser.open(f"{base_url}/admin/api/events", timeout=10).read())
    print(json.dumps(tail))
    if not tail["configured"]:
        print("the Events page says: No event log configured")
        return 1
    return 0 if tail["events"] else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
