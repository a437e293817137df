"""The SQLite backend plugin: `sqlite:///relative/path.db`, `sqlite:////absolute.db`."""

from __future__ import annotations

import os
import re
import sqlite3
import uuid
from dataclasses import replace
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, quote

import peewee
from playhouse.pool import PooledSqliteDatabase
from playhouse.reflection import Column, SqliteMetadata, UnknownField

from pylight import hookimpl
from pylight.backend import (
    Backend,
    ChangeWatcher,
    change_log_inserts,
    declared_precision,
    group_foreign_keys,
)
from pylight.errors import ApiError, StartupError, unprocessable
from pylight.types import ColumnType, DeclaredColumn, ForeignKey, JSONTextField, SortKey
from pylight.values import BadValue, coercer

# Python's sqlite3 cannot bind a Decimal; store its exact text, which a NUMERIC
# column turns back into a number.
sqlite3.register_adapter(Decimal, str)

_TYPES = {
    "timestamp": peewee.DateTimeField,
    "timestamptz": peewee.DateTimeField,
    "double": peewee.DoubleField,
    "double precision": peewee.DoubleField,
    "uuid": peewee.TextField,
    "json": peewee.TextField,
    "clob": peewee.TextField,
    "nvarchar": peewee.CharField,
    "tinyint": peewee.IntegerField,
    "mediumint": peewee.IntegerField,
}


_TEMPORAL = {"date": "date", "datetime": "datetime", "timestamp": "datetime",
             "timestamptz": "datetime", "time": "time"}
# SQLite's own date and time functions read every ISO 8601 form (T or space,
# date only, an offset): filters compare moments, not spellings.
# Primary result codes (the extended code's low byte) that no retry will change:
# SQLITE_READONLY (a read-only file or mode, PRAGMA query_only), SQLITE_AUTH.
_REFUSED = {8, 23}
# SQLITE_CONSTRAINT_TRIGGER: a trigger's RAISE(ABORT | FAIL | ROLLBACK, message).
_RAISED = 1811
_NORMALIZE = {"date": "%Y-%m-%d", "datetime": "%Y-%m-%d %H:%M:%f", "time": "%H:%M:%f"}


def _declared_type(declared: str) -> ColumnType:
    """How a column of this declared type is served (SQLite keeps any value anywhere)."""
    base = declared.lower().split("(", 1)[0].strip()
    if not base or base == "any":
        return ColumnType(kind="any")
    if base in ("boolean", "bool"):
        # 0 and 1 are false and true; anything else stored there (the text 'yes')
        # is served as it is, not squashed into true.
        return ColumnType(field=peewee.IntegerField, kind="boolean")
    if base in ("json", "jsonb"):
        return ColumnType(field=JSONTextField, kind="json", compare=_json_text)
    kind = _TEMPORAL.get(base)
    if kind is None:
        return ColumnType()
    # Dates and times are text in SQLite, often written by other programs in other
    # spellings ('2006-02-14' in a TIMESTAMP column): served exactly as stored, so
    # a value reads back, pages and filters as the database holds it.
    pattern = _NORMALIZE[kind]
    return ColumnType(field=peewee.TextField, kind=kind, coerce=_temporal_text(kind),
                      encode=_as_stored,
                      compare=lambda node: peewee.fn.COALESCE(peewee.fn.strftime(pattern, node),
                                                              node),
                      # ordered as stored, as the database orders the column
                      sort_key=SortKey(_as_stored, _as_stored),
                      compare_key=_moment_key(kind))


def _as_stored(value: Any) -> Any:
    return value


def _temporal_text(kind: str) -> Any:
    check = coercer(kind, zoned=True)  # an ISO 8601 date, time or date-time

    def coerce(value: Any) -> Any:
        check(value)
        return value  # stored as given, offset and all: it is what a later GET shows
    return coerce


