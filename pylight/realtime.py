"""WebSocket change feeds: `/ws/<table>`, with filters, resume, heartbeats and backpressure."""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.iostream import StreamClosedError
from tornado.websocket import (
    WebSocketClosedError,
    WebSocketHandler,
    WebSocketProtocol,
    WebSocketProtocol13,
)

from pylight import query as ql
from pylight import values
from pylight.auth import Identity
from pylight.errors import ApiError, bad_request, not_found, unavailable
from pylight.handlers import JsonErrors, origin_allowed
from pylight.hub import Feed, Notice
from pylight.schema import TableInfo
from pylight.wire import (
    CLOSE_WAIT_SECONDS,
    FeedProtocol,
    deflated_text_frame,
    notice_frame,
    text_frame,
)

if TYPE_CHECKING:
    from pylight.app import Pylight

log = logging.getLogger("pylight")

# Small kernel send buffers make a client that stopped reading visible within
# a few messages, instead of after megabytes sit in the kernel.
SEND_BUFFER_BYTES = 32 * 1024
# How much of our own queue is handed to Tornado at once; Tornado's buffer is
# unbounded, so everything beyond one batch waits in our (bounded) queue.
BATCH_BYTES = 64 * 1024
FEED_PARAMS = ("since", "token")
def has_feed(table: TableInfo) -> bool:
    """Whether ``table`` has a change feed: every table; a view only with a change source.

    Nothing writes to a view through Pylight and capture triggers cannot be
    put on one, so its feed would stay silent. A plugin that publishes a
    view's changes itself (``app.hub.publish``) marks its table info, e.g. in
    ``pylight_startup``: ``app.tables["my_view"].change_source = "my_plugin"``.
    """
    return not table.is_view or bool(getattr(table, "change_source", None))


