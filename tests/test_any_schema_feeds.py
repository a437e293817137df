"""Change capture over the awkward schemas, on every backend (API.md sections 3 and 5,
README "Changes made outside the API").

With `[realtime] capture = database` and the triggers installed, a feed is opened
on every keyed table of tests/awkward_schemas.py, and rows are changed:

- outside Pylight, with raw SQL: every row updated with each column set to itself,
  one row updated to another row's values, a copy of every row inserted under a
  new key, and every copy deleted again, so every value of every column type
  travels through the INSERT, UPDATE and DELETE triggers;
- through the REST API: a PUT of every record as read, and a DELETE.

One column is hidden (`[table:Customer] hidden = lastName`): it is in the triggers'
row images, and must be in no record.

Every change must arrive, in order, as `created`/`updated`/`deleted` with the key
as `pk`; its `record` must be exactly what `GET /api/<table>/<pk>` answers after
the change (for `deleted`, what it answered before the delete), and an update's
`old` what GET answered before it. No response may be a 5xx and no server log
line may be an ERROR.

Each test collects every problem (naming table.column [declared type] and the
values) and fails once with the whole list, as tests/test_any_schema.py does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import string
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest

from tests.awkward_schemas import Column, Relation, catalog, load_awkward
from tests.conftest import mysql_connect, pg_connect
from tests.realtime_support import FeedClient, in_thread
from tests.test_any_schema import (
    LIMIT,
    Awkward,
    Problems,
    canonical,
    col_name,
    ident,
    item_url,
    read_only_columns,
    record_server_errors,
    said,
    short,
    sqlite_off_type,
    stored_rows,
    url,
    writable_part,
)

TIMEOUT = 60
WAIT = 3.0  # seconds all the changes of one round may take to arrive (polls every 0.05 s)
SETTLE = 0.3  # seconds to wait for changes nobody expected (duplicates) after a round
HIDDEN = ("Customer", "lastName")  # a hidden column: never in a record, whoever wrote the row
SETTINGS = {
    "realtime": {"capture": "database", "install_triggers": "true", "poll_interval": "0.05"},
    "database": {"seed_demo": "false"},
    f"table:{HIDDEN[0]}": {"hidden": HIDDEN[1]},
}
INTEGER_TYPES = {"smallint", "integer", "bigint", "int", "mediumint", "tinyint", "int2", "int4",
                 "int8"}
UNSET = object()  # `old` is not checked


# -- the server, watched for 5xx and ERROR log lines --------------------------------------------

@dataclass
class Capturing(Awkward):
    caplog: Any = None

    def trouble(self) -> list[str]:
        """Responses of 500 or more, ERROR log lines (with the end of their traceback) and
        the change-capture reader's complaints: none may happen here."""
        lines = list(self.server_errors)
        for record in self.caplog.records:
            message = record.getMessage()
            if record.levelno >= logging.ERROR:
                line = f"server log {record.levelname} {record.name}: {message}"
                if record.exc_info or record.exc_text:
                    text = record.exc_text or logging.Formatter().formatException(record.exc_info)
                    line += "\n      " + "\n      ".join(text.splitlines()[-6:])
                lines.append(line)
            elif record.name == "pylight" and message.startswith("change capture: reading"):
                # No fault is injected here: a failed read of the log is a change that
                # cannot be decoded, and the reader retrying it holds up every later change.
                lines.append(f"server log {record.levelname}: {message}")
        return lines


@pytest.fixture
def capturing(database: Any, make_server: Any, caplog: pytest.LogCaptureFixture) -> Any:
    """A server on the awkward schema that learns every change from the triggers; its
    responses of 500 or more are recorded (see Capturing.trouble)."""
    caplog.set_level(logging.WARNING)
    load_awkward(database)
    reference = catalog(database)
    server = make_server(SETTINGS)
    state = Capturing(server, database, reference, caplog=caplog)
    record_server_errors(server, state.server_errors)
    return state


# -- SQL made from the catalog -----------------------------------------------------------------

