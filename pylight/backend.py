"""What a database backend plugin provides: opening, reflecting types and mapping errors."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import peewee
from playhouse.db_url import parse as parse_db_url

from pylight.errors import (
    ApiError,
    StartupError,
    conflict,
    forbidden,
    unavailable,
    unprocessable,
)
from pylight.redaction import redact_url
from pylight.types import ColumnType, DeclaredColumn, ForeignKey

if TYPE_CHECKING:
    import pluggy

log = logging.getLogger("pylight")


#: The database's reasons for refusing requests already logged at WARNING (bounded).
_REFUSALS_LOGGED: set[str] = set()

#: The ``reason`` of a 422 the database's own code raised: on a read it is not a
#: filter value's fault, so it is not turned into a 400 as a refused value is.
RAISED = "raised"


def _first_line(exc: object) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def url_scheme(url: str) -> str:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    return scheme.split("+", 1)[0]


class Backend:
    """Base class of database backends; a backend plugin returns instances of a subclass.

    A subclass sets ``name`` and ``schemes`` and implements :meth:`open`,
    :meth:`classify_error` and :meth:`is_disconnect`; the other methods have
    defaults that suit a server database with ``information_schema``.
    """

    name = "generic"
    schemes: tuple[str, ...] = ()
    #: ``INSERT/UPDATE ... RETURNING`` gives back the stored row in one round trip.
    supports_returning = False
    #: ``SELECT ... FOR UPDATE`` locks the row read before an update or delete.
    supports_for_update = True
    #: The database lets one transaction write at a time (Pylight queues writers itself).
    single_writer = False
    #: Table-name prefixes reserved for the database's own tables (never exposed).
    internal_table_prefixes: tuple[str, ...] = ()
    #: ILIKE folds the case of ASCII letters only (SQLite's LIKE).
    ilike_ascii_only = False
    #: ``=``/``<`` on text ignore case (MySQL's default collations).
    text_compare_case_insensitive = False
    #: NULL sorts after every value in ascending order (PostgreSQL); else before it.
    nulls_sort_high = False

    # -- opening ---------------------------------------------------------
    def open(self, url: str, pool_size: int, connect_timeout: float) -> peewee.Database:
        """A pooled peewee database for ``url`` with at most ``pool_size`` connections."""
        raise NotImplementedError

    def connect_kwargs(self, url: str) -> dict[str, Any]:
        """Connection keywords from a server URL (user, password, host, port, database)."""
        try:
            kwargs = parse_db_url(url)
        except Exception as exc:
            raise StartupError(f"database url {redact_url(url)} is malformed: {exc}") from None
        if not kwargs.get("database"):
            raise StartupError(
                f"database url {redact_url(url)} names no database "
                f"(expected {self.schemes[0]}://user:password@host:port/dbname)"
            )
        # peewee hands MySQL URLs' password over as the deprecated `passwd`,
        # which then escaped the unquoting below: `p%40ss` was sent verbatim.
        if "passwd" in kwargs:
            kwargs["password"] = kwargs.pop("passwd")
        for key in ("user", "password"):
            if kwargs.get(key):
                kwargs[key] = unquote(kwargs[key])
        return kwargs

    def describe(self, db: peewee.Database) -> str:
        """Where the database lives, for the 'cannot connect' start-up line."""
        params = getattr(db, "connect_params", {})
        host = params.get("host", "localhost")
        port = params.get("port")
        where = f"{host}:{port}" if port else str(host)
        return f"{self.name} database {db.database!r} on {where}"

    # -- per-connection work ------------------------------------------------
    def begin_write(self, db: peewee.Database) -> None:
        """Start the transaction of a write."""
        db.begin()

    # A single-row insert as its own transaction, in one round trip (see
    # Writes.run_alone). A backend offers it by answering the four below; by default
    # it does not, and every write runs in a transaction.
    def inserts_alone(self, db: peewee.Database, table: str) -> bool:
        """Whether an insert into ``table`` may commit by itself: the row reads back
        as given, so nothing found after the statement could call for a rollback (no
        trigger or rule rewrites it). Asked once per table, in a worker thread."""
        return False

    def connection_quiet(self, db: peewee.Database) -> bool:
        """This thread's connection shows no sign of having been ended by the server
        (a statement lost on it in autocommit could not be retried)."""
        return False

    def alone(self, sql: str) -> str:
        """``sql`` as a statement that commits by itself and gives up waiting for a row
        lock after a moment (the write then runs again in a transaction)."""
        return sql

    def is_lock_timeout(self, exc: BaseException) -> bool:
        """``exc`` says the statement from :meth:`alone` gave up waiting for a lock,
        and so changed nothing."""
        return False

    # -- reflection ---------------------------------------------------------
    def numeric_scales(self, db: peewee.Database, table: str) -> dict[str, tuple[int | None, int | None]]:
        """``{column: (precision, scale)}`` for the DECIMAL/NUMERIC columns of ``table``."""
        cursor = db.execute_sql(
            "SELECT column_name, numeric_precision, numeric_scale "
            "FROM information_schema.columns "
            "WHERE table_name = %s AND table_schema = " + self.current_schema_sql()
            + " AND data_type IN ('numeric', 'decimal')",
            (table,),
        )
        return {name: (precision, scale) for name, precision, scale in cursor.fetchall()}

    def current_schema_sql(self) -> str:
        return "current_schema()"

    def field_for_unknown(self, raw_type: str) -> type[peewee.Field] | None:
        """A field class for a column type peewee's reflection does not know, or None."""
        return None

    def columns(self, db: peewee.Database, table: str, reflected: dict[str, Any]) -> dict[str, Any]:
        """The columns of ``table`` in order, as peewee's reflection found them
        (``playhouse.reflection.Column``); a backend adds any it leaves out."""
        return reflected

    def column_types(self, db: peewee.Database, table: str) -> dict[str, ColumnType]:
        """``{column: ColumnType}`` for the columns of ``table`` this database knows better
        than peewee's reflection (types it does not know, enum members, generated
        columns, how a type orders); the rest keep what reflection found."""
        return {}

    def declared_columns(self, db: peewee.Database, table: str, primary_key: list[str],
                         raw_types: dict[str, str]) -> dict[str, DeclaredColumn]:
        """What the catalog says of ``table``'s columns beyond reflection: declared
        lengths and the columns the database fills in (read once, at reflection, for
        the OpenAPI document). ``raw_types``: each column's declared type."""
        rows = db.execute_sql(
            "SELECT column_name, data_type, character_maximum_length, "
            "extra LIKE '%%auto_increment%%', extra LIKE '%%auto_increment%%', NULL "
            "FROM information_schema.columns WHERE table_schema = "
            + self.current_schema_sql() + " AND table_name = %s", (table,)).fetchall()
        return declared_from_rows(rows)

    def unique_keys(self, db: peewee.Database, table: str) -> list[tuple[str, ...]]:
        """The column sets of ``table``'s unique constraints and unique indexes that
        can decide an upsert's conflict (``on_conflict``): whole columns only, no
        expression, no prefix, no partial index. The primary key may be among them."""
        rows = db.execute_sql(
            "SELECT index_name, column_name, sub_part FROM information_schema.statistics "
            "WHERE table_schema = " + self.current_schema_sql() + " AND table_name = %s "
            "AND non_unique = 0 ORDER BY index_name, seq_in_index", (table,)).fetchall()
        grouped: dict[str, list[str | None]] = {}
        for index, column, prefix in rows:
            grouped.setdefault(index, []).append(None if prefix is not None else column)
        return [tuple(columns) for columns in grouped.values() if None not in columns]

    def row_identity(self, columns: list[str]) -> tuple[str, ...]:
        """The system columns that tell apart the rows of a table without a primary key
        whose columns are ``columns`` (PostgreSQL's tableoid and ctid, SQLite's rowid);
        empty where there are none (MySQL/MariaDB): such a table is not updated by filter,
        as the rows an update left could not be told apart."""
        return ()

    #: An integer column's values are 64-bit whatever its declared type (SQLite).
    integers_are_64_bit = False
    #: An array column may hold arrays of more dimensions than declared (PostgreSQL).
    arrays_nest = False

    def integer_range(self, raw_type: str) -> tuple[int, int]:
        """The values an integer column of declared type ``raw_type`` holds."""
        raw = raw_type.lower()
        bits = 64 if self.integers_are_64_bit else next(
            (b for word, b in _INT_BITS if word in raw), 64)
        if bits == 64:
            return -(2**63), 2**63 - 1
        if "unsigned" in raw:
            return 0, 2**bits - 1
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def foreign_keys(self, db: peewee.Database, table: str) -> list[ForeignKey]:
        """The foreign keys of ``table``, each with its columns in constraint order."""
        cursor = db.execute_sql(
            "SELECT constraint_name, column_name, referenced_table_name, referenced_column_name "
            "FROM information_schema.key_column_usage "
            "WHERE table_schema = " + self.current_schema_sql() + " AND table_name = %s "
            "AND referenced_table_name IS NOT NULL ORDER BY constraint_name, ordinal_position",
            (table,))
        return group_foreign_keys(cursor.fetchall())

    def estimated_row_counts(self, db: peewee.Database) -> dict[str, int]:
        """``{table: rows}`` as the database's statistics estimate them, without
        counting (tables it has no estimate for are left out; none by default)."""
        return {}

    # -- query pieces ---------------------------------------------------------
    def exact_text(self, node: Any) -> Any:
        """``node`` (text) compared byte by byte; the default collations of SQLite and
        PostgreSQL already tell 'a' from 'A'."""
        return node

    def insert_if_absent(self, insert: peewee.Insert, target: list[peewee.Field]) -> peewee.Insert:
        """``insert`` made to insert nothing (and raise nothing) where a row with the same
        ``target`` values exists: ``ON CONFLICT (target) DO NOTHING``. Whether it
        inserted is told by its row count (or the row it returns)."""
        return insert.on_conflict(action="NOTHING", conflict_target=target)

    def like(self, field: peewee.Field, pattern: str, case_insensitive: bool) -> peewee.Expression:
        """``field LIKE pattern``; ``pattern`` uses SQL ``%``/``_`` escaped with a backslash."""
        op = "ILIKE" if case_insensitive else "LIKE"
        return peewee.Expression(
            field, op, peewee.NodeList((peewee.Value(pattern), peewee.SQL("ESCAPE '\\'")))
        )

    # -- change capture (``[realtime] capture = database``) ---------------------
    # The core (pylight/capture.py) reads the change log ``_pylight_changes``
    # (id, table_name, op 'I'/'U'/'D', row_key, old_row, new_row, at; the three
    # row columns hold JSON text) with portable SQL; a backend supplies the
    # DDL, the triggers that fill it and the wake-ups.
    def capture_setup_sql(self) -> list[str]:
        """Statements creating the change log (and helpers); safe to run again."""
        raise NotImplementedError(f"the {self.name} backend does not support change capture")

    def capture_teardown_sql(self) -> list[str]:
        """Statements dropping what :meth:`capture_setup_sql` created."""
        raise NotImplementedError(f"the {self.name} backend does not support change capture")

    def capture_triggers(self, table: str, columns: list[tuple[str, str]],
                         key: list[str]) -> dict[str, tuple[str, list[str]]]:
        """``{trigger name: (definition, create statements)}`` capturing ``table``.

        ``columns`` are ``(name, field type)`` of every column, ``key`` the primary
        key (empty: the row images go in ``new_row``/``old_row``). The
        definition is what :meth:`capture_installed` reports for a trigger
        created by those statements, so an unchanged trigger is left alone.
        """
        raise NotImplementedError(f"the {self.name} backend does not support change capture")

    def capture_installed(self, db: peewee.Database) -> dict[str, dict[str, str]]:
        """``{table: {trigger name: definition}}`` of the capture triggers in the database."""
        raise NotImplementedError(f"the {self.name} backend does not support change capture")

    def capture_drop_sql(self, table: str, trigger: str) -> str:
        raise NotImplementedError(f"the {self.name} backend does not support change capture")

    def capture_prune_sql(self, param: str) -> str:
        """``DELETE`` of the log rows older than ``param`` seconds."""
        raise NotImplementedError(f"the {self.name} backend does not support change capture")

    def capture_watcher(self, db: peewee.Database, url: str, poll_interval: float) -> ChangeWatcher:
        """What tells the reader to look at the log; by default, every ``poll_interval``."""
        return ChangeWatcher(poll_interval)

    def read_only(self, url: str) -> bool:
        """True when the URL asks for the database to be served read-only (every table
        as if ``[table:NAME] read_only = true``); no backend but SQLite's by default."""
        return False

    def other_schemas(self, db: peewee.Database) -> list[str]:
        """Schemas other than the one served that hold tables or views the user can see
        (for the start-up warning of a database that seems empty); none by default."""
        return []

    # -- errors ------------------------------------------------------------
    def is_disconnect(self, exc: BaseException) -> bool:
        """True when ``exc`` means the connection or the server is gone."""
        return False

    def classify_error(self, exc: BaseException) -> ApiError | None:
        """Map a driver error to the contract's 409/422/503 by its code, or None when
        the code is not one the backend knows (then :meth:`map_error` goes by class)."""
        return None

    def map_error(self, exc: BaseException) -> ApiError | None:
        """The client's answer for a database error: by code (the backend), else by
        the DB-API class every driver uses; None only for a programming error (a bug)."""
        mapped = self.classify_error(exc)
        if mapped is not None:
            return mapped
        if isinstance(exc, peewee.IntegrityError):
            return conflict("the change conflicts with a constraint of the table",
                            reason=_first_line(self.driver_error(exc)))
        if isinstance(exc, peewee.DataError):
            return self.bad_value(str(self.driver_error(exc)))
        if isinstance(exc, peewee.OperationalError):
            # Locks, timeouts, resources: the request may well succeed later.
            log.warning("database error answered 503: %s", _first_line(self.driver_error(exc)))
            return unavailable("the database could not complete the request; retry shortly")
        return None

    # helpers for subclasses
    @staticmethod
    def driver_error(exc: BaseException) -> BaseException:
        """The DB-API exception peewee wrapped (kept as ``orig``)."""
        return getattr(exc, "orig", None) or exc

    @classmethod
    def error_text(cls, exc: BaseException, limit: int = 300) -> str:
        """The driver's own words for ``exc``, on one line: for log lines and start-up
        errors (pymysql's arguments are (code, message): the message alone)."""
        err = cls.driver_error(exc)
        args = getattr(err, "args", ())
        mysql_like = len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str)
        text = args[1] if mysql_like else str(err)
        return " ".join(text.split())[:limit] or type(err).__name__

    @staticmethod
    def unique_conflict(detail: str = "") -> ApiError:
        return conflict("a row with the same unique value already exists", reason=detail or "unique")

    @staticmethod
    def foreign_key_conflict(detail: str = "") -> ApiError:
        return conflict(
            "the change violates a foreign-key reference", reason=detail or "foreign_key"
        )

    @staticmethod
    def not_null(column: str | None) -> ApiError:
        if column:
            return unprocessable(f"column {column!r} may not be null", column=column)
        return unprocessable("a column that may not be null got no value")

    @staticmethod
    def bad_value(message: str, column: str | None = None) -> ApiError:
        first = message.strip().splitlines()[0] if message.strip() else "invalid value"
        if column:
            return unprocessable(f"column {column!r}: the database rejected the value: {first}",
                                 column=column)
        return unprocessable(f"the database rejected a value: {first}")

    @staticmethod
    def refused(message: str) -> ApiError:
        """The database does not let Pylight's own database user do this: a privilege it
        was not granted, or a read-only database. Asking again will not help, and the
        request itself was fine. The driver's words name the database user, so they go
        to the server log, not to the client: once at WARNING for each distinct reason
        (a client retrying a refused write would fill the log), again at DEBUG."""
        reason = _first_line(message)
        if reason in _REFUSALS_LOGGED:
            log.debug("the database refused a request: %s", reason)
        else:
            if len(_REFUSALS_LOGGED) < 1000:
                _REFUSALS_LOGGED.add(reason)
            log.warning("the database refused a request: %s (repeats are logged at debug)",
                        reason)
        return forbidden("the database refused this operation: the database user Pylight "
                         "connects as lacks the privilege, or the database is read-only",
                         reason="database_refused")

    @staticmethod
    def raised(message: str) -> ApiError:
        """The database's own code (a trigger, a function a view calls) raised an error on
        purpose: its message is meant for the client, like a CHECK constraint's refusal."""
        first = message.strip().splitlines()[0] if message.strip() else "an error was raised"
        return unprocessable(f"the database refused the request: {first}", reason=RAISED)

    @staticmethod
    def down() -> ApiError:
        return unavailable("the database is unreachable; retry shortly")


