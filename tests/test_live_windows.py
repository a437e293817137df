"""Live windows (API.md 6.3): a feed filter with ``order`` and ``limit`` is a window that
stays equal to ``GET /api/<table>?<same filter>&order=...&limit=N``.

The defining property (hypothesis, on every backend): random writes — REST inserts,
updates (across the window's edge and inside it) and deletes, and, with
``capture = database``, the same made with plain SQL outside Pylight, single rows and
many at once — against random windows (1-3 order columns, asc/desc,
nullsfirst/nullslast, over nullable columns with NULLs and ties; limit 1..10; an
optional filter, sometimes ``select``), held on ``/ws/<table>`` and on ``/ws``.
A client applies the messages exactly as 6.3 says (snapshot; enter = insert at ``at``,
leave = remove at ``from``, move = remove at ``from`` then insert at ``to``, update =
replace at ``at``); after each write, once the server has handled that write's seqs,
the rows it holds equal the GET's items, in order. The ``event`` of each step is the
written row's own event, and null for rows that only entered or left because of
another row; a write that leaves the GET unchanged sends nothing.

Tables: ``lw_items`` (an integer key, a group 0/1, a nullable integer ``n`` with ties,
a nullable text ``s`` with repeats, case variants and a trailing space, a nullable
DECIMAL(8,2) ``price``), ``lw_nokey`` (the same without a key: duplicate rows), and the
view ``lw_view`` (windows on it are refused like every feed on a view).

Also: each kind of change as the step 6.3 shows (and new keys); outside writes on both
tables; a burst of concurrent writes (with a subscriber joining meanwhile); ``select``
limits a window's records; ``offset``/``after`` and bad parameters are a 400 before the
upgrade; ``order`` or ``limit`` alone is an ordinary feed; hidden columns never show;
``limit`` is capped by ``max_limit``; subscribers of one window shape get the same
messages from one read per change, a change that touches nothing reads nothing, a window
nobody holds is dropped; ``hello`` comes first on ``/ws/<table>`` and ``/sse/<table>``;
``since``/``Last-Event-ID`` give a fresh snapshot; ``/ws`` windows carry ``sub``; a view
has no window; and a write on one process moves a window held on another (Redis bus).

Waiting: after a write, the test reads the write's changes from a plain feed of the
table (their seqs), waits until the server's windows of that table have handled those
seqs (``Window.task``/``seq``; a short quiet period if those are not found), then
pings each client and reads up to the pong: every message the server queued.

Deterministic (``derandomize=True``); ``PYLIGHT_PROPERTY_SCALE=10`` runs ten times as
many examples.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import tornado.httpclient
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from tests.bus_support import (
    SHARED_REDIS,
    delete_prefix,
    missing,
    redis_ping,
    require_postgresql,
    start_processes,
    unique_prefix,
)
from tests.conftest import mysql_connect, pg_connect
from tests.realtime_support import TIMEOUT, FeedClient, in_thread, wait_for

if TYPE_CHECKING:
    from tests.conftest import TestDatabase

SCALE = max(int(os.environ.get("PYLIGHT_PROPERTY_SCALE", "1")), 1)
QUIET = 0.3  # seconds: only when the server's windows cannot be looked at
CAPTURE = {"capture": "database", "install_triggers": "true", "poll_interval": 0.02}


def budget(examples: int) -> settings:
    return settings(max_examples=examples * SCALE, deadline=None, derandomize=True,
                    database=None, print_blob=True, report_multiple_bugs=False,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture,
                                           HealthCheck.filter_too_much])


# -- the schema -------------------------------------------------------------------------

KEYED = "lw_items"
NOKEY = "lw_nokey"
VIEW = "lw_view"

SCHEMA = [
    f"CREATE TABLE {KEYED} (id INTEGER NOT NULL PRIMARY KEY, g INTEGER NOT NULL, n INTEGER, "
    "s VARCHAR(8), price DECIMAL(8,2))",
    f"CREATE TABLE {NOKEY} (g INTEGER NOT NULL, n INTEGER, s VARCHAR(8), price DECIMAL(8,2))",
    f"CREATE VIEW {VIEW} AS SELECT id, g, n, s, price FROM {KEYED}",
]

GROUPS = [0, 1]
INTS = [0, 1, 2]
TEXTS = ["a", "A", "b", "ab", "a "]  # on MariaDB 'a' = 'A' = 'a ' (ties under the collation)
FILTER_TEXTS = ["a", "A", "b", "ab"]
PRICES = ["0.00", "1.50", "2.00", "10.00"]  # "10.00" sorts first as text, last as a number

# column -> (kind, nullable)
COLUMNS: dict[str, dict[str, tuple[str, bool]]] = {
    KEYED: {"id": ("int", False), "g": ("group", False), "n": ("int", True),
            "s": ("text", True), "price": ("decimal", True)},
    NOKEY: {"g": ("group", False), "n": ("int", True), "s": ("text", True),
            "price": ("decimal", True)},
}
DOMAIN = {"group": GROUPS, "int": INTS, "text": TEXTS, "decimal": PRICES}
VALUE_COLUMNS = ["g", "n", "s", "price"]


def create_schema(database: TestDatabase) -> None:
    database.execute(*SCHEMA)


def literal(value: Any, kind: str) -> str:
    if value is None:
        return "NULL"
    if kind == "text":
        return "'" + value + "'"
    return str(value)  # integers, and decimals as numeric literals


def is_value(column: str, value: Any) -> str:
    """``column`` holds ``value`` (NULL-safe), as SQL."""
    kind = COLUMNS[NOKEY][column][0]
    return f"{column} IS NULL" if value is None else f"{column} = {literal(value, kind)}"


# -- raw SQL with its row count (writes made outside Pylight) ----------------------------------

def run_sql(database: TestDatabase, *statements: str) -> int:
    """Run ``statements`` on a connection of their own (autocommit); the rows they changed.
    Every update here changes each row it matches, so changed = matched on every backend."""
    total = 0
    if database.backend == "sqlite":
        conn = sqlite3.connect(database.name, isolation_level=None, timeout=30)
        try:
            for statement in statements:
                total += max(conn.execute(statement).rowcount, 0)
        finally:
            conn.close()
        return total
    conn = pg_connect(database.name) if database.backend == "postgresql" \
        else mysql_connect(database.name)
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
                total += max(cur.rowcount, 0)
    finally:
        conn.close()
    return total


# -- clients ----------------------------------------------------------------------------------

async def fetch(server: Any, path: str) -> Any:
    response = await server.get(path)
    assert response.status == 200, (path, response.status, response.body)
    return response.body


class WindowView:
    """What a client of one live window holds, built from its messages as API.md 6.3 says.

    Checks each message as it is applied: the ``window`` type, ``seq`` never going back,
    positions inside the list, a ``leave``'s ``pk`` naming the row at ``from`` (when the
    rows show the key), and ``sub`` on ``/ws``.
    """

    def __init__(self, name: str, table: str, query: str, sub: str | None = None) -> None:
        self.name = name
        self.table = table
        self.query = query
        self.sub = sub
        self.rows: list[dict[str, Any]] | None = None
        self.seq: int | None = None
        self.snapshot: dict[str, Any] | None = None
        self.log: list[dict[str, Any]] = []  # every message applied
        self.step: list[dict[str, Any]] = []  # the messages since the last check

    def __repr__(self) -> str:
        return f"<window {self.name} {self.table}?{self.query}>"

    def apply(self, message: dict[str, Any]) -> None:
        where = f"{self!r}: {message}"
        assert message.get("type") == "window", f"not a window message: {where}"
        if self.sub is not None:
            assert message.get("sub") == self.sub, where
        seq = message.get("seq")
        assert isinstance(seq, int) and not isinstance(seq, bool), f"seq not an integer: {where}"
        assert self.seq is None or seq >= self.seq, f"seq went back from {self.seq}: {where}"
        op = message.get("op")
        self.log.append(message)
        self.step.append(message)
        if self.rows is None:
            assert op == "snapshot", f"the first window message is not a snapshot: {where}"
            assert message.get("table") == self.table, where
            assert isinstance(message.get("rows"), list), where
            self.rows = list(message["rows"])
            self.snapshot = message
            self.seq = seq
            return
        assert op in ("enter", "leave", "move", "update"), f"unknown op: {where}"
        assert "event" in message and message["event"] in (None, "created", "updated",
                                                             "deleted"), where
        rows = self.rows
        if op == "enter":
            at = message["at"]
            assert 0 <= at <= len(rows), f"at outside 0..{len(rows)}: {where}"
            rows.insert(at, message["record"])
        elif op == "leave":
            at = message["from"]
            assert 0 <= at < len(rows), f"from outside 0..{len(rows) - 1}: {where}"
            assert "pk" in message and "record" not in message, where
            if self.table == KEYED and "id" in rows[at]:
                assert rows[at]["id"] == message["pk"], f"leave of another row than {rows[at]}: {where}"
            del rows[at]
        elif op == "move":
            at = message["from"]
            assert 0 <= at < len(rows), f"from outside 0..{len(rows) - 1}: {where}"
            if self.table == KEYED and "id" in rows[at]:
                assert rows[at]["id"] == message["record"]["id"], \
                    f"move of another row than {rows[at]}: {where}"
            del rows[at]
            to = message["to"]
            assert 0 <= to <= len(rows), f"to outside 0..{len(rows)}: {where}"
            rows.insert(to, message["record"])
        else:
            at = message["at"]
            assert 0 <= at < len(rows), f"at outside 0..{len(rows) - 1}: {where}"
            if self.table == KEYED and "id" in rows[at]:
                assert rows[at]["id"] == message["record"]["id"], \
                    f"update of another row than {rows[at]}: {where}"
            rows[at] = message["record"]
        self.seq = seq

    def take_step(self) -> list[dict[str, Any]]:
        step, self.step = self.step, []
        return step


class Connection:
    """One feed connection (``/ws/<table>`` or ``/ws``) and the windows it carries."""

    def __init__(self, client: FeedClient, views: dict[str | None, WindowView]) -> None:
        self.client = client
        self.views = views
        self.other: list[dict[str, Any]] = []  # subscribed/unsubscribed/errors seen on /ws

    def dispatch(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            if message.get("type") == "window":
                key = message.get("sub") if None not in self.views else None
                assert key in self.views, f"a window message for no subscription: {message}"
                self.views[key].apply(message)
            else:
                self.other.append(message)

    async def read_until(self, done: Callable[[], bool], what: str) -> None:
        while not done():
            message = await self.client.recv()
            assert message is not None, f"closed while waiting for {what}"
            self.dispatch([message])

    async def drain(self) -> None:
        self.dispatch(await self.client.drain())

    def close(self) -> None:
        self.client.close()


async def open_table_window(server: Any, table: str, query: str, name: str = "w") -> Connection:
    """A window on ``/ws/<table>?query``: the hello first, then its snapshot."""
    client = await FeedClient.open(server, f"/ws/{table}?{query}")
    assert client.hello["table"] == table, client.hello
    view = WindowView(name, table, query)
    connection = Connection(client, {None: view})
    first = await client.recv()
    assert first is not None and first.get("type") == "window" and first.get("op") == "snapshot", (
        f"after the hello of /ws/{table}?{query} came {first}, not the snapshot")
    connection.dispatch([first])
    assert view.seq >= client.hello["seq"], (client.hello, first)
    return connection


async def open_channel(server: Any) -> Connection:
    client = await FeedClient.open(server, "/ws")
    return Connection(client, {})


async def subscribe_window(connection: Connection, table: str, query: str, sub: str) -> WindowView:
    """Subscribe on ``/ws`` with ``"filter": query``: ``subscribed`` then the snapshot."""
    view = WindowView(sub, table, query, sub=sub)
    connection.views[sub] = view
    connection.client.conn.write_message(json.dumps(
        {"type": "subscribe", "id": sub, "table": table, "filter": query}))
    await connection.read_until(lambda: view.rows is not None, f"the snapshot of {sub}")
    subscribed = [m for m in connection.other if m.get("sub") == sub]
    assert subscribed and subscribed[0]["type"] == "subscribed", connection.other
    assert subscribed[0]["table"] == table
    return view


class EventStream:
    """A plain HTTP/1.0 client of ``/sse/<table>``: the status, headers and each event."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}

    @classmethod
    async def open(cls, server: Any, path: str, headers: dict[str, str] | None = None
                   ) -> EventStream:
        port = urlsplit(server.base_url).port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Accept: text/event-stream\r\n{extra}\r\n".encode())
        stream = cls(reader, writer)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        lines = head.decode("latin1").split("\r\n")
        stream.status = int(lines[0].split()[1])
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                stream.headers[name.strip().lower()] = value.strip()
        return stream

    async def event(self, timeout: float = TIMEOUT) -> tuple[str | None, dict[str, Any] | None]:
        """The next event (comments skipped): its name and its data as JSON."""
        name: str | None = None
        data: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), timeout)
            if not raw:
                raise AssertionError("the event stream ended")
            line = raw.decode().rstrip("\n")
            if line == "":
                if name is None and not data:
                    continue
                return name, json.loads("\n".join(data)) if data else None
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)

    async def events_for(self, seconds: float) -> list[tuple[str | None, Any]]:
        """Every event that comes within ``seconds``."""
        out = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return out
            try:
                out.append(await self.event(left))
            except asyncio.TimeoutError:
                return out

    def close(self) -> None:
        self.writer.close()


