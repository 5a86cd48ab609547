"""Hostile HTTP input for tests/e2e/test_hostile_input.py: cases drawn from a seeded RNG.

A ``Case`` is the exact bytes one client connection sends (in pieces, with pauses) and what the
client does after: read every answer until the server closes, or vanish. ``make_cases(seed, …)``
draws the same cases for the same seed, whatever the machine, so a failure replays from its seed.
Methods, paths, headers, bodies (JSON, broken, deep, huge, binary, compressed or falsely labelled,
small bombs) and framings (Content-Length and chunked, right and wrong) are drawn independently.
"""

from __future__ import annotations

import gzip
import json
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

__all__ = ("QUERY_SECRET", "Case", "make_cases")

QUERY_SECRET = "sk-leak-in-the-query-0123456789"  # must be redacted wherever the proxy writes the query
ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/models/gpt-4o-mini",
    "/v1/responses",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/audio/speech",
    "/v1/files",
)
OWN_PATHS = ("/", "/health", "/ready", "/metrics", "/admin/", "/admin/login", "/admin/login", "/admin/logout",
             "/manage/projects", "/manage/projects", "/manage/openapi.json", "/manage/tokens", "/favicon.ico")  # fmt: skip
TRAVERSALS = (
    "/v1/../manage/projects", "/v1/%2e%2e/manage/projects", "/v1/chat/completions/../../admin/",
    "//v1/chat/completions", "/v1//chat/completions", "/v1/chat%2fcompletions", "/v1\\chat\\completions",
    "/v1/%5c../models", "/v1/./models", "/./v1/models", "/v1/models/%00", "/v1/models/%0d%0aX-Injected:%201",
    "/v1/%c0%ae%c0%ae/manage", "/v1/models/..%2f..%2fmanage", "/v1/images/%2e%2e%2f%2e%2e%2fmanage",
    "/v1/models/%", "/v1/models/%zz", "/v1/models/%u002e", "/%76%31/models", "/V1/MODELS",
    "http://evil.example/v1/chat/completions", "*", "/v1/models#frag", "/v1/models;param",
)  # fmt: skip
ODD_METHODS = ("PUT", "PATCH", "DELETE", "HEAD", "HEAD", "OPTIONS", "TRACE", "CONNECT", "get", "FOO", "P0ST",
               "M-SEARCH", "PROPFIND", "POST" * 40)  # fmt: skip
CONTENT_TYPES = (
    "application/json", "application/json", "application/json; charset=utf-8", "application/json; charset=utf-16",
    "APPLICATION/JSON", "application/jsonx", "text/plain", "application/octet-stream", "multipart/form-data",
    "multipart/form-data; boundary=x", "application/x-www-form-urlencoded", "", "application/json;;;=",
    "*/*", "application/vnd.api+json", "application/json\t",
)  # fmt: skip
FORM_TYPES = ("application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=klingon",
              "multipart/form-data", "multipart/form-data; boundary=x", "")  # fmt: skip
GARBAGE = (
    b"\r\n" * 50, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),
    b"GET / HTTP/1.1\n\n", b"GET /v1/models\r\n\r\n", b"GET /v1/models HTTP/9.9\r\n\r\n", b"GET\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\n x: folded\r\n\r\n", b"\x00" * 300, b" GET / HTTP/1.1\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", b"GET /v1/models HTTP/1.1\r\n: empty\r\n\r\n",
    b"GET http://[::1 HTTP/1.1\r\n\r\n", b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX\x00Y: 1\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
)  # fmt: skip


@dataclass
class Case:
    """One connection: ``pieces`` are (pause before, bytes); then read, or vanish ``vanish_after`` s later."""

    index: int
    server: int  # 0: plain, 1: inspected (param whitelist, small max_body_bytes, response cache)
    kind: str
    label: str
    pieces: list[tuple[float, bytes]]
    head_request: bool = False
    vanish_after: float | None = None
    reset: bool = False  # vanish with an RST rather than a FIN
    body_kind: str = ""  # for the mix counts: one of BODIES
    framing: str = ""

    def describe(self) -> str:
        wire = b"".join(p for _, p in self.pieces)
        return f"case {self.index} [{self.kind}: {self.label}] server {self.server}: {wire[:300]!r}"


# --- bodies -----------------------------------------------------------------------------------


@cache
def bomb(mib: int) -> bytes:
    """``mib`` MiB of zeros, gzip-compressed (about a thousandth of that on the wire)."""
    return gzip.compress(bytes(mib << 20), compresslevel=9, mtime=0)