class Connections:
    """Every open feed connection: one timer drives all heartbeats; shutdown closes all."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.open: set[FeedHandler] = set()
        # Open connections per client address, kept with `open` by add()/discard().
        self.per_client: Counter[str] = Counter()
        self.dropped_by_heartbeat = 0
        self.dropped_by_backpressure = 0
        self.refused_by_limit = 0
        self.closed_by_rate = 0
        # Messages written by connections since closed; open ones count their own
        # (FeedHandler.sent), summed only when metrics are scraped.
        self.messages_sent = 0
        period = max(min(1.0, interval / 2, timeout / 2), 0.05)
        self._timer = PeriodicCallback(self._beat, period * 1000)

    def start(self) -> None:
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def add(self, conn: FeedHandler) -> None:
        if conn not in self.open:
            self.open.add(conn)
            self.per_client[conn.client] += 1

    def discard(self, conn: FeedHandler) -> None:
        if conn in self.open:
            self.open.discard(conn)
            left = self.per_client[conn.client] - 1
            if left > 0:
                self.per_client[conn.client] = left
            else:
                del self.per_client[conn.client]

    def over_limit(self, client: str, total: int, per_client: int) -> str | None:
        """Why one more connection from ``client`` is too many (None: it is not); 0 is no limit."""
        if total and len(self.open) >= total:
            return f"the server has its maximum of {total} WebSocket connections"
        if per_client and self.per_client[client] >= per_client:
            return f"this client has its maximum of {per_client} WebSocket connections"
        return None

    def count(self, table: str | None = None) -> int:
        if table is None:
            return len(self.open)
        return sum(1 for conn in self.open if conn.table_name == table)

    def sent_total(self) -> int:
        """Messages written to feed sockets so far, closed connections included."""
        return self.messages_sent + sum(conn.sent for conn in self.open)

    def _beat(self) -> None:
        now = time.monotonic()
        for conn in list(self.open):
            conn.heartbeat(now)

    def close_all(self, code: int, reason: str) -> None:
        for conn in list(self.open):
            conn.close(code, reason)


class FeedHandler(JsonErrors, WebSocketHandler):
    """One client subscribed to one table's changes."""

    metrics_route = None

    app: Pylight

    def initialize(self, app: Pylight) -> None:
        self.app = app
        self.table_name = ""
        self.feed: Feed | None = None
        self.matcher: ql.Matcher | None = None
        self.since: int | None = None
        self.queue: deque[bytes] = deque()  # ready WebSocket frames
        self.sent = 0  # frames written to the socket (for metrics; one add per write)
        # While a resuming client catches up, the seq of the last replayed
        # notice; None once it is live.
        self.cursor: int | None = None
        self.in_flight = False
        self._refused = False
        self.closing = False
        self.last_seen = self.last_ping = time.monotonic()
        self.awaiting_pong = False
        self.table: TableInfo | None = None
        self.where = ql.Group(())
        self.identity: Identity | None = None
        self.row_matcher: ql.Matcher | None = None
        self.pending_verdict: asyncio.Future[None] | None = None
        self.expiry: Any = None
        self.client = self.request.remote_ip or ""
        self.deflate_bits: int | None = None  # the permessage-deflate window, when negotiated
        # Client messages are rate limited by a token bucket holding two seconds' worth.
        self.tokens = 2.0 * app.config.realtime.max_messages_per_second
        self.refilled = time.monotonic()

    # -- before the upgrade: 404/400 with the REST error body ------------------------
    async def prepare(self) -> None:
        self._check_limits()
        name = self.path_args[0] if self.path_args else ""
        table = self.app.tables.get(name)
        if table is None:
            raise not_found(f"no table named {name[:100]!r}", table=name[:100])
        if not has_feed(table):
            raise not_found(
                f"{table.name!r} is a view; views cannot be captured, so it has no change "
                f"feed (read it over REST: {self.app.config.api.prefix}/{table.name})",
                table=table.name)
        arguments = self.request.query_arguments
        where = ql.parse_filters(table, arguments, ignore=FEED_PARAMS)
        # `since=eq.3` filters a column named "since" (API.md section 5).
        _, params = ql.split_arguments(table, arguments, FEED_PARAMS)
        if "since" in params:
            raw = params["since"][-1]
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            # isascii(): str.isdigit() also accepts digits like "²" that int() refuses (a 500).
            if not (text.isascii() and text.isdigit()) or len(text) > 18:
                raise bad_request("since: expected the seq of the last change seen",
                                  parameter="since")
            self.since = int(text)
        self.table_name = table.name
        self.table = table
        self.where = where
        auth = self.app.auth
        if auth.enabled:
            # Refused before the 101: 401 without a valid credential, 403 without
            # the read permission.
            self.identity = await auth.authenticate(self.request)
            await auth.authorize(self.identity, "read", table.name)
        self._set_matchers()

    def _check_limits(self) -> None:
        """503 before the upgrade once the connection limits are reached."""
        settings = self.app.config.realtime
        reason = self.app.connections.over_limit(self.client, settings.max_connections,
                                                 settings.max_connections_per_client)
        if reason is not None:
            self.app.connections.refused_by_limit += 1
            raise unavailable(f"{reason}; retry later", retry_after=5)

    def _set_matchers(self) -> None:
        """The subscriber's own filter ANDed with the rows its identity may see."""
        assert self.table is not None
        rows = self.app.auth.row_filter(self.identity, self.table) if self.app.auth.enabled \
            else None
        self.row_matcher = ql.Matcher(self.table, rows, self.app.backend) if rows else None
        where = self.where if rows is None else ql.Group((self.where, rows))
        self.matcher = ql.Matcher(self.table, where, self.app.backend) if where.members else None

    def check_origin(self, origin: str) -> bool:
        # Only called for a cross-origin Origin: Tornado itself accepts the
        # same host and clients that send no Origin (non-browser clients).
        allowed = self.app.config.realtime.allowed_origins
        if allowed:
            return origin_allowed(origin, allowed)
        return super().check_origin(origin)

    def get_compression_options(self) -> dict[str, Any] | None:
        # With compression on, each message is deflated once, on its own
        # (server_no_context_takeover), and the frame shared like the plain one.
        return {} if self.app.config.realtime.compression else None

    def get_websocket_protocol(self) -> WebSocketProtocol | None:
        base = super().get_websocket_protocol()
        if not isinstance(base, WebSocketProtocol13):
            return base
        return FeedProtocol(self, False, base.params)

    @property
    def protocol(self) -> FeedProtocol | None:
        connection = self.ws_connection
        return connection if isinstance(connection, FeedProtocol) else None

    def _notice_frame(self, notice: Notice, variant: str) -> bytes:
        return notice_frame(notice, variant, self.deflate_bits)

    def _own_frame(self, text: str) -> bytes:
        """A frame of this connection's own (hello, pong, errors)."""
        bits = self.deflate_bits
        return text_frame(text) if bits is None else deflated_text_frame(text, bits)

    # -- open: hello, replay, then live ------------------------------------------------
    def open(self, *args: Any) -> None:
        settings = self.app.config.realtime
        if self.app.connections.over_limit(self.client, settings.max_connections,
                                           settings.max_connections_per_client):
            # Upgrades that authenticated concurrently passed prepare() together.
            self.app.connections.refused_by_limit += 1
            self.close(1013, "too many WebSocket connections; retry later")
            return
        stream = self.ws_connection.stream if self.ws_connection else None
        if stream is not None and stream.socket is not None:
            try:
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            except OSError:
                pass
        self.set_nodelay(True)
        protocol = self.protocol
        self.deflate_bits = protocol.deflate_bits if protocol is not None else None
        feed = self.app.hub.feed(self.table_name)
        self.feed = feed
        realtime = self.app.config.realtime
        interval = realtime.heartbeat_interval
        self.send_text(values.dumps({"type": "hello", "table": self.table_name, "seq": feed.seq,
                                     "heartbeat": int(interval) if interval.is_integer()
                                     else interval}))
        # Decide on the replay and subscribe in one step on the event loop: no
        # change can be published in between, so there is no gap and no
        # duplicate at the seam.
        if self.since is not None:
            if feed.since(self.since) is None:
                reason = ("since is ahead of this server (it restarted)" if self.since > feed.seq
                          else "since is older than the replay buffer")
                self.send_text(values.dumps({"type": "resync", "table": self.table_name,
                                           "seq": feed.seq, "reason": reason}))
            else:
                # Replay from the ring a batch at a time as the client reads
                # (queueing the whole replay at once overflowed max_pending, so a
                # client dropped for being slow could never resume).
                self.cursor = self.since
        feed.subscribers.add(self)
        self.app.connections.add(self)
        self._schedule_expiry()
        self._catch_up()

    # -- delivery with a bounded queue ------------------------------------------------
    def deliver(self, notice: Notice) -> None:
        if self.cursor is not None:
            # Still catching up: this notice is in the ring and is read from
            # there in order. Once the ring let go of what this client has yet
            # to read, it can never catch up: drop it now, as a slow client.
            ring = self.feed.ring if self.feed is not None else None
            if ring and ring[0].seq > self.cursor + 1:
                self.cursor = None
                self._drop_slow()
            return
        self._deliver_now(notice)

    def _replay_batch(self) -> int:
        return max(1, min(self.app.config.realtime.max_pending // 2, 500))

    def _catch_up(self) -> None:
        """Move replayed notices from the ring to the queue while it has room."""
        feed = self.feed
        batch = self._replay_batch()
        while self.cursor is not None and feed is not None and not self.closing \
                and len(self.queue) < batch:
            notices = feed.after(self.cursor, batch)
            if notices is None:
                # The ring moved on faster than this client read: the same as a
                # client that stops reading. It can resume (and will be told to resync).
                self.cursor = None
                self._drop_slow()
                return
            if not notices:
                self.cursor = None  # caught up; from now on changes are delivered live
                return
            for notice in notices:
                if len(self.queue) >= batch or self.closing:
                    break
                self.cursor = notice.seq
                self._deliver_now(notice)

    def _deliver_now(self, notice: Notice) -> None:
        # Every row a message shows must be one this subscriber may read: `record`
        # (its filter includes the auth row filter) and `old` too.
        matcher = self.matcher
        change = notice.change
        if matcher is None or matcher(change.record):
            old = change.old
            if old is not None and self.row_matcher is not None and not self.row_matcher(old):
                # The row moved into this identity's rows from rows it may not see.
                old = None
            variant = "plain" if old is change.old else "without_old"
            if self.app.auth.authorizes:
                self._send_if_allowed(notice, change.record, self._notice_frame(notice, variant),
                                      old, self._notice_frame(notice, "without_old"))
            else:
                self.send_frame(self._notice_frame(notice, variant))
        elif change.event == "updated" and matcher(change.old):
            if self.row_matcher is not None and not self.row_matcher(change.record):
                # The row left the rows this identity may see: say so without
                # showing what it became.
                self._send_if_allowed(notice, change.old, self._own_frame(self._exit_text(notice)))
            elif self.app.auth.authorizes:
                self._send_if_allowed(notice, change.record,
                                      self._notice_frame(notice, "unmatched"), change.old, None)
            else:
                self.send_frame(self._notice_frame(notice, "unmatched"))

    def _exit_text(self, notice: Notice) -> str:
        change = notice.change
        key = self.table.key_of(change.old) if self.table and change.old else change.pk
        return values.dumps({"type": "change", "event": "updated", "table": change.table,
                             "seq": notice.seq, "pk": key, "record": None, "old": None,
                             "matches": False})

    def _send_if_allowed(self, notice: Notice, record: dict[str, Any] | None, frame: bytes,
                         old: dict[str, Any] | None = None,
                         without_old: bytes | None = None) -> None:
        """Send ``frame`` if the authorisation hooks let this subscriber read ``record``;
        if they do not let it read ``old`` (the row before an update, which ``frame``
        shows), send ``without_old`` instead, or nothing when that is None.

        A hook may be async; later notices then wait for earlier verdicts, so
        the client still receives its changes in seq order.
        """
        table = notice.change.table
        verdict = self.app.auth.may_read(self.identity, table, record)
        old_verdict = True if old is None else self.app.auth.may_read(self.identity, table, old)

        def choose(allowed: Any, old_allowed: Any) -> bytes | None:
            if not allowed:
                return None
            return frame if old_allowed else without_old

        if self.pending_verdict is None and not inspect.isawaitable(verdict) \
                and not inspect.isawaitable(old_verdict):
            chosen = choose(verdict, old_verdict)
            if chosen is not None:
                self.send_frame(chosen)
            return
        previous = self.pending_verdict

        async def in_order() -> None:
            if previous is not None:
                await previous
            allowed = await verdict if inspect.isawaitable(verdict) else verdict
            old_allowed = await old_verdict if inspect.isawaitable(old_verdict) else old_verdict
            chosen = choose(allowed, old_allowed)
            if chosen is not None:
                self.send_frame(chosen)

        task = asyncio.ensure_future(in_order())
        self.pending_verdict = task

        def settled(done: Any) -> None:
            if self.pending_verdict is done:
                self.pending_verdict = None
        task.add_done_callback(settled)

    def send_text(self, text: str) -> None:
        """Queue a message of this connection's own (hello, pong, errors)."""
        self.send_frame(self._own_frame(text))

    def send_frame(self, frame: bytes) -> None:
        """Queue one ready-made WebSocket frame; drop the client past max_pending."""
        if self.closing:
            return
        queue = self.queue
        queue.append(frame)
        if len(queue) > self.app.config.realtime.max_pending:
            self._drop_slow()
            return
        if not self.in_flight:
            self._flush()

    def _drop_slow(self) -> None:
        """Close a client that does not read with 1013, the close frame next in line.

        What waits for it is dropped first: our queue, and the frames in
        Tornado's write buffer that have not started to go out (the rest of one
        that has started stays, or the stream would be corrupt). What is left
        sits in the kernel's buffers, so the close frame reaches a client that
        reads again; the connection is kept for the heartbeat's interval plus
        timeout to let it, rather than Tornado's 5 s.
        """
        self.app.connections.dropped_by_backpressure += 1
        log.info("closing a %s feed: %d messages wait for a client that does not read",
                 self.table_name, len(self.queue))
        self.queue.clear()
        protocol = self.protocol
        if protocol is not None and not protocol.is_closing():
            protocol.drop_unsent()
            realtime = self.app.config.realtime
            protocol.linger = max(realtime.heartbeat_interval + realtime.heartbeat_timeout,
                                  CLOSE_WAIT_SECONDS)
        self.close(1013, "too many undelivered messages; reconnect with since")

    def _flush(self) -> None:
        """Hand queued frames to the socket as one write.

        Frames are built once per change and written to the stream directly:
        ``write_message`` would encode the text again for every client and
        start an asyncio task per message. At most one batch sits in
        Tornado's unbounded buffer; the rest waits in our bounded queue.
        """
        connection = self.ws_connection
        stream = connection.stream if connection is not None else None
        if stream is None or connection.is_closing() or stream.closed():
            self.queue.clear()
            return
        queue = self.queue
        batch: list[bytes] | None = None
        if len(queue) == 1:
            data = queue.popleft()
            self.sent += 1
        else:
            batch = []
            size = 0
            while queue and size < BATCH_BYTES:
                piece = queue.popleft()
                size += len(piece)
                batch.append(piece)
            data = b"".join(batch)
            self.sent += len(batch)
        try:
            if isinstance(connection, FeedProtocol):
                future = connection.write_frames(data, batch)
            else:
                future = stream.write(data)
        except StreamClosedError:
            queue.clear()
            return
        if future.done():
            # Written to the socket at once (the common case): nothing to wait for.
            future.exception()  # marks a failure as seen; it has closed the stream
            if queue or self.cursor is not None:  # more to send, or a replay to go on with
                self.in_flight = True
                IOLoop.current().add_callback(self._flushed, future)
            return
        self.in_flight = True
        future.add_done_callback(self._flushed)

    def _flushed(self, future: Any) -> None:
        self.in_flight = False
        if future.cancelled() or future.exception() is not None:
            self.queue.clear()
            return
        if self.cursor is not None:
            self._catch_up()
        if self.queue and not self.in_flight:
            self._flush()

    # -- client messages and heartbeats ----------------------------------------------
    def on_message(self, message: str | bytes) -> None:
        if self.closing:
            return
        if not self._within_rate():
            self.app.connections.closed_by_rate += 1
            log.info("closing a %s feed: its client sends more than %d messages a second",
                     self.table_name, self.app.config.realtime.max_messages_per_second)
            self.close(1008, "too many messages; slow down")
            return
        self.last_seen = time.monotonic()
        try:
            # values.loads: a message nested too deeply is malformed, not a
            # RecursionError that aborts the connection without a close frame.
            data = values.loads(message)
        except (ValueError, UnicodeDecodeError):
            data = None
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "ping":
            self.send_text('{"type":"pong"}')
        elif kind == "auth" and isinstance(data.get("token"), str):
            asyncio.ensure_future(self._refresh(data["token"]))
        else:
            self.send_text(values.dumps({"type": "error", "message":
                                       'unknown message; send {"type": "ping"}'}))

    def _within_rate(self) -> bool:
        """Take a token from this connection's bucket; False when it is empty."""
        rate = self.app.config.realtime.max_messages_per_second
        if not rate:
            return True
        now = time.monotonic()
        self.tokens = min(2.0 * rate, self.tokens + (now - self.refilled) * rate)
        self.refilled = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    async def _refresh(self, token: str) -> None:
        """Replace the identity with the one ``token`` proves, before the old one expires."""
        if not self.app.auth.authenticates:
            self.send_text(values.dumps({"type": "error", "code": "unsupported",
                                         "message": "no auth plugin is enabled"}))
            return
        try:
            identity = await self.app.auth.authenticate(self.request, token=token)
            if identity is None:
                raise ApiError(401, "unauthorized", "the token was not accepted")
            await self.app.auth.authorize(identity, "read", self.table_name)
        except ApiError as exc:
            self.send_text(values.dumps({"type": "error", "code": exc.code,
                                         "message": exc.message}))
            return
        self.identity = identity
        self._set_matchers()
        self._schedule_expiry()
        self.send_text(values.dumps({"type": "auth", "ok": True, "subject": identity.subject,
                                     "expires_at": identity.expires_at}))

    def _schedule_expiry(self) -> None:
        loop = IOLoop.current()
        if self.expiry is not None:
            loop.remove_timeout(self.expiry)
            self.expiry = None
        expires_at = self.identity.expires_at if self.identity is not None else None
        if expires_at is not None:
            self.expiry = loop.call_later(max(expires_at - time.time(), 0), self._expired)

    def _expired(self) -> None:
        self.expiry = None
        if not self.closing:
            self.close(4401, "token expired; reconnect or send a fresh token first")

    def on_pong(self, data: bytes) -> None:
        self.awaiting_pong = False
        self.last_seen = time.monotonic()

    def heartbeat(self, now: float) -> None:
        connections = self.app.connections
        if self.awaiting_pong and now - self.last_ping > connections.timeout:
            connections.dropped_by_heartbeat += 1
            self.abort()
        elif not self.awaiting_pong and now - self.last_ping >= connections.interval:
            self.last_ping = now
            self.awaiting_pong = True
            try:
                self.ping(b"")
            except WebSocketClosedError:
                self.abort()

    def abort(self) -> None:
        """Drop the connection at once: a dead peer will not answer a close handshake."""
        connection = self.ws_connection
        if connection is not None and connection.stream is not None:
            connection.stream.close()
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
            codes = {400: "bad_request", 403: "forbidden", 426: "upgrade_required"}
            message = chunk if isinstance(chunk, str) and chunk else self._reason
            headers = {"Sec-WebSocket-Version": "13"} if status == 426 else None
            self.send_api_error(ApiError(status, codes.get(status, "error"), message,
                                         headers=headers))
            return None
        return super().finish(chunk)

    # -- closing ---------------------------------------------------------------------
    def close(self, code: int | None = None, reason: str | None = None) -> None:
        self.closing = True
        self.queue.clear()
        self._forget()
        super().close(code, reason)

    def on_close(self) -> None:
        self._forget()

    def _forget(self) -> None:
        self.closing = True
        if self.expiry is not None:
            IOLoop.current().remove_timeout(self.expiry)
            self.expiry = None
        if self.feed is not None:
            self.feed.subscribers.discard(self)
        connections = self.app.connections
        connections.discard(self)
        connections.messages_sent += self.sent
        self.sent = 0
        self.queue.clear()


def routes(prefix: str, app: Pylight) -> list[tuple[str, type, dict[str, Any]]]:
    return [(rf"{prefix}/([^/]+)", FeedHandler, {"app": app})]


__all__ = ["ApiError", "Connections", "FeedHandler", "TableInfo", "has_feed", "routes"]