# -- waiting for the server ---------------------------------------------------------------

def windows_on(server: Any, table: str) -> list[Any]:
    """The server's live windows of ``table`` (white box: the hub's subscribers that hold rows)."""
    return [s for s in list(server.app.hub.feed(table).subscribers)
            if hasattr(s, "rows") and hasattr(s, "pending") and hasattr(s, "task")]


async def settle(server: Any, table: str, seq: int) -> None:
    """Until every window of ``table`` has handled the changes up to ``seq`` and has no read
    running; a quiet period when the windows cannot be looked at."""
    if not windows_on(server, table):
        await asyncio.sleep(QUIET)
        return

    def idle() -> bool:
        return all(w.task is None and not w.pending and getattr(w, "loaded", True)
                   and not getattr(w, "waiting", None) and getattr(w, "seq", seq) >= seq
                   for w in windows_on(server, table))

    await wait_for(idle, what=f"the windows of {table} to handle seq {seq}")


class PlainFeed:
    """An unfiltered ``/ws/<table>`` feed: the seq, key and event of every change."""

    def __init__(self, client: FeedClient) -> None:
        self.client = client
        self.seq = client.hello["seq"]

    async def changes(self, count: int, what: str) -> list[dict[str, Any]]:
        out = []
        for _ in range(count):
            message = await self.client.recv()
            assert message is not None and message.get("type") == "change", (what, message)
            assert message["seq"] > self.seq, (what, message)
            self.seq = message["seq"]
            out.append(message)
        return out


# -- strategies -------------------------------------------------------------------------------

def column_values(column: str) -> st.SearchStrategy[Any]:
    kind, nullable = COLUMNS[NOKEY][column]
    values = st.sampled_from(DOMAIN[kind])
    return st.one_of(st.none(), values) if nullable else values


ROW = st.fixed_dictionaries({name: column_values(name) for name in VALUE_COLUMNS})


@st.composite
def initial_rows(draw: Any, table: str) -> list[dict[str, Any]]:
    size = draw(st.integers(0, 14))
    data = draw(st.lists(ROW, min_size=size, max_size=size))
    if table == KEYED:
        ids = draw(st.lists(st.integers(0, 40), unique=True, min_size=size, max_size=size))
        return [{"id": i, **row} for i, row in zip(ids, data, strict=True)]
    # Without a key: some rows repeated exactly.
    repeats = draw(st.lists(st.integers(0, max(size - 1, 0)), max_size=3)) if size else []
    return data + [dict(data[i]) for i in repeats]


@st.composite
def orders(draw: Any, table: str) -> str:
    names = draw(st.lists(st.sampled_from(sorted(COLUMNS[table])), unique=True,
                          min_size=1, max_size=3))
    items = []
    for name in names:
        words = [name]
        direction = draw(st.sampled_from([None, "asc", "desc"]))
        nulls = draw(st.sampled_from([None, "nullsfirst", "nullslast"]))
        words += [w for w in (direction, nulls) if w]
        items.append(".".join(words))
    return ",".join(items)


