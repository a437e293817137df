"""A write on PostgreSQL sends its BEGIN with its first statement: a single-row POST is
two round trips (``BEGIN; INSERT … RETURNING``, then ``COMMIT``), and a refused one
rolls back and leaves the connection as good as new."""

from __future__ import annotations

import threading
from typing import Any

import pytest


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
        taken = list(self.sent)
        self.sent.clear()
        return taken


@pytest.fixture
def pg_server(database: Any, make_server: Any) -> Any:
    if database.backend != "postgresql":
        pytest.skip("the BEGIN sent with the first statement is PostgreSQL's")
    return make_server()


@pytest.mark.gen_test(timeout=60)
async def test_a_single_row_post_is_two_round_trips(pg_server):
    server = pg_server
    messages = Messages(server)
    first = await server.post("/api/products", {"name": "Lamp", "price": "9.50", "sku": "L-1"})
    assert first.status == 201, first.body
    sent = messages.take()
    assert len(sent) == 2, sent
    assert sent[0].startswith("BEGIN; INSERT INTO") and "RETURNING" in sent[0]
    assert sent[1] == "COMMIT"
    assert (await server.get(f"/api/products/{first.body['id']}")).body == first.body


@pytest.mark.gen_test(timeout=60)
async def test_a_refused_write_rolls_back_and_the_connection_goes_on(pg_server):
    server = pg_server
    created = await server.post("/api/products", {"name": "Lamp", "price": "1.00", "sku": "L-1"})
    assert created.status == 201
    messages = Messages(server)
    for _ in range(3):  # whichever worker thread takes it, its connection is left clean
        clash = await server.post("/api/products", {"name": "Other", "price": "2.00", "sku": "L-1"})
        assert clash.status == 409, clash.body
        sent = messages.take()
        assert sent[0].startswith("BEGIN; INSERT INTO") and sent[-1] == "ROLLBACK", sent
    # an update locks and reads the row, then writes it: BEGIN goes with the lock
    changed = await server.patch(f"/api/products/{created.body['id']}", {"name": "Lamp 2"})
    assert changed.status == 200 and changed.body["name"] == "Lamp 2"
    sent = messages.take()
    assert sent[0].startswith("BEGIN; SELECT") and "FOR UPDATE" in sent[0], sent
    assert sent[-1] == "COMMIT" and not any(s == "BEGIN" for s in sent)
    listing = await server.get("/api/products?sku=eq.L-1")
    assert [row["name"] for row in listing.body["items"]] == ["Lamp 2"]
