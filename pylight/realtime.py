"""The WebSocket transport of the change feeds: `/ws/<table>`, and `/ws` for many
subscriptions on one socket.

What a connection subscribes to and which change it receives is decided by
its :class:`~pylight.session.FeedSession` and its subscriptions; what waits to
be written, by its :class:`~pylight.outbox.Outbox`; the frames themselves, by
:mod:`pylight.wire`. These handlers only upgrade, carry and close.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from tornado.websocket import WebSocketClosedError, WebSocketHandler, WebSocketProtocol, WebSocketProtocol13

from pylight import messages, values
from pylight.connections import Connections, Liveness
from pylight.errors import ApiError, code_for
from pylight.handlers import JsonErrors, origin_allowed
from pylight.hub import Notice
from pylight.origins import SHOWN, feed_refusal, loopback_alias
from pylight.outbox import Outbox, OutboxSink
from pylight.session import FeedContext, FeedSession
from pylight.subscription import has_feed
from pylight.wire import CLOSE_WAIT_SECONDS, FeedProtocol, deflated_text_frame, notice_frame, text_frame

log = logging.getLogger("pylight")

# Small kernel send buffers make a client that stopped reading visible within
# a few messages, instead of after megabytes sit in the kernel.
SEND_BUFFER_BYTES = 32 * 1024
# Frames of tagged (/ws) messages kept per change, shared by the clients that
# chose the same subscription id; beyond it they are built per client.
TAGGED_FRAMES_KEPT = 32


class FrameSink(OutboxSink):
    """A connection's messages as WebSocket frames in its outbox."""

    __slots__ = ("bits",)

    def __init__(self, outbox: Outbox, drop_slow: Any, close: Any) -> None:
        super().__init__(outbox, drop_slow, close)
        self.bits: int | None = None  # the permessage-deflate window, when negotiated

    def frame(self, payload: str) -> bytes:
        bits = self.bits
        return text_frame(payload) if bits is None else deflated_text_frame(payload, bits)

    def send_notice(self, notice: Notice, variant: str, key: Any = None) -> None:
        bits = self.bits
        frame = notice.encodings.get(variant if bits is None else (variant, bits))
        self.outbox.send(frame if frame is not None else notice_frame(notice, variant, bits, key))

    def send_text(self, text: str) -> None:
        self.outbox.send(self.frame(text))

    def tagged(self, sub: str) -> TaggedSink:
        return TaggedSink(self, sub)


class TaggedSink:
    """One ``/ws`` subscription's messages: the connection's, each with ``"sub"`` added."""

    __slots__ = ("sink", "tail")

    def __init__(self, sink: FrameSink, sub: str) -> None:
        self.sink = sink
        self.tail = ',"sub":' + values.dumps(sub) + "}"

    def _tag(self, text: str) -> str:
        return text[:-1] + self.tail  # every message is a JSON object: '...}'

    def send_notice(self, notice: Notice, variant: str, key: Any = None) -> None:
        sink = self.sink
        cached = (variant, sink.bits, self.tail)
        frame = notice.encodings.get(cached)
        if frame is None:
            frame = sink.frame(self._tag(notice.variant(variant, key)))
            if len(notice.encodings) < TAGGED_FRAMES_KEPT:
                notice.encodings[cached] = frame
        sink.outbox.send(frame)

    def send_text(self, text: str) -> None:
        self.sink.send_text(self._tag(text))

    def has_room(self) -> bool:
        return self.sink.has_room()

    def replaying(self, catch_up: Any, on: bool) -> None:
        self.sink.replaying(catch_up, on)

    def drop_slow(self) -> None:
        self.sink.drop_slow()


