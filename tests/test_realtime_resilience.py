"""WebSocket feeds under stress, on every backend: concurrent writers, resume with
`since`, heartbeats and dead peers, backpressure on a client that stops reading,
and graceful shutdown (API.md section 3)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time

import pytest

from pylight.hub import Change
from tests.realtime_support import (
    TIMEOUT,
    FeedClient,
    close_code,
    in_thread,
    parse_frames,
    port_of,
    raw_connect,
    read_until_closed,
    rss_bytes,
    wait_for,
)

# -- ordering and atomicity ------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_updates_to_one_row_arrive_in_commit_order(server):
    clients = [await FeedClient.open(server, "/ws/products"),
               await FeedClient.open(server, "/ws/products?id=eq.2")]
    before = (await server.get("/api/products/2")).body
    responses = await asyncio.gather(*[
        server.put("/api/products/2", {"price": f"{100 + i}.00", "description": f"writer {i}"})
        for i in range(50)])
    assert {r.status for r in responses} == {200}
    final = (await server.get("/api/products/2")).body

    streams = []
    for client in clients:
        messages = await client.drain()
        assert len(messages) == 50
        seqs = [m["seq"] for m in messages]
        assert seqs == sorted(set(seqs)), "seq must be strictly increasing"
        assert seqs[0] == 1 and seqs[-1] == 50
        assert all(m["event"] == "updated" and m["pk"] == 2 for m in messages)
        # Each update saw the row the previous one left: publish order is commit order.
        assert messages[0]["old"] == before
        for previous, current in zip(messages, messages[1:], strict=False):
            assert current["old"] == previous["record"]
        assert messages[-1]["record"] == final
        streams.append(messages)
        client.close()
    assert streams[0] == streams[1]
    assert {m["record"]["description"] for m in streams[0]} == {f"writer {i}" for i in range(50)}


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_writes_to_many_rows_keep_one_order(server):
    client = await FeedClient.open(server, "/ws/products")
    created = await asyncio.gather(*[
        server.post("/api/products", {"name": f"c{i}", "price": i, "sku": f"C-{i}"})
        for i in range(20)])
    ids = [r.body["id"] for r in created]
    writes = await asyncio.gather(
        *[server.patch(f"/api/products/{pk}", {"name": "x"}) for pk in ids],
        *[server.delete(f"/api/products/{pk}") for pk in ids[:5]])
    succeeded = sum(1 for r in writes if r.status in (200, 204))
    assert {r.status for r in writes} <= {200, 204, 404}  # a patch may lose to the delete
    messages = await client.drain()
    assert [m["seq"] for m in messages] == list(range(1, 20 + succeeded + 1))
    # per row: created first, deleted last
    for pk in ids:
        events = [m["event"] for m in messages if m["pk"] == pk]
        assert events[0] == "created"
        assert "deleted" not in events[:-1]
    client.close()


# -- resume ------------------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_resume_with_writes_racing_the_reconnect(server):
    feed = server.app.hub.feed("products")
    stop = asyncio.Event()

    async def writer() -> int:
        count = 0
        while not stop.is_set():
            response = await server.put("/api/products/2", {"price": f"{count % 1000}.25"})
            assert response.status == 200
            count += 1
        return count

    writers = [asyncio.ensure_future(writer()) for _ in range(3)]
    client = await FeedClient.open(server, "/ws/products")
    seen: list[int] = []
    for _round in range(4):
        # read a few live changes, drop the connection, let writes go by unseen
        for message in await client.changes(3):
            seen.append(message["seq"])
        client.close()
        last = seen[-1]
        await wait_for(lambda last=last: feed.seq >= last + 5, what="missed writes")
        client = await FeedClient.open(server, f"/ws/products?since={last}")
        assert client.hello["seq"] >= last + 5
    stop.set()
    total = sum(await asyncio.gather(*writers))
    for message in await client.drain():
        seen.append(message["seq"])
    client.close()
    assert feed.seq == total
    # every change exactly once, in order, across four reconnects
    assert seen == list(range(1, total + 1))


@pytest.mark.gen_test(timeout=30)
async def test_resume_replays_the_buffer_in_order(server):
    for i in range(6):
        await server.put("/api/products/1", {"price": f"{i}.00"})
    for since, expected in ((0, [1, 2, 3, 4, 5, 6]), (4, [5, 6]), (6, [])):
        client = await FeedClient.open(server, f"/ws/products?since={since}")
        messages = await client.drain()
        assert [m["seq"] for m in messages] == expected
        assert [m["record"]["price"] for m in messages] == [f"{s - 1}.00" for s in expected]
        client.close()
    # since=0 on a table that never changed: nothing to replay, no resync
    client = await FeedClient.open(server, "/ws/users?since=0")
    assert await client.drain() == []
    client.close()


@pytest.fixture
def small_ring(make_server):
    return make_server({"realtime": {"replay_buffer": 5}})


@pytest.mark.gen_test(timeout=30)
async def test_resume_outside_the_ring_gets_resync_then_live(small_ring):
    server = small_ring
    for i in range(8):
        await server.put("/api/products/1", {"price": f"{i}.00"})
    # the ring holds 4..8: since=3 can still be honoured
    client = await FeedClient.open(server, "/ws/products?since=3")
    assert [m["seq"] for m in await client.drain()] == [4, 5, 6, 7, 8]
    client.close()

    feed = server.app.hub.feed("products")
    for reason, since in (("older", lambda: 2), ("older", lambda: 0),
                          ("ahead", lambda: feed.seq + 1), ("ahead", lambda: 10**12)):
        since = since()
        client = await FeedClient.open(server, f"/ws/products?since={since}")
        resync = await client.recv()
        assert resync["type"] == "resync"
        assert resync["table"] == "products"
        assert resync["seq"] == server.app.hub.feed("products").seq
        assert reason in resync["reason"]
        await server.put("/api/products/1", {"name": f"live {since}"})
        (live,) = await client.drain()  # live changes only, no replay
        assert live["type"] == "change" and live["seq"] == resync["seq"] + 1
        client.close()


# -- heartbeats and dead peers -------------------------------------------------------------------

@pytest.fixture
def fast_heartbeat(make_server):
    return make_server({"realtime": {"heartbeat_interval": 1, "heartbeat_timeout": 1}})


@pytest.mark.gen_test(timeout=30)
async def test_silent_peer_is_dropped_after_interval_plus_timeout(fast_heartbeat):
    server = fast_heartbeat
    connections = server.app.connections
    healthy = await FeedClient.open(server, "/ws/products")  # Tornado answers pings
    assert healthy.hello["heartbeat"] == 1
    sock, early = await in_thread(raw_connect, port_of(server), "/ws/products")
    started = time.monotonic()
    try:
        await wait_for(lambda: connections.count() == 2, what="the raw socket to register")
        # never read, never answer a ping: gone within interval + timeout + 1 s
        await wait_for(lambda: connections.count() == 1, timeout=1 + 1 + 1,
                       what="the silent peer to be dropped")
        assert connections.dropped_by_heartbeat == 1
        elapsed = time.monotonic() - started
        assert elapsed >= 1.0  # not before a ping could have been answered
        # the server closed the TCP socket itself, not after a 5 s close handshake
        data = early + await in_thread(read_until_closed, sock, 2.0)
        frames = parse_frames(data)
        assert frames[0][0] == 0x1 and json.loads(frames[0][1])["type"] == "hello"
        assert 0x9 in {opcode for opcode, _ in frames}  # it was pinged
    finally:
        sock.close()
    # the healthy client outlived two heartbeat periods and still gets changes
    await server.put("/api/products/1", {"name": "still here"})
    (message,) = await healthy.drain()
    assert message["record"]["name"] == "still here"
    assert connections.count() == 1
    healthy.close()
    await wait_for(lambda: connections.count() == 0, what="a closed client to be forgotten")


@pytest.mark.gen_test(timeout=30)
async def test_json_ping_gets_pong(server):
    client = await FeedClient.open(server, "/ws/orders")
    client.conn.write_message(json.dumps({"type": "ping"}))
    assert await client.recv() == {"type": "pong"}
    client.conn.write_message("not json")
    error = await client.recv()
    assert error["type"] == "error"
    client.conn.write_message(json.dumps({"type": "ping", "extra": 1}))
    assert await client.recv() == {"type": "pong"}
    assert server.app.connections.count("orders") == 1
    client.close()
    await wait_for(lambda: server.app.connections.count() == 0, what="the client to be forgotten")


@pytest.mark.gen_test(timeout=30)
async def test_abrupt_disconnect_does_not_disturb_others(server):
    connections = server.app.connections
    others = [await FeedClient.open(server, "/ws/products") for _ in range(2)]
    socks = [(await in_thread(raw_connect, port_of(server), "/ws/products"))[0] for _ in range(2)]
    await wait_for(lambda: connections.count() == 4, what="four connections")
    await server.put("/api/products/1", {"name": "before"})
    # one peer vanishes with a TCP RST (SO_LINGER 0), no close frame
    socks[0].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    socks[0].close()
    await wait_for(lambda: connections.count() == 3, what="the reset peer to be forgotten")
    # another just half-closes (FIN, no close frame)
    socks[1].shutdown(socket.SHUT_WR)
    await wait_for(lambda: connections.count() == 2, what="the vanished peer to be forgotten")
    socks[1].close()
    for i in range(5):
        await server.put("/api/products/1", {"name": f"after {i}"})
    for client in others:
        messages = await client.drain()
        assert [m["record"]["name"] for m in messages] == ["before"] + [f"after {i}" for i in range(5)]
        assert [m["seq"] for m in messages] == list(range(1, 7))
        client.close()


# -- backpressure --------------------------------------------------------------------------------

@pytest.fixture
def small_queue(make_server):
    return make_server({"realtime": {"max_pending": 100}})


def read_until_close_frame(sock: socket.socket, data: bytes) -> list[tuple[int, bytes]]:
    """Blocking: read frames until the close frame (or EOF); don't wait for the TCP close."""
    sock.settimeout(TIMEOUT)
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except (ConnectionResetError, TimeoutError):
            chunk = b""
        data += chunk
        frames = parse_frames(data)
        if not chunk or close_code(frames) is not None:
            return frames


