"""Change capture (`[realtime] capture = database`) on every backend: writes made
outside Pylight reach WebSocket subscribers, REST writes arrive once, the
trigger commands, the start-up check and the PostgreSQL listener's reconnect."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest

from pylight import capture
from tests.conftest import pg_connect, write_config
from tests.live_server import run_cli
from tests.realtime_support import FeedClient, in_thread, wait_for

if TYPE_CHECKING:
    from tests.conftest import TestDatabase

CAPTURE = {"capture": "database", "install_triggers": "true"}


@pytest.fixture
def capturing(make_server: Any) -> Any:
    """A server on the demo tables that learns every change from the triggers."""
    return make_server({"realtime": CAPTURE, "table:users": {"hidden": "password_hash"}})


async def outside(database: TestDatabase, *statements: str) -> list[Any]:
    """Run statements on a plain connection of their own (off the event loop)."""
    return await in_thread(database.execute, *statements)


def changes_only(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("type") == "change"]


# -- outside writes ------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_outside_insert_update_delete_reach_subscribers(capturing, database):
    client = await FeedClient.open(capturing, "/ws/products")
    await outside(database, "INSERT INTO products (name, price, sku) VALUES ('Outside', 12.5, 'OUT-1')")
    (created,) = await client.changes(1)
    assert created["event"] == "created" and created["table"] == "products"
    record = created["record"]
    assert record["name"] == "Outside" and record["price"] == "12.50" and record["sku"] == "OUT-1"
    assert record["in_stock"] is True
    assert created["pk"] == record["id"] and created["old"] is None
    stored = (await capturing.get(f"/api/products/{record['id']}")).body
    assert record == stored  # exactly what REST answers

    await outside(database, f"UPDATE products SET price = 13, name = 'Outside 2' WHERE id = {record['id']}")
    (updated,) = await client.changes(1)
    assert updated["event"] == "updated" and updated["pk"] == record["id"]
    assert updated["record"]["price"] == "13.00" and updated["record"]["name"] == "Outside 2"
    assert updated["old"] == stored  # the logged old row decodes to the API's encoding
    now = (await capturing.get(f"/api/products/{record['id']}")).body
    assert updated["record"] == now

    await outside(database, f"DELETE FROM products WHERE id = {record['id']}")
    (deleted,) = await client.changes(1)
    assert deleted["event"] == "deleted" and deleted["pk"] == record["id"]
    assert deleted["record"] == now
    assert deleted["seq"] == updated["seq"] + 1 == created["seq"] + 2
    client.close()


@pytest.mark.gen_test(timeout=60)
async def test_hidden_columns_never_sent(capturing, database):
    client = await FeedClient.open(capturing, "/ws/users")
    await outside(database, "UPDATE users SET name = 'Alicia', password_hash = 'zzz' WHERE id = 1",
                  "DELETE FROM orders WHERE user_id = 2", "DELETE FROM users WHERE id = 2")
    updated, deleted = await client.changes(2)
    assert updated["event"] == "updated" and deleted["event"] == "deleted"
    for message in (updated, deleted):
        assert "password_hash" not in message["record"]
    assert "password_hash" not in updated["old"] and updated["old"]["name"] == "Alice"
    assert deleted["record"]["email"] == "bob@example.com" and deleted["record"]["active"] is True
    client.close()


@pytest.mark.gen_test(timeout=90)
async def test_bulk_statements_touching_many_rows(capturing, database):
    client = await FeedClient.open(capturing, "/ws/products")
    rows = ", ".join(f"('Bulk {i}', {i}.25, 'BULK-{i:03d}')" for i in range(60))
    await outside(database, f"INSERT INTO products (name, price, sku) VALUES {rows}")
    created = await client.changes(60)
    assert [m["event"] for m in created] == ["created"] * 60
    assert sorted(m["record"]["sku"] for m in created) == [f"BULK-{i:03d}" for i in range(60)]

    await outside(database, "UPDATE products SET price = price + 1 WHERE sku LIKE 'BULK-%'")
    updated = await client.changes(60)
    assert all(m["event"] == "updated" for m in updated)
    by_sku = {m["record"]["sku"]: m for m in updated}
    assert by_sku["BULK-007"]["record"]["price"] == "8.25"
    assert by_sku["BULK-007"]["old"]["price"] == "7.25"

    await outside(database, "DELETE FROM products WHERE sku LIKE 'BULK-%'")
    deleted = await client.changes(60)
    assert all(m["event"] == "deleted" for m in deleted)
    assert {m["record"]["sku"] for m in deleted} == set(by_sku)
    seqs = [m["seq"] for m in created + updated + deleted]
    assert seqs == list(range(seqs[0], seqs[0] + 180))
    assert await client.drain() == []
    client.close()


@pytest.mark.gen_test(timeout=60)
async def test_rolled_back_transaction_produces_nothing(capturing, database):
    client = await FeedClient.open(capturing, "/ws/products")
    await outside(database, "BEGIN",
                  "INSERT INTO products (name, price, sku) VALUES ('Ghost', 1, 'GHOST-1')",
                  "UPDATE products SET price = 0 WHERE id = 1",
                  "ROLLBACK")
    await outside(database, "INSERT INTO products (name, price, sku) VALUES ('After', 2, 'AFTER-1')")
    (message,) = await client.changes(1)
    assert message["event"] == "created" and message["record"]["sku"] == "AFTER-1"
    await asyncio.sleep(0.5)
    assert await client.drain() == []
    client.close()


@pytest.mark.gen_test(timeout=60)
async def test_rest_writes_are_delivered_exactly_once(capturing, database):
    client = await FeedClient.open(capturing, "/ws/products")
    created = await capturing.post("/api/products", {"name": "Api", "price": "3.50", "sku": "API-1"})
    assert created.status == 201
    key = created.body["id"]
    assert (await capturing.put(f"/api/products/{key}", {"name": "Api 2"})).status == 200
    assert (await capturing.delete(f"/api/products/{key}")).status == 204
    # A marker written outside afterwards: if anything were sent twice, it would
    # show up before the marker.
    await outside(database, "INSERT INTO products (name, price, sku) VALUES ('Marker', 1, 'MARK-1')")
    try:
        messages = await client.changes(4)
    except asyncio.TimeoutError:
        reader = capturing.app.capture
        raise AssertionError(f"hub had {[(c.event, c.pk) for c in capturing.changes]}; reader at "
                             f"{reader.high}, holes {reader.holes}, task done "
                             f"{reader.task is not None and reader.task.done()}") from None
    assert [m["event"] for m in messages] == ["created", "updated", "deleted", "created"]
    assert messages[0]["record"] == created.body
    assert messages[1]["record"]["name"] == "Api 2" and messages[1]["old"] == created.body
    assert messages[3]["record"]["sku"] == "MARK-1"
    await asyncio.sleep(0.5)
    assert await client.drain() == []
    assert len([c for c in capturing.changes if c.table == "products"]) == 4
    client.close()


@pytest.fixture
def slow_poll(make_server: Any) -> Any:
    return make_server({"realtime": {**CAPTURE, "poll_interval": 5}})


@pytest.mark.gen_test(timeout=60)
async def test_rest_write_is_not_delayed_by_the_poll_interval(slow_poll, database):
    server = slow_poll
    client = await FeedClient.open(server, "/ws/products")
    started = time.monotonic()
    assert (await server.post("/api/products", {"name": "Fast", "price": 1, "sku": "F-1"})).status == 201
    (message,) = await client.changes(1, timeout=4)
    assert message["record"]["sku"] == "F-1"
    assert time.monotonic() - started < 2  # the commit wakes the reader
    client.close()


def _shapes_ddl(database: TestDatabase) -> None:
    database.ddl(
        "CREATE TABLE shapes (a INTEGER NOT NULL, b TEXT NOT NULL, amount NUMERIC(12, 3), "
        "ratio REAL, flag BOOLEAN, blob BLOB, doc JSON, day DATE, at TIMESTAMP, "
        "PRIMARY KEY (a, b));\n"
        "CREATE TABLE notes (body TEXT, n INTEGER)",
        postgresql="CREATE TABLE shapes (a INTEGER NOT NULL, b TEXT NOT NULL, amount NUMERIC(12, 3), "
        "ratio DOUBLE PRECISION, flag BOOLEAN, blob BYTEA, doc JSONB, day DATE, at TIMESTAMP, "
        "PRIMARY KEY (a, b));\n"
        "CREATE TABLE notes (body TEXT, n INTEGER)",
        mysql="CREATE TABLE shapes (a INTEGER NOT NULL, b VARCHAR(20) NOT NULL, amount NUMERIC(12, 3), "
        "ratio DOUBLE, flag BOOLEAN, `blob` BLOB, doc JSON, day DATE, at DATETIME, "
        "PRIMARY KEY (a, b));\n"
        "CREATE TABLE notes (body TEXT, n INTEGER)",
    )


@pytest.fixture
def shapes_server(make_server: Any, database: TestDatabase) -> Any:
    _shapes_ddl(database)
    return make_server({"realtime": CAPTURE}, seed=False)


@pytest.mark.gen_test(timeout=60)
async def test_deleted_rows_decode_like_the_api(shapes_server, database):
    client = await FeedClient.open(shapes_server, "/ws/shapes")
    blob = {"sqlite": "X'00FF10'", "postgresql": "'\\x00ff10'::bytea", "mysql": "X'00FF10'"}[database.backend]
    flag = "1" if database.backend == "sqlite" else "TRUE"
    blob_column = "`blob`" if database.backend == "mysql" else "blob"
    await outside(database, f"INSERT INTO shapes (a, b, amount, ratio, flag, {blob_column}, doc, day, at) "
                  f"VALUES (1, 'x''y', 5, 0.5, {flag}, {blob}, '{{\"k\": [1, 2.5]}}', '2026-01-02', "
                  "'2026-01-02 03:04:05')")
    (created,) = await client.changes(1)
    assert created["pk"] == [1, "x'y"]
    stored = (await shapes_server.get("/api/shapes?a=1")).body["items"][0]
    assert created["record"] == stored
    assert stored["amount"] == "5.000" and stored["blob"] == "AP8Q" and stored["flag"] is True
    await outside(database, "DELETE FROM shapes WHERE a = 1")
    (deleted,) = await client.changes(1)
    assert deleted["event"] == "deleted" and deleted["pk"] == [1, "x'y"]
    assert deleted["record"] == stored
    client.close()


@pytest.mark.gen_test(timeout=60)
async def test_table_without_primary_key(shapes_server, database):
    client = await FeedClient.open(shapes_server, "/ws/notes")
    await outside(database, "INSERT INTO notes (body, n) VALUES ('hello', 1)",
                  "UPDATE notes SET n = 2 WHERE n = 1",
                  "DELETE FROM notes WHERE n = 2")
    created, updated, deleted = await client.changes(3)
    assert created["event"] == "created" and created["record"] == {"body": "hello", "n": 1}
    assert updated["record"] == {"body": "hello", "n": 2} and updated["old"] == {"body": "hello", "n": 1}
    assert deleted["event"] == "deleted" and deleted["record"] == {"body": "hello", "n": 2}
    client.close()


@pytest.mark.gen_test(timeout=60)
async def test_late_commit_of_an_earlier_id_is_not_skipped(capturing, database):
    if database.backend == "sqlite":
        pytest.skip("SQLite has one writer at a time: ids commit in order")
    from tests.conftest import mysql_connect

    client = await FeedClient.open(capturing, "/ws/products")
    slow = pg_connect(database.name) if database.backend == "postgresql" else mysql_connect(database.name)
    try:
        with slow.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("INSERT INTO products (name, price, sku) VALUES ('Slow', 1, 'SLOW-1')")
        # A later id commits first and is delivered at once.
        await outside(database, "INSERT INTO products (name, price, sku) VALUES ('Quick', 1, 'QUICK-1')")
        (first,) = await client.changes(1)
        assert first["record"]["sku"] == "QUICK-1"
        await asyncio.sleep(0.6)  # a few reads of the log happen meanwhile
        await in_thread(slow.cursor().execute, "COMMIT")
        (second,) = await client.changes(1)
        assert second["record"]["sku"] == "SLOW-1"
    finally:
        slow.close()
    client.close()


# -- installing, removing, the start-up check -------------------------------------------

def test_install_and_remove_triggers_from_the_cli(database, tmp_path):
    database.ddl("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)",
                 mysql="CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
    conf = write_config(tmp_path, database.url, {"realtime": {"capture": "database"}},
                        seed=False)
    first = run_cli(["--conf", conf, "install-triggers"], tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["created the change log table _pylight_changes",
                                         "items: capture triggers installed"]
    again = run_cli(["--conf", conf, "install-triggers"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["items: capture triggers already installed"]

    database.ddl("ALTER TABLE items ADD COLUMN note TEXT")
    changed = run_cli(["--conf", conf, "install-triggers"], tmp_path)
    # PostgreSQL's trigger logs whole rows (to_jsonb) and depends on the key only.
    expected = "already installed" if database.backend == "postgresql" else "updated"
    assert changed.stdout.splitlines() == [f"items: capture triggers {expected}"], changed.stderr

    # The triggers work, and touch nothing else.
    database.execute("INSERT INTO items (id, name, note) VALUES (1, 'a', 'n')")
    logged = database.execute("SELECT op, table_name FROM _pylight_changes")
    assert [tuple(row) for row in logged] == [("I", "items")]

    removed = run_cli(["--conf", conf, "remove-triggers"], tmp_path)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.splitlines() == ["items: capture triggers removed",
                                           "dropped the change log table _pylight_changes"]
    assert run_cli(["--conf", conf, "remove-triggers"], tmp_path).stdout.splitlines() == [
        "no capture triggers installed; nothing to remove"]
    database.execute("INSERT INTO items (id, name, note) VALUES (2, 'b', 'n')")  # no trigger left
    assert len(database.execute("SELECT * FROM items")) == 2


def test_startup_without_triggers_is_one_clear_error(database, tmp_path):
    conf = write_config(tmp_path, database.url, {"realtime": {"capture": "database"}})
    result = run_cli(["--conf", conf, "--port", "0"], tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("pylight: error:")]
    assert len(errors) == 1, result.stderr
    assert "capture = database" in errors[0] and "install-triggers" in errors[0]
    assert "install_triggers = true" in errors[0]


def test_hole_bookkeeping():
    assert capture._fill([[1, 10, 0.0]], {1, 5, 10}) == [[2, 4, 0.0], [6, 9, 0.0]]
    assert capture._fill([[3, 3, 0.0]], {3}) == []


# -- PostgreSQL: the LISTEN connection ---------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_postgres_listener_reconnects_and_misses_nothing(capturing, database):
    if database.backend != "postgresql":
        pytest.skip("the LISTEN connection is PostgreSQL's")
    watcher = capturing.app.capture.watcher
    client = await FeedClient.open(capturing, "/ws/products")
    old_pid = watcher.backend_pid
    assert old_pid is not None
    killed = await outside(database, f"SELECT pg_terminate_backend({old_pid})")
    assert killed == [(True,)]
    # Writes right away, while the listener is down or reconnecting.
    await outside(database, *[f"INSERT INTO products (name, price, sku) VALUES ('R{i}', 1, 'RC-{i}')"
                              for i in range(5)])
    messages = await client.changes(5)
    assert [m["record"]["sku"] for m in messages] == [f"RC-{i}" for i in range(5)]
    await wait_for(lambda: watcher.backend_pid not in (None, old_pid), what="a new LISTEN connection")
    # Listening again: a write arrives well before the safety re-read would find it.
    started = time.monotonic()
    await outside(database, "INSERT INTO products (name, price, sku) VALUES ('Back', 1, 'RC-back')")
    (back,) = await client.changes(1)
    assert back["record"]["sku"] == "RC-back"
    assert time.monotonic() - started < 1.0
    client.close()


@pytest.mark.gen_test(timeout=60)
async def test_outside_write_latency_is_small(capturing, database):
    client = await FeedClient.open(capturing, "/ws/products")
    limit = 0.2 if database.backend == "postgresql" else 0.25 + 0.25
    took = []
    for i in range(5):
        started = time.monotonic()
        await outside(database, f"INSERT INTO products (name, price, sku) VALUES ('L', 1, 'LAT-{i}')")
        await client.changes(1)
        took.append(time.monotonic() - started)
    took.sort()
    assert took[2] < limit, took  # the median; the bench measures it properly
    client.close()


@pytest.mark.gen_test(timeout=60)
async def test_pruned_log_does_not_lose_later_changes(capturing, database, monkeypatch):
    client = await FeedClient.open(capturing, "/ws/products")
    await outside(database, "INSERT INTO products (name, price, sku) VALUES ('Old', 1, 'PRUNE-1')")
    await client.changes(1)
    await asyncio.sleep(0.05)
    monkeypatch.setattr(capture, "RETENTION", 0.0)
    await capturing.app.capture.prune()
    assert (await outside(database, "SELECT COUNT(*) FROM _pylight_changes"))[0][0] == 0
    # Ids are never reused after a prune (SQLite: AUTOINCREMENT), so this is not skipped.
    await outside(database, "INSERT INTO products (name, price, sku) VALUES ('New', 1, 'PRUNE-2')")
    (message,) = await client.changes(1)
    assert message["record"]["sku"] == "PRUNE-2"
    client.close()


@pytest.mark.gen_test(timeout=60)
async def test_each_change_shows_the_row_as_that_change_left_it(capturing, database):
    """A row created, renamed and deleted before the log is read still yields all three
    events, each with the row as it was at that step (not as it is when read)."""
    client = await FeedClient.open(capturing, "/ws/products")
    await outside(database,
                  "INSERT INTO products (name, price, sku) VALUES ('Brief', 2, 'BRIEF-1')",
                  "UPDATE products SET name = 'Briefer' WHERE sku = 'BRIEF-1'",
                  "DELETE FROM products WHERE sku = 'BRIEF-1'")
    messages = await client.changes(3)
    assert [(m["event"], m["record"]["name"]) for m in messages] == [
        ("created", "Brief"), ("updated", "Briefer"), ("deleted", "Briefer")]
    assert messages[0]["record"]["price"] == "2.00"
    assert messages[1]["old"]["name"] == "Brief"
    client.close()
