"""RFC 6455 and RFC 7692 conformance of the feeds, with raw sockets: the cases of the
Autobahn fuzzing client (which runs on Python 2.7 only) that do not need an echo.

Each case sends frames and says what the server must answer: replies (a pong, or
the answer to a text message), and then either a healthy connection (a normal
close is echoed) or the connection failed with a given close code (RFC 6455
7.1.7: 1002 for a protocol error, 1007 for text that is not UTF-8). The same
cases run against a plain Tornado ``WebSocketHandler`` echo server for
comparison (``python -m tests.test_websocket_protocol`` prints the table; the
plain server's results are never asserted, they are Tornado's).
``python -m tests.test_websocket_protocol --autobahn 9001`` serves echoes for the
real Autobahn client instead: plain Tornado on 9001, Pylight's ``FeedProtocol``
on 9002 (docs/security.md has the figures of a run).

The protocol does not depend on the database, so these tests run on SQLite only.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application
from tornado.websocket import WebSocketHandler

from pylight.hub import Change
from tests.realtime_support import in_thread, port_of, upgrade

sqlite_only = pytest.mark.parametrize("database", ["sqlite"], indirect=True)

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
READ_TIMEOUT = 3.0
PING_TEXT = '{"type":"ping"}'


# -- the client side, on raw sockets --------------------------------------------------------

def client_frame(opcode: int, payload: bytes | str = b"", *, fin: bool = True, rsv: int = 0,
                 masked: bool = True) -> bytes:
    """One client frame; masked unless told otherwise (RFC 6455 5.3)."""
    data = payload.encode() if isinstance(payload, str) else payload
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if masked else 0
    size = len(data)
    if size < 126:
        header = struct.pack("!BB", first, mask_bit | size)
    elif size < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not masked:
        return header + data
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def close_payload(code: int | None, reason: bytes = b"") -> bytes:
    return b"" if code is None else struct.pack("!H", code) + reason


def handshake(port: int, path: str, extensions: str | None = None
              ) -> tuple[socket.socket, dict[str, str], bytes]:
    """Blocking: connect and upgrade; the socket, the 101's headers and bytes after it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
    headers, rest = upgrade(sock, port, path, extensions)
    return sock, headers, rest


@dataclass
class Frame:
    opcode: int
    payload: bytes
    rsv: int = 0

    @property
    def code(self) -> int | None:
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None


