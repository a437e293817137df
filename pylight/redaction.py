"""Credentials kept out of every log line and message: one redaction for the whole server."""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus, urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """The URL with any password replaced, for log lines and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


# What a log line may carry a credential in: a query parameter named token (its
# name possibly percent-encoded), an Authorization or X-API-Key header as Tornado
# prints a request, and a password in a database URL.
_QUERY_PARAM = re.compile(r"(?<=[?&;])([^=&\s'\"]*)=([^&\s'\"]*)")
_HEADER = re.compile(r"(?i)(['\"]?(?:authorization|x-api-key)['\"]?\s*[:=]\s*['\"]?)"
                     r"([^'\"\n,}]+)")
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/\s@'\"]*:)([^@\s'\"]+)(@)")


# A line that holds none of these holds no credential (every log line is checked).
_MAY_HOLD = re.compile(r"(?i)oken|%[0-9a-f]{2}|authorization|x-api-key|://")


def redact(text: str) -> str:
    """``text`` with every credential it may hold replaced by ``***`` (see above)."""
    if not _MAY_HOLD.search(text):
        return text
    if "=" in text:
        text = _QUERY_PARAM.sub(_hide_token, text)
    text = _HEADER.sub(lambda m: f"{m.group(1)}***", text)
    return _URL_PASSWORD.sub(lambda m: f"{m.group(1)}***{m.group(3)}", text)


def _hide_token(match: re.Match[str]) -> str:
    name = match.group(1)
    return f"{name}=***" if unquote_plus(name).strip().lower() == "token" else match.group(0)


class RedactCredentials(logging.Filter):
    """Rewrites every record of the loggers it is on so that no line, traceback
    included, carries a credential: Tornado logs an uncaught exception with the
    request's URI and headers."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


#: The loggers a request's details can reach.
REQUEST_LOGGERS = ("pylight", "tornado.access", "tornado.application", "tornado.general",
                   "asyncio")


def redact_logs() -> None:
    """Put :class:`RedactCredentials` on every logger a request's details can reach (once)."""
    for name in REQUEST_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactCredentials) for f in logger.filters):
            logger.addFilter(RedactCredentials())