def literal(database: Any, value: Any, column: Column | None = None) -> str:
    """A key value as SQL text (on PostgreSQL cast to the column's type: in a SELECT list an
    untyped literal would be text)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"not a key value: {value!r}")
    if isinstance(value, int):
        text = str(value)
    else:
        quoted = value.replace("'", "''")
        if database.backend == "mysql":
            quoted = quoted.replace("\\", "\\\\")
        text = f"'{quoted}'"
    if database.backend == "postgresql" and column is not None:
        return f"CAST({text} AS {column.declared})"
    return text


def key_where(database: Any, relation: Relation, key: dict[str, Any], alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    return " AND ".join(f"{prefix}{ident(database, name)} = {literal(database, key[name])}"
                        for name in relation.primary_key)


def table_sql(database: Any, relation: Relation) -> str:
    return ident(database, relation.name)


def settable(relation: Relation) -> list[Column]:
    """The columns an UPDATE may set: not the key, not generated."""
    return [c for c in relation.columns if not c.generated and c.name not in relation.primary_key]


def update_to_itself(database: Any, relation: Relation, key: dict[str, Any]) -> str:
    sets = ", ".join(f"{ident(database, c.name)} = {ident(database, c.name)}"
                     for c in settable(relation))
    return f"UPDATE {table_sql(database, relation)} SET {sets} WHERE {key_where(database, relation, key)}"


def update_from(database: Any, relation: Relation, target: dict[str, Any],
                source: dict[str, Any]) -> str:
    """Set every settable column of the row ``target`` to the row ``source``'s value."""
    table = table_sql(database, relation)
    columns = [ident(database, c.name) for c in settable(relation)]
    if database.backend == "postgresql":
        sets = ", ".join(f"{c} = b.{c}" for c in columns)
        return (f"UPDATE {table} AS a SET {sets} FROM {table} AS b "
                f"WHERE {key_where(database, relation, target, 'a')} "
                f"AND {key_where(database, relation, source, 'b')}")
    if database.backend == "mysql":
        sets = ", ".join(f"a.{c} = b.{c}" for c in columns)
        return (f"UPDATE {table} AS a JOIN {table} AS b ON {key_where(database, relation, source, 'b')} "
                f"SET {sets} WHERE {key_where(database, relation, target, 'a')}")
    sets = ", ".join(f"{c} = (SELECT b.{c} FROM {table} AS b "
                     f"WHERE {key_where(database, relation, source, 'b')})" for c in columns)
    return f"UPDATE {table} SET {sets} WHERE {key_where(database, relation, target)}"


def auto_key(database: Any, relation: Relation) -> bool:
    """Whether the database makes the key of a row inserted without one."""
    if len(relation.primary_key) != 1:
        return False
    name = relation.primary_key[0]
    column = relation.column(name)
    if database.backend == "sqlite":
        (sql,) = database.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = "
                                  f"'{relation.name.replace(chr(39), chr(39) * 2)}'")[0]
        return column.declared.upper() == "INTEGER" and "WITHOUT ROWID" not in sql.upper()
    if database.backend == "postgresql":
        rows = database.execute(
            "SELECT column_default LIKE 'nextval(%' OR is_identity = 'YES' "
            "FROM information_schema.columns WHERE table_schema = 'public' "
            f"AND table_name = '{relation.name}' AND column_name = '{name}'")
        return bool(rows and rows[0][0])
    rows = database.execute(
        "SELECT extra FROM information_schema.columns WHERE table_schema = DATABASE() "
        f"AND table_name = '{relation.name}' AND column_name = '{name}'")
    return bool(rows and "auto_increment" in rows[0][0].lower())


def kind_of_key(column: Column) -> str:
    declared = column.declared.lower()
    base = declared.split("(")[0].split()[0] if declared else ""
    if base in INTEGER_TYPES:
        return "integer"
    if "uuid" in declared:
        return "uuid"
    return "string"