@pytest.mark.gen_test(timeout=90)
async def test_client_that_stops_reading_is_dropped_and_memory_stays_bounded(small_queue):
    server = small_queue
    app = server.app
    total, chunk = 30_000, 100
    sock, early = await in_thread(raw_connect, port_of(server), "/ws/products", 4096)
    await wait_for(lambda: app.connections.count() == 1, what="the stalled client")
    (stalled,) = app.connections.open
    reader = await FeedClient.open(server, "/ws/products")
    rss_before = rss_bytes()
    longest = 0
    drained = None
    received = 0
    for start in range(0, total, chunk):
        for i in range(start, start + chunk):
            app.hub.publish(Change("products", "updated", 1, {"id": 1, "name": f"n{i}"}))
            longest = max(longest, len(stalled.outbox.queue))
        if drained is None and stalled not in app.connections.open:
            # dropped: read what it was sent, up to the close frame, while we go on
            drained = asyncio.ensure_future(in_thread(read_until_close_frame, sock, early))
        # the reading client keeps up and must get every change
        messages = await reader.changes(chunk)
        assert [m["seq"] for m in messages] == list(range(start + 1, start + chunk + 1))
        received += len(messages)
    rss_growth = rss_bytes() - rss_before

    assert received == total
    assert longest <= 100, "the per-connection queue is bounded by max_pending"
    assert drained is not None, "the stalled client was never dropped"
    assert app.connections.dropped_by_backpressure == 1
    assert stalled.outbox.queue == type(stalled.outbox.queue)()
    assert rss_growth < 100 * 1024 * 1024, f"RSS grew {rss_growth / 1e6:.0f} MB"
    frames = await drained
    sock.close()
    assert close_code(frames) == 1013
    texts = [json.loads(payload) for opcode, payload in frames if opcode == 0x1]
    assert texts[0]["type"] == "hello"
    seqs = [m["seq"] for m in texts[1:]]
    assert seqs == list(range(1, len(seqs) + 1))  # what it got was in order, then the close
    assert len(seqs) < total
    # the reader is still healthy
    assert app.connections.open == {next(iter(app.connections.open))}
    assert await reader.drain() == []
    reader.close()