class ChangeWatcher:
    """Tells the change-log reader when to look: a wake-up, or every ``interval`` seconds.

    This default reads the log every ``interval`` (an indexed ``id >`` scan).
    A backend may wake the reader itself (:meth:`start` gets the ``wake``
    callable, called on the IOLoop) and look less often, or make
    :meth:`changed` a cheaper test than reading the log.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval

    async def start(self, wake: Callable[[], None]) -> None:
        """Begin watching (runs on the IOLoop)."""

    def changed(self) -> bool:
        """Blocking and cheap: may the log have grown since the last call?"""
        return True

    async def stop(self) -> None:
        """Stop watching and free what :meth:`start` took."""


def change_log_inserts(table: str, columns: list[tuple[str, str]], key: list[str],
                       value: Callable[[str, str], str], literal: Callable[[str], str],
                       json_object: str, json_array: str) -> dict[tuple[str, str], str]:
    """The ``INSERT INTO _pylight_changes`` each row trigger of ``table`` runs, keyed by
    (short name, event), for databases whose triggers name every column (MySQL, SQLite).

    ``value(row, column)`` is the SQL for one column of ``NEW``/``OLD`` as it goes into
    the JSON image; ``literal`` quotes a string.
    """
    def image(row: str) -> str:
        pairs = ", ".join(f"{literal(name)}, {value(row, name)}" for name, _ in columns)
        return f"{json_object}({pairs})"

    def keys(row: str) -> str:
        return f"{json_array}(" + ", ".join(value(row, name) for name in key) + ")" if key \
            else "NULL"

    rows = {("i", "INSERT"): ("I", keys("NEW"), "NULL", image("NEW")),
            ("u", "UPDATE"): ("U", keys("NEW"), image("OLD"), image("NEW")),
            ("d", "DELETE"): ("D", keys("OLD"), image("OLD"), "NULL")}
    return {event: ("INSERT INTO _pylight_changes (table_name, op, row_key, old_row, new_row) "
                    f"VALUES ({literal(table)}, '{op}', {row_key}, {old_row}, {new_row})")
            for event, (op, row_key, old_row, new_row) in rows.items()}


_DECL_PARAMS = re.compile(r"\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)")


def declared_precision(declared: str) -> tuple[int | None, int | None]:
    """``(precision, scale)`` from a declared type such as ``NUMERIC(10, 2)``."""
    match = _DECL_PARAMS.search(declared or "")
    if not match:
        return None, None
    precision = int(match.group(1))
    scale = int(match.group(2)) if match.group(2) is not None else 0
    return precision, scale


def group_foreign_keys(rows: list[tuple[Any, str, str, str]]) -> list[ForeignKey]:
    """Foreign keys from ``(constraint id, column, referenced table, referenced column)``
    rows, ordered by constraint and then by position within it."""
    grouped: dict[Any, tuple[str, list[str], list[str]]] = {}
    for constraint, column, table, referenced in rows:
        _, columns, references = grouped.setdefault(constraint, (table, [], []))
        columns.append(column)
        references.append(referenced)
    return [ForeignKey(tuple(columns), table, tuple(references))
            for table, columns, references in grouped.values()]


def choose_backend(pm: pluggy.PluginManager, url: str) -> Backend:
    """The backend plugin serving ``url``'s scheme (the latest registered wins)."""
    schemes: dict[str, Backend] = {}
    for offered in pm.hook.pylight_database_backends():
        for backend in offered or []:
            for scheme in backend.schemes:
                schemes.setdefault(scheme, backend)
    scheme = url_scheme(url)
    if scheme not in schemes:
        known = ", ".join(sorted(schemes)) or "none installed"
        raise StartupError(
            f"database url {redact_url(url)!r}: unknown scheme {scheme!r} "
            f"(known: {known}); install or load the plugin for it"
        )
    return schemes[scheme]


# Declared integer types and their widths, the widest first where one name holds another.
_INT_BITS = (("bigint", 64), ("int8", 64), ("mediumint", 24), ("smallint", 16), ("int2", 16),
             ("tinyint", 8), ("int", 32), ("serial", 32))
# A domain's CHECK (char_length(VALUE) <= 40) limits the length as VARCHAR(40) does.
_LENGTH_CHECK = re.compile(r"(?:char_length|character_length|length)\(\(?VALUE\)?(?:::text)?\)"
                           r"\s*(<=|<)\s*(\d+)")


def declared_from_rows(rows: list[tuple[Any, ...]]) -> dict[str, DeclaredColumn]:
    """Catalog rows ``(column, data type, declared length, generated, counter, domain
    checks)`` as :class:`DeclaredColumn` by column name."""
    declared = {}
    for name, data_type, length, generated, counter, checks in rows:
        limits = [int(n) - (op == "<") for op, n in _LENGTH_CHECK.findall(checks or "")]
        if limits:
            length = min([*limits, *([int(length)] if length is not None else [])])
        declared[name] = DeclaredColumn(length=None if length is None else int(length),
                                        fixed=str(data_type).lower() == "bit",
                                        generated=bool(generated), counter=bool(counter))
    return declared