class Reader:
    """Server frames from a socket, one at a time (unmasked, RFC 6455 5.1)."""

    def __init__(self, sock: socket.socket, early: bytes = b"") -> None:
        self.sock = sock
        self.buffer = early
        self.eof = False

    def _fill(self, size: int, deadline: float) -> bool:
        while len(self.buffer) < size:
            if self.eof:
                return False
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return False
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if not chunk:
                self.eof = True
                return False
            self.buffer += chunk
        return True

    def next(self, timeout: float = READ_TIMEOUT) -> Frame | None:
        """The next frame; None at EOF, a reset or the timeout."""
        deadline = time.monotonic() + timeout
        if not self._fill(2, deadline):
            return None
        first, second = self.buffer[0], self.buffer[1]
        length, offset = second & 0x7F, 2
        if length == 126:
            if not self._fill(4, deadline):
                return None
            (length,) = struct.unpack("!H", self.buffer[2:4])
            offset = 4
        elif length == 127:
            if not self._fill(10, deadline):
                return None
            (length,) = struct.unpack("!Q", self.buffer[2:10])
            offset = 10
        if not self._fill(offset + length, deadline):
            return None
        payload = self.buffer[offset:offset + length]
        self.buffer = self.buffer[offset + length:]
        return Frame(first & 0x0F, payload, (first >> 4) & 0x7)

    def closed(self, timeout: float = READ_TIMEOUT) -> bool:
        """Whether the server closes the TCP connection within ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            if not self._fill(len(self.buffer) + 1, deadline):
                break
        return self.eof


# -- the cases --------------------------------------------------------------------------------

@dataclass
class Case:
    """``send`` frames; the server answers ``replies`` (frames a Profile turns into what
    that server sends), then fails the connection with ``fails`` (a close code), or
    echoes the close ``echo`` (a code, or "empty"), or stays healthy."""

    name: str
    send: list[bytes]
    replies: list[tuple[int, bytes]] = field(default_factory=list)
    fails: int | None = None
    echo: int | str | None = None


@dataclass
class Profile:
    """How one server answers: its path, whether it greets, and its reply to a message."""

    name: str
    path: str
    greets: bool
    reply: Callable[[int, bytes], tuple[int, bytes]]


def pylight_reply(opcode: int, payload: bytes) -> tuple[int, bytes]:
    return TEXT, PING_TEXT.replace("ping", "pong").encode()


def echo_reply(opcode: int, payload: bytes) -> tuple[int, bytes]:
    return opcode, payload


PING_UTF8 = '{"type":"ping","text":"κόσμε ünïcödé 𝄞"}'.encode()
INVALID_UTF8 = [
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",  # a surrogate (6.3.1)
    b"\xc0\xaf",  # overlong "/"
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xff",
    b'{"type":"ping"}\x80',
]
VALID_CLOSE = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999]
INVALID_CLOSE = [0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999]


def ping_text_in(parts: int) -> list[bytes]:
    """PING_UTF8 as ``parts`` fragments, split inside multi-byte characters."""
    size = -(-len(PING_UTF8) // parts)
    pieces = [PING_UTF8[i:i + size] for i in range(0, len(PING_UTF8), size)]
    return [client_frame(TEXT if i == 0 else CONTINUATION, piece, fin=i == len(pieces) - 1)
            for i, piece in enumerate(pieces)]


def cases() -> list[Case]:
    message = (TEXT, PING_TEXT.encode())
    out = [
        # framing (Autobahn 1.x, 2.x)
        Case("text message", [client_frame(TEXT, PING_TEXT)], [message]),
        Case("binary message", [client_frame(BINARY, PING_TEXT)], [(BINARY, PING_TEXT.encode())]),
        Case("text message of 60 000 bytes",
             [client_frame(TEXT, PING_TEXT[:-1] + ',"pad":"' + "x" * 60_000 + '"}')],
             [(TEXT, (PING_TEXT[:-1] + ',"pad":"' + "x" * 60_000 + '"}').encode())]),
        Case("empty ping", [client_frame(PING)], [(PONG, b"")]),
        Case("ping with 125 bytes", [client_frame(PING, b"\xfe" * 125)], [(PONG, b"\xfe" * 125)]),
        Case("ping with 126 bytes", [client_frame(PING, b"x" * 126)], fails=1002),
        Case("unsolicited pong", [client_frame(PONG, b"hello"), client_frame(TEXT, PING_TEXT)],
             [message]),
        Case("ten pings", [client_frame(PING, f"p{i}") for i in range(10)],
             [(PONG, f"p{i}".encode()) for i in range(10)]),
        Case("unmasked text frame", [client_frame(TEXT, PING_TEXT, masked=False)], fails=1002),
        Case("unmasked ping", [client_frame(PING, b"x", masked=False)], fails=1002),
    ]
    # reserved bits (3.x), without an extension that defines them
    for rsv in range(1, 8):
        out.append(Case(f"text with RSV={rsv}", [client_frame(TEXT, PING_TEXT, rsv=rsv)],
                        fails=1002))
    out.append(Case("ping with RSV=1", [client_frame(PING, b"x", rsv=1)], fails=1002))
    out.append(Case("valid text, then RSV=2, then ping",
                    [client_frame(TEXT, PING_TEXT), client_frame(TEXT, PING_TEXT, rsv=2),
                     client_frame(PING)], [message], fails=1002))
    # opcodes (4.x)
    for opcode in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF):
        out.append(Case(f"reserved opcode {opcode}", [client_frame(opcode, b"x")], fails=1002))
    # fragmentation (5.x)
    out += [
        Case("text in two fragments", ping_text_in(2), [(TEXT, PING_UTF8)]),
        Case("text in nine fragments", ping_text_in(9), [(TEXT, PING_UTF8)]),
        Case("fragments with a ping between",
             [*ping_text_in(3)[:2], client_frame(PING, b"between"), ping_text_in(3)[2]],
             [(PONG, b"between"), (TEXT, PING_UTF8)]),
        Case("fragments with empty ones",
             [client_frame(TEXT, b"", fin=False), *[client_frame(CONTINUATION, PING_UTF8[i:i + 1],
                                                                 fin=False)
                                                    for i in range(len(PING_UTF8))],
              client_frame(CONTINUATION, b"")], [(TEXT, PING_UTF8)]),
        Case("binary in fragments", [client_frame(BINARY, b'{"type":', fin=False),
                                     client_frame(CONTINUATION, b'"ping"}')],
             [(BINARY, PING_TEXT.encode())]),
        Case("fragmented ping", [client_frame(PING, b"a", fin=False),
                                 client_frame(CONTINUATION, b"b")], fails=1002),
        Case("fragmented pong", [client_frame(PONG, b"a", fin=False),
                                 client_frame(CONTINUATION, b"b")], fails=1002),
        Case("continuation without a start (final)", [client_frame(CONTINUATION, PING_TEXT)],
             fails=1002),
        Case("continuation without a start (not final)",
             [client_frame(CONTINUATION, PING_TEXT, fin=False)], fails=1002),
        Case("a new text while fragments are open",
             [client_frame(TEXT, b'{"type":', fin=False), client_frame(TEXT, PING_TEXT)],
             fails=1002),
        Case("valid text, then a continuation without a start",
             [client_frame(TEXT, PING_TEXT), client_frame(CONTINUATION, b"x")], [message],
             fails=1002),
    ]
    # UTF-8 (6.x)
    out.append(Case("valid UTF-8 text", [client_frame(TEXT, PING_UTF8)], [(TEXT, PING_UTF8)]))
    for i, bad in enumerate(INVALID_UTF8):
        out.append(Case(f"invalid UTF-8 text #{i + 1}", [client_frame(TEXT, bad)], fails=1007))
    out.append(Case("invalid UTF-8 across fragments",
                    [client_frame(TEXT, b'{"type":"ping","x":"\xce', fin=False),
                     client_frame(CONTINUATION, b'\xba\xed\xa0\x80"}')], fails=1007))
    out.append(Case("invalid UTF-8 in the first of many fragments (fails fast)",
                    [client_frame(TEXT, b"\xc0\xaf", fin=False)], fails=1007))
    # close handling (7.x)
    out += [
        Case("close without a payload", [client_frame(CLOSE)], echo="empty"),
        Case("close with a one-byte payload", [client_frame(CLOSE, b"\x03")], fails=1002),
        Case("close 1000 with a reason", [client_frame(CLOSE, close_payload(1000, b"bye"))],
             echo=1000),
        Case("close with a 123-byte reason",
             [client_frame(CLOSE, close_payload(1000, b"r" * 123))], echo=1000),
        Case("close reason not UTF-8",
             [client_frame(CLOSE, close_payload(1000, b"\xce\xba\xed\xa0\x80"))], fails=1007),
        Case("text after close is ignored",
             [client_frame(CLOSE, close_payload(1000)), client_frame(TEXT, PING_TEXT)],
             echo=1000),
        Case("ping after close is ignored",
             [client_frame(CLOSE, close_payload(1000)), client_frame(PING, b"late")],
             echo=1000),
    ]
    for code in VALID_CLOSE:
        out.append(Case(f"close code {code}", [client_frame(CLOSE, close_payload(code))],
                        echo=code))
    for code in INVALID_CLOSE:
        out.append(Case(f"invalid close code {code}", [client_frame(CLOSE, close_payload(code))],
                        fails=1002))
    return out


CASES = cases()


def run_case(port: int, profile: Profile, case: Case) -> str:
    """Blocking: "" when the server answered as the case says, else what went wrong."""
    sock, _, early = handshake(port, profile.path)
    reader = Reader(sock, early)
    try:
        if profile.greets:
            hello = reader.next()
            assert hello is not None and hello.opcode == TEXT, hello
        try:
            for data in case.send:
                sock.sendall(data)
        except OSError:
            pass  # the server may fail the connection before it has read everything
        for opcode, payload in case.replies:
            want = profile.reply(opcode, payload) if opcode in (TEXT, BINARY) \
                else (opcode, payload)
            got = reader.next()
            while got is not None and got.opcode == PING:  # a heartbeat
                got = reader.next()
            if got is None or (got.opcode, got.payload) != want:
                return f"expected {want[0]:#x} {want[1][:40]!r}, got {describe(got)}"
        if case.fails is None and case.echo is None:
            # still healthy: a normal close is answered with the same code
            sock.sendall(client_frame(CLOSE, close_payload(1000)))
            expect_code: int | str = 1000
        else:
            expect_code = case.fails if case.fails is not None else case.echo  # type: ignore[assignment]
        got = reader.next()
        while got is not None and got.opcode == PING:
            got = reader.next()
        if got is None or got.opcode != CLOSE:
            return f"expected a close frame with {expect_code}, got {describe(got)}"
        if expect_code == "empty":
            if got.payload not in (b"", struct.pack("!H", 1000)):
                return f"expected an empty close (or 1000), got {got.code}"
        elif got.code != expect_code:
            return f"expected close code {expect_code}, got {got.code} {got.payload[2:]!r}"
        if case.fails is not None and not reader.closed():
            # the server closes the TCP connection first (RFC 6455 7.1.1, 7.1.7)
            return "the failed connection was not closed"
        return ""
    finally:
        sock.close()


def describe(frame: Frame | None) -> str:
    if frame is None:
        return "the connection dropped (no close frame)"
    if frame.opcode == CLOSE:
        return f"close {frame.code} {frame.payload[2:]!r}"
    return f"opcode {frame.opcode:#x} {frame.payload[:40]!r}"


PYLIGHT = Profile("Pylight", "/ws/products", True, pylight_reply)
TORNADO = Profile("plain Tornado", "/echo", False, echo_reply)


class EchoHandler(WebSocketHandler):
    """The plain Tornado server the results are compared with."""

    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=isinstance(message, bytes))


def start_echo_server() -> tuple[HTTPServer, int]:
    server = HTTPServer(Application([(r"/echo", EchoHandler)]))
    sock, port = bind_unused_port()
    server.add_sockets([sock])
    return server, port


async def run_all(port: int, profile: Profile) -> dict[str, str]:
    return {case.name: await in_thread(run_case, port, profile, case) for case in CASES}


def table(results: dict[str, dict[str, str]]) -> str:
    lines = []
    for name, outcome in results.items():
        failed = {case: why for case, why in outcome.items() if why}
        lines.append(f"{name}: {len(outcome) - len(failed)} OK, {len(failed)} FAILED")
        lines.extend(f"  FAILED {case}: {why}" for case, why in failed.items())
    return "\n".join(lines)


# -- the tests ----------------------------------------------------------------------------------

@sqlite_only
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
@pytest.mark.gen_test(timeout=30)
async def test_protocol_case(server, case):
    assert await in_thread(run_case, port_of(server), PYLIGHT, case) == ""
    # the server forgets every connection, failed or closed
    deadline = time.monotonic() + 10
    while server.app.connections.count() and time.monotonic() < deadline:
        await in_thread(time.sleep, 0.01)
    assert server.app.connections.count() == 0


@sqlite_only
@pytest.mark.gen_test(timeout=120)
async def test_pylight_next_to_plain_tornado(server, capsys):
    """Every case passes on Pylight; plain Tornado's results are printed next to them."""
    echo, echo_port = start_echo_server()
    try:
        results = {"Pylight": await run_all(port_of(server), PYLIGHT),
                   "plain Tornado": await run_all(echo_port, TORNADO)}
    finally:
        echo.stop()
    with capsys.disabled():
        print("\n" + table(results))
    assert not any(results["Pylight"].values()), table({"Pylight": results["Pylight"]})