def _moment_key(kind: str) -> Any:
    """The text strftime() makes of a value in SQL (see _NORMALIZE), made in Python, so
    feed filters compare moments as the database does; other values as they are."""
    parse = coercer(kind)  # an offset becomes naive UTC, as strftime() converts it

    def key(value: Any) -> Any:
        try:
            moment = parse(value)
        except BadValue:
            return value
        if kind == "date":
            return moment.isoformat()
        seconds = f"{moment.second + moment.microsecond / 1_000_000:06.3f}"
        day = f"{moment:%Y-%m-%d} " if kind == "datetime" else ""
        return f"{day}{moment:%H:%M}:{seconds}"
    return key


def _storage_order(value: Any) -> Any:
    """How SQLite orders values of mixed types: numbers, then text, then blobs."""
    if isinstance(value, (bool, int, float, Decimal)):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return (3, bytes(value))
    return (0, 0)


def _json_text(node: Any) -> Any:
    # Compared minified; text that is not JSON (json() would fail on it) as it is.
    return peewee.Case(None, [(peewee.fn.json_valid(node), peewee.fn.json(node))], node)


def _is_strict(db: peewee.Database, table: str) -> bool:
    if sqlite3.sqlite_version_info < (3, 37, 0):
        return False  # STRICT tables came with 3.37
    row = db.execute_sql("SELECT strict FROM pragma_table_list WHERE name = ?",
                         (table,)).fetchone()
    return bool(row and row[0])


#: SQLite settings a database URL may give as query parameters, and their values.
_URL_SETTINGS = {"synchronous": ("off", "normal", "full", "extra"), "mode": ("ro", "rw")}


