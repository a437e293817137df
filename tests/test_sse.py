"""Server-Sent Events: `GET /sse/<table>` (API.md 6.2) on every backend, read the way a
plain HTTP client, curl and a browser's EventSource read it."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from pylight.hub import Change
from tests.auth_support import assert_error, bearer
from tests.browser_support import chromium, missing
from tests.live_server import rest
from tests.realtime_support import TIMEOUT, FeedClient, in_thread, port_of, wait_for

READER = "reader-key-4f1c9a2b7d3e8f60"
WRITER = "writer-key-9a7e44c2f1b05d3c"
KEYS = {"plugin:apikeys": {"reader.key": READER, "reader.permissions": "products: read",
                           "writer.key": WRITER, "writer.permissions": "*: *"}}
NEW = {"name": "Streamed", "price": "3.50", "sku": "SSE-1"}
CURL = shutil.which("curl")


# -- an event-stream client --------------------------------------------------------------------

@dataclass
class Event:
    """One event of the stream (a block ended by a blank line), as the SSE spec reads it."""

    event: str | None = None
    id: str | None = None
    data: Any = None  # the data lines, parsed as JSON
    comments: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # the block as sent


def parse_block(block: str) -> Event:
    event = Event(lines=block.split("\n"))
    data: list[str] = []
    for line in event.lines:
        if line.startswith(":"):
            event.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event.event = value
        elif name == "id":
            event.id = value
        elif name == "data":
            data.append(value)
        else:
            raise AssertionError(f"unexpected line {line!r} in {block!r}")
    if data:
        event.data = json.loads("\n".join(data))
    return event


def split_events(text: str) -> tuple[list[Event], str]:
    """The whole events in ``text`` and the unfinished rest."""
    *blocks, rest = text.replace("\r\n", "\n").split("\n\n")
    return [parse_block(block) for block in blocks], rest


def dechunk(body: bytes) -> bytes:
    """A chunked body, as far as it is whole (a torn last chunk is dropped)."""
    out = b""
    while True:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            return out
        size = int(size_line.split(b";")[0], 16)
        if size == 0 or len(rest) < size:
            return out + rest[:size] if size else out
        out += rest[:size]
        body = rest[size + 2:]


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    return status, headers, body


def request_bytes(port: int, path: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: text/event-stream",
             "Cache-Control: no-cache"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class EventStream:
    """An HTTP/1.1 client of one event stream, on the test's event loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunked = False
        self.text = ""
        self.events: list[Event] = []
        self.hello: Event | None = None

    @classmethod
    async def open(cls, server: Any, path: str, headers: dict[str, str] | None = None,
                   hello: bool = True) -> EventStream:
        port = port_of(server)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), TIMEOUT)
        stream = cls(reader, writer)
        writer.write(request_bytes(port, path, headers))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        stream.status, stream.headers, _ = split_response(head)
        stream.chunked = stream.headers.get("transfer-encoding") == "chunked"
        if hello:
            assert stream.status == 200, (stream.status, stream.headers)
            stream.hello = await stream.next()
            assert stream.hello.event == "hello", stream.hello
        return stream

    async def _more(self, timeout: float) -> bool:
        """Read the next piece of the body; False at its end."""
        if self.chunked:
            size_line = await asyncio.wait_for(self.reader.readline(), timeout)
            if not size_line:
                return False
            size = int(size_line.strip().split(b";")[0], 16)
            data = await asyncio.wait_for(self.reader.readexactly(size + 2), timeout)
            if size == 0:
                return False
            data = data[:-2]
        else:
            data = await asyncio.wait_for(self.reader.read(1 << 16), timeout)
            if not data:
                return False
        self.text += data.decode()
        events, self.text = split_events(self.text)
        self.events.extend(events)
        return True

    async def next(self, timeout: float = TIMEOUT, comments: bool = False) -> Event:
        """The next event (comment-only blocks such as ``: ping`` skipped unless ``comments``)."""
        deadline = time.monotonic() + timeout
        while True:
            while self.events:
                event = self.events.pop(0)
                if comments or event.event is not None or event.data is not None:
                    return event
            left = deadline - time.monotonic()
            if left <= 0 or not await self._more(left):
                raise AssertionError("the stream ended" if left > 0 else
                                     f"no event within {timeout} s")

    async def changes(self, count: int) -> list[Event]:
        return [await self.next() for _ in range(count)]

    async def ended(self, timeout: float = TIMEOUT) -> bool:
        """Read until the server ends the response or closes the connection."""
        deadline = time.monotonic() + timeout
        try:
            while await self._more(max(deadline - time.monotonic(), 0.01)):
                pass
        except (ConnectionResetError, asyncio.IncompleteReadError):
            pass
        return True

    def close(self) -> None:
        self.writer.close()


