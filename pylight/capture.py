"""Change capture (``[realtime] capture = database``): every write reaches the hub, whoever made it.

Triggers on every exposed table (installed by ``python -m pylight install-triggers``
or ``[realtime] install_triggers = true``) append one row per changed row to
the change log ``_pylight_changes``: the table, the operation (``I``/``U``/``D``),
the key as a JSON array and, for updates and deletes, the old row as a JSON
object (for tables without a primary key, the new row too). The
:class:`Capture` reader reads the log by id and publishes :class:`Change`
objects through the hub's ``publish`` (this process, or a bus to all):

- inserts and updates: the row is read back by key (``store.get_row``), so the
  record is exactly what the REST API returns; an update's ``old`` is decoded
  from the logged old row;
- deletes: the record is the logged old row, decoded per column kind into the
  API's encoding.

Ids are assigned when a row is logged, not when its transaction commits, so a
smaller id can become visible after a larger one. The reader remembers the
largest id it read and the ranges of smaller ids it has not seen ("holes"),
re-reads those ranges and forgets one only after ``HOLE_TIMEOUT`` (a rolled
back transaction leaves a hole for good). Rows older than ``RETENTION`` are
pruned. Every query runs in the database executor, never on the IOLoop.

When to look is the backend's business (:meth:`Backend.capture_watcher`):
PostgreSQL LISTENs (the triggers ``pg_notify``), SQLite watches
``PRAGMA data_version``, MySQL scans ``id > ?`` every ``poll_interval``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from typing import Any

import peewee

from pylight import store
from pylight.backend import Backend, ChangeWatcher
from pylight.changes import Change
from pylight.config import Config
from pylight.db import Database
from pylight.errors import StartupError
from pylight.schema import ColumnInfo, TableInfo
from pylight.writes import Writes

log = logging.getLogger("pylight")

LOG = "_pylight_changes"
COLUMNS = "id, table_name, op, row_key, old_row, new_row"
BATCH = 500  # log rows per query
HOLE_TIMEOUT = 60.0  # seconds an unseen id below the newest one is waited for
MAX_HOLES = 1000  # hole ranges remembered (the oldest are given up first)
HOLE_PROBE = 100  # hole ranges re-read per query
RETENTION = 600.0  # seconds a log row is kept
PRUNE_EVERY = 60.0  # seconds between prunes


# -- installing and removing the triggers (blocking) ----------------------------------

def capturable(tables: dict[str, TableInfo]) -> list[TableInfo]:
    """The tables that get triggers: every exposed table, not views."""
    return [table for name, table in sorted(tables.items()) if not table.is_view]


def table_columns(table: TableInfo) -> list[tuple[str, str]]:
    """``(name, field type)`` of every column of ``table`` (peewee's ``field_type``:
    ``INT``, ``BLOB``, or a backend's own such as ``BIT``), hidden ones included (the
    triggers do not depend on ``hidden``; the reader drops hidden columns)."""
    return [(fld.column_name, str(fld.field_type).upper())
            for fld in table.model._meta.sorted_fields]


def _execute(db: peewee.Database, sql: str) -> None:
    # No parameters: the drivers then leave '%' in the text alone. The driver's errors
    # become peewee's, as they would through execute_sql.
    cursor = db.cursor()
    try:
        with peewee.__exception_wrapper__:
            cursor.execute(sql)
    finally:
        cursor.close()


def _wanted(backend: Backend, table: TableInfo) -> dict[str, tuple[str, list[str]]]:
    return backend.capture_triggers(table.name, table_columns(table), table.primary_key)


def install(db: peewee.Database, backend: Backend, tables: dict[str, TableInfo]) -> list[str]:
    """Create the change log and the triggers of every capturable table; returns what was done.

    Idempotent: a table whose triggers are already as they would be made is
    left alone; one whose columns changed gets its triggers replaced.
    """
    lines = []
    existed = db.table_exists(LOG)
    with db.atomic():
        for sql in backend.capture_setup_sql():
            _execute(db, sql)
    if not existed:
        lines.append(f"created the change log table {LOG}")
    installed = backend.capture_installed(db)
    for table in capturable(tables):
        wanted = _wanted(backend, table)
        have = installed.get(table.name, {})
        if {name: definition for name, (definition, _) in wanted.items()} == have:
            lines.append(f"{table.name}: capture triggers already installed")
            continue
        with db.atomic():
            for trigger in have:
                _execute(db, backend.capture_drop_sql(table.name, trigger))
            for _, statements in wanted.values():
                for sql in statements:
                    _execute(db, sql)
        lines.append(f"{table.name}: capture triggers {'updated' if have else 'installed'}")
    if not capturable(tables):
        lines.append("no tables to capture")
    return lines


def remove(db: peewee.Database, backend: Backend) -> list[str]:
    """Drop every capture trigger and the change log; returns what was done. Idempotent."""
    lines = []
    for table, triggers in sorted(backend.capture_installed(db).items()):
        with db.atomic():
            for trigger in triggers:
                _execute(db, backend.capture_drop_sql(table, trigger))
        lines.append(f"{table}: capture triggers removed")
    existed = db.table_exists(LOG)
    for sql in backend.capture_teardown_sql():
        _execute(db, sql)
    if existed:
        lines.append(f"dropped the change log table {LOG}")
    if not lines:
        lines.append("no capture triggers installed; nothing to remove")
    return lines


def check(db: peewee.Database, backend: Backend,
          tables: dict[str, TableInfo]) -> tuple[list[str], list[str]]:
    """``(missing, outdated)``: tables without their triggers, and with triggers
    made for other columns. Without the change log every table is missing."""
    names = [table.name for table in capturable(tables)]
    if not db.table_exists(LOG):
        return names or [LOG], []
    installed = backend.capture_installed(db)
    missing, outdated = [], []
    for table in capturable(tables):
        have = installed.get(table.name)
        if not have:
            missing.append(table.name)
        elif {n: d for n, (d, _) in _wanted(backend, table).items()} != have:
            outdated.append(table.name)
    return missing, outdated


# -- decoding logged rows ------------------------------------------------------------

def _loads(text: Any) -> Any:
    if text is None:
        return None
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode()
    if not isinstance(text, str):
        return text  # a driver that parsed it already
    return json.loads(text, parse_float=Decimal)


def decode(column: ColumnInfo, value: Any) -> Any:
    """A logged JSON value as the API sends it (leniently: what cannot be read is kept).

    The trigger logs a column as its JSON form, which is the value the driver would
    give, or its text: it goes through the column's own conversion and encoding,
    as a row read from the table does; only binary (logged as hex) and nested
    JSON documents need undoing first.
    """
    if value is None:
        return None
    kind = column.kind
    if isinstance(value, dict) and kind != "json" and len(value) == 1:
        value = _untag(value)
    try:
        if kind == "binary" and isinstance(value, str):
            text = str(value)
            value = bytes.fromhex(text[2:] if text.startswith("\\x") else text)
        elif kind == "json" and not isinstance(value, str):
            value = _plain(value)  # a nested document: numbers as the API sends them
            return value if column.encode is None else column.encode(value)
        value = column.field.python_value(value)
        if kind == "float" and value is not None:
            value = float(value)
    except (ValueError, TypeError, ArithmeticError, InvalidOperation):
        return value if not isinstance(value, Decimal) else format(value, "f")
    if value is None:
        return None
    if isinstance(value, Decimal) and column.encode is None:
        return format(value, "f")
    return value if column.encode is None else column.encode(value)


def _untag(value: dict[str, Any]) -> Any:
    """A value JSON cannot carry, as a backend's trigger logs it: ``{"$blob": hex}``,
    ``{"$real": "3.00000000000000044408e-01"}`` (enough digits to be exact)."""
    if "$blob" in value:
        return bytes.fromhex(str(value["$blob"]))
    if "$real" in value:
        return float(value["$real"])
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def decode_row(table: TableInfo, text: Any) -> dict[str, Any] | None:
    data = _loads(text)
    if not isinstance(data, dict):
        return None
    return {name: decode(column, data.get(name)) for name, column in table.columns.items()}


def _fill(holes: list[list[Any]], found: set[int]) -> list[list[Any]]:
    """``holes`` without the ids in ``found``."""
    if not found:
        return holes
    out = []
    for start, end, since in holes:
        for seen in sorted(i for i in found if start <= i <= end):
            if seen > start:
                out.append([start, seen - 1, since])
            start = seen + 1
        if start <= end:
            out.append([start, end, since])
    return out


# -- the reader ------------------------------------------------------------------

class Capture:
    """Reads the change log and publishes what it finds."""

    def __init__(self, database: Database, writes: Writes, tables: dict[str, TableInfo],
                 publish: Callable[[Change], Any], wanted: asyncio.Event, config: Config,
                 claim: Callable[[Change], Change] = lambda change: change) -> None:
        """``publish``: where changes read from the log go (the hub's ``publish``);
        ``wanted``: set when the log should be read now (an API write committed);
        ``claim``: a change from the log as the API's own, when the API made it."""
        self.database = database
        self.backend = database.backend
        self.writes = writes
        self.tables = tables
        self.publish = publish
        self.claim = claim
        self.event = wanted
        self.config = config
        self.high = 0  # the largest id read; smaller ones are read or in `holes`
        self.holes: list[list[Any]] = []  # [first id, last id, monotonic time first missed]
        self.watcher: ChangeWatcher | None = None
        self.task: asyncio.Future[None] | None = None
        self.stopping = False
        self.last_prune = time.monotonic()
        self.last_hole_read = 0.0

    # -- start-up (blocking, from Pylight.open) --------------------------------------
    def prepare(self) -> None:
        """Install the triggers if configured, then make sure they are there."""
        db, backend = self.database.db, self.backend
        source = self.config.source
        with db.connection_context():
            if self.config.realtime.install_triggers:
                try:
                    lines = install(db, backend, self.tables)
                except peewee.DatabaseError as exc:
                    # Mostly a database user that does not own the tables.
                    raise StartupError(
                        f"{source}: [realtime] install_triggers: the database refused to "
                        f"install the change-capture triggers ({backend.error_text(exc)}); "
                        "install them once "
                        "as a user that owns the tables (`python -m pylight OWNER-URL "
                        "install-triggers`) and set install_triggers = false"
                    ) from None
                for line in lines:
                    log.info("change capture: %s", line)
            missing, outdated = check(db, backend, self.tables)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise StartupError(
                f"{source}: [realtime] capture = database, but the change-capture triggers are "
                f"not installed ({shown}); run `python -m pylight --conf {source} install-triggers` "
                "or set [realtime] install_triggers = true"
            )
        if outdated:
            log.warning("change capture: the triggers of %s were made for other columns; run "
                        "install-triggers again to update them", ", ".join(outdated))

    # -- running -------------------------------------------------------------------
    async def start(self) -> None:
        self.high = await self.database.read(self._max_id)
        self.watcher = self.backend.capture_watcher(self.database.db, self.config.database.url,
                                                    self.config.realtime.poll_interval)
        await self.watcher.start(self.wake)
        self.task = asyncio.ensure_future(self._run())

    def wake(self, *_: Any) -> None:
        """Read the log now (the watcher saw something)."""
        self.event.set()

    async def stop(self) -> None:
        self.stopping = True
        self.wake()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 10)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
                log.debug("the change-capture reader did not stop cleanly", exc_info=True)
        if self.watcher is not None:
            await self.watcher.stop()

    async def _run(self) -> None:
        assert self.watcher is not None
        loop = asyncio.get_running_loop()
        failures = 0
        while not self.stopping:
            try:
                await asyncio.wait_for(self.event.wait(), self.watcher.interval)
            except asyncio.TimeoutError:
                pass
            if self.stopping:
                break
            self.event.clear()
            try:
                changed = await loop.run_in_executor(None, self.watcher.changed)
                now = time.monotonic()
                if changed or (self.holes and now - self.last_hole_read >= self.watcher.interval):
                    await self.read()
                if now - self.last_prune >= PRUNE_EVERY:
                    await self.prune()
                failures = 0
            except Exception as exc:
                failures += 1
                log.warning("change capture: reading the change log failed (%s); retrying",
                            self.backend.error_text(exc, 200))
                await asyncio.sleep(min(0.1 * 2 ** failures, 5.0))

    async def read(self) -> int:
        """Read and publish everything new; returns how many changes were published."""
        published = 0
        while True:
            changes, more = await self.database.read(self._fetch)
            for change in changes:
                try:
                    self.publish(self.claim(change))
                except Exception:
                    # The log has moved past it: one bad change must not stop the rest.
                    log.exception("change capture: publishing a change of %s failed", change.table)
            published += len(changes)
            if not more or self.stopping:
                return published

    async def prune(self) -> None:
        self.last_prune = time.monotonic()

        db = self.database.db
        # With the API's writes: on a one-writer database it queues with them.
        await self.writes.maintain(LOG, db.execute_sql, self.backend.capture_prune_sql(db.param),
                                   (RETENTION,))

    # -- blocking, in the database executor -------------------------------------------
    def _max_id(self) -> int:
        row = self.database.db.execute_sql(f"SELECT MAX(id) FROM {LOG}").fetchone()
        return int(row[0] or 0) if row else 0

    def _fetch(self) -> tuple[list[Change], bool]:
        """The changes logged since the last call, and whether more are waiting.

        The reader's state is updated only once everything was read and
        decoded, so a failure (and db.read's retry) reads the same rows again.
        """
        db = self.database.db
        param = db.param
        now = time.monotonic()
        high = self.high
        holes = [hole for hole in self.holes if now - hole[2] < HOLE_TIMEOUT]
        if len(holes) < len(self.holes):
            log.debug("change capture: gave up waiting for %d id range(s)",
                      len(self.holes) - len(holes))
        rows = []
        if holes:
            self.last_hole_read = now
            probe = holes[:HOLE_PROBE]
            where = " OR ".join([f"(id BETWEEN {param} AND {param})"] * len(probe))
            found = db.execute_sql(
                f"SELECT {COLUMNS} FROM {LOG} WHERE {where} ORDER BY id LIMIT {BATCH}",
                [bound for hole in probe for bound in hole[:2]]).fetchall()
            holes = _fill(holes, {row[0] for row in found})
            rows.extend(found)
        fresh = db.execute_sql(
            f"SELECT {COLUMNS} FROM {LOG} WHERE id > {param} ORDER BY id LIMIT {BATCH}",
            (high,)).fetchall()
        for row in fresh:
            if row[0] > high + 1:
                holes.append([high + 1, row[0] - 1, now])
            high = row[0]
        rows.extend(fresh)
        rows.sort(key=lambda row: row[0])
        changes = []
        for row in rows:
            change = self._change(row)
            if change is not None:
                changes.append(change)
        self.high = high
        self.holes = holes[-MAX_HOLES:]
        return changes, len(fresh) == BATCH

    def _change(self, row: tuple[Any, ...]) -> Change | None:
        change = self._decode(row)
        # Every Pylight process reads the same log: the log id lets a bus between
        # them relay each database change once.
        return None if change is None else replace(change, origin=f"capture:{row[0]}",
                                                   source="database")

    def _decode(self, row: tuple[Any, ...]) -> Change | None:
        _, name, op, row_key, old_row, new_row = row
        table = self.tables.get(name)
        if table is None or table.is_view:
            return None  # a table Pylight does not expose
        old = decode_row(table, old_row)
        if op == "D":
            return None if old is None else Change(name, "deleted", table.key_of(old), old)
        # The row as this change left it, from the trigger's image: re-reading it
        # by key would miss a row deleted again before the log was read (and
        # show every quick update with the latest state).
        record = decode_row(table, new_row)
        if record is None and table.has_key:
            # Triggers installed before row images were logged for keyed tables.
            key = _loads(row_key)
            record = store.get_row(table, key) if isinstance(key, list) else None
        if record is None:
            return None
        if op == "I":
            return Change(name, "created", table.key_of(record), record)
        return Change(name, "updated", table.key_of(record), record, old)
