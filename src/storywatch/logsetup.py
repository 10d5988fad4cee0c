"""Log handlers for the CLI (the library never configures logging itself)."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, Final

# Defense in depth: tokens are never logged on purpose, and these scrub them if a library
# ever puts a request line or header into a log record.
_SECRETS: Final = (
    # websockets' debug log of a request line: the whole query may carry the token
    # (percent-encoded keys like ``tok%65n`` authenticate too).
    re.compile(r"(\b[A-Za-z]{3,7} [^?\s]*\?)\S*"),
    re.compile(r"((?:Authorization|Proxy-Authorization|Cookie)\W{1,3})[^\n]*", re.IGNORECASE),
    # websockets quotes what it could not parse; a header value may be a token.
    re.compile(r"(invalid HTTP [a-z ]+: )[^\n]*"),
    re.compile(r"(token=)[^&\s\"']+", re.IGNORECASE),
    re.compile(r"(Bearer\s+)\S+", re.IGNORECASE),
    re.compile(r"(#token=)\S+"),
)


def redact(text: str) -> str:
    for pattern in _SECRETS:
        text = pattern.sub(r"\1[redacted]", text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class TextFormatter(logging.Formatter):
    def formatException(self, ei: Any) -> str:
        return redact(super().formatException(ei))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            payload["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(payload, ensure_ascii=False)


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # websockets logs every refused handshake at INFO; keep those for -v.
    if level.upper() != "DEBUG":
        logging.getLogger("storywatch.websockets").setLevel(logging.WARNING)
        logging.getLogger("watchfiles").setLevel(logging.WARNING)  # "N changes detected"
