"""Logging set-up: text or JSON lines, to stderr or LOG_FILE, with secrets redacted."""

from __future__ import annotations

import json
import logging
import sys
import time

from llmproxy.redact import redact_text

__all__ = ("configure",)


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        record.msg = redact_text(str(record.msg))
        return True


class _JsonFormatter(logging.Formatter):
    _SKIP = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update({k: v for k, v in vars(record).items() if k not in self._SKIP})
        if record.exc_info:
            doc["exc"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(doc, default=str)


class _ReopenableFileHandler(logging.FileHandler):
    """A FileHandler whose file can be reopened on SIGHUP (logrotate)."""

    def reopen(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self.stream:
                self.stream.close()
            self.stream = self._open()


def configure(level: str = "info", format: str = "text", file: str = "") -> None:
    """Route the root logger (LOG_LEVEL, LOG_FORMAT, LOG_FILE)."""
    handler: logging.Handler
    if file:
        handler = _ReopenableFileHandler(file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    if format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RedactingFilter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def reopen_files() -> None:
    for h in logging.getLogger().handlers:
        if isinstance(h, _ReopenableFileHandler):
            h.reopen()
