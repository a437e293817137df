"""The PostgreSQL backend plugin: `postgresql://user:password@host:5432/dbname`."""

from __future__ import annotations

import asyncio
import json
import logging
import select
import threading
from collections.abc import Callable
from typing import Any

import peewee
import psycopg2
from playhouse.pool import PooledPostgresqlDatabase
from tornado.ioloop import IOLoop

from pylight import hookimpl
from pylight.backend import Backend, ChangeWatcher, declared_from_rows, group_foreign_keys, redact_url
from pylight.errors import ApiError, unavailable
from pylight.types import ColumnType, DeclaredColumn, ForeignKey

from . import pg_types

log = logging.getLogger("pylight")

CHANNEL = "pylight_changes"
#: The listener's application_name (find it in pg_stat_activity).
LISTENER_NAME = "pylight-listen"

# One function serves every table; the key columns come as trigger arguments.
# The notification is a wake-up only (the rows are read from the log), so its
# payload never nears the 8,000-byte limit; PostgreSQL sends one per
# transaction however many rows it changed.
_CAPTURE_FUNCTION = """
CREATE OR REPLACE FUNCTION _pylight_capture() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    new_image jsonb;
    old_image jsonb;
    source jsonb;
    key jsonb := '[]'::jsonb;
    i integer;
    writer_style text := current_setting('IntervalStyle');
BEGIN
    -- Intervals as ISO 8601 durations, whatever style the writing session uses;
    -- its own setting is back before the trigger returns.
    PERFORM set_config('IntervalStyle', 'iso_8601', true);
    IF TG_OP <> 'DELETE' THEN new_image := to_jsonb(NEW); END IF;
    IF TG_OP <> 'INSERT' THEN old_image := to_jsonb(OLD); END IF;
    PERFORM set_config('IntervalStyle', writer_style, true);
    IF TG_NARGS = 0 THEN
        INSERT INTO _pylight_changes (table_name, op, row_key, old_row, new_row)
        VALUES (TG_TABLE_NAME, left(TG_OP, 1), NULL, old_image::text, new_image::text);
    ELSE
        source := COALESCE(new_image, old_image);
        FOR i IN 0 .. TG_NARGS - 1 LOOP
            key := key || jsonb_build_array(source -> TG_ARGV[i]);
        END LOOP;
        INSERT INTO _pylight_changes (table_name, op, row_key, old_row, new_row)
        VALUES (TG_TABLE_NAME, left(TG_OP, 1), key::text, old_image::text, new_image::text);
    END IF;
    PERFORM pg_notify('""" + CHANNEL + """', '');
    RETURN NULL;
END
$$
"""


# 428C9: a value for a GENERATED ALWAYS column; 42804: a value of the wrong type;
# 54000: a value too large for an index row; 42601: text a type's input function
# cannot parse (a tsquery "a b": the statements themselves are generated).
_BAD_VALUE = {"428C9", "42804", "54000", "42601"}
# Serialization failures, deadlocks, cancelled statements, resources, lock timeouts.
_RETRY = ("40001", "40P01", "57014", "53", "55P03")
# Not the request's fault and not worth a retry: insufficient privilege, and a write
# to a read-only database (a standby, default_transaction_read_only).
_REFUSED = {"42501", "25006"}
# The classes of SQLSTATE PostgreSQL defines (Appendix A); a code of any other class is
# an application's own, given by RAISE ... USING ERRCODE.
_STANDARD_CLASSES = {
    "00", "01", "02", "03", "08", "09", "0A", "0B", "0F", "0L", "0P", "0Z", "20", "21", "22",
    "23", "24", "25", "26", "27", "28", "2B", "2D", "2F", "34", "38", "39", "3B", "3D", "3F",
    "40", "42", "44", "53", "54", "55", "57", "58", "72", "F0", "HV", "P0", "XX"}