@st.composite
def conditions(draw: Any, table: str) -> tuple[str, str]:
    """(column, [not.]op.value)."""
    name = draw(st.sampled_from(sorted(COLUMNS[table])))
    kind = COLUMNS[table][name][0]
    domain = FILTER_TEXTS if kind == "text" else DOMAIN.get(kind, INTS)
    op = draw(st.sampled_from(["eq", "neq", "gt", "gte", "lt", "lte", "in", "is"]))
    if op == "is":
        spec = "is.null"
    elif op == "in":
        chosen = draw(st.lists(st.sampled_from(domain), min_size=1, max_size=2))
        spec = "in.(" + ",".join(f'"{v}"' if kind == "text" else str(v) for v in chosen) + ")"
    else:
        spec = f"{op}.{draw(st.sampled_from(domain))}"
    if draw(st.integers(0, 3)) == 0:
        spec = "not." + spec
    return name, spec


@st.composite
def filters(draw: Any, table: str) -> str:
    """At most one filter, URL-encoded: ``col=op.value`` or ``or=(...)``; "" for none."""
    choice = draw(st.sampled_from(["none", "none", "top", "or"]))
    if choice == "none":
        return ""
    if choice == "top":
        name, spec = draw(conditions(table))
        return f"{name}={quote(spec, safe='(),.')}"
    members = draw(st.lists(conditions(table), min_size=1, max_size=3))
    inner = ",".join(f"{name}.{spec}" for name, spec in members)
    return f"or={quote('(' + inner + ')', safe='(),.')}"


@st.composite
def window_queries(draw: Any, table: str) -> str:
    parts = [draw(filters(table)), f"order={draw(orders(table))}",
             f"limit={draw(st.integers(1, 10))}"]
    if draw(st.integers(0, 4)) == 0:
        columns = draw(st.lists(st.sampled_from(sorted(COLUMNS[table])), unique=True,
                                min_size=1, max_size=3))
        parts.append("select=" + ",".join(columns))
    return "&".join(p for p in parts if p)


# -- writes -----------------------------------------------------------------------------------

