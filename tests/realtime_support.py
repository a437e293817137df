"""Helpers for the WebSocket tests: an async feed client, a raw-socket client and deadlines.

The server runs on the test's IOLoop, so everything here is either async
(Tornado's websocket client) or meant to run in a worker thread
(``await in_thread(fn, ...)``) — a blocking call on the loop would deadlock.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from tornado.httpclient import HTTPRequest
from tornado.ioloop import IOLoop
from tornado.websocket import WebSocketClientConnection, websocket_connect

TIMEOUT = 10.0  # generous upper bound for one expected message; never a fixed sleep


def ws_url(server: Any, path: str) -> str:
    return server.base_url.replace("http://", "ws://", 1) + path


def port_of(server: Any) -> int:
    return urlsplit(server.base_url).port or 80


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await IOLoop.current().run_in_executor(None, fn, *args)


async def wait_for(predicate: Callable[[], Any], timeout: float = TIMEOUT, what: str = "") -> float:
    """Poll ``predicate`` until it is true; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


class FeedClient:
    """A WebSocket client of one feed that parses every message as JSON."""

    def __init__(self, conn: WebSocketClientConnection, hello: dict[str, Any] | None) -> None:
        self.conn = conn
        self.hello = hello

    @classmethod
    async def open(cls, server: Any, path: str, hello: bool = True) -> FeedClient:
        conn = await websocket_connect(HTTPRequest(ws_url(server, path), connect_timeout=TIMEOUT))
        client = cls(conn, None)
        if hello:
            client.hello = await client.recv()
            assert client.hello is not None and client.hello["type"] == "hello", client.hello
        return client

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any] | None:
        """The next message, or None once the connection is closed."""
        raw = await asyncio.wait_for(self.conn.read_message(), timeout)
        return None if raw is None else json.loads(raw)

    async def changes(self, count: int, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        out = []
        for _ in range(count):
            message = await self.recv(timeout)
            assert message is not None, f"closed after {len(out)} of {count} messages"
            out.append(message)
        return out

    async def drain(self, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """Every message already queued for us: ping, then read up to the pong.

        A REST write publishes its change before its response is sent, and the
        server answers a ping after what it queued before, so this is exact
        (no sleeping and hoping nothing else is on its way).
        """
        self.conn.write_message(json.dumps({"type": "ping"}))
        out = []
        while True:
            message = await self.recv(timeout)
            assert message is not None, f"closed while draining (got {out})"
            if message == {"type": "pong"}:
                return out
            out.append(message)

    async def closed(self, timeout: float = TIMEOUT) -> int | None:
        """Read until the server closes; returns the close code."""
        deadline = time.monotonic() + timeout
        while await asyncio.wait_for(self.conn.read_message(),
                                     max(deadline - time.monotonic(), 0.01)) is not None:
            pass
        return self.conn.close_code

    def close(self) -> None:
        self.conn.close()


# -- a raw client: does the handshake, then reads (or not) exactly when told ------------

def raw_connect(port: int, path: str, rcvbuf: int | None = None) -> tuple[socket.socket, bytes]:
    """Blocking: open a TCP socket and complete the WebSocket handshake (run in a thread)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    _, rest = upgrade(sock, port, path)
    return sock, rest


def upgrade(sock: socket.socket, port: int, path: str, extensions: str | None = None
            ) -> tuple[dict[str, str], bytes]:
    """Blocking: the WebSocket handshake on a connected socket; the 101's headers
    (lower-cased names) and the bytes that came after it."""
    key = base64.b64encode(os.urandom(16)).decode()
    extra = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"closed during the handshake: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 101"), lines[0]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers, rest


def read_until_closed(sock: socket.socket, timeout: float = TIMEOUT) -> bytes:
    """Blocking: everything the server sends until it closes the TCP connection."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Unmasked server frames as (opcode, payload); a truncated tail is ignored."""
    frames = []
    i = 0
    while i + 2 <= len(data):
        opcode = data[i] & 0x0F
        length = data[i + 1] & 0x7F
        i += 2
        if length == 126:
            if i + 2 > len(data):
                break
            (length,) = struct.unpack("!H", data[i:i + 2])
            i += 2
        elif length == 127:
            if i + 8 > len(data):
                break
            (length,) = struct.unpack("!Q", data[i:i + 8])
            i += 8
        if i + length > len(data):
            break
        frames.append((opcode, data[i:i + length]))
        i += length
    return frames


def close_code(frames: list[tuple[int, bytes]]) -> int | None:
    for opcode, payload in frames:
        if opcode == 0x8 and len(payload) >= 2:
            return struct.unpack("!H", payload[:2])[0]
    return None


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