class PylightPostgresDatabase(PooledPostgresqlDatabase):
    """The pool, with every new connection reading the types Pylight serves as text,
    and a write's BEGIN sent together with its first statement."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deferred = threading.local()

    def _connect(self) -> Any:
        conn = super()._connect()
        pg_types.register_text_types(conn)
        return conn

    def get_views(self, schema: str | None = None) -> list[peewee.ViewMetadata]:
        """Views and materialized views (pg_views leaves the latter out): both are
        served read-only."""
        cursor = self.execute_sql(
            "SELECT matviewname, definition FROM pg_catalog.pg_matviews "
            "WHERE schemaname = COALESCE(%s, current_schema())", (schema,))
        materialized = [peewee.ViewMetadata(name, sql.strip(" \t;"))
                        for name, sql in cursor.fetchall()]
        return sorted(super().get_views(schema) + materialized, key=lambda view: view.name)

    def get_columns(self, table: str, schema: str | None = None) -> list[Any]:
        """peewee's columns, from ``information_schema``, which has no materialized
        views: theirs come from the system catalog, those the user may read."""
        columns = super().get_columns(table, schema)
        if columns:
            return columns
        cursor = self.execute_sql(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace s ON s.oid = c.relnamespace "
            "WHERE c.relname = %s AND s.nspname = COALESCE(%s, current_schema()) "
            "AND c.relkind = 'm' AND a.attnum > 0 AND NOT a.attisdropped "
            "AND has_column_privilege(c.oid, a.attnum, 'SELECT') ORDER BY a.attnum",
            (table, schema))
        return [peewee.ColumnMetadata(name, full_type, nullable, False, table, None, full_type)
                for name, full_type, nullable in cursor.fetchall()]

    def get_primary_keys(self, table: str, schema: str | None = None) -> list[str]:
        """The primary key's columns in key order, from the system catalog.

        peewee asks ``information_schema``, which shows a table's constraints only to
        a user with some privilege on it beyond SELECT: served by a read-only user,
        every table would seem to have no primary key (no item routes, no keyset
        pages)."""
        cursor = self.execute_sql(
            "SELECT a.attname FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indrelid "
            "JOIN pg_namespace s ON s.oid = c.relnamespace "
            "CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indisprimary AND c.relname = %s "
            "AND s.nspname = COALESCE(%s, current_schema()) ORDER BY k.n", (table, schema))
        return [name for (name,) in cursor.fetchall()]

    def defer_begin(self) -> None:
        """Open this thread's transaction with its next statement, in the same message.

        Connections run in autocommit, so peewee sends BEGIN on its own: one more
        round trip per write. PostgreSQL runs ``BEGIN; <statement>`` from one
        message as two statements and answers the last one's rows, so a single-row
        write takes two round trips (this one and COMMIT) instead of three. A
        connection found dead by that first message is still retried, as COMMIT
        has not been sent."""
        self._deferred.begin = True

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        if getattr(self._deferred, "begin", False):
            self._deferred.begin = False
            sql = "BEGIN; " + sql
        return super().execute_sql(sql, params)

    def commit(self) -> Any:
        if self._unsent_begin():
            return None  # no statement ran: there is no transaction to commit
        return super().commit()

    def rollback(self) -> Any:
        if self._unsent_begin():
            return None
        return super().rollback()

    def _unsent_begin(self) -> bool:
        unsent = getattr(self._deferred, "begin", False)
        self._deferred.begin = False
        return unsent


#: How long a single-statement insert waits for a row lock before it rolls back and
#: the write runs again in a transaction of its own (while it waits, the table's
#: later changes wait to be published after it).
ALONE_LOCK_TIMEOUT_MS = 100

# A plain table (not a view, not partitioned) with no BEFORE INSERT row trigger and
# no rule: a row inserted reads back with the values given.
_INSERTS_AS_GIVEN = """
SELECT EXISTS (
  SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = current_schema() AND c.relname = %s AND c.relkind = 'r'
     AND NOT c.relhasrules
     AND NOT EXISTS (SELECT 1 FROM pg_trigger t
                      WHERE t.tgrelid = c.oid AND NOT t.tgisinternal
                        AND t.tgtype & 7 = 7))
