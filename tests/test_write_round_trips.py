"""Writes on PostgreSQL in as few round trips as they can safely take.

A single-row POST is one statement that commits by itself (``SET LOCAL
lock_timeout …; INSERT … RETURNING`` in one message). Every other write sends its
BEGIN with its first statement, then COMMIT. The single statement is used only
where nothing after it could call for a rollback, and not on a connection the
server may have ended, where a write must stay retriable; its changes are
published in an order the database could have committed them in, and one that
waits for a row lock goes on waiting in a transaction, holding nothing back.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from tests.conftest import pg_connect
from tests.test_database_faults import kill_server_connections

ALONE = "SET LOCAL lock_timeout = '100ms'; INSERT INTO"


class Messages:
    """Every text the server's pooled connections send to the database, in order
    (each ``cursor.execute`` is one message and one round trip)."""

    def __init__(self, server: Any) -> None:
        db = server.app.db.db
        plain = db.cursor
        self.sent: list[str] = []
        lock = threading.Lock()
        sent = self.sent

        class Cursor:
            def __init__(self, inner: Any) -> None:
                self.inner = inner

            def execute(self, sql: str, params: Any = None) -> Any:
                with lock:
                    sent.append(sql)
                return self.inner.execute(sql, params)

            def __getattr__(self, name: str) -> Any:
                return getattr(self.inner, name)

        db.cursor = lambda *args, **kwargs: Cursor(plain(*args, **kwargs))

    def take(self) -> list[str]:
        """What was sent since the last take, less the catalog question asked once per
        table (whether a trigger may rewrite its rows)."""
        taken = [text for text in self.sent if "pg_trigger" not in text]
        self.sent.clear()
        return taken


@pytest.fixture
def pg_server(database: Any, make_server: Any) -> Any:
    if database.backend != "postgresql":
        pytest.skip("the single-statement insert and the BEGIN sent with the first "
                    "statement are PostgreSQL's")
    return make_server()


def product(sku: str, price: str = "1.00") -> dict[str, Any]:
    return {"name": f"Lamp {sku}", "price": price, "sku": sku}


@pytest.mark.gen_test(timeout=60)
async def test_a_single_row_post_is_one_round_trip(pg_server):
    server = pg_server
    messages = Messages(server)
    first = await server.post("/api/products", product("L-1", "9.50"))
    assert first.status == 201, first.body
    sent = messages.take()
    assert len(sent) == 1 and sent[0].startswith(ALONE) and "RETURNING" in sent[0], sent
    assert (await server.get(f"/api/products/{first.body['id']}")).body == first.body
    assert [(c.event, c.record["sku"]) for c in server.changes] == [("created", "L-1")]
    messages.take()
    # An array is a transaction: BEGIN with the first insert, then COMMIT.
    two = await server.post("/api/products", [product("L-2"), product("L-3")])
    assert two.status == 201, two.body
    sent = messages.take()
    assert sent[0].startswith("BEGIN; INSERT INTO") and sent[-1] == "COMMIT", sent
    assert len(sent) == 3


@pytest.mark.gen_test(timeout=60)
async def test_a_refused_insert_writes_nothing_and_the_connection_goes_on(pg_server):
    server = pg_server
    created = await server.post("/api/products", product("L-1"))
    assert created.status == 201
    messages = Messages(server)
    for _ in range(3):  # whichever worker thread takes it, its connection is left clean
        clash = await server.post("/api/products", product("L-1", "2.00"))
        assert clash.status == 409, clash.body
        assert messages.take()[0].startswith(ALONE)
    # an update locks and reads the row, then writes it: BEGIN goes with the lock
    changed = await server.patch(f"/api/products/{created.body['id']}", {"name": "Lamp 2"})
    assert changed.status == 200 and changed.body["name"] == "Lamp 2"
    sent = messages.take()
    assert sent[0].startswith("BEGIN; SELECT") and "FOR UPDATE" in sent[0], sent
    assert sent[-1] == "COMMIT" and "BEGIN" not in sent
    listing = await server.get("/api/products?sku=eq.L-1")
    assert [row["name"] for row in listing.body["items"]] == ["Lamp 2"]
    assert [c.event for c in server.changes] == ["created", "updated"]


@pytest.mark.gen_test(timeout=60)
async def test_an_insert_waiting_for_a_row_lock_does_not_hold_up_the_table(pg_server, database):
    """Another transaction holds the unique value being inserted: the single statement
    gives up after its lock timeout and the insert waits in a transaction of its
    own. Meanwhile other writes to the table commit, answer and are published."""
    server = pg_server
    holder = pg_connect(database.name)
    try:
        with holder.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("INSERT INTO products (name, price, sku) VALUES ('held', 1, 'HELD')")
        messages = Messages(server)
        waiting = asyncio.ensure_future(server.post("/api/products", product("HELD")))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        # the table is not held up: another insert and an update commit and answer,
        # and subscribers have them at once
        other = await server.post("/api/products", product("OTHER"))
        assert other.status == 201, other.body
        renamed = await server.patch(f"/api/products/{other.body['id']}", {"name": "Renamed"})
        assert renamed.status == 200, renamed.body
        for _ in range(50):
            if len(server.changes) == 2:
                break
            await asyncio.sleep(0.05)
        assert [(c.event, c.record["sku"]) for c in server.changes] == [
            ("created", "OTHER"), ("updated", "OTHER")]
        assert not waiting.done()
        with holder.cursor() as cur:  # the held value goes away: the waiting insert goes on
            cur.execute("ROLLBACK")
        done = await asyncio.wait_for(waiting, 10)
        assert done.status == 201, done.body
    finally:
        holder.close()
    # HELD was sent alone first; its insert then went on in a transaction (OTHER was
    # sent alone, the update is a transaction that starts with its row lock)
    sent = messages.take()
    assert sent[0].startswith(ALONE), sent
    assert [text[:18] for text in sent if text.startswith("BEGIN; INSERT")] == ["BEGIN; INSERT INTO"]
    skus = sorted(row["sku"] for row in (await server.get("/api/products?sku=in.(HELD,OTHER)"))
                  .body["items"])
    assert skus == ["HELD", "OTHER"]
    for _ in range(50):
        if len(server.changes) == 3:
            break
        await asyncio.sleep(0.05)
    assert [(c.event, c.record["sku"]) for c in server.changes] == [
        ("created", "OTHER"), ("updated", "OTHER"), ("created", "HELD")]


@pytest.mark.gen_test(timeout=60)
async def test_a_row_rewritten_by_a_trigger_is_still_refused_and_rolled_back(pg_server, database):
    """A BEFORE INSERT trigger may change the row: such a table's inserts stay in a
    transaction, so a value given that reads back NULL is a 422 and nothing is stored."""
    conn = pg_connect(database.name)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE FUNCTION drop_description() RETURNS trigger LANGUAGE plpgsql "
                        "AS $$ BEGIN NEW.description := NULL; RETURN NEW; END $$")
            cur.execute("CREATE TRIGGER drop_description BEFORE INSERT ON products "
                        "FOR EACH ROW EXECUTE FUNCTION drop_description()")
    finally:
        conn.close()
    server = pg_server
    messages = Messages(server)
    refused = await server.post("/api/products", {**product("T-1"), "description": "kept?"})
    assert refused.status == 422, refused.body
    assert refused.body["error"]["details"]["column"] == "description"
    sent = messages.take()
    assert sent[0].startswith("BEGIN; INSERT INTO") and sent[-1] == "ROLLBACK", sent
    assert (await server.get("/api/products?sku=eq.T-1")).body["items"] == []
    assert server.changes == []


@pytest.mark.gen_test(timeout=60)
async def test_inserts_on_connections_the_server_ended_are_retried(pg_server, database):
    server = pg_server
    warm = await asyncio.gather(*[server.get("/api/products") for _ in range(8)])
    assert {r.status for r in warm} == {200}
    assert kill_server_connections(database) >= 1
    await asyncio.sleep(0.2)
    created = await asyncio.gather(*[server.post("/api/products", product(f"K-{n}"))
                                     for n in range(8)])
    assert [r.status for r in created] == [201] * 8, [r.body for r in created]
    listed = await server.get("/api/products?sku=like.K-*&limit=100")
    assert sorted(row["sku"] for row in listed.body["items"]) == sorted(f"K-{n}" for n in range(8))
    assert len(server.changes) == 8


@pytest.mark.gen_test(timeout=60)
async def test_dependent_writes_are_published_in_order_under_concurrency(pg_server):
    """Single-statement inserts run side by side; each is followed at once by an
    update of its row (which can only start once the insert committed): every
    row's `created` reaches subscribers before its `updated`, each exactly once."""
    server = pg_server

    async def create_then_rename(n: int) -> None:
        created = await server.post("/api/products", product(f"C-{n}"))
        assert created.status == 201, created.body
        renamed = await server.patch(f"/api/products/{created.body['id']}", {"name": f"R-{n}"})
        assert renamed.status == 200, renamed.body

    await asyncio.gather(*[create_then_rename(n) for n in range(40)])
    for _ in range(100):
        if len(server.changes) == 80:
            break
        await asyncio.sleep(0.05)
    events: dict[str, list[str]] = {}
    for change in server.changes:
        events.setdefault(change.record["sku"], []).append(change.event)
    assert events == {f"C-{n}": ["created", "updated"] for n in range(40)}