class SqliteBackend(Backend):
    name = "SQLite"
    integers_are_64_bit = True
    schemes = ("sqlite",)
    supports_returning = sqlite3.sqlite_version_info >= (3, 35, 0)
    supports_for_update = False  # writers are serialised by BEGIN IMMEDIATE instead
    # sqlite_sequence (AUTOINCREMENT), sqlite_stat1 (ANALYZE) ...: SQLite's own.
    internal_table_prefixes = ("sqlite_",)
    single_writer = True
    ilike_ascii_only = True  # SQLite's LIKE folds the case of ASCII letters only

    def open(self, url: str, pool_size: int, connect_timeout: float) -> peewee.Database:
        path = self.path(url)
        settings = self.url_settings(url)
        pragmas: dict[str, Any] = {"foreign_keys": 1, "busy_timeout": 5000}
        if settings.get("synchronous"):
            pragmas["synchronous"] = settings["synchronous"]
        kwargs = {}
        if self.read_only(url):
            # Opened read-only, the file is left exactly as it is: no switch to WAL
            # (which would last), no -wal file, and no write can reach it.
            if not os.path.isfile(path):
                raise StartupError(f"{url}: mode=ro serves an existing file, and {path} "
                                   "is not one")
            path = f"file:{quote(os.path.abspath(path))}?mode=ro"
            kwargs["uri"] = True
        elif path == ":memory:":
            # Every pooled connection must see the same in-memory database.
            path = f"file:pylight-{uuid.uuid4().hex}?mode=memory&cache=shared"
            kwargs["uri"] = True
            pragmas["journal_mode"] = "wal"
        else:
            pragmas["journal_mode"] = "wal"
            parent = os.path.dirname(os.path.abspath(path))
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as exc:
                raise StartupError(f"cannot create the directory {parent} for {url}: {exc}") from None
        return PooledSqliteDatabase(
            path,
            max_connections=pool_size,
            timeout=max(connect_timeout, 1.0),
            returning_clause=self.supports_returning,
            check_same_thread=False,
            pragmas=pragmas,
            **kwargs,
        )

    def read_only(self, url: str) -> bool:
        """``?mode=ro``: the file is served as it is, every table read-only."""
        return self.url_settings(url).get("mode") == "ro"

    @staticmethod
    def url_settings(url: str) -> dict[str, str]:
        """The SQLite settings a URL may carry: ``?synchronous=normal`` (off, normal,
        full or extra; SQLite's default is full: every commit waits for the disk) and
        ``?mode=ro`` (read-only; rw, the default, reads and writes)."""
        query = url.split("?", 1)[1] if "?" in url else ""
        settings = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            allowed = _URL_SETTINGS.get(name)
            if allowed is None:
                raise StartupError(f"database url: unknown SQLite setting {name!r} "
                                   f"(known: {', '.join(sorted(_URL_SETTINGS))})")
            if value.lower() not in allowed:
                raise StartupError(f"database url: {name}={value!r} is not one of "
                                   f"{', '.join(allowed)}")
            settings[name] = value.lower()
        return settings

    @staticmethod
    def path(url: str) -> str:
        rest = url.split("://", 1)[1] if "://" in url else ""
        rest = rest.split("?", 1)[0]
        if not rest.startswith("/") or len(rest) < 2:
            raise StartupError(
                f"database url {url!r} names no file (expected sqlite:///relative/path.db "
                "or sqlite:////absolute/path.db)"
            )
        return rest[1:]

    def describe(self, db: peewee.Database) -> str:
        return f"SQLite database {db.database}"

    def begin_write(self, db: peewee.Database) -> None:
        # Take the write lock up front: a deferred transaction that reads and
        # then writes can fail with SQLITE_BUSY instead of waiting its turn.
        db.execute_sql("BEGIN IMMEDIATE")

    def numeric_scales(self, db: peewee.Database, table: str) -> dict[str, tuple[int | None, int | None]]:
        scales = {}
        for column in db.get_columns(table):
            declared = (column.data_type or "").lower()
            if declared.startswith(("decimal", "numeric")):
                scales[column.name] = declared_precision(declared)
        return scales

    def columns(self, db: peewee.Database, table: str, reflected: dict[str, Any]) -> dict[str, Any]:
        # PRAGMA table_info (what peewee reads) leaves generated columns out.
        rows = db.execute_sql(f"PRAGMA table_xinfo({_ident(table)})").fetchall()
        if all(row[1] in reflected for row in rows):
            return reflected
        columns = {}
        for _, name, declared, notnull, default, _, hidden in rows:
            if name in reflected:
                columns[name] = reflected[name]
            elif hidden in (2, 3):  # VIRTUAL, STORED
                field_class = self.field_for_unknown(declared) or peewee.BareField
                columns[name] = Column(name, field_class, declared, not notnull,
                                       column_name=name, default=default)
        return columns

    def declared_columns(self, db: peewee.Database, table: str, primary_key: list[str],
                         raw_types: dict[str, str]) -> dict[str, DeclaredColumn]:
        # SQLite stores text of any length, whatever the declaration says; a rowid
        # table's INTEGER PRIMARY KEY is the rowid, which SQLite fills in.
        row = db.execute_sql("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()
        sql = (row[0] if row else "") or ""
        if len(primary_key) != 1 or re.search(r"\)\s*WITHOUT\s+ROWID", sql, re.I):
            return {}
        key = primary_key[0]
        if raw_types.get(key, "").strip().upper() != "INTEGER":
            return {}
        return {key: DeclaredColumn(generated=True,
                                    counter=bool(re.search(r"\bAUTOINCREMENT\b", sql, re.I)))}

    def column_types(self, db: peewee.Database, table: str) -> dict[str, ColumnType]:
        # A table that is not STRICT keeps any value in any column: what it holds is
        # served, and written back, as it is.
        loose = not _is_strict(db, table)
        types = {}
        rows = db.execute_sql(f"PRAGMA table_xinfo({_ident(table)})").fetchall()
        # INTEGER PRIMARY KEY is the rowid itself, which holds integers only.
        keys = [row[1] for row in rows if row[5]]
        for _, name, declared, _, _, _, hidden in rows:
            ctype = _declared_type(declared or "")
            is_rowid = keys == [name] and (declared or "").upper() == "INTEGER"
            if loose and not is_rowid and ctype.kind not in ("any", "json"):
                # Bound as given: a cursor may carry a value of another type ('N/A' in
                # an INT column), which the declared type's conversion would refuse.
                ctype = replace(ctype, loose=True, to_db=ctype.to_db or _as_stored)
            if (ctype.loose or ctype.kind == "any") and ctype.compare_key is None:
                ctype = replace(ctype, compare_key=_storage_order)
            if hidden in (2, 3):
                ctype = replace(ctype, read_only="a generated column")
            if ctype != ColumnType():
                types[name] = ctype
        return types

    def foreign_keys(self, db: peewee.Database, table: str) -> list[ForeignKey]:
        rows = db.execute_sql(f"PRAGMA foreign_key_list({_ident(table)})").fetchall()
        resolved = []
        for fk_id, position, parent, column, referenced, *_ in sorted(rows, key=lambda r: r[:2]):
            if referenced is None:  # "REFERENCES parent": the parent's primary key
                keys = db.get_primary_keys(parent)
                referenced = keys[position] if position < len(keys) else column
            resolved.append((fk_id, column, parent, referenced))
        return group_foreign_keys(resolved)

    def unique_keys(self, db: peewee.Database, table: str) -> list[tuple[str, ...]]:
        # An INTEGER PRIMARY KEY has no index of its own: the core adds the key.
        return [tuple(index.columns) for index in db.get_indexes(table)
                if index.unique and index.columns and None not in index.columns
                and " where " not in (index.sql or "").lower()]

    def row_identity(self, columns: list[str]) -> tuple[str, ...]:
        # A column may take the name of the rowid (any of its three spellings).
        taken = {name.lower() for name in columns}
        return next(((name,) for name in ("rowid", "_rowid_", "oid") if name not in taken), ())

    def field_for_unknown(self, raw_type: str) -> type[peewee.Field] | None:
        base = (raw_type or "").lower().split("(", 1)[0].strip()
        if base in _TYPES:
            return _TYPES[base]
        field_class = SqliteMetadata(None)._map_col(raw_type or "")
        return None if field_class is UnknownField else field_class

    def like(self, field: peewee.Field, pattern: str, case_insensitive: bool) -> peewee.Expression:
        if case_insensitive:
            # peewee spells SQLite's LIKE as "ILIKE" (its "LIKE" becomes GLOB).
            return peewee.Expression(
                field, "ILIKE", peewee.NodeList((peewee.Value(pattern), peewee.SQL("ESCAPE '\\'")))
            )
        # LIKE is case-insensitive on SQLite; GLOB is the case-sensitive match.
        glob = _like_to_glob(pattern)
        return peewee.Expression(field, "GLOB", glob)

    def is_disconnect(self, exc: BaseException) -> bool:
        err = self.driver_error(exc)
        text = str(err).lower()
        return isinstance(err, sqlite3.OperationalError) and (
            "unable to open" in text or "disk i/o" in text or "database is locked" in text
        )

    def classify_error(self, exc: BaseException) -> ApiError | None:
        err = self.driver_error(exc)
        text = str(err)
        if isinstance(err, sqlite3.IntegrityError):
            if getattr(err, "sqlite_errorcode", None) == _RAISED:
                return self.raised(text)
            if text.startswith("UNIQUE") or "PRIMARY KEY" in text:
                return self.unique_conflict(text)
            if text.startswith("FOREIGN KEY"):
                return self.foreign_key_conflict(text)
            if text.startswith("NOT NULL"):
                return self.not_null(text.rsplit(".", 1)[-1] if ":" in text else None)
            return self.bad_value(text)
        if isinstance(err, (OverflowError, sqlite3.DataError)):
            return self.bad_value(text)
        if ((getattr(err, "sqlite_errorcode", None) or 0) & 0xFF) in _REFUSED:
            return self.refused(text)
        if self.is_disconnect(exc):
            return self.down()
        if isinstance(err, sqlite3.OperationalError) and "database or disk is full" in text:
            # Also what an AUTOINCREMENT table past the largest rowid answers.
            return unprocessable("the database cannot store the row: its auto-increment "
                                 "key is exhausted, or the disk is full")
        return None


    # -- change capture ------------------------------------------------------
    def capture_setup_sql(self) -> list[str]:
        # AUTOINCREMENT: ids of pruned rows are never reused.
        return [
            "CREATE TABLE IF NOT EXISTS _pylight_changes ("
            "id INTEGER PRIMARY KEY AUTOINCREMENT, table_name TEXT NOT NULL, "
            "op TEXT NOT NULL, row_key TEXT, old_row TEXT, new_row TEXT, "
            "at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')))",
            "CREATE INDEX IF NOT EXISTS _pylight_changes_at ON _pylight_changes (at)",
        ]

    def capture_teardown_sql(self) -> list[str]:
        return ["DROP TABLE IF EXISTS _pylight_changes"]

    def capture_triggers(self, table: str, columns: list[tuple[str, str]],
                         key: list[str]) -> dict[str, tuple[str, list[str]]]:
        types = dict(columns)

        def value(row: str, name: str) -> str:
            # json_object() refuses BLOBs (and any column may hold one on SQLite) and
            # keeps 15 digits of a REAL: a BLOB column's value goes as hex, a blob
            # elsewhere and every REAL tagged (see capture.decode), so the reader
            # gets the value a read gives.
            ref = f"{row}.{_ident(name)}"
            blob = f"hex({ref})" if types.get(name) == "BLOB" else \
                f"json_object('$blob', hex({ref}))"
            return (f"CASE typeof({ref}) WHEN 'blob' THEN {blob} "
                    f"WHEN 'real' THEN json_object('$real', printf('%!.20e', {ref})) "
                    f"ELSE {ref} END")

        triggers = {}
        inserts = change_log_inserts(table, columns, key, value, _literal, "json_object",
                                     "json_array")
        for (short, event), body in inserts.items():
            name = f"_pylight_{short}_{table}"
            sql = f"CREATE TRIGGER {_ident(name)} AFTER {event} ON {_ident(table)} BEGIN {body}; END"
            triggers[name] = (sql, [sql])
        return triggers

    def capture_installed(self, db: peewee.Database) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        cursor = db.execute_sql("SELECT tbl_name, name, sql FROM sqlite_master "
                                "WHERE type = 'trigger' AND name LIKE '\\_pylight\\_%' ESCAPE '\\'")
        for table, name, sql in cursor.fetchall():
            found.setdefault(table, {})[name] = sql
        return found

    def capture_drop_sql(self, table: str, trigger: str) -> str:
        return f"DROP TRIGGER IF EXISTS {_ident(trigger)}"

    def capture_prune_sql(self, param: str) -> str:
        return ("DELETE FROM _pylight_changes WHERE at < "
                f"strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || {param} || ' seconds')")

    def capture_watcher(self, db: peewee.Database, url: str, poll_interval: float) -> ChangeWatcher:
        return DataVersionWatcher(db, poll_interval)


class DataVersionWatcher(ChangeWatcher):
    """``PRAGMA data_version`` on a connection of its own: it changes when any
    other connection (Pylight's pool or an outside writer) commits, so the log
    is read only then."""

    def __init__(self, db: peewee.Database, interval: float) -> None:
        super().__init__(interval)
        self.path = db.database
        self.uri = bool(db.connect_params.get("uri"))
        self.conn: sqlite3.Connection | None = None
        self.version: int | None = None

    def changed(self) -> bool:
        if self.uri and "mode=memory" in self.path:
            return True  # a shared in-memory database: no outside writers, but read anyway
        try:
            if self.conn is None:  # (a file opened read-only is a file: URI)
                self.conn = sqlite3.connect(self.path, isolation_level=None,
                                            check_same_thread=False, uri=self.uri)
            version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            self.conn = None
            return True
        changed = version != self.version
        self.version = version
        return changed

    async def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _like_to_glob(pattern: str) -> str:
    """Turn a LIKE pattern (``%``, ``_``, backslash escapes) into a GLOB pattern."""
    out = []
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            literal = next(chars, "\\")
            out.append({"*": "[*]", "?": "[?]", "[": "[[]"}.get(literal, literal))
        elif ch == "%":
            out.append("*")
        elif ch == "_":
            out.append("?")
        elif ch in "*?[":
            out.append(f"[{ch}]")
        else:
            out.append(ch)
    return "".join(out)


@hookimpl
def pylight_database_backends() -> list[Backend]:
    return [SqliteBackend()]