async def sentinel(server: Any, stream: EventStream) -> None:
    """Write a row every stream of products sees and read up to its event: everything
    sent before it has then been read (a stream has no ping to answer)."""
    created = await server.post("/api/products", {"name": "sentinel", "price": "0.50",
                                                  "sku": f"S-{time.monotonic_ns()}"})
    assert created.status == 201
    event = await stream.next()
    assert (event.event, event.data["record"]) == ("change", created.body), event


def assert_change_event(event: Event, message: dict[str, Any]) -> None:
    """``event`` carries ``message`` (a /ws/<table> message): id is its seq."""
    assert event.event == "change"
    assert event.id == str(message["seq"])
    assert event.data == message
    assert event.lines == [f"id: {message['seq']}", "event: change",
                           "data: " + event.lines[2][len("data: "):]]


# -- the stream ---------------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_headers_and_hello(server):
    await server.put("/api/products/1", {"name": "before"})
    stream = await EventStream.open(server, "/sse/products")
    assert stream.status == 200
    assert stream.headers["content-type"].split(";")[0] == "text/event-stream"
    assert stream.headers["cache-control"] == "no-store"
    hello = stream.hello
    assert hello.id is None
    assert hello.data == {"type": "hello", "table": "products", "seq": 1, "heartbeat": 20}
    assert hello.lines[:2] == ["event: hello",
                               'data: {"type":"hello","table":"products","seq":1,"heartbeat":20}']
    stream.close()


@pytest.mark.gen_test(timeout=30)
async def test_changes_are_the_same_messages_as_the_websocket_feed(server):
    stream = await EventStream.open(server, "/sse/products")
    ws = await FeedClient.open(server, "/ws/products")
    created = await server.post("/api/products", NEW)
    pk = created.body["id"]
    updated = await server.put(f"/api/products/{pk}", {"price": "4"})
    assert (await server.delete(f"/api/products/{pk}")).status == 204
    messages = await ws.drain()
    events = await stream.changes(3)
    for event, message in zip(events, messages, strict=True):
        assert_change_event(event, message)
    assert [(e.id, e.data["event"], e.data["pk"]) for e in events] == [
        ("1", "created", pk), ("2", "updated", pk), ("3", "deleted", pk)]
    assert events[0].data["record"] == created.body and events[0].data["old"] is None
    assert events[1].data["record"] == updated.body
    assert events[1].data["old"] == created.body
    assert events[1].data["source"] == "api"
    ws.close()
    stream.close()


@pytest.mark.gen_test(timeout=30)
async def test_each_stream_sees_its_own_table(server):
    products = await EventStream.open(server, "/sse/products")
    orders = await EventStream.open(server, "/sse/orders")
    await server.patch("/api/orders/1", {"quantity": 3})
    await server.patch("/api/products/2", {"name": "Gadget 2"})
    (order,) = await orders.changes(1)
    assert (order.id, order.data["table"], order.data["record"]["quantity"]) == ("1", "orders", 3)
    (product,) = await products.changes(1)
    assert (product.id, product.data["table"], product.data["pk"]) == ("1", "products", 2)
    await sentinel(server, products)
    products.close()
    orders.close()