@pytest.mark.gen_test(timeout=30)
async def test_dropped_slow_client_resumes_with_since(small_queue):
    server = small_queue
    app = server.app
    sock, early = await in_thread(raw_connect, port_of(server), "/ws/products", 4096)
    await wait_for(lambda: app.connections.count() == 1, what="the stalled client")
    for i in range(2000):
        app.hub.publish(Change("products", "updated", 1, {"id": 1, "name": f"n{i}"}))
    assert app.connections.count() == 0
    frames = await in_thread(read_until_close_frame, sock, early)
    sock.close()
    assert close_code(frames) == 1013
    last = json.loads([payload for opcode, payload in frames if opcode == 0x1][-1])["seq"]
    assert last < 2000
    client = await FeedClient.open(server, f"/ws/products?since={last}")
    # the replay (more than max_pending) is paced by the bounded queue, not refused
    messages = await client.changes(2000 - last)
    assert await client.drain() == []
    assert [m["seq"] for m in messages] == list(range(last + 1, 2001))
    assert messages[-1]["record"]["name"] == "n1999"
    client.close()


TORNADO_CLOSE_WAIT = 5.0  # how long Tornado itself waits for the answer to a close frame


def read_to_close_frame(sock: socket.socket, data: bytes) -> bytes:
    """Blocking: every byte up to and including the first close frame (or EOF)."""
    sock.settimeout(TIMEOUT)
    while True:
        if close_code(parse_frames(data)) is not None:
            return data
        try:
            chunk = sock.recv(1 << 16)
        except (ConnectionResetError, TimeoutError):
            chunk = b""
        if not chunk:
            return data
        data += chunk


