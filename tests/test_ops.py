"""Operations: `/metrics` (Prometheus text), the JSON access log, `/healthz` and `/readyz`."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pylight import ops
from pylight.hub import Change
from pylight.redaction import RedactCredentials, redact
from tests.auth_support import UPGRADE, bearer, open_feed
from tests.conftest import pg_connect
from tests.realtime_support import (
    TIMEOUT,
    FeedClient,
    in_thread,
    port_of,
    raw_connect,
    wait_for,
)

sqlite_only = pytest.mark.parametrize("database", ["sqlite"], indirect=True)
postgresql_only = pytest.mark.parametrize("database", ["postgresql"], indirect=True)

READER = "reader-key-4f1c9a2b7d3e8f60"
FIXED_ROUTES = {":schema", ":openapi", ":metrics", ":healthz", ":readyz", ":page", ":not_found",
                ":unknown_table", ":other"}


class Scrape:
    """One parsed exposition: ``scrape["name", {"label": "value"}]`` is a sample's value (0 if absent)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def __getitem__(self, key: str | tuple[str, dict[str, str]]) -> float:
        name, labels = (key, {}) if isinstance(key, str) else key
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(labels)[label] for sample, labels in self.samples
                if sample == name and label in dict(labels)}


async def scrape(server: Any) -> Scrape:
    response = await server.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return Scrape(response.raw.decode())


def local_scrape(server: Any) -> Scrape:
    """Scrape in-process, between two statements on the event loop (no request in between)."""
    return Scrape(server.app.metrics.exposition().decode())


def requests_of(table: str, method: str, status: int) -> tuple[str, dict[str, str]]:
    return ("pylight_http_requests_total", {"table": table, "method": method, "status": str(status)})


# -- requests ---------------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_request_metrics_count_by_table_method_and_status(server):
    before = await scrape(server)
    assert (await server.get("/api/products")).status == 200
    assert (await server.get("/api/products?price=gt.1")).status == 200
    assert (await server.get("/api/products/1")).status == 200
    assert (await server.post("/api/products", {"name": "Metered", "price": "1.00",
                                                "sku": "MET-1"})).status == 201
    assert (await server.get("/api/no_such_table")).status == 404
    assert (await server.get("/no/such/path?x=1")).status == 404
    assert (await server.request("BREW", "/api/products")).status == 405
    after = await scrape(server)

    def delta(key: tuple[str, dict[str, str]]) -> float:
        return after[key] - before[key]

    assert delta(requests_of("products", "GET", 200)) == 3
    assert delta(requests_of("products", "POST", 201)) == 1
    assert delta(requests_of(":unknown_table", "GET", 404)) == 1  # no_such_table
    assert delta(requests_of(":not_found", "GET", 404)) == 1
    # a method a client made up is counted, but cannot mint a label value (Tornado
    # refuses it before the table is known)
    assert delta(requests_of(":unknown_table", "OTHER", 405)) == 1
    assert after[requests_of(":metrics", "GET", 200)] >= 1  # the first scrape
    latency = ("pylight_http_request_duration_seconds_count", {"table": "products", "method": "GET"})
    assert delta(latency) == 3
    assert after["pylight_http_request_duration_seconds_sum",
                 {"table": "products", "method": "GET"}] > 0
    # label values are table names or fixed route names, never a raw path
    tables = after.label_values("pylight_http_requests_total", "table")
    assert tables <= set(server.app.tables) | FIXED_ROUTES, tables
    assert "no_such_table" not in after.text and "/no/such/path" not in after.text
    assert after.label_values("pylight_http_requests_total", "method") <= ops.METHODS | {"OTHER"}
    # the pool: conftest's pool_size is 4; the workers that ran a query hold one each
    assert after["pylight_db_connections_max"] == 4
    in_use = after["pylight_db_connections", {"state": "in_use"}]
    assert 1 <= in_use <= 4
    assert after["pylight_db_executor_queue"] == 0
    assert after["process_open_fds"] > 0  # this server's registry has the process collector too


@pytest.fixture
def two_servers(make_server):
    return make_server(), make_server()