@pytest.mark.gen_test(timeout=30)
async def test_filters_apply_with_matches_false(server):
    stream = await EventStream.open(server, "/sse/products?price=lt.10")
    await server.patch("/api/products/2", {"name": "dear, not sent"})  # 24.50
    await server.patch("/api/products/1", {"price": "20"})  # 9.99 -> 20: leaves the filter
    await server.patch("/api/products/2", {"price": "5"})  # enters it
    await server.patch("/api/products/1", {"name": "still out"})
    cheap = await server.post("/api/products", {**NEW, "price": "1"})
    left, entered, created = await stream.changes(3)
    assert (left.id, left.data["pk"], left.data["matches"]) == ("2", 1, False)
    assert left.data["record"]["price"] == "20.00" and left.data["old"]["price"] == "9.99"
    assert (entered.id, entered.data["pk"], "matches" in entered.data) == ("3", 2, False)
    assert (created.id, created.data["record"]) == ("5", cheap.body)
    stream.close()
    # or=(...) too
    stream = await EventStream.open(server, "/sse/products?or=(name.ilike.*gift*,price.gt.100)")
    await server.patch("/api/products/1", {"name": "no"})
    await server.patch("/api/products/3", {"description": "yes"})
    (event,) = await stream.changes(1)
    assert event.data["pk"] == 3
    stream.close()


# -- resume --------------------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_last_event_id_and_since_resume_exactly_the_missed_changes(server):
    for i in range(5):
        await server.put("/api/products/1", {"price": f"{i}.00"})  # seq 1..5
    feed = server.app.hub.feed("products")
    for since, headers, path in ((2, {"Last-Event-ID": "2"}, "/sse/products"),
                                 (3, {}, "/sse/products?since=3"),
                                 (0, {"Last-Event-ID": "0"}, "/sse/products"),
                                 (5, {"Last-Event-ID": "5"}, "/sse/products")):
        seq = feed.seq  # each case's sentinel adds one
        stream = await EventStream.open(server, path, headers)
        assert stream.hello.data["seq"] == seq
        events = await stream.changes(seq - since)
        assert [int(e.id) for e in events] == list(range(since + 1, seq + 1))
        assert [e.data["record"]["price"] for e in events if int(e.id) <= 5] == [
            f"{s - 1}.00" for s in range(since + 1, 6)]
        await sentinel(server, stream)  # then live: nothing replayed twice, nothing more
        stream.close()


@pytest.mark.gen_test(timeout=30)
async def test_since_in_the_query_wins_over_last_event_id(server):
    for i in range(4):
        await server.put("/api/products/1", {"price": f"{i}.00"})
    stream = await EventStream.open(server, "/sse/products?since=3", {"Last-Event-ID": "1"})
    (event,) = await stream.changes(1)
    assert event.id == "4"
    await sentinel(server, stream)
    stream.close()


@pytest.mark.gen_test(timeout=30)
async def test_resume_with_a_filter_replays_only_its_rows(server):
    for pk, price in ((1, "50"), (2, "1"), (3, "60"), (1, "2")):
        await server.put(f"/api/products/{pk}", {"price": price})
    stream = await EventStream.open(server, "/sse/products?price=gt.20", {"Last-Event-ID": "0"})
    events = await stream.changes(4)
    assert [(e.id, e.data["pk"], e.data.get("matches", True)) for e in events] == [
        ("1", 1, True), ("2", 2, False), ("3", 3, True), ("4", 1, False)]
    stream.close()


@pytest.fixture
def small_ring(make_server):
    return make_server({"realtime": {"replay_buffer": 3}})


@pytest.mark.gen_test(timeout=30)
async def test_resync_when_too_old_or_ahead(small_ring):
    server = small_ring
    for i in range(6):
        await server.put("/api/products/1", {"price": f"{i}.00"})  # the ring keeps 4..6
    for headers, path, reason in (({"Last-Event-ID": "1"}, "/sse/products", "older"),
                                  ({}, "/sse/products?since=0", "older"),
                                  ({"Last-Event-ID": "99"}, "/sse/products", "ahead")):
        seq = server.app.hub.feed("products").seq  # 6, then one more per case
        stream = await EventStream.open(server, path, headers)
        resync = await stream.next()
        assert resync.event == "resync" and resync.id is None
        assert resync.data == {"type": "resync", "table": "products", "seq": seq,
                               "reason": resync.data["reason"]}
        assert reason in resync.data["reason"]
        await server.put("/api/products/1", {"name": "live"})
        (live,) = await stream.changes(1)  # live changes only
        assert live.id == str(server.app.hub.feed("products").seq)
        assert live.data["record"]["name"] == "live"
        stream.close()
    stream = await EventStream.open(server, "/sse/products", {"Last-Event-ID": "7"})
    assert [int(e.id) for e in await stream.changes(2)] == [8, 9]  # within the ring: replay
    stream.close()


