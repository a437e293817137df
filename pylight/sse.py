"""The Server-Sent Events transport of the change feeds: `GET /sse/<table>` (API.md 6.2).

The same subscriptions as `/ws/<table>` (filters, auth, resume, live windows),
carried as an event stream: each message is an event named by its ``type``,
a change's ``id:`` is its ``seq``, so a browser's ``EventSource`` resumes by
itself with ``Last-Event-ID``; a comment line every heartbeat interval keeps
proxies from closing an idle stream; a client that lets ``max_pending``
messages wait has its stream ended (it reconnects and resumes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from tornado.web import RequestHandler

from pylight.handlers import JsonErrors
from pylight.hub import Notice
from pylight.messages import hello
from pylight.outbox import Outbox, OutboxSink
from pylight.session import FeedContext, FeedSession

log = logging.getLogger("pylight")

PING = b": ping\n\n"
_TYPE = '{"type":"'


def event(text: str, name: str | None = None, seq: int | None = None) -> bytes:
    """One event: ``text`` (one line of JSON) named ``name`` (else the message's type)."""
    if name is None:
        end = text.find('"', len(_TYPE))
        name = text[len(_TYPE):end] if text.startswith(_TYPE) and end > 0 else "message"
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {name}\ndata: {text}\n\n".encode()


class EventSink(OutboxSink):
    """A subscription's messages as events in the connection's outbox."""

    __slots__ = ()

    def send_notice(self, notice: Notice, variant: str, key: Any = None) -> None:
        cached = ("sse", variant)
        data = notice.encodings.get(cached)
        if data is None:
            data = notice.encodings[cached] = event(notice.variant(variant, key), "change",
                                                    notice.seq)
        self.outbox.send(data)

    def send_text(self, text: str) -> None:
        self.outbox.send(event(text))

    def tagged(self, sub: str) -> Any:
        raise NotImplementedError("an event stream carries one subscription")


class EventStreamHandler(JsonErrors, RequestHandler):
    """`GET /sse/<table>`: one client's feed of one table, as an event stream."""

    metrics_route = None

    def initialize(self, feeds: FeedContext) -> None:
        self.feeds = feeds
        self.cors_origins = feeds.cors_origins
        self.client = self.request.remote_ip or ""
        self.table_name = ""
        self.outbox = Outbox(feeds.settings.max_pending, self._write, self._writable,
                             self._drop_slow)
        self.sink = EventSink(self.outbox, self._drop_slow, self.close)
        self.session = FeedSession(feeds, self.request, self.sink)
        self.last_ping = time.monotonic()
        self.done: asyncio.Future[None] = asyncio.get_event_loop().create_future()
        self.ended = False

    async def prepare(self) -> None:
        """Before the stream starts: 404/400/401/403/503 with the REST error body."""
        self.session.check_limits(self.client)
        name = self.path_args[0] if self.path_args else ""
        since = None
        if "since" not in self.request.query_arguments:
            since = self.request.headers.get("Last-Event-ID") or None
        self.table, self.wanted = self.session.table_request(
            name, self.request.query_arguments, since)
        self.table_name = self.table.name
        await self.session.authenticate(self.table.name)

    async def get(self, name: str) -> None:
        # Streams that authenticated concurrently passed prepare() together.
        self.session.check_limits(self.client)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")  # nginx: pass events on at once
        self._cors()
        self.feeds.connections.add(self)
        settings = self.feeds.settings
        self.sink.send_text(hello(self.table_name, self.feeds.hub.feed(self.table_name).seq,
                                  settings.heartbeat_interval))
        self.session.subscribe(self.table, self.wanted, self.sink)
        await self.done  # until the client goes, the server stops or gives up on it
        if not self._finished and not self.request.connection.stream.closed():
            self.finish()

    # -- writing ---------------------------------------------------------------------
    def _writable(self) -> bool:
        return not self.ended and not self.request.connection.stream.closed()

    def _write(self, data: bytes, pieces: list[bytes] | None) -> Any:
        self.write(data)
        return self.flush()

    def heartbeat(self, now: float) -> None:
        if now - self.last_ping >= self.feeds.connections.interval:
            self.last_ping = now
            self.outbox.send(PING)

    def _drop_slow(self) -> None:
        """End the stream of a client that does not read (it resumes with Last-Event-ID)."""
        self.feeds.connections.dropped_by_backpressure += 1
        log.info("ending a %s event stream: %d messages wait for a client that does not "
                 "read", self.table_name, len(self.outbox))
        self.outbox.close()
        self.request.connection.stream.close()
        self._forget()

    # -- closing ---------------------------------------------------------------------
    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """End the stream (the server stops, or the credential expired)."""
        self._forget()

    def on_connection_close(self) -> None:
        self._forget()

    def _forget(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.outbox.close()
        self.session.end()
        self.feeds.connections.discard(self)
        if not self.done.done():
            self.done.set_result(None)


def routes(feeds: FeedContext) -> list[tuple[str, type, dict[str, Any]]]:
    return [(r"/sse/([^/]+)", EventStreamHandler, {"feeds": feeds})]
