"""The WebSocket wire (RFC 6455, RFC 7692) of the change feeds: frames built once and
shared by every subscriber, the feeds' protocol class, and permessage-deflate."""

from __future__ import annotations

import codecs
import logging
import socket
import struct
import zlib
from collections.abc import Sequence
from typing import Any

from tornado import httputil
from tornado.iostream import SSLIOStream, StreamClosedError
from tornado.util import _websocket_mask
from tornado.websocket import (
    WebSocketProtocol13,
)

from pylight.hub import Notice

log = logging.getLogger("pylight")

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


def notice_frame(notice: Notice, variant: str = "plain", window_bits: int | None = None,
                 key: Any = None) -> bytes:
    """The frame of a notice's message (one of ``Notice.VARIANTS``; ``key`` for
    ``left``), built once and shared by every subscriber; deflated for
    ``window_bits`` when given."""
    cached: Any = variant if window_bits is None else (variant, window_bits)
    built = notice.encodings.get(cached)
    if built is None:
        text = notice.variant(variant, key)
        built = notice.encodings[cached] = text_frame(text) if window_bits is None \
            else deflated_text_frame(text, window_bits)
    return built


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

    # The defaults live on the class and an instance sets only what differs: Tornado's
    # protocol object already has many attributes, and a few more per connection
    # would grow each one's dict (a kilobyte per idle subscriber).
    failed = False
    # Seconds the next close() waits for the client's answer (None: Tornado's 5 s).
    linger: float | None = None
    # server_max_window_bits of the negotiated permessage-deflate (None: not in use).
    deflate_bits: int | None = None
    _utf8: Any = None  # incremental validation of a fragmented text message
    _fragment_compressed = False
    # Frames may bypass Tornado's write buffer (plain TCP only: TLS has its own).
    direct = True

    def __init__(self, handler: Any, mask_outgoing: bool, params: Any) -> None:
        super().__init__(handler, mask_outgoing, params)
        # Writes not yet wholly handed to the socket: (start, end, frames or None for
        # one frame), as offsets in the stream's total output. A list, not a deque: it
        # is short, and an empty deque costs 0.7 KB per idle connection.
        self.writes: list[tuple[int, int, Sequence[bytes] | None]] = []
        if isinstance(handler.request.connection.stream, SSLIOStream):
            self.direct = False

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
        """Write ready frames (``frames`` lists them when ``data`` holds more than one);
        None when they went to the socket at once, else the stream's write future.

        With nothing waiting in the stream, the frames are sent on the socket
        directly: Tornado's write path (a future, its buffer, a peek) costs more
        than the system call on the fan-out's hot path. The stream's write
        counters are kept as if it had written them, so ``drop_unsent`` stays right.
        """
        stream = self.stream
        start = getattr(stream, "_total_write_index", None)
        sent = 0
        if start is not None and self.direct and not stream._write_buffer \
                and not stream.closed():
            try:
                sent = stream.socket.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # the stream's own write meets the error and closes it
            if sent:
                stream._total_write_index += sent
                stream._total_write_done_index += sent
                if sent == len(data):
                    return None
        future = stream.write(data[sent:] if sent else data)
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
        sent = 0
        while sent < len(writes) and writes[sent][1] <= done:
            sent += 1
        if sent:
            del writes[:sent]
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

    def give_up(self, linger: float) -> None:
        """Make room for a close frame to a client that does not read: drop what has
        not started to go out, and wait ``linger`` seconds for its answer."""
        if not self.is_closing():
            self.drop_unsent()
            self.linger = linger

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
        final, opcode, compressed, length = await self._read_header()
        control = bool(opcode & 0x8)
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
        await self._on_data(final, opcode, data, compressed)

    async def _read_header(self) -> tuple[bool, int, bool, int]:
        """``(final, opcode, compressed, payload length)`` of the next frame, checked."""
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
        return final, opcode, compressed, length

    async def _on_data(self, final: bool, opcode: int, data: bytes, compressed: bool) -> None:
        """A data frame's payload: a whole message, or a fragment of one."""
        if opcode != 0x0:  # the first frame of a message
            if final:
                await self._on_message(opcode, data, compressed)
                return
            self._fragmented_message_opcode = opcode
            self._fragment_compressed = compressed
            self._fragmented_message_buffer = bytearray(data)
            return
        buffered = self._fragmented_message_buffer
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