@dataclass
class Copier:
    """Makes new keys for copies of a table's rows, or says why it cannot."""

    relation: Relation
    auto: bool  # the database makes the (single) key
    fresh: dict[str, str]  # key column -> "integer" | "uuid" | "string"; the others are kept
    taken: dict[str, set[Any]] = field(default_factory=dict)
    why_not: str | None = None

    @classmethod
    def make(cls, database: Any, relation: Relation, rows: list[dict[str, Any]]) -> Copier:
        in_foreign_key = {name for fk in relation.foreign_keys for name in fk["columns"]}
        auto = auto_key(database, relation)
        fresh = {} if auto else {name: kind_of_key(relation.column(name))
                                 for name in relation.primary_key if name not in in_foreign_key}
        copier = cls(relation, auto, fresh,
                     {name: {row.get(name) for row in rows} for name in relation.primary_key})
        if not auto and not fresh:
            # A key made only of foreign-key columns: a copy would need a new parent row.
            copier.why_not = "every key column is part of a foreign key"
        return copier

    def new_key(self) -> dict[str, Any]:
        """Values for the key columns this copier makes (none for an automatic key)."""
        out: dict[str, Any] = {}
        for name, kind in self.fresh.items():
            taken = self.taken[name]
            if kind == "integer":
                value: Any = max([v for v in taken if isinstance(v, int)], default=0) + 1
            elif kind == "uuid":
                value = str(uuid.uuid4())
            else:
                value = next(a + b for a in string.ascii_uppercase[::-1] for b in string.digits
                             if a + b not in taken)
            taken.add(value)
            out[name] = value
        return out


def insert_copy(database: Any, copier: Copier, source: dict[str, Any],
                new: dict[str, Any]) -> list[str]:
    """Statements inserting a copy of the row ``source`` under the key values ``new`` (the
    database makes an automatic key); the last one answers the new key."""
    relation = copier.relation
    table = table_sql(database, relation)
    names, exprs = [], []
    for column in relation.columns:
        if column.generated or (copier.auto and column.name in relation.primary_key):
            continue
        names.append(ident(database, column.name))
        if column.name in new:
            exprs.append(literal(database, new[column.name], column))
        else:
            exprs.append(ident(database, column.name))
    insert = (f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(exprs)} FROM {table} "
              f"WHERE {key_where(database, relation, source)}")
    keys = ", ".join(ident(database, name) for name in relation.primary_key)
    if database.backend == "postgresql":
        return [insert + f" RETURNING {keys}"]
    if not copier.auto:
        key = {**source, **new}
        return [insert, f"SELECT {keys} FROM {table} WHERE {key_where(database, relation, key)}"]
    last = "LAST_INSERT_ID()" if database.backend == "mysql" else "last_insert_rowid()"
    return [insert, f"SELECT {last}"]


def pg_sequences_past_max(database: Any, relation: Relation) -> list[str]:
    """PostgreSQL: rows inserted with explicit keys leave an identity/serial sequence behind;
    move it past them (as a DBA would) so that a generated key is a new one."""
    if database.backend != "postgresql":
        return []
    name = relation.primary_key[0]
    table = relation.name.replace('"', '""').replace("'", "''")
    return [f"SELECT setval(pg_get_serial_sequence('\"{table}\"', '{name}'), "
            f"(SELECT COALESCE(MAX({ident(database, name)}), 0) + 1 "
            f"FROM {table_sql(database, relation)}), false)"]


# -- feeds and what they must say ----------------------------------------------------------------

def key_of(relation: Relation, record: dict[str, Any]) -> Any:
    if len(relation.primary_key) == 1:
        return record.get(relation.primary_key[0])
    return [record.get(name) for name in relation.primary_key]


def listing(items: list[str]) -> str:
    text = ", ".join(items) or "none"
    return text if len(text) <= 160 else text[:157] + "..."


def same(a: Any, b: Any) -> bool:
    """Equal as JSON values: 1 and 1.0 are one number, but true is not 1."""
    return canonical({"v": a}) == canonical({"v": b})