# -- permessage-deflate (RFC 7692; Autobahn 12.x, 13.x) ------------------------------------------

@pytest.fixture
def compressing(make_server):
    return make_server({"realtime": {"compression": "true"}})


def inflate(frame: Frame, window_bits: int = 15) -> bytes:
    if not frame.rsv & 0x4:
        return frame.payload
    return zlib.decompressobj(-window_bits).decompress(frame.payload + b"\x00\x00\xff\xff")


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def big_row(i: int) -> dict[str, Any]:
    return {"id": 1, "name": f"row {i} " + "compressible text " * 40}


@sqlite_only
@pytest.mark.gen_test(timeout=30)
async def test_compression_is_off_unless_configured(server):
    sock, headers, _ = await in_thread(handshake, port_of(server), "/ws/products",
                                       "permessage-deflate; client_max_window_bits")
    sock.close()
    assert "sec-websocket-extensions" not in headers
    assert server.app.config.realtime.compression is False


@sqlite_only
@pytest.mark.parametrize("offer, window", [
    ("permessage-deflate", 15),
    ("permessage-deflate; client_max_window_bits", 15),
    ("permessage-deflate; server_no_context_takeover; client_no_context_takeover", 15),
    ("permessage-deflate; server_max_window_bits=10", 10),
    ("permessage-deflate; server_max_window_bits=8; client_max_window_bits=9", 8),
    # an offer with an unknown parameter is declined and the next one taken (RFC 7692 5)
    ("permessage-deflate; bogus=1, permessage-deflate; server_max_window_bits=12", 12),
])
@pytest.mark.gen_test(timeout=30)
async def test_compressed_changes_arrive_whole(compressing, offer, window):
    server = compressing
    app = server.app
    sock, headers, early = await in_thread(handshake, port_of(server), "/ws/products", offer)
    try:
        accepted = headers.get("sec-websocket-extensions", "")
        assert accepted.startswith("permessage-deflate"), headers
        assert "server_no_context_takeover" in accepted
        assert ("bogus" in accepted) is False
        if window != 15:
            assert f"server_max_window_bits={window}" in accepted
        reader = Reader(sock, early)
        hello = await in_thread(reader.next)
        assert json.loads(inflate(hello, window))["type"] == "hello"
        for i in range(5):
            app.hub.publish(Change("products", "updated", 1, big_row(i)))
        for i in range(5):
            change = await in_thread(reader.next)
            assert change.rsv == 0x4, "a large change is sent compressed"
            text = inflate(change, window)
            assert len(change.payload) < len(text) * (0.6 if window == 8 else 0.3)
            message = json.loads(text)
            assert message["seq"] == i + 1 and message["record"] == big_row(i)
        # a compressed message from the client is read too
        sock.sendall(client_frame(TEXT, deflate(b'{"type": "ping", "pad": "' + b"p" * 300
                                                + b'"}'), rsv=0x4))
        pong = await in_thread(reader.next)
        assert json.loads(inflate(pong, window)) == {"type": "pong"}
        # and the same frame went to every subscriber: it was compressed once
        notice = app.hub.feed("products").ring[-1]
        assert ("plain", window) in notice.encodings
    finally:
        sock.close()


