"""Tornado's own refusals of malformed or oversized requests, answered with the JSON error body.

Tornado answers what it cannot parse (a malformed request line or header, an
unknown HTTP version, a bad or huge Content-Length, too many query parameters,
a broken chunked body) with ``HTTP/1.1 400 Bad Request`` and no body, and closes
the connection without any answer when the request line and headers do not fit
in its header buffer. Here the same refusals get the contract's body
(``{"error": {"status", "code", "message"}}``) with the status that says what
was wrong: 400, 413, 414, 431 or 505, and ``Connection: close``.

Limits (README, "Request limits"):

- the request line and headers together: ``MAX_HEAD_BYTES`` (64 KiB); longer is
  answered 414 when the request line alone is over it, else 431. Beyond
  ``HARD_HEAD_BYTES`` (1 MiB) without the blank line that ends the headers the
  connection is closed unanswered: nothing more is buffered to find it.
- query parameters: Tornado's 1,000 (400);
- a Content-Length over Tornado's ``max_body_size`` (set in pylight/app.py): 413.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from typing import Any

from tornado import httputil, iostream
from tornado.http1connection import HTTP1Connection, HTTP1ServerConnection
from tornado.httpserver import HTTPServer, _HTTPRequestContext

from pylight.errors import code_for

log = logging.getLogger("pylight")

MAX_HEAD_BYTES = 64 * 1024
HARD_HEAD_BYTES = 1024 * 1024
REASONS = {400: "Bad Request", 413: "Content Too Large", 414: "URI Too Long",
           431: "Request Header Fields Too Large", 505: "HTTP Version Not Supported"}


class Refused(Exception):
    """A request refused before it reaches a handler; answered and the connection closed."""

    def __init__(self, status: int, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or {}

    def response(self) -> bytes:
        error: dict[str, Any] = {"status": self.status, "code": code_for(self.status),
                                 "message": self.message}
        if self.details:
            error["details"] = self.details
        body = json.dumps({"error": error}, separators=(",", ":")).encode()
        head = (f"HTTP/1.1 {self.status} {REASONS[self.status]}\r\n"
                "Content-Type: application/json; charset=utf-8\r\n"
                "X-Content-Type-Options: nosniff\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n")
        return head.encode("latin1") + body


def refusal(exc: httputil.HTTPInputError, max_body_bytes: int) -> Refused:
    """What to answer for one of Tornado's parse errors. Its texts can quote header
    values (a credential among them), so none is echoed or logged as it is."""
    text = str(exc)
    if text.startswith("Content-Length too long"):
        return Refused(413, f"the body is larger than the limit of {max_body_bytes} bytes",
                       {"limit": max_body_bytes})
    if "Content-Length" in text:
        return Refused(400, "Content-Length is not a number, or several disagree")
    if "Max number of fields" in text:
        limit = httputil._DEFAULT_PARSE_BODY_CONFIG.urlencoded.max_arguments \
            if hasattr(httputil, "_DEFAULT_PARSE_BODY_CONFIG") else 1000
        return Refused(400, f"the query string has more than {limit} parameters",
                       {"limit": limit})
    if text.startswith("Invalid query string"):
        return Refused(400, "the query string is malformed")
    if text.startswith("Unexpected HTTP version"):
        return Refused(505, "only HTTP/1.0 and HTTP/1.1 are served")
    if text.startswith("Malformed HTTP request line"):
        return Refused(400, "malformed request line; expected: METHOD /path HTTP/1.1")
    if "Host header" in text or "host headers" in text:
        return Refused(400, "a missing, invalid or repeated Host header")
    if "chunk" in text:
        return Refused(400, "malformed chunked body")
    if "Transfer-Encoding" in text:
        return Refused(400, "unsupported or conflicting Transfer-Encoding")
    if "header" in text.lower() or "colon" in text:
        return Refused(400, "malformed header line")
    return Refused(400, "malformed request")


class _Guard(httputil.HTTPMessageDelegate):
    """Passes a request on to its delegate, catching the parse errors Tornado raises
    while it builds the request (Host, query string) so they can be answered."""

    def __init__(self, delegate: httputil.HTTPMessageDelegate, connection: Connection) -> None:
        self.delegate = delegate
        self.connection = connection
        self.muted = False

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders
                         ) -> Awaitable[None] | None:
        try:
            return self.delegate.headers_received(start_line, headers)
        except httputil.HTTPInputError as exc:
            self.muted = True
            self.connection.refused = refusal(exc, self.connection.max_body_bytes)
            return None

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return None if self.muted else self.delegate.data_received(chunk)

    def finish(self) -> None:
        if not self.muted:
            self.delegate.finish()

    def on_connection_close(self) -> None:
        if not self.muted:
            self.delegate.on_connection_close()


class Connection(HTTP1Connection):
    """One request of an HTTP/1.x connection, its refusals answered as JSON."""

    max_body_bytes = 0
    refused: Refused | None = None

    async def _read_message(self, delegate: httputil.HTTPMessageDelegate) -> bool:
        try:
            return await super()._read_message(_Guard(delegate, self))
        except Refused as refused:
            await self._refuse(refused)
            return False

    async def _refuse(self, refused: Refused) -> None:
        context = self.context
        log.info("refused a request from %s: %d %s", getattr(context, "remote_ip", "?"),
                 refused.status, refused.message)
        stream = self.stream
        if stream is None or stream.closed():
            return
        try:
            if self._response_start_line is None:
                await stream.write(refused.response())
            else:
                # The handler has answered already (a 413 from its prepare()):
                # let that answer go out whole, then close.
                await stream.write(b"")
        except iostream.StreamClosedError:
            return
        self.close()

    def _parse_headers(self, data: bytes) -> tuple[str, httputil.HTTPHeaders]:
        head = data.lstrip(b"\r\n")
        end = head.find(b"\n")
        if len(head) > MAX_HEAD_BYTES:
            if end < 0 or end > MAX_HEAD_BYTES:
                raise Refused(414, f"the request line is longer than {MAX_HEAD_BYTES} bytes",
                              {"limit": MAX_HEAD_BYTES})
            raise Refused(431, f"the request line and headers are longer than "
                          f"{MAX_HEAD_BYTES} bytes", {"limit": MAX_HEAD_BYTES})
        try:
            start_line, headers = super()._parse_headers(data)
            if not self.is_client:
                httputil.parse_request_start_line(start_line)
        except httputil.HTTPInputError as exc:
            raise refusal(exc, self.max_body_bytes) from None
        return start_line, headers

    def _read_body(self, code: int, headers: httputil.HTTPHeaders,
                   delegate: httputil.HTTPMessageDelegate) -> Awaitable[None] | None:
        if self.refused is not None:
            raise self.refused
        try:
            body = super()._read_body(code, headers, delegate)
        except httputil.HTTPInputError as exc:
            raise refusal(exc, self.max_body_bytes) from None
        if body is None:
            return None
        return self._guarded(body)

    async def _guarded(self, body: Awaitable[None]) -> None:
        try:
            await body
        except httputil.HTTPInputError as exc:
            raise refusal(exc, self.max_body_bytes) from None


class ServerConnection(HTTP1ServerConnection):
    """An HTTP/1.x server connection whose requests are read by ``Connection``."""

    max_body_bytes = 0

    async def _server_request_loop(self, delegate: httputil.HTTPServerConnectionDelegate
                                   ) -> None:
        # Tornado's loop (tornado/http1connection.py), with our connection class.
        try:
            while True:
                conn = Connection(self.stream, False, self.params, self.context)
                conn.max_body_bytes = self.max_body_bytes
                request_delegate = delegate.start_request(self, conn)
                try:
                    ret = await conn.read_response(request_delegate)
                except (iostream.StreamClosedError, iostream.UnsatisfiableReadError,
                        asyncio.CancelledError):
                    return
                except Exception:
                    log.error("uncaught exception while reading a request", exc_info=True)
                    conn.close()
                    return
                if not ret:
                    return
                await asyncio.sleep(0)
        finally:
            delegate.on_close(self)


class JsonRefusalsHTTPServer(HTTPServer):
    """Tornado's HTTPServer, its own refusals answered with the JSON error body.

    ``max_body_bytes`` is the limit named in a 413; Tornado's ``max_header_size``
    is raised to ``HARD_HEAD_BYTES`` so heads up to that are read and answered.
    """

    def initialize(self, *args: Any, max_body_bytes: int = 0, **kwargs: Any) -> None:
        kwargs["max_header_size"] = max(kwargs.get("max_header_size") or 0, HARD_HEAD_BYTES)
        super().initialize(*args, **kwargs)
        self.max_body_bytes = max_body_bytes

    def handle_stream(self, stream: iostream.IOStream, address: tuple) -> None:
        context = _HTTPRequestContext(stream, address, self.protocol, self.trusted_downstream)
        conn = ServerConnection(stream, self.conn_params, context)
        conn.max_body_bytes = self.max_body_bytes
        self._connections.add(conn)
        conn.start_serving(self)