def record_diff(relation: Relation, rest: dict[str, Any], feed: Any) -> str:
    """The columns where the feed's record differs from GET's, with both values."""
    if not isinstance(feed, dict):
        return f"the feed sent {short(feed)}"
    absent = "(absent)"
    lines = []
    for name in sorted(set(rest) | set(feed), key=str):
        a, b = rest.get(name, absent), feed.get(name, absent)
        if not same(a, b):
            lines.append(f"{col_name(relation, name)}: GET {short(a) if a is not absent else a}, "
                         f"feed {short(b) if b is not absent else b}")
    return "; ".join(lines)


@dataclass
class Expected:
    event: str
    pk: Any
    record: dict[str, Any]
    old: Any  # for updates: the row before; UNSET: not checked
    what: str  # how the change was made


class Feeds:
    """One WebSocket feed per table, and the changes each must carry next."""

    def __init__(self, state: Awkward, problems: Problems) -> None:
        self.state = state
        self.problems = problems
        self.clients: dict[str, FeedClient] = {}
        self.expected: dict[str, list[Expected]] = {}
        self.last_seq: dict[str, int] = {}

    async def open(self, relations: list[Relation]) -> None:
        for relation in relations:
            path = "/ws/" + quote(relation.name, safe="")
            try:
                self.clients[relation.name] = await FeedClient.open(self.state.server, path)
            except Exception as exc:
                self.problems.append(f"{relation.name}: cannot open {path}: {exc!r}")

    def expect(self, relation: Relation, event: str, record: dict[str, Any], what: str,
               old: Any = UNSET) -> None:
        self.expected.setdefault(relation.name, []).append(
            Expected(event, key_of(relation, record), record, old, what))

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    async def check(self, round_name: str) -> None:
        """Read every expected change (all feeds share one deadline), compare, then look for
        changes nobody expected."""
        deadline = time.monotonic() + WAIT
        received: dict[str, list[dict[str, Any]]] = {}
        for table, expected in self.expected.items():
            client = self.clients.get(table)
            if client is None:
                continue
            got = received.setdefault(table, [])
            while len([m for m in got if m.get("type") == "change"]) < len(expected):
                try:
                    message = await client.recv(max(deadline - time.monotonic(), 0.01))
                except asyncio.TimeoutError:
                    break
                if message is None:
                    self.problems.append(f"{table}: the feed closed during {round_name} "
                                         f"(code {client.conn.close_code})")
                    break
                got.append(message)
        await asyncio.sleep(SETTLE)
        for table, client in self.clients.items():
            while True:
                try:
                    message = await client.recv(0.01)
                except asyncio.TimeoutError:
                    break
                if message is None:
                    break
                received.setdefault(table, []).append(message)
        for table in sorted(set(self.expected) | set(received)):
            if table in self.clients:
                self._compare(table, self.expected.get(table, []), received.get(table, []),
                              round_name)
        self.expected = {}

    def _compare(self, table: str, expected: list[Expected], messages: list[dict[str, Any]],
                 round_name: str) -> None:
        relation = self.state.catalog[table]
        problems = self.problems
        changes = []
        for message in messages:
            if message.get("type") == "change":
                changes.append(message)
            elif message != {"type": "pong"}:
                problems.append(f"{table}: unexpected message during {round_name}: {short(message)}")
        for change in changes:
            seq = change.get("seq")
            if not isinstance(seq, int) or seq <= self.last_seq.get(table, 0):
                problems.append(f"{table}: seq {seq!r} after {self.last_seq.get(table)} "
                                f"({round_name})")
            if isinstance(seq, int):
                self.last_seq[table] = seq
        sent = [json.dumps([c.get("event"), c.get("pk")], ensure_ascii=False) for c in changes]
        wanted = [json.dumps([e.event, e.pk], ensure_ascii=False) for e in expected]
        if sent != wanted:
            missing = list((Counter(wanted) - Counter(sent)).elements())
            extra = list((Counter(sent) - Counter(wanted)).elements())
            if missing or extra:
                problems.append(
                    f"{table}: {round_name}: {len(sent)} change(s) for {len(wanted)} expected; "
                    f"missing [event, pk] {listing(missing)}; unexpected {listing(extra)}"
                    + (f" ({expected[0].what}, ...)" if expected else ""))
            else:
                problems.append(f"{table}: {round_name}: changes out of order: sent "
                                f"{listing(sent)}, made {listing(wanted)}")
        by_key: dict[str, list[dict[str, Any]]] = {}
        for change in changes:
            key = json.dumps([change.get("event"), change.get("pk")], ensure_ascii=False)
            by_key.setdefault(key, []).append(change)
        for item in expected:
            candidates = by_key.get(json.dumps([item.event, item.pk], ensure_ascii=False))
            if not candidates:
                continue
            change = candidates.pop(0)
            where = f"{table} {item.what} (pk {short(item.pk)})"
            if change.get("table") != table:
                problems.append(f"{where}: the change names table {change.get('table')!r}")
            if not same(change.get("record"), item.record):
                problems.append(f"{where}: the {item.event} record differs from GET: "
                                f"{record_diff(relation, item.record, change.get('record'))}")
            if item.old is not UNSET and not same(change.get("old"), item.old):
                if change.get("old") is None:
                    problems.append(f"{where}: old is null, expected the row as GET read it before")
                else:
                    problems.append(f"{where}: old differs from GET before the update: "
                                    f"{record_diff(relation, item.old, change.get('old'))}")
            if item.event != "updated" and change.get("old") is not None:
                problems.append(f"{where}: a {item.event} change has old {short(change.get('old'))}")