class FeedSocket(JsonErrors, WebSocketHandler):
    """What every feed WebSocket does: limits, frames, heartbeats, backpressure, closing."""

    metrics_route = None

    def initialize(self, feeds: FeedContext) -> None:
        self.feeds = feeds
        # A page allowed to open the socket may also read why an upgrade failed
        # (pylight.js asks over plain HTTP to tell a refusal from a server that is down).
        self.cors_origins = [*feeds.cors_origins, *feeds.settings.allowed_origins]
        self.refused_origin: str | None = None
        self.client = self.request.remote_ip or ""
        self.table_name = ""
        self.outbox = Outbox(feeds.settings.max_pending, self._write, self._writable,
                             self._drop_slow)
        self.sink = FrameSink(self.outbox, self._drop_slow, self.close)
        self.session = FeedSession(feeds, self.request, self.sink)
        self.liveness = Liveness(feeds.connections.interval, feeds.connections.timeout)
        self._refused = False

    def check_origin(self, origin: str) -> bool:
        # Only called for a cross-origin Origin: Tornado itself accepts the
        # same host and clients that send no Origin (non-browser clients).
        allowed = self.feeds.settings.allowed_origins
        request = self.request
        if (origin_allowed(origin, allowed) if allowed else super().check_origin(origin)) or (
                loopback_alias(origin, request.host, request.protocol)):
            return True
        # The one line an operator needs: which page, and the setting that admits it.
        self.refused_origin = origin
        log.warning("%s", feed_refusal(origin))
        return False

    def get_compression_options(self) -> dict[str, Any] | None:
        # With compression on, each message is deflated once, on its own
        # (server_no_context_takeover), and the frame shared like the plain one.
        return {} if self.feeds.settings.compression else None

    def get_websocket_protocol(self) -> WebSocketProtocol | None:
        base = super().get_websocket_protocol()
        return FeedProtocol(self, False, base.params) if isinstance(
            base, WebSocketProtocol13) else base

    def accept(self) -> bool:
        """The upgrade is done: count the connection (False: one too many, closed)."""
        if self.session.over_limit(self.client):
            # Upgrades that authenticated concurrently passed prepare() together.
            self.close(1013, "too many WebSocket connections; retry later")
            return False
        try:
            self.ws_connection.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                        SEND_BUFFER_BYTES)
        except (OSError, AttributeError):
            pass
        self.set_nodelay(True)
        protocol = self.ws_connection
        self.sink.bits = protocol.deflate_bits if isinstance(protocol, FeedProtocol) else None
        self.feeds.connections.add(self)
        return True

    # -- writing ---------------------------------------------------------------------
    def _writable(self) -> bool:
        connection = self.ws_connection
        return connection is not None and not connection.is_closing() \
            and not connection.stream.closed()

    def _write(self, data: bytes, frames: list[bytes] | None) -> Any:
        # Frames are built once per change and written to the stream directly:
        # write_message would encode the text again for every client.
        connection = self.ws_connection
        if isinstance(connection, FeedProtocol):
            return connection.write_frames(data, frames)
        return connection.stream.write(data)

    def _drop_slow(self) -> None:
        """Close a client that does not read with 1013, the close frame next in line.

        What waits for it is dropped first: the outbox, and the frames in
        Tornado's write buffer that have not started to go out. The connection
        is kept for the heartbeat's interval plus timeout so the close frame
        reaches a client that reads again, rather than Tornado's 5 s.
        """
        self.feeds.connections.dropped_by_backpressure += 1
        log.info("closing a %s feed: %d messages wait for a client that does not read",
                 self.table_name, len(self.outbox))
        self.outbox.close()
        if isinstance(self.ws_connection, FeedProtocol):
            settings = self.feeds.settings
            self.ws_connection.give_up(max(settings.heartbeat_interval
                                           + settings.heartbeat_timeout, CLOSE_WAIT_SECONDS))
        self.close(1013, "too many undelivered messages; reconnect with since")

    # -- client messages and heartbeats ----------------------------------------------
    def on_message(self, message: str | bytes) -> None:
        self.session.receive(message, self.table_name)

    def on_pong(self, data: bytes) -> None:
        self.liveness.answered()

    def heartbeat(self, now: float) -> None:
        try:
            alive = self.liveness.beat(now, self.ping)
        except WebSocketClosedError:
            alive = True  # closed meanwhile: nothing to count
            self.abort()
        if not alive:
            self.feeds.connections.dropped_by_heartbeat += 1
            self.abort()

    def abort(self) -> None:
        """Drop the connection at once: a dead peer will not answer a close handshake."""
        if self.ws_connection is not None and self.ws_connection.stream is not None:
            self.ws_connection.stream.close()
        self._forget()

    # -- Tornado's own refusals, as JSON ---------------------------------------------
    def send_api_error(self, error: ApiError) -> None:
        self._refused = True
        super().send_api_error(error)

    def finish(self, chunk: Any = None) -> Any:
        # Tornado refuses a request that is no upgrade (400), a foreign Origin
        # (403) or an unknown protocol version (426) with a plain-text body;
        # the contract says every error is the JSON error body.
        status = self.get_status()
        if self.ws_connection is None and status >= 400 and not self._refused:
            message = chunk if isinstance(chunk, str) and chunk else self._reason
            details = None
            if status == 403 and self.refused_origin is not None:
                message = feed_refusal(self.refused_origin)
                details = {"origin": self.refused_origin[:SHOWN],
                           "setting": "[realtime] allowed_origins"}
            headers = {"Sec-WebSocket-Version": "13"} if status == 426 else None
            self.send_api_error(ApiError(status, code_for(status), message, details, headers))
            return None
        return super().finish(chunk)

    # -- closing ---------------------------------------------------------------------
    def close(self, code: int | None = None, reason: str | None = None) -> None:
        self._forget()
        super().close(code, reason)

    def on_close(self) -> None:
        self._forget()

    def _forget(self) -> None:
        self.outbox.close()
        self.session.end()
        self.feeds.connections.discard(self)


class FeedHandler(FeedSocket):
    """`/ws/<table>`: one client subscribed to one table's changes, or to a live window."""

    async def prepare(self) -> None:
        """Before the upgrade: 404/400/401/403/503 with the REST error body."""
        self.session.check_limits(self.client)
        name = self.path_args[0] if self.path_args else ""
        self.table, self.wanted = self.session.table_request(name, self.request.query_arguments)
        self.table_name = self.table.name
        await self.session.authenticate(self.table.name)

    def open(self, *args: Any) -> None:
        if not self.accept():
            return
        settings = self.feeds.settings
        self.sink.send_text(messages.hello(self.table_name,
                                           self.feeds.hub.feed(self.table_name).seq,
                                           settings.heartbeat_interval))
        self.session.subscribe(self.table, self.wanted, self.sink)


class ChannelHandler(FeedSocket):
    """`/ws`: any number of subscriptions, made and ended by the client's messages."""

    metrics_route = ":ws"

    async def prepare(self) -> None:
        self.session.check_limits(self.client)
        self.table_name = ":ws"
        await self.session.authenticate(None)

    def open(self, *args: Any) -> None:
        if self.accept():
            settings = self.feeds.settings
            self.sink.send_text(messages.channel_hello(settings.heartbeat_interval,
                                                       settings.max_subscriptions))

    def on_message(self, message: str | bytes) -> None:
        self.session.receive(message, self.table_name, channel=True)


def routes(prefix: str, feeds: FeedContext) -> list[tuple[str, type, dict[str, Any]]]:
    return [(rf"{prefix}/?", ChannelHandler, {"feeds": feeds}),
            (rf"{prefix}/([^/]+)", FeedHandler, {"feeds": feeds})]


__all__ = ["ChannelHandler", "Connections", "FeedHandler", "has_feed", "routes"]
