"""Logging, configured once per process (API, worker, relay, consumers, webhooks dispatcher) by
`prognet.telemetry.configure_process`, next to tracing.

One handler on the root logger, so our loggers and the libraries' (temporalio, uvicorn, sqlalchemy) share it:
- `LOG_FORMAT=json` (the default): one JSON object per line, with `trace_id` and `span_id` when the record was
  logged inside a span (an HTTP request, a saga's activity, a relay batch), so a log line leads to its trace;
- `LOG_FORMAT=text` (what `prognet dev` gives its children, whose lines it prefixes with the process name):
  `LEVEL logger: message key=value … trace=<trace id>`.
Records carry what the caller put in `extra`; callers never put emails, passwords or tokens there.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import Any

from prognet.settings import Settings
from prognet.telemetry import current_ids

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
# httpx logs every request's full URL at INFO (an outbound webhook's query string may hold the receiver's secret)
QUIET_BELOW_DEBUG = ("httpx", "httpcore")

_lock = threading.Lock()
_handler: logging.Handler | None = None


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if ids := current_ids():  # formatted where it was logged: the current span is the record's
            entry["trace_id"], entry["span_id"] = ids
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{record.levelname} {record.name}: {record.getMessage()}"]
        parts += [f"{k}={v}" for k, v in _extras(record).items()]
        if ids := current_ids():
            parts.append(f"trace={ids[0]}")  # `prognet traces <id>` draws it
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def formatter(log_format: str) -> logging.Formatter:
    return TextFormatter() if log_format == "text" else JsonFormatter()


def configure_logging(settings: Settings) -> logging.Handler:
    """Install the process's log handler on the root logger (stderr), once; later calls return it (tests run the
    API and the worker in one process)."""
    global _handler
    with _lock:
        if _handler is not None:
            return _handler
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter(settings.log_format))
        root = logging.getLogger()
        root.addHandler(handler)
        level = settings.log_level.upper()
        root.setLevel(level)
        logging.getLogger("prognet").setLevel(level)
        if logging.getLevelName(level) != logging.DEBUG:
            for name in QUIET_BELOW_DEBUG:
                logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
        _handler = handler
        return handler