# -- reading over REST -----------------------------------------------------------------------------

async def list_rows(state: Awkward, relation: Relation, problems: Problems) -> list[dict[str, Any]]:
    response = await state.server.get(f"{url(relation)}?limit={LIMIT}")
    if response.status != 200 or not isinstance(response.body, dict):
        problems.append(f"{relation.name}: GET {url(relation)} -> {said(response)}")
        return []
    return response.body["items"]


async def read_row(state: Awkward, relation: Relation, key: dict[str, Any],
                   problems: Problems, what: str) -> dict[str, Any] | None:
    path = item_url(relation, key)
    response = await state.server.get(path)
    if response.status != 200 or not isinstance(response.body, dict):
        problems.append(f"{relation.name} {what}: GET {path} -> {said(response)}")
        return None
    return response.body


def run_each(database: Any, statements: list[str]) -> list[tuple[Exception | None, list[Any]]]:
    """Run statements one by one (autocommit) on a connection of their own: for each, the
    error the database raised (a write refused: the others still run) or the rows."""
    if database.backend == "sqlite":
        import sqlite3

        conn: Any = sqlite3.connect(database.name, isolation_level=None)
        conn.execute("PRAGMA foreign_keys=ON")
    else:
        conn = pg_connect(database.name) if database.backend == "postgresql" else \
            mysql_connect(database.name)
    out: list[tuple[Exception | None, list[Any]]] = []
    try:
        for statement in statements:
            cursor = conn.cursor()
            try:
                cursor.execute(statement)
                rows = list(cursor.fetchall()) if cursor.description else []
            except Exception as exc:
                out.append((exc, []))
            else:
                out.append((None, rows))
            finally:
                cursor.close()
    finally:
        conn.close()
    return out


async def outside(state: Awkward, statements: list[str], whats: list[tuple[Relation, str]],
                  problems: Problems) -> list[tuple[Exception | None, list[Any]]]:
    """Run ``statements`` outside Pylight; a statement the database refuses is a problem
    (``whats[i]``: the table and what the statement was for)."""
    results = await in_thread(run_each, state.database, statements)
    for (error, _), statement, (relation, what) in zip(results, statements, whats, strict=True):
        if error is not None:
            problems.append(f"{relation.name} {what}: the database refused it: "
                            f"{' '.join(str(error).split())[:300]} (SQL: {statement[:200]})")
    return results


def plain_key(value: Any) -> Any:
    """A key value from a driver as the API writes it (a UUID object as its text)."""
    return value if isinstance(value, (int, str)) else str(value)