def _chat(rng: random.Random, content: str = "hi") -> bytes:
    model = rng.choice(("gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo", "evil-model", "", "gpt-4o\u0000"))
    doc: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": content}]}
    if rng.random() < 0.2:
        doc["stream"] = True
    return json.dumps(doc).encode()


def _nested(rng: random.Random) -> bytes:
    depth = rng.choice((999, 1000, 1001, 5000, 30000))
    if rng.random() < 0.5:
        return b"[" * depth + b"]" * depth
    inner = b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"model":"gpt-4o-mini","messages":' + inner + b"}"


BodyMaker = Callable[[random.Random], tuple[bytes, list[str]]]  # → (bytes, extra header lines)


def _compressed(rng: random.Random) -> tuple[bytes, list[str]]:
    plain = _chat(rng, "z" * rng.choice((1, 100, 5000)))
    return rng.choice((
        lambda: (gzip.compress(plain, mtime=0), ["Content-Encoding: gzip"]),
        lambda: (zlib.compress(plain), ["Content-Encoding: deflate"]),
        lambda: (zlib.compress(plain)[2:-4], ["Content-Encoding: deflate"]),  # raw deflate
        lambda: (zlib.compress(gzip.compress(plain, mtime=0)), ["Content-Encoding: gzip, deflate"]),
        lambda: (gzip.compress(plain, mtime=0), ["Content-Encoding: x-gzip"]),
        lambda: (gzip.compress(plain, mtime=0), ["Content-Encoding: GZIP"]),
        lambda: (rng.randbytes(200), ["Content-Encoding: br"]),
        lambda: (plain, ["Content-Encoding: gzip"]),  # a false label
        lambda: (plain, ["Content-Encoding: deflate"]),
        lambda: (gzip.compress(plain, mtime=0), ["Content-Encoding: deflate"]),
        lambda: (gzip.compress(plain, mtime=0)[:-9], ["Content-Encoding: gzip"]),  # truncated
        lambda: (gzip.compress(plain, mtime=0) + b"trailing", ["Content-Encoding: gzip"]),
        lambda: (plain, ["Content-Encoding: compress"]),
        lambda: (plain, ["Content-Encoding: identity"]),
        lambda: (plain, ["Content-Encoding: gzip", "Content-Encoding: br"]),
        lambda: (bomb(rng.choice((2, 16, 64))), ["Content-Encoding: gzip"]),
    ))()  # fmt: skip


BODIES: dict[str, BodyMaker] = {
    "none": lambda rng: (b"", []),
    "json": lambda rng: (_chat(rng), []),
    "broken-json": lambda rng: (rng.choice((b'{"model": "gpt-4o",}', b'{"model":', b"{'model': 1}",
        b'{"model": NaN}', b'\xef\xbb\xbf{"model":"gpt-4o"}', b'{"a":1}garbage', b"null", b"[]", b'"x"',
        '{"model":"gpt-4o"}'.encode("utf-16"), b'{"model":"\xff\xfe"}', b'{"model":"gpt-4o","model":"evil"}')), []),
    "deep-nesting": lambda rng: (_nested(rng), []),
    "huge-string": lambda rng: (_chat(rng, "x" * rng.choice((100_000, 300_000, 1_500_000))), []),
    "binary": lambda rng: (rng.randbytes(rng.choice((1, 100, 5000, 70_000))), []),
    "compressed": _compressed,
}  # fmt: skip
BODY_WEIGHTS = {"none": 14, "json": 30, "broken-json": 10, "deep-nesting": 6, "huge-string": 3,
                "binary": 8, "compressed": 16}  # fmt: skip


# --- heads ------------------------------------------------------------------------------------