def frame_sizes(data: bytes) -> int:
    """How many bytes of ``data`` are whole frames (parse_frames drops a torn tail)."""
    size = 0
    for _, payload in parse_frames(data):
        length = len(payload)
        size += 2 + length + (2 if 126 <= length < 65536 else 8 if length >= 65536 else 0)
    return size


def read_some(sock: socket.socket, data: bytes, size: int) -> bytes:
    """Blocking: read until ``size`` more bytes came (a client that reads a little)."""
    sock.settimeout(TIMEOUT)
    goal = len(data) + size
    while len(data) < goal:
        chunk = sock.recv(goal - len(data))
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.gen_test(timeout=120)
async def test_every_client_dropped_for_backpressure_finds_1013_when_it_reads_late(small_queue):
    """Issue 10 item 4: many clients read slowly, then stop, and are dropped; each one
    that reads again long after (past Tornado's 5 s close wait) finds whole frames,
    in order, then the 1013 close frame: what was queued for it (ours, and the
    frames waiting in Tornado's write buffer) was dropped, never a frame partway,
    and the connection was kept for it."""
    server = small_queue
    app = server.app
    count = 60
    port = port_of(server)
    clients = [await in_thread(raw_connect, port, "/ws/products", 4096) for _ in range(count)]
    await wait_for(lambda: app.connections.count() == count, what="every stalled client")
    streams = [handler.ws_connection.stream for handler in app.connections.open]
    published = 0

    async def publish(frames: int) -> None:
        nonlocal published
        for _ in range(frames):
            # frames of many sizes, so a socket fills in the middle of some
            name = "x" * (50 + (published * 397) % 3000)
            app.hub.publish(Change("products", "updated", 1, {"id": 1, "name": name}))
            published += 1
            if published % 40 == 0:
                await asyncio.sleep(0.005)  # the writes go on between bursts

    await publish(80)  # the kernel's buffers fill up
    assert app.connections.count() == count
    # each client reads a little, so the next batch of frames goes out, and stops
    datas = await asyncio.gather(*[in_thread(read_some, sock, early, 30_000)
                                   for sock, early in clients])
    clients = [(sock, data) for (sock, _), data in zip(clients, datas, strict=True)]
    waiting = 0
    while app.connections.count() and published < 5_000:
        waiting = max(waiting, max(len(stream._write_buffer) for stream in streams))
        await publish(1)
    assert app.connections.count() == 0
    assert app.connections.dropped_by_backpressure == count
    assert waiting > 20_000, "frames should have waited in Tornado's buffer"
    # Behind the close frame waits at most the rest of one frame that had started.
    for stream in streams:
        assert len(stream._write_buffer) < 3200 + 200, len(stream._write_buffer)
    await asyncio.sleep(TORNADO_CLOSE_WAIT + 1)  # the clients read late
    datas = await asyncio.gather(*[in_thread(read_to_close_frame, sock, data)
                                   for sock, data in clients])
    for sock, _ in clients:
        sock.close()
    codes = [close_code(parse_frames(data)) for data in datas]
    assert codes.count(1013) == count, f"{codes.count(1013)} of {count} found the 1013: {codes}"
    for data in datas:
        frames = parse_frames(data)
        assert frame_sizes(data) == len(data), "a frame was cut partway"
        assert frames[-1][0] == 0x8 and all(opcode == 0x1 for opcode, _ in frames[:-1])
        texts = [json.loads(payload) for _, payload in frames[:-1]]
        assert texts[0]["type"] == "hello"
        assert [m["seq"] for m in texts[1:]] == list(range(1, len(texts)))