async def copy_rows(state: Awkward, feeds: Feeds, problems: Problems,
                    rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Insert a copy of every row of every table outside Pylight (new keys); expect a
    `created` change per copy. Returns the copies as GET reads them, per table."""
    copies: dict[str, list[dict[str, Any]]] = {}
    statements: list[str] = []
    whats: list[tuple[Relation, str]] = []
    made: list[tuple[Relation, int, int, str]] = []  # the statements of one copy: [first, last]
    for relation in state.keyed:
        records = rows.get(relation.name) or []
        if not records:
            continue
        copier = Copier.make(state.database, relation, records)
        if copier.why_not:
            # Skipped: a table whose rows cannot be copied generically (a key made only of
            # foreign-key columns; none of the awkward tables today) gets no INSERT and,
            # its original rows being referenced, no DELETE either.
            continue
        if copier.auto:
            for sql in pg_sequences_past_max(state.database, relation):
                statements.append(sql)
                whats.append((relation, "moving the key's sequence past the largest key"))
        for record in records:
            source = {name: record[name] for name in relation.primary_key}
            what = f"outside INSERT copying row {short(key_of(relation, record))}"
            first = len(statements)
            for sql in insert_copy(state.database, copier, source, copier.new_key()):
                statements.append(sql)
                whats.append((relation, what))
            made.append((relation, first, len(statements) - 1, what))
    results = await outside(state, statements, whats, problems)
    done = []
    for relation, first, last, what in made:
        if any(error is not None for error, _ in results[first:last + 1]):
            continue  # refused (a problem already)
        answer = results[last][1]
        if len(answer) != 1:
            problems.append(f"{relation.name} {what}: the new row's key is not found ({answer!r})")
            continue
        key = dict(zip(relation.primary_key, map(plain_key, answer[0]), strict=True))
        done.append((relation, key, what))
    for relation, key, what in done:
        stored = await read_row(state, relation, key, problems, what)
        if stored is None:
            continue
        copies.setdefault(relation.name, []).append(stored)
        feeds.expect(relation, "created", stored, what)
    return copies


# -- writes made outside Pylight -----------------------------------------------------------------

@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_outside_writes_reach_every_feed_as_rest_reads_them(capturing):
    state = capturing
    problems = Problems()
    feeds = Feeds(state, problems)
    await feeds.open(state.keyed)
    try:
        before = {r.name: await list_rows(state, r, problems) for r in state.keyed}

        # 1. Every row updated with every column set to itself: each value of each row
        #    travels through the UPDATE trigger as the old and as the new row.
        what = "outside UPDATE setting every column to itself"
        made = [(relation, record) for relation in state.keyed for record in before[relation.name]]
        results = await outside(
            state, [update_to_itself(state.database, relation,
                                     {k: record[k] for k in relation.primary_key})
                    for relation, record in made],
            [(relation, f"{what} (pk {short(key_of(relation, record))})") for relation, record in made],
            problems)
        middle: dict[str, list[dict[str, Any]]] = {}
        for (relation, record), (error, _) in zip(made, results, strict=True):
            if error is None:
                after = await read_row(state, relation, record, problems, what)
                if after is not None:
                    middle.setdefault(relation.name, []).append(after)
                    feeds.expect(relation, "updated", after, what, old=record)
        await feeds.check("UPDATE ... SET col = col")

        # 2. One row updated to another row's values: a real change of every settable column.
        statements, changed = [], []
        for relation in state.keyed:
            records = middle.get(relation.name) or []
            if len(records) < 2:
                continue
            target, source = records[0], records[-1]
            statements.append(update_from(
                state.database, relation, {k: target[k] for k in relation.primary_key},
                {k: source[k] for k in relation.primary_key}))
            what = (f"outside UPDATE of row {short(key_of(relation, target))} to the values of "
                    f"row {short(key_of(relation, source))}")
            changed.append((relation, what, target))
        results = await outside(state, statements, [(r, w) for r, w, _ in changed], problems)
        for (relation, what, target), (error, _) in zip(changed, results, strict=True):
            after = None if error else await read_row(state, relation, target, problems, what)
            if after is not None:
                feeds.expect(relation, "updated", after, what, old=target)
        await feeds.check("UPDATE to another row's values")

        # 3. A copy of every row under a new key (generated where the database makes it).
        copies = await copy_rows(state, feeds, problems,
                                 {r.name: await list_rows(state, r, problems) for r in state.keyed})
        await feeds.check("INSERT copies")

        # 4. Every copy deleted: the record is the row as GET read it before.
        what = "outside DELETE of a copy"
        made = [(relation, record) for relation in state.keyed
                for record in copies.get(relation.name, [])]
        results = await outside(
            state, [f"DELETE FROM {table_sql(state.database, relation)} WHERE "
                    + key_where(state.database, relation, {k: record[k] for k in relation.primary_key})
                    for relation, record in made],
            [(relation, what) for relation, _ in made], problems)
        for (relation, record), (error, _) in zip(made, results, strict=True):
            if error is None:
                feeds.expect(relation, "deleted", record, what)
        await feeds.check("DELETE of the copies")
    finally:
        feeds.close()
    problems.extend(state.trouble())
    problems.report("changes made outside Pylight, on /ws/<table>")


# -- writes made through the REST API -------------------------------------------------------------

@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_rest_writes_reach_every_feed_as_rest_reads_them(capturing):
    state = capturing
    server = state.server
    problems = Problems()
    read_only = await read_only_columns(state)
    feeds = Feeds(state, problems)
    await feeds.open(state.keyed)
    try:
        rows = {r.name: await list_rows(state, r, problems) for r in state.keyed}

        # 1. A PUT of every record as read. Columns the API documents as not writable back
        #    (SQLite values of another type than declared) are left out. Without capture
        #    every such PUT succeeds (test_any_schema.py), so a refusal here is the capture
        #    triggers' doing; the record is then written one column at a time, so that what
        #    can be written still reaches the feed.
        for relation in state.keyed:
            stored = stored_rows(state.database, relation)
            columns = {c.name: c for c in relation.columns}
            for record in rows[relation.name]:
                path = item_url(relation, record)
                raw = stored.get(tuple(str(record[k]) for k in relation.primary_key), {})
                body = {name: value for name, value in
                        writable_part(record, read_only[relation.name]).items()
                        if not sqlite_off_type(state.database, columns[name], raw.get(name))}
                attempts = [body] + [{k: v} for k, v in body.items()
                                     if k not in relation.primary_key]
                for attempt in attempts:
                    response = await server.put(path, attempt)
                    if attempt is body and response.status != 200:
                        problems.append(f"{relation.name}: PUT {path} of the record as read -> "
                                        f"{said(response)}")
                    if response.status == 200:
                        what = "PUT of the record as read" if attempt is body else \
                            f"PUT of {short(attempt)[:60]}"
                        after = await read_row(state, relation, record, problems, what)
                        if after is not None:
                            feeds.expect(relation, "updated", after, what, old=record)
                        break
        await feeds.check("PUT")

        # 2. DELETE: of copies made outside (the originals are referenced by foreign keys).
        copies = await copy_rows(state, feeds, problems,
                                 {r.name: await list_rows(state, r, problems) for r in state.keyed})
        await feeds.check("INSERT copies")
        for relation in state.keyed:
            for record in copies.get(relation.name, []):
                last = await read_row(state, relation, record, problems, "before DELETE")
                if last is None:
                    continue
                path = item_url(relation, record)
                response = await server.delete(path)
                if response.status != 204:
                    problems.append(f"{relation.name}: DELETE {path} of an unreferenced copy -> "
                                    f"{said(response)}")
                    continue
                feeds.expect(relation, "deleted", last, "DELETE through REST")
        await feeds.check("DELETE")
    finally:
        feeds.close()
    problems.extend(state.trouble())
    problems.report("REST writes with capture = database, on /ws/<table>")