@sqlite_only
@pytest.mark.gen_test(timeout=60)
async def test_each_server_has_its_own_registry(two_servers):
    first, second = two_servers
    for _ in range(3):
        assert (await first.get("/api/users")).status == 200
    assert (await second.get("/api/users")).status == 200
    assert (await scrape(first))[requests_of("users", "GET", 200)] == 3
    assert (await scrape(second))[requests_of("users", "GET", 200)] == 1


# -- WebSocket feeds --------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_websocket_metrics_follow_connections_and_messages(server):
    clients = [await FeedClient.open(server, "/ws/products"),
               await FeedClient.open(server, "/ws/products"),
               await FeedClient.open(server, "/ws/orders")]
    metrics = await scrape(server)
    assert metrics["pylight_websocket_connections", {"table": "products"}] == 2
    assert metrics["pylight_websocket_connections", {"table": "orders"}] == 1
    assert metrics["pylight_websocket_connections", {"table": "users"}] == 0
    assert metrics["pylight_websocket_messages_sent_total"] == 3  # the hellos
    assert metrics[requests_of("products", "GET", 101)] == 2  # upgrades are requests too

    assert (await server.put("/api/products/1", {"name": "Counted"})).status == 200
    for client in clients[:2]:
        (change,) = await client.drain()  # the change, then the pong
        assert change["record"]["name"] == "Counted"
    metrics = await scrape(server)
    assert metrics["pylight_websocket_messages_sent_total"] == 3 + 2 + 2
    assert metrics["pylight_websocket_queue_messages"] == 0

    for client in clients:
        client.close()
    await wait_for(lambda: server.app.connections.count() == 0, what="the clients to go")
    metrics = await scrape(server)
    assert metrics["pylight_websocket_connections", {"table": "products"}] == 0
    assert metrics["pylight_websocket_messages_sent_total"] == 7  # a counter never goes down


@pytest.fixture
def strict_feeds(make_server):
    return make_server({"realtime": {"heartbeat_interval": 1, "heartbeat_timeout": 1,
                                     "max_pending": 50, "max_messages_per_second": 5}})


@sqlite_only
@pytest.mark.gen_test(timeout=60)
async def test_drop_metrics_by_reason_and_queue_depths(strict_feeds):
    server = strict_feeds
    app = server.app
    connections = app.connections
    dropped = "pylight_websocket_dropped_total"
    assert {reason: (await scrape(server))[dropped, {"reason": reason}]
            for reason in ("heartbeat", "backpressure", "rate_limit")} == {
        "heartbeat": 0, "backpressure": 0, "rate_limit": 0}

    # backpressure: a client that stops reading; its queue depth shows until it is dropped
    sock, _ = await in_thread(raw_connect, port_of(server), "/ws/products", 4096)
    try:
        await wait_for(lambda: connections.count() == 1, what="the stalled client")
        (stalled,) = connections.open
        seen_depth = 0
        for i in range(50_000):
            app.hub.publish(Change("products", "updated", 1, {"id": 1, "name": f"n{i}"}))
            if stalled.outbox.queue and not seen_depth:
                depth = len(stalled.outbox.queue)
                metrics = local_scrape(server)
                assert metrics["pylight_websocket_queue_messages_max"] == depth
                assert metrics["pylight_websocket_queue_messages"] == depth
                seen_depth = depth
            if stalled not in connections.open:
                break
        assert seen_depth > 0
        assert connections.dropped_by_backpressure == 1
        metrics = await scrape(server)
        assert metrics[dropped, {"reason": "backpressure"}] == 1
        assert metrics["pylight_websocket_queue_messages"] == 0
    finally:
        sock.close()

    # rate limit: a client flooding messages is closed with 1008
    flooder = await FeedClient.open(server, "/ws/products")
    for _ in range(50):
        flooder.conn.write_message('{"type":"ping"}')
    assert await flooder.closed() == 1008
    assert (await scrape(server))[dropped, {"reason": "rate_limit"}] == 1

    # heartbeat: a peer that never answers a ping is dropped within interval + timeout
    silent, _ = await in_thread(raw_connect, port_of(server), "/ws/products")
    try:
        await wait_for(lambda: connections.dropped_by_heartbeat == 1, timeout=5,
                       what="the silent peer to be dropped")
    finally:
        silent.close()
    metrics = await scrape(server)
    assert metrics[dropped, {"reason": "heartbeat"}] == 1
    assert metrics[dropped, {"reason": "backpressure"}] == 1
    assert metrics[dropped, {"reason": "rate_limit"}] == 1
    assert metrics["pylight_websocket_messages_sent_total"] >= 3


