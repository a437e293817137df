"""WebSocket change feeds: `/ws/<table>`, with filters, resume, heartbeats and backpressure."""

from __future__ import annotations

import asyncio
import codecs
import inspect
import logging
import socket
import struct
import time
import zlib
from collections import Counter, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tornado import httputil
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.iostream import StreamClosedError
from tornado.util import _websocket_mask
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
# How long Tornado waits for the client's answer to a close frame (its own fixed value).
CLOSE_WAIT_SECONDS = 5.0
# Messages shorter than this are sent uncompressed even when permessage-deflate
# is on (RFC 7692 lets every message choose): deflating them saves nothing.
DEFLATE_MIN_BYTES = 64
# Close codes a peer may send (RFC 6455 7.4.1 and 7.4.2, the IANA registry):
# 1004-1006 and 1015 are reserved and never sent; 1016-2999 are unassigned.
VALID_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})
PERMESSAGE_DEFLATE_KEYS = frozenset({"server_no_context_takeover", "client_no_context_takeover",
                                     "server_max_window_bits", "client_max_window_bits"})


def frame(payload: bytes, first_byte: int = 0x81) -> bytes:
    """One unmasked, unfragmented WebSocket frame (RFC 6455 5.2); text by default."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", first_byte, size)
    elif size < 65536:
        header = struct.pack("!BBH", first_byte, 126, size)
    else:
        header = struct.pack("!BBQ", first_byte, 127, size)
    return header + payload


def text_frame(text: str) -> bytes:
    """One unmasked, unfragmented, uncompressed WebSocket text frame (RFC 6455 5.2)."""
    return frame(text.encode("utf-8"))


def deflated_text_frame(text: str, window_bits: int) -> bytes:
    """The text as one permessage-deflate message (RFC 7692 7.2.1) compressed on its
    own (no context is shared with other messages, so one frame serves every
    connection that negotiated the same window), or uncompressed when that is not
    smaller."""
    payload = text.encode("utf-8")
    if len(payload) < DEFLATE_MIN_BYTES:
        return frame(payload)
    if window_bits < 9:
        # zlib cannot deflate with a 256-byte window; Huffman coding alone refers
        # to no earlier bytes, so it fits any window.
        compressor = zlib.compressobj(6, zlib.DEFLATED, -9, 8, zlib.Z_HUFFMAN_ONLY)
    else:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -window_bits)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    data = data[:-4]  # the 00 00 ff ff a sync flush ends with (RFC 7692 7.2.1)
    if len(data) >= len(payload):
        return frame(payload)
    return frame(data, 0xC1)  # FIN, RSV1 ("compressed"), text


def notice_frame(notice: Notice, variant: str = "plain", window_bits: int | None = None) -> bytes:
    """The frame of a notice's message (one of ``Notice.VARIANTS``), built once and
    shared by every subscriber; deflated for ``window_bits`` when given."""
    key: Any = variant if window_bits is None else (variant, window_bits)
    built = notice.wire.get(key)
    if built is None:
        text = notice.variant(variant)
        built = notice.wire[key] = text_frame(text) if window_bits is None \
            else deflated_text_frame(text, window_bits)
    return built


def has_feed(table: TableInfo) -> bool:
    """Whether ``table`` has a change feed: every table; a view only with a change source.

    Nothing writes to a view through Pylight and capture triggers cannot be
    put on one, so its feed would stay silent. A plugin that publishes a
    view's changes itself (``app.hub.publish``) marks its table info, e.g. in
    ``pylight_startup``: ``app.tables["my_view"].change_source = "my_plugin"``.
    """
    return not table.is_view or bool(getattr(table, "change_source", None))


class _Failed(Exception):
    """Raised inside frame parsing once the connection has been failed."""


class FeedProtocol(WebSocketProtocol13):
    """Tornado's RFC 6455 protocol, strict where Tornado is lenient, and aware of the
    frames FeedHandler writes itself.

    - A protocol error fails the connection with a close frame carrying 1002
      (1007 for text that is not UTF-8, 1009 for a message over the limit),
      then a FIN once it is written (RFC 6455 7.1.7): Tornado drops the TCP
      connection without one, and echoes close codes that may not be sent
      (0, 999, 1004-1006, 1016-2999: Autobahn cases 7.9.x).
    - Every write is recorded by where it starts and where its frames end, so
      frames that wait in Tornado's write buffer and have not started to go out
      can be dropped whole (``drop_unsent``) before a close frame.
    - permessage-deflate (RFC 7692) is negotiated with server_no_context_takeover,
      so each message is compressed on its own and the compressed frame is shared.
    """

    def __init__(self, handler: Any, mask_outgoing: bool, params: Any) -> None:
        super().__init__(handler, mask_outgoing, params)
        # Writes not yet wholly handed to the socket: (start, end, frames or None for
        # one frame), as offsets in the stream's total output.
        self.writes: deque[tuple[int, int, Sequence[bytes] | None]] = deque()
        self.failed = False
        # Seconds the next close() waits for the client's answer (None: Tornado's 5 s).
        self.linger: float | None = None
        # server_max_window_bits of the negotiated permessage-deflate (None: not in use).
        self.deflate_bits: int | None = None
        self._utf8: Any = None  # incremental validation of a fragmented text message
        self._fragment_compressed = False

    # -- permessage-deflate negotiation ----------------------------------------------
    def _parse_extensions_header(self, headers: httputil.HTTPHeaders
                                 ) -> list[tuple[str, dict[str, str]]]:
        """The one permessage-deflate offer to accept, if any (Tornado takes the first
        it sees, and drops the connection when that one has a parameter it does not
        know; its parser also loses parameters without a value)."""
        if self._compression_options is None:
            return []
        offers = ",".join(headers.get_list("Sec-WebSocket-Extensions"))
        for name, params in parse_extensions(offers):
            if name != "permessage-deflate" or params is None \
                    or not _acceptable_deflate_offer(params):
                continue  # declined (RFC 7692 5): the next offer may do
            accepted: dict[str, Any] = dict(params)
            accepted["server_no_context_takeover"] = None
            bits = accepted.get("server_max_window_bits")
            self.deflate_bits = int(bits) if bits is not None else zlib.MAX_WBITS
            return [(name, accepted)]
        return []

    # -- writes ----------------------------------------------------------------------
    def write_frames(self, data: bytes, frames: Sequence[bytes] | None) -> Any:
        """Write ready frames (``frames`` lists them when ``data`` holds more than one)."""
        stream = self.stream
        start = getattr(stream, "_total_write_index", None)
        future = stream.write(data)
        if start is not None:
            self._record(start, start + len(data), frames)
        return future

    def _write_frame(self, fin: bool, opcode: int, data: bytes, flags: int = 0) -> Any:
        start = getattr(self.stream, "_total_write_index", None)
        future = super()._write_frame(fin, opcode, data, flags)
        if start is not None:
            self._record(start, self.stream._total_write_index, None)
        return future

    def _record(self, start: int, end: int, frames: Sequence[bytes] | None) -> None:
        done = self.stream._total_write_done_index
        writes = self.writes
        while writes and writes[0][1] <= done:
            writes.popleft()
        if end > done:
            writes.append((start, end, frames))

    def _first_boundary(self, done: int) -> int | None:
        """The first frame boundary at or after ``done`` (bytes already handed to the
        socket); None when it is not known."""
        for start, end, frames in self.writes:
            if end <= done:
                continue
            if start >= done:
                return start
            if frames is None:
                return end
            position = start
            for piece in frames:
                position += len(piece)
                if position >= done:
                    return position
            return end
        return None

    def drop_unsent(self) -> int:
        """Drop the frames in Tornado's write buffer that have not started to go out;
        the rest of a frame that has started stays (cutting one would corrupt the
        stream). Returns the bytes dropped."""
        stream = self.stream
        try:
            done = stream._total_write_done_index
            total = stream._total_write_index
            buffer = stream._write_buffer
            futures = stream._write_futures
            pieces = buffer._buffers
            position = buffer._first_pos
        except AttributeError:  # another Tornado: keep everything
            return 0
        cut = self._first_boundary(done) if total > done else None
        if cut is None or cut >= total:
            return 0
        keep = cut - done
        kept = bytearray()
        for _, piece in pieces:
            if len(kept) >= keep:
                break
            kept += piece[position:position + keep - len(kept)]
            position = 0
        buffer.clear()
        if kept:
            buffer.append(bytes(kept))
        stream._total_write_index = cut
        for i, (index, future) in enumerate(futures):
            if index > cut:
                futures[i] = (cut, future)
        self.writes.clear()
        return total - cut

    # -- closing ---------------------------------------------------------------------
    def close(self, code: int | None = None, reason: str | None = None) -> None:
        super().close(code, reason)
        linger, self.linger = self.linger, None
        if linger is not None and self._waiting is not None:
            loop = self.stream.io_loop
            loop.remove_timeout(self._waiting)
            self._waiting = loop.add_timeout(loop.time() + linger, self._abort)

    def fail(self, code: int, reason: str) -> None:
        """_Fail the WebSocket Connection_ (RFC 6455 7.1.7): a close frame with ``code``,
        then a FIN once it is written; what the client sends after is read and dropped
        until it closes (or the close wait runs out), so no RST can overtake the frame."""
        if self.failed:
            return
        self.failed = True
        self._fragmented_message_buffer = None
        self._utf8 = None
        log.debug("failing a WebSocket connection: %d %s", code, reason)
        self.handler.close(code, reason)  # the handler's own cleanup; writes the close frame
        self.close(code, reason)  # when the handler had already let go of the connection
        stream = self.stream
        if stream.closed():
            return
        try:
            flushed = stream.write(b"")  # done once everything before it is written
        except StreamClosedError:
            return
        flushed.add_done_callback(self._half_close)

    def _half_close(self, future: Any) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        sock = self.stream.socket
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    # -- reading ---------------------------------------------------------------------
    async def _receive_frame(self) -> None:
        if self.failed:
            # The client's bytes are no longer frames to us: drop them until it goes.
            await self.stream.read_bytes(65536, partial=True)
            return
        try:
            await self._read_frame()
        except _Failed:
            pass

    def _fail_frame(self, code: int, reason: str) -> _Failed:
        self.fail(code, reason)
        return _Failed()

    async def _read_frame(self) -> None:
        header, second = struct.unpack("BB", await self._read_bytes(2))
        final = bool(header & self.FIN)
        reserved = header & self.RSV_MASK
        opcode = header & self.OPCODE_MASK
        control = bool(opcode & 0x8)
        compressed = False
        if reserved == self.RSV1 and self._decompressor is not None and opcode in (0x1, 0x2):
            compressed = True  # only the first frame of a data message may say so
            reserved = 0
        if reserved:
            raise self._fail_frame(1002, "reserved bits set that no extension defines")
        if opcode not in (0x0, 0x1, 0x2, 0x8, 0x9, 0xA):
            raise self._fail_frame(1002, f"unknown opcode {opcode}")
        if not second & 0x80:
            raise self._fail_frame(1002, "client frames must be masked")
        length = second & 0x7F
        if control and not final:
            raise self._fail_frame(1002, "control frames must not be fragmented")
        if control and length > 125:
            raise self._fail_frame(1002, "control frame payloads are at most 125 bytes")
        if length == 126:
            (length,) = struct.unpack("!H", await self._read_bytes(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self._read_bytes(8))
            if length >> 63:
                raise self._fail_frame(1002, "the most significant bit of a length must be 0")
        buffered = self._fragmented_message_buffer
        if opcode == 0x0 and buffered is None:
            raise self._fail_frame(1002, "a continuation frame with no message to continue")
        if opcode in (0x1, 0x2) and buffered is not None:
            raise self._fail_frame(1002, "a new message began before the last one ended")
        if not control and length + (len(buffered) if opcode == 0 and buffered else 0) \
                > self.params.max_message_size:
            raise self._fail_frame(1009, "message too big")
        mask = await self._read_bytes(4)
        if opcode in (0x1, 0x2):  # a message begins; uncompressed text is checked as it
            # arrives, so invalid UTF-8 fails the connection at once (Autobahn 6.4.x)
            self._utf8 = codecs.getincrementaldecoder("utf-8")() \
                if opcode == 0x1 and not compressed else None
        if control or self._utf8 is None:
            data = _websocket_mask(mask, await self._read_bytes(length))
        else:
            data = await self._read_text(length, mask)
        if control:
            await self._on_control(opcode, data)
            return
        if final:
            self._check_utf8(b"", True)
            self._utf8 = None
        if opcode != 0x0:  # the first frame of a message
            if final:
                await self._on_message(opcode, data, compressed)
                return
            self._fragmented_message_opcode = opcode
            self._fragment_compressed = compressed
            self._fragmented_message_buffer = bytearray(data)
            return
        assert buffered is not None
        buffered.extend(data)
        if final:
            opcode = self._fragmented_message_opcode
            self._fragmented_message_buffer = None
            await self._on_message(opcode, bytes(buffered), self._fragment_compressed)

    async def _read_text(self, length: int, mask: bytes) -> bytes:
        """A text frame's payload, each piece checked as UTF-8 as soon as it arrives."""
        pieces = []
        offset = 0
        while offset < length:
            piece = await self.stream.read_bytes(length - offset, partial=True)
            self._wire_bytes_in += len(piece)
            shift = offset % 4
            piece = _websocket_mask(mask[shift:] + mask[:shift], piece)
            offset += len(piece)
            self._check_utf8(piece, False)
            pieces.append(piece)
        return b"".join(pieces)

    def _check_utf8(self, data: bytes, final: bool) -> None:
        """Fail a text message at its first invalid byte, not at its end."""
        if self._utf8 is None:
            return
        try:
            self._utf8.decode(data, final)
        except UnicodeDecodeError:
            raise self._fail_frame(1007, "text message is not valid UTF-8") from None

    async def _on_message(self, opcode: int, data: bytes, compressed: bool) -> None:
        if self.client_terminated:
            return
        if compressed:
            assert self._decompressor is not None
            try:
                data = self._decompressor.decompress(data)
            except zlib.error:
                raise self._fail_frame(1007, "the compressed message does not inflate") from None
            except Exception:  # Tornado's _DecompressTooLargeError
                raise self._fail_frame(1009, "message too big after decompression") from None
        message: str | bytes = data
        if opcode == 0x1:
            self._message_bytes_in += len(data)
            try:
                message = data.decode("utf-8")
            except UnicodeDecodeError:
                raise self._fail_frame(1007, "text message is not valid UTF-8") from None
        else:
            self._message_bytes_in += len(data)
        handled = self._run_callback(self.handler.on_message, message)
        if handled is not None:
            await handled

    async def _on_control(self, opcode: int, data: bytes) -> None:
        if opcode == 0x8:
            if len(data) == 1:
                raise self._fail_frame(1002, "a close payload of one byte")
            code = struct.unpack("!H", data[:2])[0] if data else None
            if code is not None and code not in VALID_CLOSE_CODES \
                    and not 3000 <= code <= 4999:
                raise self._fail_frame(1002, f"close code {code} may not be sent")
            try:
                reason = data[2:].decode("utf-8") if len(data) > 2 else None
            except UnicodeDecodeError:
                raise self._fail_frame(1007, "the close reason is not valid UTF-8") from None
            self.client_terminated = True
            self.close_code = code
            self.close_reason = reason
            self.close(code)  # echo the code (RFC 6455 5.5.1)
        elif opcode == 0x9:
            self._send_pong(data)
            self._run_callback(self.handler.on_ping, data)
        else:
            self._received_pong = True
            handled = self._run_callback(self.handler.on_pong, data)
            if handled is not None:
                await handled


