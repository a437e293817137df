"""The base request handler: JSON errors, body limits and CORS for every Pylight route."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from tornado.web import HTTPError, RequestHandler, stream_request_body

from pylight import values
from pylight.errors import (
    ApiError,
    bad_request,
    from_status,
    internal_error,
    not_found,
    payload_too_large,
    unsupported_media_type,
)
from pylight.origins import loopback_alias
from pylight.redaction import redact

log = logging.getLogger("pylight")


@dataclass(frozen=True)
class HttpContext:
    """What every HTTP handler is handed: the request limits, CORS, and the set of
    requests in flight (a graceful stop waits for them)."""

    max_body_bytes: int
    cors_origins: list[str]
    in_flight: set[Any] = field(default_factory=set)


def origin_allowed(origin: str, allowed: list[str]) -> bool:
    """Whether ``origin`` (an Origin header) is in an allow-list of origins or ``*``.

    Scheme and host compare case-insensitively and a listed origin may end in
    ``/``, as browsers never send one; anything else must match exactly.
    """
    if "*" in allowed:
        return True
    wanted = origin.strip().lower()
    return any(entry.strip().rstrip("/").lower() == wanted for entry in allowed)


def parse_json_body(raw: bytes, content_type: str) -> Any:
    """A request body as JSON: 415 unless it is sent as JSON, 400 when it is not valid."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise unsupported_media_type(content_type)
    if not raw.strip():
        raise bad_request("the body is empty; send a JSON object")
    try:
        return values.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad_request("the body is not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"malformed JSON: {str(exc)[:200]}") from None


class JsonErrors:
    """Renders every error as the contract's JSON body; shared by HTTP and WebSocket handlers."""

    #: The `table` label of its requests in metrics and logs (None: the table itself).
    metrics_route: str | None = ":other"

    cors_origins: list[str]

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self._cors()
        self.finish(values.dumps(payload))

    def send_api_error(self, error: ApiError) -> None:
        if self._finished:
            return
        self.clear()
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        for name, value in error.headers.items():
            self.set_header(name, value)
        self._cors()
        self.finish(values.dumps(error.to_dict()))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            error = exc
        elif status_code >= 500:
            error = internal_error()
        else:
            message = self._reason
            if isinstance(exc, HTTPError) and exc.log_message:
                # HTTPError(403, "not for %s", name) keeps its arguments apart, as logging does.
                message = exc.log_message % exc.args if exc.args else exc.log_message
            error = from_status(status_code, str(message))
            if status_code == 405:
                error.details = {"method": self.request.method}
                # RFC 9110: a 405 lists the methods the resource has (found by fuzzing:
                # TRACE got a 405 without Allow).
                error.headers = {"Allow": ", ".join(self._implemented_methods())}
        self.send_api_error(error)

    def _implemented_methods(self) -> list[str]:
        return [m for m in self.SUPPORTED_METHODS if m != "HEAD" and getattr(
            type(self), m.lower(), None) is not getattr(RequestHandler, m.lower(), None)]

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, (ApiError, HTTPError)):
            # redact: a browser's ?token= is a credential and must not reach the log.
            log.debug("%s %s -> %s", self.request.method, redact(self.request.uri or ""), value)
            return
        super().log_exception(typ, value, tb)

    # -- CORS -------------------------------------------------------------------
    def _allowed_origin(self) -> str | None:
        origins = self.cors_origins
        origin = self.request.headers.get("Origin")
        if not origin:
            return None
        if "*" in origins:
            return "*"
        if origin_allowed(origin, origins):
            return origin
        # This server's own page under another loopback name (localhost vs 127.0.0.1).
        request = self.request
        return origin if loopback_alias(origin, request.host, request.protocol) else None

    def _cors(self) -> None:
        origins = self.cors_origins
        if "*" not in origins:
            # The answer depends on Origin, allowed or not (a list, or this server's
            # loopback names): caches must keep them apart.
            self.set_header("Vary", "Origin")
        allowed = self._allowed_origin()
        if allowed:
            self.set_header("Access-Control-Allow-Origin", allowed)
            # ETag (conditional writes), Link (CSV's next page) and the counts and
            # preferences of writes by filter and upserts are read by clients too.
            self.set_header("Access-Control-Expose-Headers", "Location, Retry-After, ETag, Link, "
                                                             "Pylight-Affected, Preference-Applied")


@stream_request_body
class BaseHandler(JsonErrors, RequestHandler):
    """Streams the body so an oversized one is answered 413 (Tornado's own limit
    would drop the connection without a response)."""

    def initialize(self, http: HttpContext) -> None:
        self.http = http
        self.cors_origins = http.cors_origins
        self._chunks: list[bytes] = []
        self._size = 0
        http.in_flight.add(self)

    def on_finish(self) -> None:
        self.http.in_flight.discard(self)

    def on_connection_close(self) -> None:
        self.http.in_flight.discard(self)
        super().on_connection_close()

    # -- request body --------------------------------------------------------
    def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            # A preflight carries no credentials: answer it here, before any
            # authentication a subclass's prepare() would do.
            self.options()
            return
        limit = self.http.max_body_bytes
        length = self.request.headers.get("Content-Length")
        if length is not None:
            # isascii(): str.isdigit() also accepts "²", which int() then refuses (a 500).
            if not (length.strip().isascii() and length.strip().isdigit()):
                raise bad_request("Content-Length is not a number")
            if int(length) > limit:
                raise payload_too_large(limit)

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        self._size += len(chunk)
        limit = self.http.max_body_bytes
        if self._size > limit:
            self._chunks = []
            self.send_api_error(payload_too_large(limit))
            return
        self._chunks.append(chunk)

    def json_body(self) -> Any:
        return parse_json_body(b"".join(self._chunks), self.request.headers.get("Content-Type", ""))

    def compute_etag(self) -> None:
        return None  # hashing every response body costs more than clients gain from it

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")

    def options(self, *args: Any) -> None:
        if self._finished:
            return
        allowed = self._allowed_origin()
        if allowed is None:
            if self.cors_origins:
                raise from_status(403, "cross-origin requests from this origin are not allowed")
            raise from_status(405, "CORS is not enabled ([api] cors_origins)")
        self.set_status(204)
        self._cors()
        self.set_header("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS")
        self.set_header("Access-Control-Allow-Headers",
                        self.request.headers.get("Access-Control-Request-Headers",
                                                 "Content-Type, Authorization"))
        self.set_header("Access-Control-Max-Age", "600")
        self.finish()


class NotFoundHandler(BaseHandler):
    """Any path no route matches: a JSON 404 rather than Tornado's HTML page."""

    metrics_route = ":not_found"

    def prepare(self) -> None:
        super().prepare()
        if self.request.method == "OPTIONS":
            return
        raise not_found(f"no such path: {self.request.path[:200]}")
