"""LOG_FORMAT=json: every log line one JSON object.

{"time", "level", "logger", "message"} and, inside a request, the fields of its
RequestContext (request_id, user_id, key_id, model); with tracing on, trace_id and span_id.
A `BILLING:` line (money the code could not account for; grep-able in plain text) keeps its
message and says so in a field, `"alert": "BILLING"`, for a log pipeline to page on.
Plain text stays the default for a developer.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

from config.observability import context, tracing

BILLING_PREFIX = "BILLING:"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line = {
            "time": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        ctx = context.current()
        if ctx is not None:
            line.update(ctx.fields())
        if message.startswith(BILLING_PREFIX):
            line["alert"] = "BILLING"
        if tracing.enabled():
            line.update(_trace_ids())
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def _trace_ids() -> dict:
    from opentelemetry import trace

    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    return {"trace_id": f"{span_context.trace_id:032x}", "span_id": f"{span_context.span_id:016x}"}


PLAIN = {"format": "%(message)s"}  # as before LOG_FORMAT existed
JSON = {"()": "config.observability.logging.JsonFormatter"}


def django_logging(*, log_format: str, level: str) -> dict:
    """settings.LOGGING for LOG_FORMAT ("plain" or "json")."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": PLAIN, "json": JSON},
        "handlers": {"console": {"class": "logging.StreamHandler",
                                 "formatter": "json" if log_format == "json" else "plain"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.db.backends": {"level": "WARNING"},
            # Django's own DEBUG console handler would print a second, plain copy.
            **({"django": {"handlers": [], "level": "INFO"}} if log_format == "json" else {}),
        },
    }


def gunicorn_logging(*, level: str) -> dict:
    """gunicorn's logconfig_dict under LOG_FORMAT=json: its own lines and the uvicorn
    workers' (which reuse gunicorn's handlers) as JSON on stderr/stdout."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": JSON},
        "handlers": {
            "error_console": {"class": "logging.StreamHandler", "formatter": "json",
                              "stream": "ext://sys.stderr"},
            "console": {"class": "logging.StreamHandler", "formatter": "json",
                        "stream": "ext://sys.stdout"},
        },
        "root": {"level": level, "handlers": ["console"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["error_console"], "propagate": False},
            "gunicorn.access": {"level": level, "handlers": ["console"], "propagate": False},
        },
    }