@sqlite_only
@pytest.mark.parametrize("offer", ["x-webkit-deflate-frame", "permessage-deflate; bogus",
                                   "permessage-deflate; server_max_window_bits=7",
                                   "permessage-deflate; server_max_window_bits",
                                   "permessage-deflate; client_max_window_bits=16",
                                   "permessage-deflate; server_no_context_takeover=1"])
@pytest.mark.gen_test(timeout=30)
async def test_unusable_offers_are_declined_not_dropped(compressing, offer):
    server = compressing
    sock, headers, early = await in_thread(handshake, port_of(server), "/ws/products", offer)
    try:
        assert "sec-websocket-extensions" not in headers
        reader = Reader(sock, early)
        assert json.loads((await in_thread(reader.next)).payload)["type"] == "hello"
        server.app.hub.publish(Change("products", "updated", 1, big_row(0)))
        change = await in_thread(reader.next)
        assert change.rsv == 0 and json.loads(change.payload)["seq"] == 1
    finally:
        sock.close()


@sqlite_only
@pytest.mark.parametrize("name, frames", [
    ("RSV1 on a ping", [client_frame(PING, b"x", rsv=0x4)]),
    ("RSV1 on a continuation", [client_frame(TEXT, deflate(b'{"type":'), rsv=0x4, fin=False),
                                client_frame(CONTINUATION, b"x", rsv=0x4)]),
    ("RSV2 on a text", [client_frame(TEXT, PING_TEXT, rsv=0x2)]),
])
@pytest.mark.gen_test(timeout=30)
async def test_compression_protocol_errors_fail_with_1002(compressing, name, frames):
    server = compressing
    sock, _, early = await in_thread(handshake, port_of(server), "/ws/products",
                                     "permessage-deflate")
    try:
        reader = Reader(sock, early)
        await in_thread(reader.next)  # hello
        for data in frames:
            sock.sendall(data)
        close = await in_thread(reader.next)
        assert close is not None and close.opcode == CLOSE and close.code == 1002, describe(close)
    finally:
        sock.close()