"""


# Declared lengths (a domain's CHECK too) and the columns a sequence or identity fills in.
_CATALOG = """
SELECT c.column_name, c.data_type, c.character_maximum_length,
       c.column_default LIKE 'nextval(%%' OR c.is_identity = 'YES', false,
       (SELECT string_agg(k.check_clause, ' AND ')
          FROM information_schema.domain_constraints d
          JOIN information_schema.check_constraints k
            ON k.constraint_schema = d.constraint_schema AND k.constraint_name = d.constraint_name
         WHERE d.domain_schema = c.domain_schema AND d.domain_name = c.domain_name)
FROM information_schema.columns c
WHERE c.table_schema = current_schema() AND c.table_name = %s
"""


class PostgresBackend(Backend):
    name = "PostgreSQL"
    schemes = ("postgresql", "postgres")
    supports_returning = True
    nulls_sort_high = True
    arrays_nest = True

    def open(self, url: str, pool_size: int, connect_timeout: float) -> peewee.Database:
        kwargs = self.connect_kwargs(url)
        database = kwargs.pop("database")
        kwargs.setdefault("connect_timeout", max(int(connect_timeout), 1))
        kwargs.setdefault("application_name", "pylight")
        # Intervals are read and written as ISO 8601 durations.
        kwargs["options"] = (kwargs.get("options", "") + " -c IntervalStyle=iso_8601").strip()
        return PylightPostgresDatabase(
            database, max_connections=pool_size, stale_timeout=300, **kwargs
        )

    def begin_write(self, db: peewee.Database) -> None:
        db.defer_begin()

    def inserts_alone(self, db: peewee.Database, table: str) -> bool:
        return bool(db.execute_sql(_INSERTS_AS_GIVEN, (table,)).fetchone()[0])

    def connection_quiet(self, db: peewee.Database) -> bool:
        # An idle connection has nothing to read unless the server ended it (a
        # restart or pg_terminate_backend sends FATAL first).
        waiting = select.poll()
        waiting.register(db.connection().fileno(), select.POLLIN)
        return not waiting.poll(0)

    def alone(self, sql: str) -> str:
        # The statements of one message run as one implicit transaction, so SET
        # LOCAL bounds this statement only.
        return f"SET LOCAL lock_timeout = '{ALONE_LOCK_TIMEOUT_MS}ms'; {sql}"

    def is_lock_timeout(self, exc: BaseException) -> bool:
        return getattr(self.driver_error(exc), "pgcode", None) == "55P03"

    def declared_columns(self, db: peewee.Database, table: str, primary_key: list[str],
                         raw_types: dict[str, str]) -> dict[str, DeclaredColumn]:
        return declared_from_rows(db.execute_sql(_CATALOG, (table,)).fetchall())

    def column_types(self, db: peewee.Database, table: str) -> dict[str, ColumnType]:
        return pg_types.column_types(db, table)

    def unique_keys(self, db: peewee.Database, table: str) -> list[tuple[str, ...]]:
        # ON CONFLICT takes neither a deferrable constraint (indimmediate) nor, without
        # its predicate, a partial index; INCLUDE columns are not part of the key.
        cursor = db.execute_sql(
            "SELECT array_agg(a.attname::text ORDER BY k.n) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indrelid "
            "JOIN pg_namespace s ON s.oid = c.relnamespace "
            "CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE s.nspname = current_schema() AND c.relname = %s AND i.indisunique "
            "AND i.indimmediate AND i.indpred IS NULL AND i.indexprs IS NULL "
            "AND k.n <= i.indnkeyatts GROUP BY i.indexrelid ORDER BY i.indexrelid", (table,))
        return [tuple(columns) for (columns,) in cursor.fetchall()]

    def row_identity(self, columns: list[str]) -> tuple[str, ...]:
        # ctid alone repeats across the partitions of a partitioned table.
        return ("tableoid", "ctid")

    def foreign_keys(self, db: peewee.Database, table: str) -> list[ForeignKey]:
        cursor = db.execute_sql(
            "SELECT con.oid, a.attname, ref.relname, ra.attname "
            "FROM pg_constraint con "
            "JOIN pg_class c ON c.oid = con.conrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_class ref ON ref.oid = con.confrelid "
            "CROSS JOIN LATERAL unnest(con.conkey, con.confkey) WITH ORDINALITY "
            "    AS k(attnum, refnum, position) "
            "JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum "
            "JOIN pg_attribute ra ON ra.attrelid = con.confrelid AND ra.attnum = k.refnum "
            "WHERE con.contype = 'f' AND n.nspname = current_schema() AND c.relname = %s "
            "ORDER BY con.conname, con.oid, k.position", (table,))
        return group_foreign_keys(cursor.fetchall())

    def estimated_row_counts(self, db: peewee.Database) -> dict[str, int]:
        # reltuples is kept by VACUUM/ANALYZE (autovacuum); -1: never analysed.
        cursor = db.execute_sql(
            "SELECT c.relname, c.reltuples::bigint FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
            "AND c.reltuples >= 0")
        return {name: int(rows) for name, rows in cursor.fetchall()}

    def other_schemas(self, db: peewee.Database) -> list[str]:
        cursor = db.execute_sql(
            "SELECT DISTINCT n.nspname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname <> current_schema() "
            "AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%%' "
            "AND has_schema_privilege(n.oid, 'USAGE') ORDER BY 1")
        return [name for (name,) in cursor.fetchall()]

    def is_disconnect(self, exc: BaseException) -> bool:
        err = self.driver_error(exc)
        if isinstance(err, psycopg2.InterfaceError):
            return True
        if isinstance(err, psycopg2.OperationalError):
            code = getattr(err, "pgcode", None)
            # No code: the socket broke; 57P*: the server is shutting the
            # backend down; 08*: connection exceptions.
            return code is None or code.startswith(("57P", "08"))
        return False

    def classify_error(self, exc: BaseException) -> ApiError | None:
        err = self.driver_error(exc)
        code = getattr(err, "pgcode", None) or ""
        diag = getattr(err, "diag", None)
        detail = getattr(diag, "message_detail", None) or ""
        if code == "23505":
            return self.unique_conflict(detail)
        if code == "23503":
            return self.foreign_key_conflict(detail)
        if code == "23502":
            return self.not_null(getattr(diag, "column_name", None))
        column = getattr(diag, "column_name", None)
        if code == "23514" or code.startswith("22") or code in _BAD_VALUE:
            return self.bad_value(getattr(diag, "message_primary", None) or str(err), column)
        if code in _REFUSED:
            return self.refused(str(err))
        if code.startswith("P0") or (len(code) == 5 and code[:2] not in _STANDARD_CLASSES):
            # RAISE EXCEPTION in a trigger or a function, with its default code or one
            # of the application's own ('PT402': a class PostgreSQL does not define)
            return self.raised(getattr(diag, "message_primary", None) or str(err))
        if self.is_disconnect(exc):
            return self.down()
        if code == "55000":
            return unavailable("the database cannot answer this until it is made ready "
                               f"({getattr(diag, 'message_primary', None) or code}): a "
                               "materialized view answers after REFRESH MATERIALIZED VIEW")
        if code.startswith(_RETRY):
            return unavailable("the database could not complete the request now "
                               f"({getattr(diag, 'message_primary', None) or code}); retry shortly")
        return None


    # -- change capture ------------------------------------------------------
    def capture_setup_sql(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS _pylight_changes ("
            "id BIGSERIAL PRIMARY KEY, table_name TEXT NOT NULL, op CHAR(1) NOT NULL, "
            "row_key TEXT, old_row TEXT, new_row TEXT, "
            "at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())",
            "CREATE INDEX IF NOT EXISTS _pylight_changes_at ON _pylight_changes (at)",
            _CAPTURE_FUNCTION,
        ]

    def capture_teardown_sql(self) -> list[str]:
        return ["DROP TABLE IF EXISTS _pylight_changes",
                "DROP FUNCTION IF EXISTS _pylight_capture()"]

    def capture_triggers(self, table: str, columns: list[tuple[str, str]],
                         key: list[str]) -> dict[str, tuple[str, list[str]]]:
        args = ", ".join(_literal(name) for name in key)
        sql = (f"CREATE TRIGGER _pylight_capture AFTER INSERT OR UPDATE OR DELETE ON "
               f"{_ident(table)} FOR EACH ROW EXECUTE FUNCTION _pylight_capture({args})")
        return {"_pylight_capture": (json.dumps(key), [sql])}

    def capture_installed(self, db: peewee.Database) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        cursor = db.execute_sql(
            "SELECT c.relname, t.tgname, t.tgargs FROM pg_trigger t "
            "JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND NOT t.tgisinternal "
            "AND t.tgname LIKE '\\_pylight%%'")
        for table, name, raw in cursor.fetchall():
            args = [part.decode() for part in bytes(raw).split(b"\x00")[:-1]]
            found.setdefault(table, {})[name] = json.dumps(args)
        return found

    def capture_drop_sql(self, table: str, trigger: str) -> str:
        return f"DROP TRIGGER IF EXISTS {_ident(trigger)} ON {_ident(table)}"

    def capture_prune_sql(self, param: str) -> str:
        return f"DELETE FROM _pylight_changes WHERE at < now() - {param} * interval '1 second'"

    def capture_watcher(self, db: peewee.Database, url: str, poll_interval: float) -> ChangeWatcher:
        kwargs = self.connect_kwargs(url)
        kwargs["dbname"] = kwargs.pop("database")
        kwargs.setdefault("connect_timeout", 5)
        kwargs["application_name"] = LISTENER_NAME
        return ListenWatcher(kwargs, url)


class ListenWatcher(ChangeWatcher):
    """LISTEN on a connection of its own, watched by the IOLoop (no thread).

    Notifications wake the reader at once; the reader still looks every
    ``interval`` seconds (a safety net for ids that commit late). When the
    connection breaks it is reopened with back-off, and the reader is woken
    so it re-reads from where it stood: nothing committed meanwhile is lost.
    """

    def __init__(self, connect_kwargs: dict[str, Any], url: str, interval: float = 2.0) -> None:
        super().__init__(interval)
        self.connect_kwargs = connect_kwargs
        self.url = url
        self.conn: Any = None
        self.fd: int | None = None
        self.wake: Callable[[], None] = lambda: None
        self.closing = False
        self.reconnecting: asyncio.Task[None] | None = None

    async def start(self, wake: Callable[[], None]) -> None:
        self.wake = wake
        try:
            await self._connect()
        except Exception as exc:
            log.warning("change capture: cannot LISTEN yet (%s); retrying", _first_line(exc))
            self._reconnect()

    def _open(self) -> Any:
        conn = psycopg2.connect(**self.connect_kwargs)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"LISTEN {CHANNEL}")
        return conn

    async def _connect(self) -> None:
        conn = await IOLoop.current().run_in_executor(None, self._open)
        if self.closing:
            conn.close()
            return
        self.conn = conn
        self.fd = conn.fileno()
        IOLoop.current().add_handler(self.fd, self._ready, IOLoop.READ)
        self.wake()  # anything committed while we were not listening

    def _ready(self, fd: int, events: int) -> None:
        conn = self.conn
        try:
            conn.poll()
        except Exception as exc:
            log.warning("change capture: the LISTEN connection broke (%s); reconnecting",
                        _first_line(exc))
            self._drop()
            self._reconnect()
            return
        if conn.closed:
            self._drop()
            self._reconnect()
            return
        if conn.notifies:
            conn.notifies.clear()
            self.wake()

    def _drop(self) -> None:
        if self.fd is not None:
            IOLoop.current().remove_handler(self.fd)
            self.fd = None
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None

    def _reconnect(self) -> None:
        if self.closing or (self.reconnecting is not None and not self.reconnecting.done()):
            return
        self.wake()  # the safety re-read covers the gap too
        self.reconnecting = asyncio.ensure_future(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        delay = 0.05
        while not self.closing:
            try:
                await self._connect()
                log.info("change capture: listening again on %s", redact_url(self.url))
                return
            except Exception as exc:
                log.debug("change capture: reconnect failed: %s", _first_line(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    @property
    def backend_pid(self) -> int | None:
        return self.conn.get_backend_pid() if self.conn is not None else None

    async def stop(self) -> None:
        self.closing = True
        if self.reconnecting is not None:
            self.reconnecting.cancel()
        self._drop()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@hookimpl
def pylight_database_backends() -> list[Backend]:
    return [PostgresBackend()]