# -- heartbeat -----------------------------------------------------------------------------------

@pytest.fixture
def fast_heartbeat(make_server):
    return make_server({"realtime": {"heartbeat_interval": "0.5", "heartbeat_timeout": "0.5"}})


@pytest.mark.gen_test(timeout=30)
async def test_a_ping_comment_arrives_every_heartbeat_interval(fast_heartbeat):
    server = fast_heartbeat
    stream = await EventStream.open(server, "/sse/products")
    assert stream.hello.data["heartbeat"] == 0.5
    started = time.monotonic()
    pings = []
    while len(pings) < 3:
        event = await stream.next(timeout=1.5, comments=True)
        assert event.lines == [": ping"] and event.comments == ["ping"], event
        pings.append(time.monotonic() - started)
    assert pings[-1] < 3 * 0.5 + 1.0, pings
    # a quiet stream is not dropped for not answering pings, and still carries changes
    await server.put("/api/products/1", {"name": "after pings"})
    (change,) = await stream.changes(1)
    assert change.data["record"]["name"] == "after pings"
    assert server.app.connections.count() == 1
    stream.close()
    await wait_for(lambda: server.app.connections.count() == 0, what="the stream to be forgotten")


# -- refusals before the stream starts ---------------------------------------------------------------

SSE = {"Accept": "text/event-stream"}


@pytest.mark.gen_test(timeout=30)
async def test_unknown_table_and_bad_filter_are_json_errors(server):
    for path, status, code, words in (
            ("/sse/nope", 404, "not_found", "nope"),
            ("/sse/products?colour=eq.red", 400, "bad_request", "colour"),
            ("/sse/products?price=gt.cheap", 400, "bad_request", "price"),
            ("/sse/products?since=yesterday", 400, "bad_request", "since")):
        response = await server.get(path, headers=SSE)
        assert response.status == status, (path, response.raw)
        assert response.headers["Content-Type"].startswith("application/json")
        error = response.body["error"]
        assert (error["status"], error["code"]) == (status, code)
        assert words in error["message"]
    bad_id = await server.get("/sse/products", headers={**SSE, "Last-Event-ID": "x"})
    assert bad_id.status == 400 and bad_id.body["error"]["code"] == "bad_request"
    assert server.app.connections.count() == 0


@pytest.fixture
def with_view(make_server, database):
    make_server()
    database.ddl("CREATE VIEW cheap_products AS SELECT id, name FROM products WHERE price < 10")
    return make_server()


@pytest.mark.gen_test(timeout=30)
async def test_a_view_has_no_event_stream(with_view):
    response = await with_view.get("/sse/cheap_products", headers=SSE)
    assert response.status == 404 and response.body["error"]["code"] == "not_found"


@pytest.fixture
def keyed(make_server):
    return make_server(KEYS)


@pytest.mark.gen_test(timeout=30)
async def test_auth_401_and_403_are_json_and_keys_open_the_stream(keyed):
    server = keyed
    assert_error(await server.get("/sse/products", headers=SSE), 401)
    assert_error(await server.get("/sse/products", headers={**SSE, **bearer("nope")}), 401,
                 "unknown API key")
    assert_error(await server.get("/sse/products?token=nope", headers=SSE), 401)
    denied = await server.get("/sse/orders", headers={**SSE, **bearer(READER)})
    assert_error(denied, 403, "'read'", "'orders'")
    assert denied.body["error"]["details"] == {"permission": "read", "table": "orders"}
    assert server.app.connections.count() == 0

    by_header = await EventStream.open(server, "/sse/products", bearer(READER))
    by_query = await EventStream.open(server, f"/sse/products?token={READER}")
    await server.patch("/api/products/1", {"name": "seen"}, headers=bearer(WRITER))
    for stream in (by_header, by_query):
        (event,) = await stream.changes(1)
        assert event.data["record"]["name"] == "seen"
        stream.close()