class FeedProtocolEcho(WebSocketHandler):
    """An echo over Pylight's FeedProtocol (frames written as FeedHandler writes them),
    for Autobahn's fuzzing client, whose data cases all need an echo."""

    def get_compression_options(self) -> dict[str, Any]:
        return {}

    def get_websocket_protocol(self) -> Any:
        from pylight.wire import FeedProtocol

        base = super().get_websocket_protocol()
        return None if base is None else FeedProtocol(self, False, base.params)

    def on_message(self, message: str | bytes) -> None:
        from pylight.wire import deflated_text_frame, frame

        protocol = self.ws_connection
        if protocol is None or protocol.is_closing():
            return
        bits = protocol.deflate_bits  # type: ignore[attr-defined]
        if isinstance(message, str):
            data = frame(message.encode()) if bits is None else deflated_text_frame(message, bits)
        elif bits is None:
            data = frame(message, 0x82)
        else:
            compressor = zlib.compressobj(6, zlib.DEFLATED, -max(bits, 9), 8,
                                          zlib.Z_HUFFMAN_ONLY if bits < 9 else 0)
            data = frame((compressor.compress(message)
                          + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4], 0xC2)
        protocol.write_frames(data, None)  # type: ignore[attr-defined]


class CompressingEcho(EchoHandler):
    def get_compression_options(self) -> dict[str, Any]:
        return {}