# -- the access log ---------------------------------------------------------------------------

class AccessLog(logging.Handler):
    """The records of ``tornado.access`` while installed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger("tornado.access")

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> AccessLog:
        self.level_before = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level_before)


@pytest.fixture
def keyed(make_server):
    return make_server({"plugin:apikeys": {"reader.key": READER,
                                           "reader.permissions": "products: read"}})


@sqlite_only
@pytest.mark.gen_test(timeout=60)
async def test_access_log_is_one_json_line_per_request_without_tokens(keyed):
    server = keyed
    with AccessLog() as log:
        assert (await server.get(f"/api/products?token={READER}&limit=1")).status == 200
        assert (await server.get("/api/products/1", headers=bearer(READER))).status == 200
        # the name percent-encoded: the server still reads it as token=, so must the log
        assert (await server.get(f"/api/products?%74oken={READER}")).status == 200
        assert (await server.get(f"/api/orders?token={READER}")).status == 403
        feed = await open_feed(server, f"/ws/products?token={READER}")
        feed.close()
        assert (await server.get(f"/ws/products?token={READER}x", headers=UPGRADE)).status == 401
        assert (await server.get("/api/products")).status == 401
    lines = [record.getMessage() for record in log.records]
    assert len(lines) == 7, lines
    for line in lines:
        assert READER not in line
    for record in log.records:
        assert READER not in repr(record.__dict__)
    entries = [json.loads(line) for line in lines]
    for entry in entries:
        assert set(entry) == {"time", "method", "path", "status", "duration_ms", "remote", "table",
                              "bytes"}
        assert entry["time"].endswith("Z")
        assert datetime.datetime.fromisoformat(entry["time"][:-1] + "+00:00").tzinfo is not None
        assert entry["remote"] == "127.0.0.1"
        assert entry["duration_ms"] >= 0
    assert [(e["method"], e["status"], e["table"]) for e in entries] == [
        ("GET", 200, "products"), ("GET", 200, "products"), ("GET", 200, "products"),
        ("GET", 403, "orders"), ("GET", 101, "products"), ("GET", 401, "products"),
        ("GET", 401, "products")]
    assert entries[0]["path"] == "/api/products?token=***&limit=1"
    assert entries[2]["path"] == "/api/products?%74oken=***"
    assert entries[3]["path"] == "/api/orders?token=***"
    assert entries[4]["path"] == "/ws/products?token=***"
    assert entries[1]["bytes"] > 0 and entries[4]["bytes"] == 0
    # 4xx are warnings, 2xx and 101 are info
    assert [r.levelno for r in log.records] == [logging.INFO] * 3 + [logging.WARNING] + [
        logging.INFO] + [logging.WARNING] * 2


def test_redact() -> None:
    assert redact("/a?token=s3cret") == "/a?token=***"
    assert redact("/a?x=1&token=s&y=2") == "/a?x=1&token=***&y=2"
    assert redact("/a?to%6Ben=s&Token=t&token") == "/a?to%6Ben=***&Token=***&token"
    assert redact("/a?tokens=1&x=token=2") == "/a?tokens=1&x=token=2"
    assert redact("/a/token=b") == "/a/token=b"
    assert redact("/a?%74%6F%6B%65%6E=s") == "/a?%74%6F%6B%65%6E=***"
    # Tornado's repr of a request, and database URLs
    assert redact("headers={'Authorization': 'Bearer abc.def', 'X-Api-Key': 'k1'}") == \
        "headers={'Authorization': '***', 'X-Api-Key': '***'}"
    assert redact("Authorization: Bearer abc") == "Authorization: ***"
    assert redact("postgresql://ann:s3cret@db:5432/shop") == "postgresql://ann:***@db:5432/shop"


def test_every_log_line_of_a_request_is_redacted() -> None:
    """Tornado logs an uncaught exception with the URI and the request's headers, and
    the exception's text may repeat them: none of it reaches a log unredacted."""
    record = logging.LogRecord(
        "tornado.application", logging.ERROR, __file__, 1, "Uncaught exception %s\n%r",
        ("GET /api/orders?token=SECRET1 (127.0.0.1)",
         "HTTPServerRequest(uri='/api/orders?token=SECRET1', headers={'Authorization': "
         "'Bearer SECRET2'})"), None)
    try:
        raise ValueError("bad value in /api/orders?x=1&token=SECRET3")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactCredentials().filter(record)
    text = logging.Formatter().format(record)
    assert "SECRET" not in text, text
    assert "token=***" in text and "ValueError" in text