def parse_extensions(header: str) -> list[tuple[str, dict[str, str | None] | None]]:
    """``Sec-WebSocket-Extensions`` offers as (name, parameters); parameters are None
    when an offer names one twice (RFC 7692 7: such an offer is declined)."""
    offers: list[tuple[str, dict[str, str | None] | None]] = []
    for element in header.split(","):
        name, *parts = (part.strip() for part in element.split(";"))
        if not name:
            continue
        params: dict[str, str | None] | None = {}
        for part in parts:
            key, equals, value = (piece.strip() for piece in part.partition("="))
            if not key:
                continue
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if params is not None and key.lower() in params:
                params = None
            if params is not None:
                params[key.lower()] = value if equals else None
        offers.append((name.lower(), params))
    return offers


def _acceptable_deflate_offer(params: dict[str, Any]) -> bool:
    """Whether a permessage-deflate offer's parameters are valid (RFC 7692 7.1)."""
    for key, value in params.items():
        if key not in PERMESSAGE_DEFLATE_KEYS:
            return False
        if key.endswith("no_context_takeover"):
            if value is not None:
                return False
        elif value is None:
            if key == "server_max_window_bits":
                return False
        elif not (isinstance(value, str) and value.isascii() and value.isdigit()
                  and not value.startswith("0") and 8 <= int(value) <= 15):
            return False
    return True



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
