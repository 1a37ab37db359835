"""Log lines: farmstead's own (reconciler, executor, audit, errors), each with the id of the
request it belongs to, as text or as one JSON object a line for log shippers.

The request id is the client's `X-Request-ID` if it sent a sane one, else a new one; it goes
back in the answer's `X-Request-ID` and on every line logged while the request is served.
SQLAlchemy's engine log (statements with their parameter values) is kept below INFO unless the
level is DEBUG.
"""

import contextvars
import json
import logging
import time

#: the id of the request being served ("-" outside any request)
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
TEXT_FORMAT = "%(levelname)s:     %(name)s: [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request_id, message (and the error)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(level: str, fmt: str) -> None:
    """farmstead's loggers to stderr in `fmt` ("text" or "json") at `level`."""
    logger = logging.getLogger("farmstead")
    for handler in list(logger.handlers):
        if getattr(handler, "farmstead", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.farmstead = True  # type: ignore[attr-defined]
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(level.upper())
    if level.upper() != "DEBUG":  # statements' parameter values only when asked for
        logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