# -- health and readiness ---------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_healthz_and_readyz(server):
    health = await server.get("/healthz")
    assert (health.status, health.body) == (200, {"status": "ok"})
    assert health.headers["Cache-Control"] == "no-store"
    ready = await server.get("/readyz")
    assert (ready.status, ready.body) == (200, {"status": "ready"})
    assert ready.headers["Content-Type"].startswith("application/json")


@sqlite_only
@pytest.mark.gen_test(timeout=60)
async def test_readyz_is_503_when_the_database_does_not_answer_in_time(server, monkeypatch):
    monkeypatch.setattr(ops, "READY_TIMEOUT", 0.2)
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def block() -> None:
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(TIMEOUT)

    # every worker busy: SELECT 1 waits in the executor's queue
    busy = [loop.run_in_executor(server.app.db.executor, block) for _ in range(4)]
    try:
        ready = await server.get("/readyz")
        assert ready.status == 503
        assert ready.body["error"]["code"] == "unavailable"
        assert "did not answer within 0.2 s" in ready.body["error"]["message"]
        assert ready.headers["Retry-After"]
        metrics = await scrape(server)
        assert metrics["pylight_db_executor_busy"] == 4
        assert metrics["pylight_db_executor_queue"] >= 1  # the readiness check still waits
        assert (await server.get("/healthz")).status == 200  # the process is alive all along
    finally:
        release.set()
        await asyncio.gather(*busy)
    assert (await server.get("/readyz")).status == 200


@postgresql_only
def test_readyz_is_503_while_the_database_refuses_then_200(database, make_server, io_loop):
    """PostgreSQL's ALLOW_CONNECTIONS false and the pool's backends terminated, as in
    test_database_faults.py; restored in ``finally``."""
    server = make_server()
    admin = pg_connect()

    def allow(flag: bool) -> None:
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{database.name}" ALLOW_CONNECTIONS {str(flag).lower()}')
            if not flag:
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = %s AND pid <> pg_backend_pid()", (database.name,))

    async def check() -> None:
        assert (await server.get("/readyz")).status == 200
        allow(False)
        ready = await server.get("/readyz")
        assert ready.status == 503, ready.body
        assert ready.body["error"]["status"] == 503
        assert ready.body["error"]["code"] == "unavailable"
        assert int(ready.headers["Retry-After"]) >= 1
        health = await server.get("/healthz")
        assert (health.status, health.body) == (200, {"status": "ok"})
        metrics = await scrape(server)  # metrics are served while the database is away
        assert metrics[requests_of(":readyz", "GET", 503)] == 1
        allow(True)
        deadline = time.monotonic() + TIMEOUT
        while (ready := await server.get("/readyz")).status != 200:
            assert time.monotonic() < deadline, f"/readyz stayed {ready.status}: {ready.body}"
            await asyncio.sleep(0.1)
        assert ready.body == {"status": "ready"}

    try:
        io_loop.run_sync(check, timeout=60)
    finally:
        allow(True)
        admin.close()
