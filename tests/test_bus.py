"""Several Pylight processes behind one Redis bus behave as one (issue 5, part 2).

Real processes (tests/live_server.py) on one PostgreSQL database: a change
written through one reaches every process's clients with the same seq, a
client may resume on another process, a dead Redis degrades to local
delivery and its return resumes the bus, and nginx in front (the sample
config of etc/) serves REST and WebSockets from both.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
import tornado.httpclient

from tests.bus_support import (
    SHARED_REDIS,
    Nginx,
    RedisProcess,
    delete_prefix,
    missing,
    redis_ping,
    require_postgresql,
    start_processes,
    unique_prefix,
    wait_for_log,
)
from tests.live_server import LiveServer, run_cli
from tests.realtime_support import FeedClient, in_thread

if TYPE_CHECKING:
    from tests.conftest import TestDatabase

TIMEOUT = 15.0


async def rest(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    response = await tornado.httpclient.AsyncHTTPClient().fetch(
        base + path, method=method, raise_error=False, request_timeout=TIMEOUT,
        body=None if body is None else json.dumps(body),
        headers={"Content-Type": "application/json"}, allow_nonstandard_methods=True)
    return response.code, json.loads(response.body) if response.body else None


def summary(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(m["type"], m.get("seq"), m.get("event"), m.get("pk"),
             (m.get("record") or {}).get("name")) for m in messages]


@pytest.fixture
def shared_bus(database: TestDatabase) -> Iterator[str]:
    """A key prefix of our own on the shared Redis, removed afterwards."""
    require_postgresql(database)
    if not redis_ping(SHARED_REDIS):
        missing("Redis is not reachable on 127.0.0.1:6379")
    prefix = unique_prefix()
    yield prefix
    delete_prefix(SHARED_REDIS, prefix)


@pytest.fixture
def pair(shared_bus: str, database: TestDatabase, tmp_path: Any) -> Iterator[list[LiveServer]]:
    """Two Pylight processes, A and B, on one database and the shared Redis."""
    servers = start_processes(2, tmp_path, database, SHARED_REDIS, shared_bus)
    yield servers
    for server in servers:
        server.stop()


@pytest.mark.gen_test(timeout=90)
async def test_a_write_through_a_reaches_b_in_the_same_seq_order(pair: list[LiveServer]) -> None:
    a, b = pair
    on_a = await FeedClient.open(a, "/ws/products")
    on_b = await FeedClient.open(b, "/ws/products")
    assert on_a.hello["seq"] == on_b.hello["seq"]
    # Writes through both processes at once, several in flight on each.
    writes = []
    for i in range(10):
        writes.append(rest(a.base_url, "POST", "/api/products",
                           {"name": f"from-a-{i}", "price": "1.00", "sku": f"BUS-A-{i}"}))
        writes.append(rest(b.base_url, "POST", "/api/products",
                           {"name": f"from-b-{i}", "price": "2.00", "sku": f"BUS-B-{i}"}))
    results = await asyncio.gather(*writes)
    assert all(status == 201 for status, _ in results), results
    status, _ = await rest(a.base_url, "PUT", "/api/products/1", {"name": "renamed on A"})
    assert status == 200
    doomed = results[0][1]["id"]
    assert (await rest(b.base_url, "DELETE", f"/api/products/{doomed}"))[0] == 204

    seen_a = await on_a.changes(22, TIMEOUT)
    seen_b = await on_b.changes(22, TIMEOUT)
    assert summary(seen_a) == summary(seen_b)
    seqs = [m["seq"] for m in seen_a]
    assert seqs == sorted(seqs) and len(set(seqs)) == 22
    assert seqs[0] == on_a.hello["seq"] + 1 and seqs[-1] == seqs[0] + 21  # one counter for both
    names = {m["record"]["name"] for m in seen_b}
    assert {f"from-a-{i}" for i in range(10)} <= names and "renamed on A" in names
    assert [m["event"] for m in seen_b[-2:]] == ["updated", "deleted"]
    # Nothing more: each change came once, not once per process.
    assert await on_b.drain() == [] and await on_a.drain() == []
    on_a.close()
    on_b.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_client_resumes_on_another_process_without_missing_anything(
        pair: list[LiveServer], shared_bus: str, database: TestDatabase, tmp_path: Any) -> None:
    a, b = pair
    watcher = await FeedClient.open(a, "/ws/products")  # sees everything, stays on A
    client = await FeedClient.open(a, "/ws/products")
    await rest(a.base_url, "POST", "/api/products", {"name": "first", "price": "1", "sku": "R-0"})
    (first,) = await client.changes(1, TIMEOUT)
    last_seen = first["seq"]
    client.close()  # the client's process goes away (the load balancer moves it)

    for i in range(1, 6):
        server = a if i % 2 else b
        status, _ = await rest(server.base_url, "POST", "/api/products",
                               {"name": f"while away {i}", "price": "1", "sku": f"R-{i}"})
        assert status == 201
    expected = summary(await watcher.changes(6, TIMEOUT))[1:]

    resumed = await FeedClient.open(b, f"/ws/products?since={last_seen}")
    assert resumed.hello["seq"] == expected[-1][1]
    assert summary(await resumed.changes(5, TIMEOUT)) == expected  # no resync, no gap
    # And live changes follow on B, in order.
    await rest(a.base_url, "PUT", "/api/products/1", {"name": "live after resume"})
    (live,) = await resumed.changes(1, TIMEOUT)
    assert live["seq"] == expected[-1][1] + 1 and live["record"]["name"] == "live after resume"
    (watched,) = await watcher.changes(1, TIMEOUT)
    assert watched["seq"] == live["seq"]

    # A process started now fills its replay ring from Redis: resume works there too.
    (c,) = await in_thread(start_processes, 1, tmp_path, database, SHARED_REDIS, shared_bus)
    try:
        late = await FeedClient.open(c, f"/ws/products?since={last_seen}")
        assert late.hello["seq"] == live["seq"]
        assert summary(await late.changes(6, TIMEOUT)) == expected + summary([live])
        ahead = await FeedClient.open(c, f"/ws/products?since={live['seq'] + 5}")
        assert (await ahead.recv())["type"] == "resync"
        late.close()
        ahead.close()
    finally:
        await in_thread(c.stop)
    resumed.close()
    watcher.close()


@pytest.fixture
def private_redis(database: TestDatabase, tmp_path: Any) -> Iterator[RedisProcess]:
    require_postgresql(database)
    server = RedisProcess(tmp_path).start()
    yield server
    server.kill()


@pytest.mark.gen_test(timeout=150)
async def test_losing_redis_degrades_to_local_delivery_and_recovers_by_itself(
        private_redis: RedisProcess, database: TestDatabase, tmp_path: Any) -> None:
    a, b = await in_thread(start_processes, 2, tmp_path, database, private_redis.url,
                           unique_prefix(), {"realtime": {"heartbeat_interval": 2}})
    try:
        on_a = await FeedClient.open(a, "/ws/products")
        on_b = await FeedClient.open(b, "/ws/products")
        await rest(a.base_url, "PUT", "/api/products/1", {"name": "before"})
        (before,) = await on_b.changes(1, TIMEOUT)
        assert (await on_a.changes(1, TIMEOUT))[0]["seq"] == before["seq"]

        private_redis.kill()
        await in_thread(wait_for_log, a, "bus: lost the connection to Redis")
        await in_thread(wait_for_log, b, "bus: lost the connection to Redis")
        # Degraded: A's clients still get A's writes, numbered on from the last seq.
        status, _ = await rest(a.base_url, "PUT", "/api/products/1", {"name": "during"})
        assert status == 200
        (during,) = await on_a.changes(1, TIMEOUT)
        assert during["record"]["name"] == "during" and during["seq"] > before["seq"]
        await rest(b.base_url, "PUT", "/api/products/2", {"name": "during, on B"})
        (during_b,) = await on_b.changes(1, TIMEOUT)
        assert during_b["record"]["name"] == "during, on B"
        assert await on_a.drain() == [] and await on_b.drain() == []  # no bus: each its own
        await asyncio.sleep(1.5)  # an outage long enough for several failed reconnections
        # One warning for the outage, not one per write or per retry.
        assert a.log().count("bus: lost the connection to Redis") == 1

        private_redis.start()
        await in_thread(wait_for_log, a, "cross-process delivery resumed")
        await in_thread(wait_for_log, b, "cross-process delivery resumed")
        await rest(a.base_url, "PUT", "/api/products/1", {"name": "after, from A"})
        await rest(b.base_url, "PUT", "/api/products/2", {"name": "after, from B"})
        got_b = await on_b.changes(2, TIMEOUT)
        got_a = await on_a.changes(2, TIMEOUT)
        assert summary(got_a) == summary(got_b)
        assert [m["record"]["name"] for m in got_b] == ["after, from A", "after, from B"]
        # Still strictly increasing on each process's feed, past everything numbered before.
        assert got_b[0]["seq"] > max(during["seq"], during_b["seq"]) and got_b[1]["seq"] > got_b[0]["seq"]
        assert a.log().count("bus: lost the connection to Redis") == 1
        assert await on_b.drain() == []
        on_a.close()
        on_b.close()
    finally:
        await in_thread(a.stop)
        await in_thread(b.stop)


@pytest.mark.gen_test(timeout=90)
async def test_the_sample_nginx_config_serves_rest_and_websockets_from_both(
        pair: list[LiveServer], tmp_path: Any) -> None:
    a, b = pair
    nginx = await in_thread(lambda: Nginx(tmp_path, [a.port, b.port]).start())
    try:
        status, listing = await rest(nginx.base_url, "GET", "/api/products")
        assert status == 200 and listing["items"]
        feeds = [await FeedClient.open(nginx, "/ws/products") for _ in range(4)]
        # Round robin: the four feeds sit on both processes, yet every one gets each write.
        for i in range(4):
            status, created = await rest(nginx.base_url, "POST", "/api/products",
                                         {"name": f"via nginx {i}", "price": "3", "sku": f"NGX-{i}"})
            assert status == 201, created
        received = [summary(await feed.changes(4, TIMEOUT)) for feed in feeds]
        assert all(r == received[0] for r in received)
        assert [r[4] for r in received[0]] == [f"via nginx {i}" for i in range(4)]
        # The upgrades went through nginx to both processes (round robin).
        upgrade = '"method": "GET", "path": "/ws/products", "status": 101'  # the JSON access log
        assert upgrade in a.log() and upgrade in b.log()
        assert "POST /api/products" in (nginx.workdir / "access.log").read_text()
        for feed in feeds:
            feed.close()
    finally:
        await in_thread(nginx.stop)


@pytest.mark.gen_test(timeout=90)
async def test_a_process_starts_without_redis_and_joins_the_bus_when_it_comes_up(
        database: TestDatabase, tmp_path: Any) -> None:
    require_postgresql(database)
    redis_server = RedisProcess(tmp_path)  # not started yet
    a, b = await in_thread(start_processes, 2, tmp_path, database, redis_server.url,
                           unique_prefix())
    try:
        await in_thread(wait_for_log, a, "bus: cannot reach Redis")
        on_a = await FeedClient.open(a, "/ws/products")
        await rest(a.base_url, "PUT", "/api/products/1", {"name": "no bus yet"})
        assert (await on_a.changes(1, TIMEOUT))[0]["record"]["name"] == "no bus yet"

        await in_thread(redis_server.start)
        await in_thread(wait_for_log, a, "cross-process delivery resumed")
        await in_thread(wait_for_log, b, "cross-process delivery resumed")
        on_b = await FeedClient.open(b, "/ws/products")
        await rest(a.base_url, "PUT", "/api/products/1", {"name": "bus up"})
        assert (await on_b.changes(1, TIMEOUT))[0]["record"]["name"] == "bus up"
        on_a.close()
        on_b.close()
    finally:
        await in_thread(a.stop)
        await in_thread(b.stop)
        redis_server.kill()


def test_a_bad_bus_url_stops_start_up_with_one_line(tmp_path: Any) -> None:
    conf = tmp_path / "bad-bus.ini"
    conf.write_text(f"[database]\nurl = sqlite:///{tmp_path}/x.db\n\n"
                    "[bus]\nurl = amqp://127.0.0.1:5672/\n")
    result = run_cli(["--conf", str(conf), "--port", "0"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "pylight: error: [bus] url 'amqp://127.0.0.1:5672/': expected redis://host:port/db, "
        "rediss://... or unix:///path.sock"]


def test_a_change_crosses_the_bus_unchanged() -> None:
    import datetime

    from pylight_redis_bus import decode_change, encode_change

    from pylight.hub import Change

    at = datetime.datetime(2026, 11, 25, 8, 31, 2, 123456, tzinfo=datetime.timezone.utc)
    change = Change("order_lines", "updated", [7, "a,b"],
                    {"price": "5.00", "ratio": 1.5, "big": 2**62, "name": "Ünïcode\n\u2028",
                     "tags": {"k": [1, 2.5, None]}, "ok": True},
                    {"price": "4.00", "ratio": 0.5, "big": 1, "name": "x", "tags": None, "ok": False},
                    at)
    assert decode_change(encode_change(change)) == change
    assert "\n" not in encode_change(change)  # the channel message is seq, origin, change on 3 lines


@pytest.mark.gen_test(timeout=120)
async def test_captured_outside_writes_cross_the_bus_once(
        shared_bus: str, database: TestDatabase, tmp_path: Any) -> None:
    """Every process reads the change log; the bus still delivers each change once,
    with one seq, whichever process relayed it first."""
    capture = {"realtime": {"capture": "database", "install_triggers": "true"}}
    servers = start_processes(2, tmp_path, database, SHARED_REDIS, shared_bus, capture)
    try:
        a, b = servers
        on_a = await FeedClient.open(a, "/ws/products")
        on_b = await FeedClient.open(b, "/ws/products")
        await in_thread(database.execute,
                        "INSERT INTO products (name, price, sku) VALUES ('outside', 4.5, 'OUT-1')",
                        "UPDATE products SET name = 'outside too' WHERE id = 2",
                        "DELETE FROM products WHERE id = 1")
        status, _ = await rest(a.base_url, "POST", "/api/products",
                               {"name": "through a", "price": "1.00", "sku": "CAP-A"})
        assert status == 201
        seen_a = await on_a.changes(4, TIMEOUT)
        seen_b = await on_b.changes(4, TIMEOUT)
        assert summary(seen_a) == summary(seen_b)
        assert [m["event"] for m in seen_a] == ["created", "updated", "deleted", "created"]
        assert [m["seq"] for m in seen_a] == list(range(seen_a[0]["seq"], seen_a[0]["seq"] + 4))
        assert await on_a.drain() == [] and await on_b.drain() == []
        on_a.close()
        on_b.close()
    finally:
        for server in servers:
            server.stop()


@pytest.mark.gen_test(timeout=90)
async def test_subscriptions_on_one_socket_follow_writes_made_through_the_other_process(
        pair: list[LiveServer]) -> None:
    """/ws on B: two subscriptions, one to a table, one filtered; writes go through A."""
    a, b = pair
    channel = await FeedClient.open(b, "/ws")
    for sub, table, text in (("all", "orders", ""), ("cheap", "products", "price=lt.5")):
        channel.conn.write_message(json.dumps({"type": "subscribe", "id": sub,
                                               "table": table, "filter": text}))
        subscribed = await channel.recv(TIMEOUT)
        assert subscribed is not None and subscribed["type"] == "subscribed", subscribed
        assert subscribed["sub"] == sub
    status, cheap = await rest(a.base_url, "POST", "/api/products",
                               {"name": "bus pin", "price": "1.00", "sku": "BUS-PIN"})
    assert status == 201
    status, _ = await rest(a.base_url, "POST", "/api/products",
                           {"name": "bus lamp", "price": "50.00", "sku": "BUS-LAMP"})
    assert status == 201
    (change,) = await channel.changes(1, TIMEOUT)
    assert change["sub"] == "cheap" and change["record"]["id"] == cheap["id"]
    assert change["source"] == "api"
    assert await channel.drain() == []  # the lamp is not cheap; orders did not change
    channel.close()