@pytest.fixture
def without_sse(make_server):
    return make_server({"realtime": {"sse": "false"}})


@pytest.mark.gen_test(timeout=30)
async def test_sse_false_removes_the_route(without_sse):
    server = without_sse
    response = await server.get("/sse/products", headers=SSE)
    assert response.status == 404
    assert response.body["error"]["status"] == 404
    assert response.body["error"]["code"] == "not_found"
    # the WebSocket feeds stay
    client = await FeedClient.open(server, "/ws/products")
    client.close()


@pytest.fixture
def realtime_off(make_server):
    return make_server({"realtime": {"enabled": "false"}})


@pytest.mark.gen_test(timeout=30)
async def test_no_event_streams_with_realtime_off(realtime_off):
    response = await realtime_off.get("/sse/products", headers=SSE)
    assert response.status == 404 and response.body["error"]["code"] == "not_found"


@pytest.mark.gen_test(timeout=30)
async def test_closing_the_stream_frees_it_and_others_go_on(server):
    first = await EventStream.open(server, "/sse/products")
    second = await EventStream.open(server, "/sse/products")
    await wait_for(lambda: server.app.connections.count() == 2, what="two streams")
    first.close()
    await wait_for(lambda: server.app.connections.count() == 1, what="the closed stream to go")
    assert len(server.app.hub.feed("products").subscribers) == 1
    await server.put("/api/products/1", {"name": "for the second"})
    (event,) = await second.changes(1)
    assert event.data["record"]["name"] == "for the second"
    second.close()


@pytest.mark.gen_test(timeout=30)
async def test_server_stop_ends_the_stream(server):
    stream = await EventStream.open(server, "/sse/products")
    await wait_for(lambda: server.app.connections.count() == 1, what="the stream")
    await server.app.stop()
    assert await stream.ended(5)
    stream.close()


# -- backpressure --------------------------------------------------------------------------------