AUTOBAHN = """Autobahn's fuzzing client (Python 2.7: pip install autobahntestsuite), e.g.
  {"outdir": "reports", "servers": [
     {"agent": "plain-tornado", "url": "ws://127.0.0.1:%(plain)d/echo"},
     {"agent": "pylight-protocol", "url": "ws://127.0.0.1:%(feed)d/echo"}],
   "cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]}
  wstest -m fuzzingclient -s spec.json"""


if __name__ == "__main__":
    # python -m tests.test_websocket_protocol: the comparison table, Pylight (on a
    # throw-away SQLite database) next to plain Tornado.
    # python -m tests.test_websocket_protocol --autobahn 9001: echo servers for
    # Autobahn's fuzzing client, plain Tornado on 9001 and FeedProtocol on 9002
    # (both offer permessage-deflate), until interrupted.
    import asyncio
    import sys
    import tempfile
    from pathlib import Path

    from tests.conftest import make_config, open_app, serve

    async def compare() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            server = await serve(open_app(make_config(Path(tmp), f"sqlite:///{tmp}/demo.db")))
            echo, echo_port = start_echo_server()
            try:
                print(table({"Pylight": await run_all(port_of(server), PYLIGHT),
                             "plain Tornado": await run_all(echo_port, TORNADO)}))
            finally:
                echo.stop()
                await server.app.stop()

    async def autobahn(port: int) -> None:
        settings = {"websocket_max_message_size": 64 * 1024 * 1024}
        Application([(r"/echo", CompressingEcho)], **settings).listen(port, "127.0.0.1")
        Application([(r"/echo", FeedProtocolEcho)], **settings).listen(port + 1, "127.0.0.1")
        print(AUTOBAHN % {"plain": port, "feed": port + 1}, flush=True)
        await asyncio.Event().wait()

    if sys.argv[1:2] == ["--autobahn"]:
        asyncio.run(autobahn(int(sys.argv[2]) if len(sys.argv) > 2 else 9001))
    else:
        asyncio.run(compare())