def _path(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.75:
        path = rng.choice(ENDPOINTS)
    elif roll < 0.85:
        path = rng.choice(TRAVERSALS)
    elif roll < 0.9:
        path = rng.choice(OWN_PATHS)
    elif roll < 0.96:
        path = rng.choice(ENDPOINTS) + "/" + "".join(rng.choice(("é", "\u202e", "%ff", "%e2%80%ae", "ｆ", "\U0001f600",
                                                                   "%2e", "a")) for _ in range(rng.randint(1, 6)))  # fmt: skip
    else:
        path = "/v1/models/" + "a" * rng.choice((1000, 8000, 9000, 70_000))
    if rng.random() < 0.15:
        path += rng.choice((f"?api_key={QUERY_SECRET}", f"?x=1&apiKey={QUERY_SECRET}", "?a=1&a=2", "?%ff=%00", "?stream=true",
                            "?" + "q" * 5000, "?key=Bearer%20x&x=\u00e9"))  # fmt: skip
    return path


def _headers(rng: random.Random, token: str, request_id: str) -> list[str]:
    lines = (
        ["Host: proxy"]
        if rng.random() < 0.95
        else rng.choice(([], ["Host: a", "Host: b"], ["Host: \u00e9vil"]))
    )
    auth = rng.choice((f"Bearer {token}",) * 40 + ("Bearer sk-not-a-real-token-at-all", "Bearer", "Basic Zm9vOmJhcg==",
        f"bearer {token}", f"Bearer  {token}", "Bearer " + "k" * 9000, f"Bearer {token}x"))  # fmt: skip
    if rng.random() < 0.93:
        lines.append(f"Authorization: {auth}")
    if rng.random() < 0.05:
        lines.append("Authorization: Bearer sk-second-header")
    if rng.random() < 0.85:
        lines.append(f"X-Request-ID: {request_id}")  # unique: events are matched to upstream requests by it
    else:
        lines.append(rng.choice(("X-Request-ID: has space", "X-Request-ID: " + "r" * 300, "X-Request-ID: é")))
    for _ in range(rng.choice((0,) * 12 + (1, 1, 2, 5))):
        lines.append(rng.choice((
            "X-Odd Name: 1", "X-Ünicode: ü", "x-dup: 1", "x-dup: 2", "X-Empty:", "X-Huge: " + "h" * rng.choice((4000, 9000)),
            "Origin: https://evil.example", "Origin: null", "Expect: 100-continue", "Upgrade: websocket",
            "Connection: Upgrade", "Connection: keep-alive", "Cookie: session=stolen", "X-Forwarded-For: 10.0.0.1",
            "Accept-Encoding: gzip, br", "Range: bytes=0-1", "If-None-Match: *", "Cache-Control: no-cache",
            "X-Fuzz-Reply: sse", "X-Fuzz-Reply: gzip", "X-Fuzz-Reply: delay", "Te: trailers", "Keep-Alive: 1",
            "X-Cr: a\rX-Injected: 1", "X-Lf: a\nX-Injected: 1", "X-Fold: a\r\n folded", "X-Nul: a\x00b",
            "X-Request-ID: second-id", "Host: other.example", "Authorization: Bearer sk-second-header",
        )))  # fmt: skip
    if rng.random() < 0.02:
        lines += [f"X-Many-{i}: v" for i in range(rng.choice((100, 200)))]
    return lines


def _framed(rng: random.Random, body: bytes) -> tuple[str, list[str], bytes]:
    """(framing label, header lines, body as sent) for ``body``: chunked, right or wrong, or a wrong or
    ambiguous Content-Length."""
    n = len(body)
    return rng.choice((
        lambda: ("chunked", ["Transfer-Encoding: chunked"], _chunked(rng, body)),
        lambda: ("chunked-ext", ["Transfer-Encoding: chunked"], _chunked(rng, body, b";ext=1") + b""),
        lambda: ("chunked-trailer", ["Transfer-Encoding: chunked"], _chunked(rng, body)[:-2] + b"X-T: 1\r\n\r\n"),
        lambda: ("chunked-bad-hex", ["Transfer-Encoding: chunked"], b"zz\r\n" + body + b"\r\n0\r\n\r\n"),
        lambda: ("chunked-no-end", ["Transfer-Encoding: chunked"], _chunked(rng, body)[:-5]),
        lambda: ("chunked-huge-size", ["Transfer-Encoding: chunked"], b"fffffffffffffffffff\r\nx\r\n0\r\n\r\n"),
        lambda: ("chunked-negative", ["Transfer-Encoding: chunked"], b"-1\r\nx\r\n0\r\n\r\n"),
        lambda: ("chunked-bare-lf", ["Transfer-Encoding: chunked"], b"%x\n%s\n0\n\n" % (n, body)),
        lambda: ("chunked-short-data", ["Transfer-Encoding: chunked"], b"%x\r\n%s\r\n0\r\n\r\n" % (n + 3, body)),
        lambda: ("cl-short", [f"Content-Length: {max(n - 3, 0)}"], body),
        lambda: ("cl-long", [f"Content-Length: {n + 5}"], body),  # the body stalls: 408
        lambda: ("cl-negative", ["Content-Length: -1"], body),
        lambda: ("cl-plus", [f"Content-Length: +{n}"], body),
        lambda: ("cl-hex", [f"Content-Length: 0x{n:x}"], body),
        lambda: ("cl-list", [f"Content-Length: {n}, {n}"], body),
        lambda: ("cl-huge", ["Content-Length: 99999999999999999999999"], body),
        lambda: ("cl-dup-same", [f"Content-Length: {n}", f"Content-Length: {n}"], body),
        lambda: ("cl-dup-differ", [f"Content-Length: {n}", f"Content-Length: {n + 1}"], body),
        lambda: ("cl-te", [f"Content-Length: {n}", "Transfer-Encoding: chunked"], _chunked(rng, body)),
        lambda: ("te-cl", ["Transfer-Encoding: chunked", "Content-Length: 3"], _chunked(rng, body)),
        lambda: ("te-gzip-chunked", ["Transfer-Encoding: gzip, chunked"], _chunked(rng, body)),
        lambda: ("te-identity", ["Transfer-Encoding: identity"], body),
        lambda: ("te-xchunked", ["Transfer-Encoding: xchunked"], body),
        lambda: ("te-chunked-twice", ["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"], _chunked(rng, body)),
        lambda: ("te-space", ["Transfer-Encoding : chunked"], _chunked(rng, body)),
        lambda: ("te-vtab", ["Transfer-Encoding: \x0bchunked"], _chunked(rng, body)),
        lambda: ("none-with-body", [], body),
    ))()  # fmt: skip


def _chunked(rng: random.Random, body: bytes, ext: bytes = b"") -> bytes:
    out, i = [], 0
    size = rng.choice((1, 7, 1000, 65536))
    size = (
        size if len(body) < size * 500 else 65536
    )  # a 1.5 MB body in 1-byte chunks would be slow, not hostile
    while i < len(body):
        out.append(b"%x%s\r\n%s\r\n" % (len(body[i : i + size]), ext, body[i : i + size]))
        i += size
    return b"".join(out) + b"0\r\n\r\n"


# --- cases ------------------------------------------------------------------------------------


def _request(rng: random.Random, case: Case, token: str, request_id: str, odd_framing: bool = False) -> bytes:
    """One request of random method, path, headers and body; sets ``case.label``."""
    body_kind = rng.choices(list(BODY_WEIGHTS), weights=list(BODY_WEIGHTS.values()))[0]
    if odd_framing and body_kind == "none":
        body_kind = "json"
    method = ("GET" if body_kind == "none" else "POST") if rng.random() < 0.85 else rng.choice(ODD_METHODS)
    path = _path(rng)
    body, lines = BODIES[body_kind](rng)
    lines = _headers(rng, token, request_id) + lines
    if body or rng.random() < 0.1:
        odd = rng.random() < 0.3 or body_kind in ("binary", "none")
        if path.startswith("/admin/log"):  # the sign-in and sign-out forms: what a form parser reads
            content_type = rng.choice(FORM_TYPES)
        else:
            content_type = rng.choice(CONTENT_TYPES) if odd else "application/json"
        lines.append(f"Content-Type: {content_type}")
    framing, framing_lines, wire = "none", [], b""
    if body or odd_framing:
        framing, framing_lines, wire = _framed(rng, body) if odd_framing else (
            "content-length", [f"Content-Length: {len(body)}"], body)  # fmt: skip
    elif rng.random() < 0.2:
        framing_lines = ["Content-Length: 0"]
    version = (
        "HTTP/1.1" if rng.random() < 0.97 else rng.choice(("HTTP/1.0", "HTTP/1.2", "HTTP/2.0", "http/1.1"))
    )
    lines += framing_lines
    lines.append("Connection: close")
    case.head_request = method == "HEAD"
    case.body_kind, case.framing = body_kind, framing
    case.label = f"{method[:10]} {path[:60]} {version} body={body_kind} framing={framing}"
    head = f"{method} {path} {version}\r\n" + "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("utf-8", "surrogateescape") + wire


def _split(rng: random.Random, wire: bytes) -> list[tuple[float, bytes]]:
    """The bytes in one write, or in two (a TCP segment boundary anywhere)."""
    if rng.random() < 0.8 or len(wire) < 2:
        return [(0.0, wire)]
    at = rng.randrange(1, len(wire))
    return [(0.0, wire[:at]), (0.0, wire[at:])]


def _plain_post(token: str, request_id: str, body: bytes, *extra: str) -> bytes:
    lines = ["POST /v1/chat/completions HTTP/1.1", "Host: proxy", f"Authorization: Bearer {token}",
             f"X-Request-ID: {request_id}", "Content-Type: application/json", *extra]  # fmt: skip
    if not any(line.startswith(("Content-Length", "Transfer-Encoding")) for line in extra):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _head_of(wire: bytes) -> bytes:
    return wire[: wire.index(b"\r\n\r\n") + 4]


def _fill(rng: random.Random, case: Case, token: str, request_id: str) -> None:
    """Give ``case`` (whose kind is set) its label and pieces."""
    if case.kind in ("request", "framing"):
        case.pieces = _split(rng, _request(rng, case, token, request_id, odd_framing=case.kind == "framing"))
    elif case.kind == "pipelined":
        first = _plain_post(token, request_id + "a", _chat(rng), "Connection: keep-alive")
        second = _request(rng, case, token, request_id + "b")
        case.label = "keep-alive POST, then " + case.label
        case.head_request = False  # the first answer has a body; a HEAD's, read to the close, is empty
        case.pieces = _split(rng, first + second)
    elif case.kind == "garbage":
        case.label, wire = rng.choice((
            lambda: ("listed", rng.choice(GARBAGE)),
            lambda: ("random bytes", rng.randbytes(rng.randint(1, 3000))),
            lambda: ("printable", "".join(chr(rng.randint(32, 126)) for _ in range(rng.randint(1, 400))).encode()),
            lambda: ("long line", b"GET /" + b"a" * rng.choice((9000, 100_000))),
            lambda: ("head then bytes", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + rng.randbytes(200)),
        ))()  # fmt: skip
        case.pieces = _split(rng, wire)
    elif case.kind == "vanish":
        body = _chat(rng, "v" * rng.choice((10, 200_000)))
        wire = _plain_post(token, request_id, body, "X-Fuzz-Reply: " + rng.choice(("delay", "drip")))
        head_end = wire.index(b"\r\n\r\n") + 4
        case.label, case.pieces, case.vanish_after = rng.choice((
            ("mid-head", [(0.0, wire[: rng.randrange(1, head_end)])], rng.choice((0.0, 0.05))),
            ("mid-body", [(0.0, wire[: head_end + len(body) // 2])], rng.choice((0.0, 0.05))),
            ("after sending", [(0.0, wire)], 0.0),
            ("while the upstream answers", [(0.0, wire)], 0.1),
            ("while a GET is answered", [(0.0, b"GET /v1/models HTTP/1.1\r\nHost: p\r\nX-Fuzz-Reply: delay\r\n"
                b"Authorization: Bearer %s\r\nX-Request-ID: %s\r\n\r\n" % (token.encode(), request_id.encode()))], 0.1),
            ("refused, with Expect", [(0.0, _head_of(_plain_post("sk-wrong-token-01234567", request_id, body,
                "Expect: 100-continue")))], 0.05),
        ))  # fmt: skip
        case.reset = rng.random() < 0.5
    else:  # slow: a few clients, briefly (the server's timeouts are 1 s)
        body = _chat(rng)
        wire = _plain_post(token, request_id, body)
        head_end = wire.index(b"\r\n\r\n") + 4
        case.label, case.pieces = rng.choice((
            ("head trickled in time", [(0.0, wire[:20]), (0.3, wire[20:40]), (0.3, wire[40:])]),
            ("head stalls", [(0.0, wire[: head_end - 10])]),
            ("body trickled in time", [(0.0, wire[: head_end + 5]), (0.3, wire[head_end + 5 : -5]), (0.3, wire[-5:])]),
            ("body stalls", [(0.0, wire[: head_end + 5])]),
            ("body stalls after a gap", [(0.0, wire[: head_end + 5]), (1.3, wire[head_end + 5 :])]),
        ))  # fmt: skip


KIND_WEIGHTS = {"request": 70, "framing": 14, "pipelined": 3, "garbage": 7, "vanish": 5, "slow": 0.6}


def make_cases(seed: int, count: int, tokens: Sequence[Sequence[str]]) -> list[Case]:
    """``count`` cases for the servers whose two valid tokens each are ``tokens[server]``."""
    rng = random.Random(seed)
    kinds, weights = list(KIND_WEIGHTS), list(KIND_WEIGHTS.values())
    cases = []
    for index in range(count):
        case = Case(
            index=index, server=rng.randrange(2), kind=rng.choices(kinds, weights)[0], label="", pieces=[]
        )
        _fill(rng, case, rng.choice(tokens[case.server]), f"fz-{seed}-{index}")
        cases.append(case)
    return cases