def stalled_stream(port: int, path: str, headers: dict[str, str] | None = None
                   ) -> socket.socket:
    """Blocking: a connected socket with a small receive buffer that sent the request
    and reads nothing (yet)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request_bytes(port, path, headers))
    return sock


def read_to_eof(sock: socket.socket) -> bytes:
    sock.settimeout(TIMEOUT)
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


@pytest.fixture
def small_queue(make_server):
    return make_server({"realtime": {"max_pending": 50, "replay_buffer": 100000}})


@pytest.mark.gen_test(timeout=90)
async def test_a_slow_reader_is_ended_and_resumes_with_last_event_id(small_queue):
    server = small_queue
    app = server.app
    sock = await in_thread(stalled_stream, port_of(server), "/sse/products")
    await wait_for(lambda: app.connections.count() == 1, what="the stalled stream")
    (stalled,) = app.connections.open
    reader = await EventStream.open(server, "/sse/products")
    published = longest = 0
    padding = "x" * 200
    burst = 20  # well under max_pending: only the stalled stream falls behind
    while stalled in app.connections.open and published < 60_000:
        for _ in range(burst):
            published += 1
            app.hub.publish(Change("products", "updated", 1,
                                   {"id": 1, "name": f"n{published}", "description": padding}))
            longest = max(longest, len(stalled.outbox.queue))
        await reader.changes(burst)  # the other stream keeps up, and gets every change
    assert stalled not in app.connections.open, "the stalled stream was never ended"
    assert app.connections.dropped_by_backpressure == 1
    assert longest <= 50

    raw = await in_thread(read_to_eof, sock)  # the server closed the connection
    sock.close()
    status, headers, body = split_response(raw)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events, _ = split_events(body.decode())
    assert events[0].event == "hello"
    ids = [int(e.id) for e in events[1:]]
    assert ids == list(range(1, len(ids) + 1))  # in order, whole events, then the end
    assert len(ids) < published

    # EventSource reconnects with the last id it saw: exactly the rest follows
    last = ids[-1] if ids else 0
    again = await EventStream.open(server, "/sse/products", {"Last-Event-ID": str(last)})
    missed = await again.changes(published - last)
    assert [int(e.id) for e in missed] == list(range(last + 1, published + 1))
    assert missed[-1].data["record"]["name"] == f"n{published}"
    await sentinel(server, again)
    assert app.connections.count() == 2  # the reader and the resumed stream
    again.close()
    reader.close()


@pytest.fixture
def capturing_fifty(make_server):
    return make_server({"realtime": {"capture": "database", "install_triggers": "true",
                                     "max_pending": 50}})


@pytest.mark.gen_test(timeout=60)
async def test_a_reading_stream_survives_one_statement_of_more_rows_than_max_pending(
        capturing_fifty, database):
    server = capturing_fifty
    stream = await EventStream.open(server, "/sse/products")
    rows = ", ".join(f"('Bulk {i}', 1, 'BULK-{i:03d}')" for i in range(60))
    await in_thread(database.execute, f"INSERT INTO products (name, price, sku) VALUES {rows}")
    events = await stream.changes(60)
    assert [int(e.id) for e in events] == list(range(1, 61))
    assert server.app.connections.dropped_by_backpressure == 0
    stream.close()


# -- curl and a browser --------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_curl_receives_the_hello_and_a_change(server):
    if CURL is None:
        missing("curl")
    process = await asyncio.create_subprocess_exec(
        CURL, "-sN", "--max-time", "20", "-H", "Accept: text/event-stream",
        server.base_url + "/sse/products",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async def line() -> str:
            return (await asyncio.wait_for(process.stdout.readline(), TIMEOUT)).decode()

        assert await line() == "event: hello\n"
        assert json.loads((await line())[len("data: "):]) == {
            "type": "hello", "table": "products", "seq": 0, "heartbeat": 20}
        assert await line() == "\n"
        created = await server.post("/api/products", NEW)
        assert [await line() for _ in range(2)] == ["id: 1\n", "event: change\n"]
        data = json.loads((await line())[len("data: "):])
        assert (data["event"], data["record"]) == ("created", created.body)
    finally:
        process.kill()
        await process.wait()


@pytest.fixture
def browser():
    with chromium() as instance:
        yield instance



EVENT_SOURCE = """() => {
  window.got = [];
  const source = new EventSource('/sse/products');
  window.source = source;
  for (const name of ['hello', 'change', 'resync']) {
    source.addEventListener(name, (e) => window.got.push(
      {type: e.type, id: e.lastEventId, data: JSON.parse(e.data)}));
  }
}"""


def test_browser_event_source_receives_a_rest_change(live_server, browser):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(live_server.base_url + "/api/")
    page.evaluate(EVENT_SOURCE)
    page.wait_for_function("window.got.length >= 1 && window.source.readyState === 1",
                           timeout=10000)
    hello = page.evaluate("window.got[0]")
    assert hello["type"] == "hello" and hello["data"]["table"] == "products"
    seq = hello["data"]["seq"]

    status, created = rest(live_server.base_url, "POST", "/api/products",
                           {"name": "From a browser test", "price": "12.50", "sku": "SSE-B-1"})
    assert status == 201
    page.wait_for_function("window.got.length >= 2", timeout=10000)
    change = page.evaluate("window.got[1]")
    assert change["type"] == "change" and change["id"] == str(seq + 1)
    assert change["data"]["event"] == "created" and change["data"]["record"] == created
    assert change["data"]["source"] == "api"
    assert "password_hash" not in json.dumps(page.evaluate("window.got"))

    # EventSource reconnects by itself after the server restarts, sending Last-Event-ID;
    # the new server cannot honour it (seq restarted): resync, then live changes
    live_server.kill()
    page.wait_for_function("window.source.readyState !== 1", timeout=10000)
    live_server.start()
    page.wait_for_function("window.got.some((m) => m.type === 'resync')", timeout=20000)
    status, late = rest(live_server.base_url, "PUT", f"/api/products/{created['id']}",
                        {"name": "After restart"})
    assert status == 200
    page.wait_for_function(
        "window.got.some((m) => m.type === 'change' && m.data.record.name === 'After restart')",
        timeout=10000)
    page.evaluate("window.source.close()")
    assert errors == []