@pytest.fixture
def tiny_queue_big_ring(make_server):
    return make_server({"realtime": {"replay_buffer": 1000, "max_pending": 10}})


@pytest.mark.gen_test(timeout=30)
async def test_resuming_client_that_stops_reading_is_dropped_too(tiny_queue_big_ring):
    server = tiny_queue_big_ring
    app = server.app
    for i in range(500):
        app.hub.publish(Change("products", "updated", 1, {"id": 1, "name": f"n{i}"}))
    sock, early = await in_thread(raw_connect, port_of(server), "/ws/products?since=0", 4096)
    await wait_for(lambda: app.connections.count() == 1, what="the resuming client")
    (stalled,) = app.connections.open
    longest = 0
    for i in range(2000):  # the ring moves past what it still had to replay
        app.hub.publish(Change("products", "updated", 1, {"id": 1, "name": f"m{i}"}))
        longest = max(longest, len(stalled.outbox.queue))
    assert longest <= 10
    assert app.connections.count() == 0
    assert app.connections.dropped_by_backpressure == 1
    frames = await in_thread(read_until_close_frame, sock, early)
    sock.close()
    assert close_code(frames) == 1013
    seqs = [json.loads(payload)["seq"] for opcode, payload in frames if opcode == 0x1][1:]
    assert seqs == list(range(1, len(seqs) + 1))


@pytest.mark.gen_test(timeout=30)
async def test_resume_with_a_filter_replays_only_matching_rows(server):
    for pk, price in ((1, "50"), (2, "1"), (3, "60"), (1, "2")):
        await server.put(f"/api/products/{pk}", {"price": price})
    client = await FeedClient.open(server, "/ws/products?price=gt.20&since=0")
    messages = await client.drain()
    assert [(m["seq"], m["pk"], m.get("matches", True)) for m in messages] == [
        (1, 1, True), (2, 2, False), (3, 3, True), (4, 1, False)]
    client.close()


# -- shutdown --------------------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_stop_closes_every_socket_with_1001(server):
    clients = [await FeedClient.open(server, f"/ws/{name}")
               for name in ("products", "products", "users", "orders")]
    filtered = await FeedClient.open(server, "/ws/products?price=gt.1000")
    await wait_for(lambda: server.app.connections.count() == 5, what="five connections")
    await server.app.stop()
    for client in [*clients, filtered]:
        assert await client.closed() == 1001
    assert server.app.connections.count() == 0