def changed_somewhere(row: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``changes``, made to change ``row`` for sure (flipping ``g`` when it would not)."""
    if all(row[name] == value for name, value in changes.items()):
        changes = {**changes, "g": 1 - row["g"]}
    return changes


def sql_set(changes: dict[str, Any]) -> str:
    return ", ".join(f"{name} = {literal(value, COLUMNS[KEYED][name][0])}"
                     for name, value in changes.items())


def row_where(row: dict[str, Any]) -> str:
    return " AND ".join(is_value(name, row[name]) for name in VALUE_COLUMNS)


BULK_UPDATES = [
    "UPDATE {t} SET g = 1 - g WHERE n = {v}",
    "UPDATE {t} SET g = 1 - g WHERE n IS NULL",
    "UPDATE {t} SET n = COALESCE(n, 0) + 1, g = 1 - g WHERE g = {g}",
    "UPDATE {t} SET s = 'b', g = 1 - g WHERE price IS NULL OR price > 1",
    "UPDATE {t} SET price = NULL, g = 1 - g WHERE g = {g} AND n IS NOT NULL",
]
BULK_DELETES = [
    "DELETE FROM {t} WHERE n = {v}",
    "DELETE FROM {t} WHERE g = {g} AND n IS NULL",
]


@st.composite
def writes(draw: Any, table: str, rows: list[dict[str, Any]], capture: bool) -> dict[str, Any]:
    """One write, chosen for the rows the table holds now."""
    kinds = ["rest_insert"]
    if table == KEYED and rows:
        kinds += ["rest_update", "rest_update", "rest_delete"]
    if capture:
        kinds += ["sql_insert"]
        if rows:
            kinds += ["sql_update", "sql_update", "sql_delete", "sql_bulk_update",
                      "sql_bulk_delete"]
    kind = draw(st.sampled_from(kinds))
    if kind in ("rest_insert", "sql_insert"):
        row = draw(ROW)
        if table == NOKEY and rows and draw(st.booleans()):
            row = dict(draw(st.sampled_from(rows)))  # one more duplicate
        if table == KEYED:
            taken = {r["id"] for r in rows}
            row = {"id": draw(st.integers(0, 60).filter(lambda i: i not in taken)), **row}
        return {"kind": kind, "row": row}
    if kind in ("rest_update", "sql_update"):
        target = draw(st.sampled_from(rows))
        names = draw(st.lists(st.sampled_from(VALUE_COLUMNS), unique=True, min_size=1,
                              max_size=3))
        changes = {name: draw(column_values(name)) for name in names}
        if table == KEYED and draw(st.integers(0, 5)) == 0:  # a new key
            taken = {r["id"] for r in rows}
            changes["id"] = draw(st.integers(0, 60).filter(lambda i: i not in taken))
        changes = changed_somewhere(target, changes)
        if table == NOKEY:
            changes["g"] = 1 - target["g"]  # every row it matches (duplicates) changes
        return {"kind": kind, "row": target, "changes": changes}
    if kind in ("rest_delete", "sql_delete"):
        return {"kind": kind, "row": draw(st.sampled_from(rows))}
    template = draw(st.sampled_from(BULK_UPDATES if kind == "sql_bulk_update" else BULK_DELETES))
    statement = template.format(t=table, v=draw(st.sampled_from(INTS)),
                                g=draw(st.sampled_from(GROUPS)))
    return {"kind": kind, "sql": statement}


async def perform(server: Any, database: TestDatabase, table: str,
                  write: dict[str, Any]) -> int:
    """Make ``write``; the number of changes it makes (rows it touched)."""
    kind = write["kind"]
    if kind == "rest_insert":
        body = {**write["row"], "price": write["row"]["price"]}
        response = await server.post(f"/api/{table}", body)
        assert response.status == 201, (write, response.status, response.body)
        return 1
    if kind == "rest_update":
        response = await server.patch(f"/api/{table}/{write['row']['id']}", write["changes"])
        assert response.status == 200, (write, response.status, response.body)
        return 1
    if kind == "rest_delete":
        response = await server.delete(f"/api/{table}/{write['row']['id']}")
        assert response.status == 204, (write, response.status, response.body)
        return 1
    if kind == "sql_insert":
        row = write["row"]
        names = list(row)
        values = ", ".join(literal(row[n], COLUMNS[table][n][0]) for n in names)
        statement = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({values})"
    elif kind == "sql_update":
        where = f"id = {write['row']['id']}" if table == KEYED else row_where(write["row"])
        statement = f"UPDATE {table} SET {sql_set(write['changes'])} WHERE {where}"
    elif kind == "sql_delete":
        where = f"id = {write['row']['id']}" if table == KEYED else row_where(write["row"])
        statement = f"DELETE FROM {table} WHERE {where}"
    else:
        statement = write["sql"]
    write["statement"] = statement
    return await in_thread(run_sql, database, statement)


def fill_statements(table: str, rows: list[dict[str, Any]]) -> list[str]:
    statements = [f"DELETE FROM {table}"]
    if rows:
        names = list(rows[0])
        values = ", ".join("(" + ", ".join(literal(row[n], COLUMNS[table][n][0]) for n in names)
                           + ")" for row in rows)
        statements.append(f"INSERT INTO {table} ({', '.join(names)}) VALUES {values}")
    return statements


# -- the property -----------------------------------------------------------------------------

class Rig:
    """A server on the live-window tables and a plain feed of the table under test."""

    def __init__(self, server: Any, database: TestDatabase, table: str, capture: bool,
                 feed: PlainFeed) -> None:
        self.server = server
        self.database = database
        self.table = table
        self.capture = capture
        self.feed = feed

    async def rows(self) -> list[dict[str, Any]]:
        body = await fetch(self.server, f"/api/{self.table}?limit=1000")
        assert body["next"] is None
        return body["items"]

    async def fill(self, rows: list[dict[str, Any]]) -> None:
        """The table holds ``rows``, written with SQL; with capture, their changes are read."""
        count = await in_thread(run_sql, self.database, *fill_statements(self.table, rows))
        if self.capture:
            await self.feed.changes(count, "the changes of filling the table")


def describe(problem: str, view: WindowView, **details: Any) -> str:
    lines = [problem, f"window: /ws/{view.table}?{view.query}" + (f" (sub {view.sub})"
                                                                    if view.sub else "")]
    lines += [f"{name}: {value}" for name, value in details.items()]
    lines.append(f"snapshot: {view.snapshot}")
    lines += [f"  message: {m}" for m in view.log[1:]]
    return "\n".join(lines)


def shows_identity(view: WindowView) -> bool:
    """Whether equal rows are the same rows: the key is shown, or the table has none (then a
    row is its values). A window whose ``select`` hides the key may replace a row by another
    that looks the same: a leave and an enter, though the GET shows no difference."""
    select = parse_qs(view.query).get("select")
    return view.table == NOKEY or not select or "id" in select[0].split(",")


def check_events(view: WindowView, step: list[dict[str, Any]], changed: dict[Any, str],
                 write: Any) -> None:
    """Each step names the written row's own event; a row that only entered or left
    because of another row's change has ``"event": null`` (keyed table)."""
    for message in step:
        key = message.get("pk") if message["op"] == "leave" else \
            (message.get("record") or {}).get("id", ...)
        if key is ...:
            continue
        if key in changed:
            assert message["event"] == changed[key], describe(
                f"row {key} changed by the write ({changed[key]}) but its step says "
                f"{message['event']!r}", view, write=write, step=step)
        else:
            assert message["event"] is None and message["op"] in ("enter", "leave"), describe(
                f"row {key} was not written, yet its step is {message}", view, write=write,
                step=step)


async def check_example(rig: Rig, data: Any) -> None:
    server, table = rig.server, rig.table
    # The last example's windows are gone (without capture, one left over would not see the
    # rows written with SQL below, and a new subscriber of its shape would join it).
    await wait_for(lambda: not windows_on(server, table), what="the windows of the last example")
    await rig.fill(data.draw(initial_rows(table), label="rows"))
    queries = data.draw(st.lists(window_queries(table), min_size=1, max_size=3), label="windows")
    transports = data.draw(st.lists(st.sampled_from(["table", "channel"]), min_size=len(queries),
                                    max_size=len(queries)), label="transports")
    connections: list[Connection] = []
    views: list[WindowView] = []
    channel: Connection | None = None
    try:
        for index, (query, transport) in enumerate(zip(queries, transports, strict=True)):
            if transport == "table":
                connection = await open_table_window(server, table, query, f"w{index}")
                connections.append(connection)
                views.append(connection.views[None])
            else:
                if channel is None:
                    channel = await open_channel(server)
                    connections.append(channel)
                views.append(await subscribe_window(channel, table, query, f"w{index}"))
        expected: dict[str, list[dict[str, Any]]] = {}
        for view in views:
            view.take_step()
            expected[view.name] = (await fetch(server, f"/api/{table}?{view.query}"))["items"]
            assert view.rows == expected[view.name], describe(
                "the snapshot is not the GET", view, get=expected[view.name])
            assert view.seq <= server.app.hub.feed(table).seq
        for number in range(data.draw(st.integers(1, 10), label="number of writes")):
            before = await rig.rows()
            write = data.draw(writes(table, before, rig.capture), label=f"write {number}")
            previous = rig.feed.seq
            count = await perform(server, rig.database, table, write)
            changes = await rig.feed.changes(count, f"the changes of {write}")
            changed = {}
            if table == KEYED:  # by key, the old one too when an update gave a new one
                for change in changes:
                    changed[(change.get("old") or {}).get("id", change["pk"])] = change["event"]
                    changed[change["pk"]] = change["event"]
            await settle(server, table, rig.feed.seq)
            for connection in connections:
                await connection.drain()
            for view in views:
                step = view.take_step()
                now = (await fetch(server, f"/api/{table}?{view.query}"))["items"]
                assert view.rows == now, describe(
                    "after applying the messages, the window is not the GET", view,
                    write=write, step=step, held=view.rows, get=now, before=expected[view.name])
                for message in step:
                    assert previous < message["seq"] <= rig.feed.seq, describe(
                        f"a message of another seq than the write's ({previous}, "
                        f"{rig.feed.seq}]", view, write=write, step=step)
                if now == expected[view.name] and shows_identity(view):
                    assert step == [], describe("a write that left the GET unchanged sent "
                                                "messages", view, write=write, step=step)
                if table == KEYED:
                    check_events(view, step, changed, write)
                expected[view.name] = now
    finally:
        for connection in connections:
            connection.close()


@pytest.fixture
def window_tables(database: TestDatabase) -> TestDatabase:
    create_schema(database)
    return database


MODES = [(KEYED, "api"), (KEYED, "capture"), (NOKEY, "capture")]


@pytest.mark.parametrize("table, mode", MODES, ids=[f"{t}-{m}" for t, m in MODES])
def test_windows_stay_equal_to_the_query(table: str, mode: str, window_tables: TestDatabase,
                                         make_server: Any, io_loop: Any) -> None:
    capture = mode == "capture"
    server = make_server({"realtime": CAPTURE} if capture else None, seed=False)

    async def start() -> Rig:
        plain = await FeedClient.open(server, f"/ws/{table}")
        return Rig(server, window_tables, table, capture, PlainFeed(plain))

    rig = io_loop.run_sync(start)

    @budget(12)
    @given(data=st.data())
    def check(data: Any) -> None:
        note(f"{window_tables.backend} {table} {mode}")
        io_loop.run_sync(lambda: check_example(rig, data), timeout=120)

    try:
        check()
    finally:
        rig.feed.client.close()


# -- scenarios: each kind of change, spelled out ------------------------------------------------

ROWS = [  # lw_items: id, g, n, s, price
    (1, 0, 5, "a", "1.50"), (2, 0, 4, "b", "2.00"), (3, 1, 3, "A", None),
    (4, 1, 2, None, "10.00"), (5, 0, None, "a ", "0.00"), (6, 1, None, "ab", None),
]


def seed_rows(database: TestDatabase, table: str = KEYED) -> None:
    names = ["id", "g", "n", "s", "price"]
    rows = [dict(zip(names, row, strict=True)) for row in ROWS]
    if table == NOKEY:
        rows = [{k: v for k, v in row.items() if k != "id"} for row in rows]
    database.execute(*fill_statements(table, rows))


@pytest.fixture
def seeded(window_tables: TestDatabase) -> TestDatabase:
    seed_rows(window_tables, KEYED)
    seed_rows(window_tables, NOKEY)
    return window_tables


@pytest.fixture
def plain_server(seeded: TestDatabase, make_server: Any) -> Any:
    """A server on the seeded live-window tables, changes delivered as the API makes them."""
    return make_server(seed=False)


@pytest.fixture
def capture_server(seeded: TestDatabase, make_server: Any) -> Any:
    """The same, learning every change (outside writes too) from the capture triggers."""
    return make_server({"realtime": CAPTURE}, seed=False)


class Watch:
    """Windows of one table, a plain feed of it, and a check after each write."""

    def __init__(self, server: Any, table: str, feed: PlainFeed) -> None:
        self.server = server
        self.table = table
        self.feed = feed
        self.connections: list[Connection] = []
        self.views: list[WindowView] = []
        self.reads: list[str] = []

    @classmethod
    async def open(cls, server: Any, table: str) -> Watch:
        return cls(server, table, PlainFeed(await FeedClient.open(server, f"/ws/{table}")))

    async def window(self, query: str) -> WindowView:
        connection = await open_table_window(self.server, self.table, query, f"w{len(self.views)}")
        self.connections.append(connection)
        view = connection.views[None]
        self.views.append(view)
        view.take_step()
        return view

    async def after(self, count: int, what: str, statements: Statements | None = None
                    ) -> dict[str, list[dict[str, Any]]]:
        """The write made ``count`` changes: once the windows handled them, each window equals
        its GET; returns each window's messages, by name. Their seq is the changes' seq.
        With ``statements``: its window reads so far go to ``self.reads`` (before the GETs)."""
        first = self.feed.seq
        await self.feed.changes(count, what)
        await settle(self.server, self.table, self.feed.seq)
        if statements is not None:
            self.reads = statements.window_reads()
        for connection in self.connections:
            await connection.drain()
        steps = {}
        for view in self.views:
            step = view.take_step()
            now = (await fetch(self.server, f"/api/{self.table}?{view.query}"))["items"]
            assert view.rows == now, describe(f"after {what}, the window is not the GET", view,
                                              step=step, held=view.rows, get=now)
            assert all(first < m["seq"] <= self.feed.seq for m in step), (what, step)
            steps[view.name] = step
        return steps

    def close(self) -> None:
        self.feed.client.close()
        for connection in self.connections:
            connection.close()


def ops(step: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Each message as (op, event, position(s), key)."""
    out = []
    for m in step:
        key = m["pk"] if m["op"] == "leave" else m["record"].get("id")
        where = (m["from"], m["to"]) if m["op"] == "move" else m.get("at", m.get("from"))
        out.append((m["op"], m["event"], where, key))
    return out


@pytest.mark.gen_test(timeout=60)
async def test_each_kind_of_change_is_the_step_api_md_shows(plain_server: Any) -> None:
    """Window ``n=not.is.null&order=n.desc,id&limit=3`` over n = 5, 4, 3, 2, NULL, NULL."""
    server = plain_server
    watch = await Watch.open(server, KEYED)
    try:
        view = await watch.window("n=not.is.null&order=n.desc,id&limit=3")
        assert [r["id"] for r in view.rows] == [1, 2, 3]

        # A change inside the window that keeps its place: one update at its position.
        assert (await server.patch(f"/api/{KEYED}/2", {"s": "zz"})).status == 200
        step = (await watch.after(1, "an update in place"))["w0"]
        assert ops(step) == [("update", "updated", 1, 2)]
        assert step[0]["record"] == (await fetch(server, f"/api/{KEYED}/2"))

        # A change that moves a row inside the window: one move, `to` in the resulting list.
        assert (await server.patch(f"/api/{KEYED}/3", {"n": 9})).status == 200
        assert ops((await watch.after(1, "a move to the top"))["w0"]) == [
            ("move", "updated", (2, 0), 3)]

        # A row out of the filter: it leaves (its own event), the next row refills (null).
        assert (await server.patch(f"/api/{KEYED}/1", {"n": None})).status == 200
        step = (await watch.after(1, "an update out of the filter"))["w0"]
        assert sorted(ops(step), key=str) == sorted([("leave", "updated", 1, 1),
                                                     ("enter", None, 2, 4)], key=str)
        assert [r["id"] for r in view.rows] == [3, 2, 4]

        # A new row at the top pushes the last one out: enter (created), leave (null).
        response = await server.post(f"/api/{KEYED}", {"id": 7, "g": 0, "n": 7, "s": "b"})
        assert response.status == 201
        step = (await watch.after(1, "an insert at the top"))["w0"]
        assert sorted(ops(step), key=str) == sorted([("leave", None, 2, 4),
                                                     ("enter", "created", 1, 7)], key=str)

        # A delete inside: leave (deleted), refill (null).
        assert (await server.delete(f"/api/{KEYED}/3")).status == 204
        step = (await watch.after(1, "a delete in the window"))["w0"]
        assert sorted(ops(step), key=str) == sorted([("leave", "deleted", 0, 3),
                                                     ("enter", None, 2, 4)], key=str)

        # Rows the window does not show: outside the filter, or past the limit.
        assert (await server.patch(f"/api/{KEYED}/6", {"s": "b"})).status == 200
        assert (await watch.after(1, "an update outside the filter"))["w0"] == []
        assert (await server.patch(f"/api/{KEYED}/1", {"s": "b"})).status == 200
        assert (await watch.after(1, "an update outside the filter"))["w0"] == []
        assert (await server.post(f"/api/{KEYED}", {"id": 8, "g": 0, "n": -1})).status == 201
        assert (await watch.after(1, "an insert past the limit"))["w0"] == []
        assert (await server.delete(f"/api/{KEYED}/8")).status == 204
        assert (await watch.after(1, "a delete past the limit"))["w0"] == []

        # A new key: the row as it was goes (or is replaced), the row as it is comes, each
        # step with the update's event; then a new key out of the filter: the old key leaves.
        assert (await server.patch(f"/api/{KEYED}/2", {"id": 20})).status == 200
        step = (await watch.after(1, "a new key in place"))["w0"]
        assert step and {key for *_, key in ops(step)} <= {2, 20}, step
        assert {m["event"] for m in step} == {"updated"}, step
        assert [r["id"] for r in view.rows] == [7, 20, 4]
        assert (await server.patch(f"/api/{KEYED}/20", {"id": 21, "n": None})).status == 200
        step = (await watch.after(1, "a new key out of the filter"))["w0"]
        assert ops(step) == [("leave", "updated", 1, 20)], step
    finally:
        watch.close()


@pytest.mark.gen_test(timeout=60)
async def test_outside_writes_move_windows_on_both_kinds_of_table(capture_server: Any,
                                                                   seeded: TestDatabase) -> None:
    """Plain SQL, caught by the triggers: a decimal filter, rows leaving it (the window must
    recognise the row it holds from the logged old row), several rows in one statement."""
    server = capture_server
    for table in (KEYED, NOKEY):
        watch = await Watch.open(server, table)
        try:
            view = await watch.window("price=gt.1&order=price.desc,n&limit=2")
            assert [r["price"] for r in view.rows] == ["10.00", "2.00"]
            assert await in_thread(run_sql, seeded,
                                   f"UPDATE {table} SET price = 0.5 WHERE n = 2") == 1
            step = (await watch.after(1, f"{table}: the first row out of the filter"))["w0"]
            assert [(m["op"], m["event"]) for m in step if m["op"] == "leave"] == [
                ("leave", "updated")], step
            assert [r["price"] for r in view.rows] == ["2.00", "1.50"]
            assert await in_thread(run_sql, seeded, f"UPDATE {table} SET price = price + 20 "
                                                    "WHERE price IS NOT NULL") == 4
            await watch.after(4, f"{table}: every priced row at once")
            assert [r["price"] for r in view.rows] == ["22.00", "21.50"]
            assert await in_thread(run_sql, seeded, f"DELETE FROM {table} WHERE price > 21") == 2
            await watch.after(2, f"{table}: the window's rows deleted")
            assert [r["price"] for r in view.rows] == ["20.50", "20.00"]
            assert await in_thread(run_sql, seeded,
                                   f"UPDATE {table} SET s = 'q' WHERE price IS NULL") == 2
            assert (await watch.after(2, f"{table}: rows outside the filter"))["w0"] == []
        finally:
            watch.close()


@pytest.fixture(params=["api", "capture"])
def either_server(request: pytest.FixtureRequest, seeded: TestDatabase, make_server: Any) -> Any:
    """A server on the seeded tables, with changes from the API or from the triggers."""
    return make_server({"realtime": CAPTURE} if request.param == "capture" else None, seed=False)


@pytest.mark.gen_test(timeout=90)
async def test_a_burst_of_concurrent_writes_ends_where_the_query_is(either_server: Any) -> None:
    """Writes in flight while windows read: changes that arrive during a read are handled
    by the next one; a subscriber that joins meanwhile gets a snapshot that its steps
    continue. Once everything settled, every window is its GET."""
    server = either_server
    rng = random.Random(7)
    shapes = ["order=price.desc.nullslast,id&limit=4", "g=eq.0&order=n.nullsfirst,s,id&limit=3",
              "or=(n.gte.3,s.eq.b)&order=s.desc,n,id&limit=2&select=id,s"]
    watch = await Watch.open(server, KEYED)
    try:
        for shape in shapes:
            await watch.window(shape)
        writes: list[Any] = []
        for i in range(40):
            if i % 3 == 0:
                writes.append(server.post(f"/api/{KEYED}", {
                    "id": 100 + i, "g": rng.choice(GROUPS), "n": rng.choice([None, *INTS, 7]),
                    "s": rng.choice([None, *TEXTS]), "price": rng.choice([None, *PRICES])}))
            else:
                column = rng.choice(VALUE_COLUMNS[1:])
                value = rng.choice([None, *DOMAIN[COLUMNS[KEYED][column][0]]])
                writes.append(server.patch(f"/api/{KEYED}/{rng.randint(1, 4)}", {
                    column: value, "g": rng.choice(GROUPS)}))
        writes += [server.delete(f"/api/{KEYED}/5"), server.delete(f"/api/{KEYED}/6")]
        with Statements(server) as statements:
            joining = asyncio.ensure_future(open_table_window(server, KEYED, shapes[0], "late"))
            answers = await asyncio.gather(*writes)
            assert sorted({a.status for a in answers}) == [200, 201, 204], \
                [a.body for a in answers]
            late = await joining
            watch.connections.append(late)
            watch.views.append(late.views[None])
            late.views[None].take_step()
            await watch.after(len(writes), "a burst of writes", statements)
        assert late.views[None].rows == watch.views[0].rows
        # At most one read per change and shape (changes that came during a read share the
        # next one); the late subscriber joined its shape's window rather than reading again.
        assert len(watch.reads) <= len(writes) * len(shapes), len(watch.reads)
    finally:
        watch.close()


# -- select, and what a window's filter may not have ------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_select_limits_the_columns_of_every_record(plain_server: Any) -> None:
    server = plain_server
    watch = await Watch.open(server, KEYED)
    channel = await open_channel(server)
    try:
        hidden_key = await watch.window("order=n.desc.nullslast,id&limit=3&select=s,n")
        with_key = await watch.window("order=price.nullslast,id&limit=2&select=price,id")
        tagged = await subscribe_window(channel, KEYED, "order=n.desc.nullslast,id&limit=3&select=n", "s1")
        watch.connections.append(channel)
        watch.views.append(tagged)
        tagged.take_step()
        for view, shown in ((hidden_key, {"s", "n"}), (with_key, {"price", "id"}),
                            (tagged, {"n"})):
            assert view.rows and all(set(row) == shown for row in view.rows), view.rows
        assert (await server.patch(f"/api/{KEYED}/4", {"n": 8, "price": "0.50"})).status == 200
        steps = await watch.after(1, "an update")
        assert (await server.post(f"/api/{KEYED}", {"id": 9, "g": 0, "n": 6, "s": "new",
                                                    "price": "0.10"})).status == 201
        steps_2 = await watch.after(1, "an insert")
        assert (await server.delete(f"/api/{KEYED}/9")).status == 204
        steps_3 = await watch.after(1, "a delete")
        for view, shown in ((hidden_key, {"s", "n"}), (with_key, {"price", "id"}),
                            (tagged, {"n"})):
            messages = steps[view.name] + steps_2[view.name] + steps_3[view.name]
            assert messages, view
            for message in messages:
                if message["op"] == "leave":
                    # The key names the row that left, selected or not.
                    assert message["pk"] in {1, 2, 3, 4, 9}, message
                else:
                    assert set(message["record"]) == shown, message
        assert [m["pk"] for m in steps_3["w0"] if m["op"] == "leave"] == [9], (steps, steps_2, steps_3)
    finally:
        watch.close()


@pytest.mark.gen_test(timeout=60)
async def test_select_on_a_table_without_a_key(plain_server: Any) -> None:
    """Ordered by a column it does not show, with the text column (a tie-breaker) hidden:
    GET once answered 500 here, and the window could never read itself."""
    server = plain_server
    query = "order=g&limit=3&select=g"
    watch = await Watch.open(server, NOKEY)
    try:
        response = await server.get(f"/api/{NOKEY}?{query}")
        assert response.status == 200, response.body
        view = await watch.window(query)
        assert view.rows == response.body["items"] == [{"g": 0}] * 3
        assert (await server.post(f"/api/{NOKEY}", {"g": -1})).status == 201
        step = (await watch.after(1, "an insert at the top"))["w0"]
        assert [(m["op"], m["event"]) for m in step] == [("leave", None), ("enter", "created")]
    finally:
        watch.close()


UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def assert_bad_parameter(response: Any, parameter: str) -> None:
    assert response.status == 400, (response.status, response.body)
    error = response.body["error"]
    assert error["status"] == 400 and error["code"] == "bad_request", error
    assert parameter in error["message"] or error.get("details", {}).get("parameter") == parameter, \
        error


@pytest.mark.gen_test(timeout=60)
async def test_offset_or_after_in_a_window_is_a_400_before_the_upgrade(plain_server: Any) -> None:
    server = plain_server
    first = await fetch(server, f"/api/{KEYED}?order=n.desc.nullslast,id&limit=2")
    after = parse_qs(urlsplit(first["next"]).query)["after"][0]
    assert first["items"] and after
    refused = {"offset": "order=n.desc.nullslast,id&limit=2&offset=2",
               "after": f"order=n.desc.nullslast,id&limit=2&after={quote(after)}"}
    for parameter, query in refused.items():
        # The same query is a fine page over REST: the window alone refuses it.
        assert (await server.get(f"/api/{KEYED}?{query}")).status == 200
        assert_bad_parameter(await server.get(f"/ws/{KEYED}?{query}", headers=UPGRADE), parameter)
        with pytest.raises(tornado.httpclient.HTTPClientError) as info:
            await FeedClient.open(server, f"/ws/{KEYED}?{query}")
        assert info.value.code == 400
        assert_bad_parameter(await server.get(f"/sse/{KEYED}?{query}",
                                              headers={"Accept": "text/event-stream"}), parameter)
    # On /ws: an error for that subscription; the connection and its others go on.
    channel = await open_channel(server)
    try:
        good = await subscribe_window(channel, KEYED, "order=n.desc.nullslast,id&limit=2", "good")
        for parameter, query in refused.items():
            channel.client.conn.write_message(json.dumps(
                {"type": "subscribe", "id": parameter, "table": KEYED, "filter": query}))
            await channel.read_until(lambda p=parameter: any(
                m.get("sub") == p for m in channel.other), f"the answer to {parameter}")
            (answer,) = [m for m in channel.other if m.get("sub") == parameter]
            assert answer["type"] == "error" and answer["error"]["status"] == 400, answer
        assert (await server.patch(f"/api/{KEYED}/4", {"n": 50})).status == 200
        await channel.read_until(lambda: len(good.log) > 1, "the window's step")
        await settle(server, KEYED, server.app.hub.feed(KEYED).seq)
        await channel.drain()
        assert good.rows == (await fetch(server, f"/api/{KEYED}?order=n.desc.nullslast,id&limit=2"))["items"]
        assert [m for m in channel.other if m.get("type") == "window"] == []
    finally:
        channel.close()
    # Without them, the same window is accepted (the refusals above are about them).
    accepted = await open_table_window(server, KEYED, "order=n.desc.nullslast,id&limit=2")
    accepted.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_window_on_a_view_is_refused_like_every_feed_on_a_view(plain_server: Any) -> None:
    server = plain_server
    query = "order=n.desc,id&limit=2"
    assert (await server.get(f"/api/{VIEW}?{query}")).status == 200
    for path in (f"/ws/{VIEW}?{query}", f"/sse/{VIEW}?{query}"):
        response = await server.get(path, headers={**UPGRADE, "Accept": "text/event-stream"}
                                    if path.startswith("/ws") else
                                    {"Accept": "text/event-stream"})
        assert response.status == 404, (path, response.status, response.body)
        assert response.body["error"]["code"] == "not_found"
    channel = await open_channel(server)
    try:
        channel.client.conn.write_message(json.dumps(
            {"type": "subscribe", "id": "v", "table": VIEW, "filter": query}))
        await channel.read_until(lambda: any(m.get("sub") == "v" for m in channel.other), "v")
        (answer,) = channel.other
        assert answer["type"] == "error" and answer["error"]["status"] == 404, answer
        assert "v" not in channel.views
    finally:
        channel.close()


@pytest.mark.gen_test(timeout=60)
async def test_order_or_limit_alone_is_an_ordinary_feed(plain_server: Any) -> None:
    server = plain_server
    for query in ("order=n.desc", "limit=2", "n=gte.3&order=n"):
        client = await FeedClient.open(server, f"/ws/{KEYED}?{query}")
        try:
            assert (await server.patch(f"/api/{KEYED}/1", {"s": query[:8]})).status == 200
            message = await client.recv()
            assert message["type"] == "change" and message["event"] == "updated", (query, message)
            assert message["pk"] == 1 and message["record"]["s"] == query[:8]
            assert await client.drain() == []
        finally:
            client.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_bad_window_query_is_a_400_naming_the_parameter(plain_server: Any) -> None:
    server = plain_server
    for query, parameter in (("order=nope&limit=2", "order"), ("order=n.sideways&limit=2", "order"),
                             ("order=n&limit=many", "limit"), ("order=n&limit=2&select=nope",
                                                               "select"),
                             ("order=n&limit=2&n=gt.x", "n")):
        rest = await server.get(f"/api/{KEYED}?{query}")
        assert rest.status == 400, (query, rest.body)
        for path in (f"/ws/{KEYED}?{query}", f"/sse/{KEYED}?{query}"):
            response = await server.get(path, headers={**UPGRADE, "Accept": "text/event-stream"})
            assert response.status == 400, (path, response.status, response.body)
            assert parameter in json.dumps(response.body["error"]), (path, response.body)


@pytest.fixture
def hiding_server(seeded: TestDatabase, make_server: Any) -> Any:
    return make_server({f"table:{KEYED}": {"hidden": "price"}}, seed=False)


@pytest.mark.gen_test(timeout=60)
async def test_hidden_columns_never_appear_in_a_window(hiding_server: Any) -> None:
    server = hiding_server
    for query in ("order=price&limit=2", "price=gt.1&order=n&limit=2",
                  "order=n&limit=2&select=id,price"):
        response = await server.get(f"/ws/{KEYED}?{query}", headers=UPGRADE)
        assert response.status == 400, (query, response.status, response.body)
    watch = await Watch.open(server, KEYED)
    try:
        view = await watch.window("order=n.desc.nullslast,id&limit=2")
        assert [sorted(row) for row in view.rows] == [["g", "id", "n", "s"]] * 2
        assert (await server.patch(f"/api/{KEYED}/4", {"n": 40})).status == 200
        step = (await watch.after(1, "a row to the top"))["w0"]
        assert step and all("price" not in json.dumps(m) for m in step), step
    finally:
        watch.close()


# -- one window, many subscribers ------------------------------------------------------------------

class Statements:
    """Every statement the server's pool runs (``execute_sql`` wrapped)."""

    def __init__(self, server: Any) -> None:
        self.db = server.app.db.db
        assert server.app.tables[KEYED].model._meta.database is self.db
        self.seen: list[str] = []
        self.plain = self.db.execute_sql

    def __enter__(self) -> Statements:
        def counting(sql: str, *args: Any, **kwargs: Any) -> Any:
            self.seen.append(sql)
            return self.plain(sql, *args, **kwargs)

        self.db.execute_sql = counting
        return self

    def __exit__(self, *exc: Any) -> None:
        self.db.execute_sql = self.plain

    def clear(self) -> None:
        self.seen.clear()

    def window_reads(self) -> list[str]:
        """The statements that read a window: ordered selects from the table (a write's
        own reads are by key, without ORDER BY)."""
        reads = [sql for sql in self.seen if KEYED in sql and "ORDER BY" in sql.upper()]
        self.seen.clear()
        return reads


@pytest.mark.gen_test(timeout=60)
async def test_subscribers_of_one_shape_share_its_messages_and_one_read_per_change(
        plain_server: Any) -> None:
    server = plain_server
    shape = "n=not.is.null&order=n.desc,id&limit=3"
    watch = await Watch.open(server, KEYED)
    channel = await open_channel(server)
    try:
        first = await watch.window(shape)
        second = await watch.window(shape)
        third = await subscribe_window(channel, KEYED, shape, "same")
        watch.connections.append(channel)
        watch.views.append(third)
        third.take_step()
        other = await watch.window("n=not.is.null&order=n.desc,id&limit=2")  # another shape
        assert first.rows == second.rows == third.rows
        with Statements(server) as statements:
            # A change in the window: one read per shape, the same messages for each subscriber.
            statements.clear()
            assert (await server.patch(f"/api/{KEYED}/3", {"n": 9})).status == 200
            steps = await watch.after(1, "a move in the window", statements)
            assert len(watch.reads) == 2, watch.reads  # this shape and the other one
            assert steps[first.name] and steps[first.name] == steps[second.name]
            assert [{k: v for k, v in m.items() if k != "sub"} for m in steps[third.name]] == \
                steps[first.name]
            assert all(m["sub"] == "same" for m in steps[third.name])
            assert steps[other.name]

            # A change that touches nothing: no read, nothing sent.
            statements.clear()
            assert (await server.patch(f"/api/{KEYED}/6", {"s": "zz"})).status == 200
            steps = await watch.after(1, "an update outside the filter", statements)
            assert watch.reads == []
            assert all(step == [] for step in steps.values()), steps

            # A row that matches but stays past the limit: at most one read per shape, nothing sent.
            statements.clear()
            assert (await server.patch(f"/api/{KEYED}/4", {"n": 1})).status == 200
            steps = await watch.after(1, "an update past the limit", statements)
            assert len(watch.reads) <= 2, watch.reads
            assert all(step == [] for step in steps.values()), steps
    finally:
        watch.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_window_nobody_holds_any_more_reads_nothing(plain_server: Any) -> None:
    server = plain_server
    shape = "order=n.desc.nullslast,id&limit=2"
    first = await open_table_window(server, KEYED, shape)
    channel = await open_channel(server)
    view = await subscribe_window(channel, KEYED, shape, "x")
    assert len(windows_on(server, KEYED)) == 1
    first.close()
    channel.client.conn.write_message(json.dumps({"type": "unsubscribe", "id": "x"}))
    await channel.read_until(lambda: any(m.get("type") == "unsubscribed" for m in channel.other),
                             "unsubscribed")
    await wait_for(lambda: windows_on(server, KEYED) == [], what="the window to be dropped")
    plain = PlainFeed(await FeedClient.open(server, f"/ws/{KEYED}"))
    try:
        with Statements(server) as statements:
            assert (await server.patch(f"/api/{KEYED}/4", {"n": 40})).status == 200
            await plain.changes(1, "the update")
            await asyncio.sleep(0.2)
            assert statements.window_reads() == []
        await channel.drain()
        assert len(view.log) == 1, view.log
    finally:
        plain.client.close()
        channel.close()


# -- hello, /sse and /ws ------------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_hello_comes_first_then_the_snapshot_on_ws_and_sse(plain_server: Any) -> None:
    server = plain_server
    query = "order=price.desc.nullslast,id&limit=3"
    get = f"/api/{KEYED}?{query}"
    clients: list[FeedClient] = []
    stream: EventStream | None = None
    try:
        # The first subscriber of the shape (its window is read for it), then one that joins
        # the window already read: the hello comes first either way.
        for _ in range(2):
            client = await FeedClient.open(server, f"/ws/{KEYED}?{query}", hello=False)
            clients.append(client)
            hello = await client.recv()
            assert hello["type"] == "hello" and hello["table"] == KEYED, hello
            assert isinstance(hello["seq"], int) and "heartbeat" in hello
            snapshot = await client.recv()
            assert snapshot["type"] == "window" and snapshot["op"] == "snapshot", snapshot
            assert snapshot["rows"] == (await fetch(server, get))["items"]
            await settle(server, KEYED, hello["seq"])
        client = clients[0]
        stream = await EventStream.open(server, f"/sse/{KEYED}?{query}")
        assert stream.status == 200 and stream.headers["content-type"].startswith(
            "text/event-stream"), (stream.status, stream.headers)
        name, data = await stream.event()
        assert name == "hello" and data["type"] == "hello" and data["table"] == KEYED, data
        name, data = await stream.event()
        assert name == "window" and data["op"] == "snapshot", (name, data)
        view = WindowView("sse", KEYED, query)
        view.apply(data)
        assert view.rows == snapshot["rows"]

        # The stream follows a write like the socket does.
        assert (await server.patch(f"/api/{KEYED}/6", {"price": "99.00"})).status == 200
        while view.rows != (await fetch(server, get))["items"]:
            name, data = await stream.event()
            assert name == "window", (name, data)
            view.apply(data)
        assert [m["op"] for m in view.log[1:]] == ["enter", "leave"] or \
            [m["op"] for m in view.log[1:]] == ["leave", "enter"], view.log
        assert await stream.events_for(0.3) == []
        socket_view = WindowView("ws", KEYED, query)
        socket_view.apply(snapshot)
        while socket_view.rows != view.rows:
            socket_view.apply(await client.recv())
        assert [m for m in socket_view.log[1:]] == view.log[1:]
    finally:
        for client in clients:
            client.close()
        if stream is not None:
            stream.close()


@pytest.mark.gen_test(timeout=60)
async def test_windows_on_ws_carry_their_sub(plain_server: Any) -> None:
    server = plain_server
    channel = await open_channel(server)
    plain = PlainFeed(await FeedClient.open(server, f"/ws/{KEYED}"))
    try:
        top = await subscribe_window(channel, KEYED, "order=n.desc.nullslast,id&limit=2", "top")
        cheap = await subscribe_window(channel, KEYED, "price=not.is.null&order=price,id&limit=2",
                                       "cheap")
        assert [r["id"] for r in top.rows] == [1, 2] and [r["id"] for r in cheap.rows] == [5, 1]
        assert (await server.patch(f"/api/{KEYED}/4", {"n": 50, "price": "0.01"})).status == 200
        (change,) = await plain.changes(1, "the update")
        await channel.read_until(lambda: len(top.log) > 1 and len(cheap.log) > 1, "both steps")
        await channel.drain()
        for view, query in ((top, "order=n.desc.nullslast,id&limit=2"),
                            (cheap, "price=not.is.null&order=price,id&limit=2")):
            assert view.rows == (await fetch(server, f"/api/{KEYED}?{query}"))["items"]
            assert all(m["sub"] == view.sub and m["seq"] == change["seq"] for m in view.log[1:])
        # Unsubscribed: that window says so and sends nothing more; the other goes on.
        channel.client.conn.write_message(json.dumps({"type": "unsubscribe", "id": "top"}))
        await channel.read_until(lambda: any(m.get("type") == "unsubscribed"
                                             for m in channel.other), "unsubscribed")
        assert [m.get("sub") for m in channel.other if m["type"] == "unsubscribed"] == ["top"]
        seen, seen_cheap = len(top.log), len(cheap.log)
        # Row 5 goes to the top of the window "top" and changes in place in "cheap".
        assert (await server.patch(f"/api/{KEYED}/5", {"n": 60, "price": "0.00"})).status == 200
        await plain.changes(1, "the second update")
        await channel.read_until(lambda: len(cheap.log) > seen_cheap, "the cheap window's step")
        assert cheap.log[-1]["op"] == "update" and cheap.log[-1]["sub"] == "cheap", cheap.log
        await settle(server, KEYED, plain.seq)
        await channel.drain()
        assert len(top.log) == seen
    finally:
        channel.close()
        plain.client.close()


@pytest.mark.gen_test(timeout=60)
async def test_since_does_not_apply_to_a_window_it_gets_a_fresh_snapshot(plain_server: Any) -> None:
    server = plain_server
    query = "order=n.desc.nullslast,id&limit=2"
    first = await open_table_window(server, KEYED, query)
    seq = first.views[None].seq
    first.close()
    for row in (1, 2):
        assert (await server.patch(f"/api/{KEYED}/{row}", {"n": -row})).status == 200
    for since in (seq, seq + 1000):  # a seq seen before, and one the server never had
        again = await open_table_window(server, KEYED, f"{query}&since={since}")
        try:
            view = again.views[None]
            assert view.rows == (await fetch(server, f"/api/{KEYED}?{query}"))["items"]
            assert [r["id"] for r in view.rows] == [3, 4]
            await again.drain()
            assert again.other == [] and len(view.log) == 1, (again.other, view.log)
        finally:
            again.close()
        # An event stream that resumes (EventSource sends Last-Event-ID) gets the same.
        stream = await EventStream.open(server, f"/sse/{KEYED}?{query}",
                                        {"Last-Event-ID": str(since)})
        try:
            assert stream.status == 200, stream.status
            assert (await stream.event())[0] == "hello"
            name, data = await stream.event()
            assert name == "window" and data["op"] == "snapshot", (name, data)
            assert data["rows"] == (await fetch(server, f"/api/{KEYED}?{query}"))["items"]
            assert await stream.events_for(0.2) == []
        finally:
            stream.close()


@pytest.fixture
def capped_server(seeded: TestDatabase, make_server: Any) -> Any:
    return make_server({"api": {"max_limit": 3}}, seed=False)


@pytest.mark.gen_test(timeout=60)
async def test_a_window_holds_at_most_max_limit_rows(capped_server: Any) -> None:
    server = capped_server
    query = "order=n.desc.nullslast,id&limit=50"
    watch = await Watch.open(server, KEYED)
    try:
        view = await watch.window(query)
        assert [r["id"] for r in view.rows] == [1, 2, 3]
        assert view.rows == (await fetch(server, f"/api/{KEYED}?{query}"))["items"]
        assert (await server.patch(f"/api/{KEYED}/6", {"n": 70})).status == 200
        step = (await watch.after(1, "a row to the top"))["w0"]
        assert sorted(ops(step), key=str) == sorted([("leave", None, 2, 3),
                                                     ("enter", "updated", 0, 6)], key=str)
    finally:
        watch.close()


# -- several processes: the Redis bus ------------------------------------------------------------------

@pytest.fixture
def bus_pair(database: TestDatabase, tmp_path: Any) -> Iterator[list[Any]]:
    """Two Pylight processes on one PostgreSQL database and the shared Redis (demo tables)."""
    require_postgresql(database)
    if not redis_ping(SHARED_REDIS):
        missing("Redis is not reachable on 127.0.0.1:6379")
    prefix = unique_prefix()
    servers = start_processes(2, tmp_path, database, SHARED_REDIS, prefix)
    yield servers
    for server in servers:
        server.stop()
    delete_prefix(SHARED_REDIS, prefix)


async def rest(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    response = await tornado.httpclient.AsyncHTTPClient().fetch(
        base + path, method=method, raise_error=False, request_timeout=TIMEOUT,
        body=None if body is None else json.dumps(body),
        headers={"Content-Type": "application/json"}, allow_nonstandard_methods=True)
    return response.code, json.loads(response.body) if response.body else None


@pytest.mark.gen_test(timeout=120)
async def test_a_write_on_one_process_moves_a_window_held_on_another(bus_pair: list[Any]) -> None:
    a, b = bus_pair
    for i, price in enumerate(["3.00", "30.00", "12.00"]):
        status, _ = await rest(a.base_url, "POST", "/api/products",
                               {"name": f"bus {i}", "price": price, "sku": f"LW-{i}"})
        assert status == 201
    query = "in_stock=is.true&order=price.desc,id&limit=3&select=id,name,price"
    get = f"/api/products?{query}"
    on_b = await open_table_window(b, "products", query, "b")
    on_a = await open_table_window(a, "products", query, "a")
    plain_b = PlainFeed(await FeedClient.open(b, "/ws/products"))
    view_b, view_a = on_b.views[None], on_a.views[None]
    try:
        assert view_b.rows == view_a.rows == (await rest(b.base_url, "GET", get))[1]["items"]
        writes = [
            ("PATCH", "/api/products/1", {"price": "99.00"}),  # enters at the top
            ("PATCH", "/api/products/1", {"name": "renamed"}),  # an update in place
            ("POST", "/api/products", {"name": "mid", "price": "25.00", "sku": "LW-mid"}),
            ("PATCH", "/api/products/1", {"in_stock": False}),  # leaves the filter
            ("PATCH", "/api/products/3", {"name": "cheap, unseen"}),  # touches nothing
        ]
        for method, path, body in writes:
            status, _ = await rest(a.base_url, method, path, body)
            assert status in (200, 201), (method, path, status)
            (change,) = await plain_b.changes(1, f"{method} {path} on A")
            expected = (await rest(b.base_url, "GET", get))[1]["items"]
            for connection, view in ((on_b, view_b), (on_a, view_a)):
                before = len(view.log)
                try:
                    await asyncio.wait_for(connection.read_until(
                        lambda v=view, e=expected: v.rows == e, "the window's step"), TIMEOUT)
                except asyncio.TimeoutError:  # noqa: UP041 (Python 3.10)
                    raise AssertionError(describe(f"{method} {path} on A: the window on "
                                                  f"{view.name} is not the GET", view,
                                                  get=expected)) from None
                if before == len(view.log):  # nothing to do: make sure nothing comes
                    await asyncio.sleep(QUIET)
                await connection.drain()
                assert view.rows == expected, describe("more came", view, get=expected)
                assert all(m["seq"] == change["seq"] for m in view.log[before:]), view.log
            # Each process read the window itself; both told the same.
            assert view_a.log[1:] == view_b.log[1:]
        assert [(m["op"], m["event"]) for m in view_b.log[1:]] == [
            ("leave", None), ("enter", "updated"), ("update", "updated"),
            ("leave", None), ("enter", "created"), ("leave", "updated"), ("enter", None)]
        assert view_b.log[-1]["seq"] < change["seq"]  # the last write sent nothing
    finally:
        on_a.close()
        on_b.close()
        plain_b.client.close()
