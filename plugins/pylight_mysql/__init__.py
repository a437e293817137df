"""The MySQL/MariaDB backend plugin: `mysql://user:password@host:3306/dbname`."""

from __future__ import annotations

import hashlib
import json
import re

import peewee
import pymysql
from playhouse.pool import PooledMySQLDatabase

from pylight import hookimpl
from pylight.backend import Backend, change_log_inserts
from pylight.errors import ApiError

# Strict mode: without it MySQL stores '' or 0 for bad or missing values
# instead of refusing them.
SQL_MODE = (
    "STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,"
    "ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"
)
_DISCONNECT = {1053, 1077, 1927, 2002, 2003, 2006, 2013, 2055, 4031}
_BAD_VALUE = {1048, 1264, 1292, 1364, 1366, 1406, 3140, 3819, 4025}
_COLUMN = re.compile(r"(?:Column|Field) '([^']+)'")
_JSON_CHECK = re.compile(r"json_valid\(`([^`]+)`\)", re.IGNORECASE)


class MariaJSONField(peewee.Field):
    """A MariaDB JSON column: text holding a JSON document. (peewee's MySQL
    JSONField wraps values in CAST(... AS JSON), which MariaDB rejects.)"""

    field_type = "JSON"

    def db_value(self, value):
        if value is None or isinstance(value, peewee.Node):
            return value
        return json.dumps(value, ensure_ascii=False, allow_nan=False)

    def python_value(self, value):
        if isinstance(value, (str, bytes)):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value


class MysqlBackend(Backend):
    name = "MySQL"
    schemes = ("mysql", "mariadb")
    # The default utf8mb4 collations compare text ignoring case.
    text_compare_case_insensitive = True

    def open(self, url: str, pool_size: int, connect_timeout: float) -> peewee.Database:
        kwargs = self.connect_kwargs(url)
        database = kwargs.pop("database")
        kwargs.setdefault("connect_timeout", max(int(connect_timeout), 1))
        kwargs.setdefault("charset", "utf8mb4")
        kwargs.setdefault("sql_mode", SQL_MODE)
        return PooledMySQLDatabase(
            database, max_connections=pool_size, stale_timeout=300, **kwargs
        )

    def current_schema_sql(self) -> str:
        return "DATABASE()"

    def column_overrides(self, db: peewee.Database, table: str) -> dict[str, type[peewee.Field]]:
        # MariaDB's JSON is LONGTEXT plus a json_valid() check: without this
        # the column reflects as text and documents come back as strings.
        try:
            cursor = db.execute_sql(
                "SELECT check_clause FROM information_schema.check_constraints "
                "WHERE constraint_schema = DATABASE() AND table_name = %s", (table,))
            clauses = [row[0] for row in cursor.fetchall()]
        except peewee.DatabaseError:  # MySQL: no table_name column, JSON reflects as JSON
            return {}
        return {match.group(1): MariaJSONField for clause in clauses
                if (match := _JSON_CHECK.fullmatch((clause or "").strip()))}

    def like(self, field: peewee.Field, pattern: str, case_insensitive: bool) -> peewee.Expression:
        # Compare bytes so the result does not depend on the column's collation
        # (utf8mb4's default ignores case and accents).
        if case_insensitive:
            return peewee.Expression(
                peewee.fn.LOWER(field), "LIKE BINARY", peewee.fn.LOWER(peewee.Value(pattern))
            )
        return peewee.Expression(field, "LIKE BINARY", pattern)

    def is_disconnect(self, exc: BaseException) -> bool:
        err = self.driver_error(exc)
        if isinstance(err, pymysql.err.InterfaceError):
            return True
        if isinstance(err, pymysql.err.OperationalError):
            return bool(err.args) and err.args[0] in _DISCONNECT
        return False

    def classify_error(self, exc: BaseException) -> ApiError | None:
        err = self.driver_error(exc)
        if not isinstance(err, pymysql.err.MySQLError):
            return None
        errno = err.args[0] if err.args else None
        message = str(err.args[1]) if len(err.args) > 1 else ""
        if errno == 1062:
            return self.unique_conflict(message)
        if errno in (1451, 1452, 1216, 1217):
            return self.foreign_key_conflict(message)
        if errno in (1048, 1364):
            match = _COLUMN.search(message)
            return self.not_null(match.group(1) if match else None)
        if errno in _BAD_VALUE:
            return self.bad_value(message)
        if self.is_disconnect(exc):
            return self.down()
        return None


    # -- change capture ------------------------------------------------------
    # Triggers fill the change log; the reader scans it by id every
    # poll_interval (the primary key makes `id > ?` an index range scan).
    def capture_setup_sql(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS _pylight_changes ("
            "id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, table_name VARCHAR(255) NOT NULL, "
            "op CHAR(1) NOT NULL, row_key LONGTEXT, old_row LONGTEXT, new_row LONGTEXT, "
            "at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), KEY _pylight_changes_at (at)"
            ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        ]

    def capture_teardown_sql(self) -> list[str]:
        return ["DROP TABLE IF EXISTS _pylight_changes"]

    def capture_triggers(self, table: str, columns: list[tuple[str, str]],
                         key: list[str]) -> dict[str, tuple[str, list[str]]]:
        kinds = dict(columns)

        def value(row: str, name: str) -> str:
            ref = f"{row}.{_ident(name)}"
            return f"HEX({ref})" if kinds.get(name) == "binary" else ref

        triggers = {}
        inserts = change_log_inserts(table, columns, key, value, _literal, "JSON_OBJECT",
                                     "JSON_ARRAY")
        for (short, event), body in inserts.items():
            name = _trigger_name(short, table)
            triggers[name] = (body, [f"CREATE TRIGGER {_ident(name)} AFTER {event} ON "
                                     f"{_ident(table)} FOR EACH ROW {body}"])
        return triggers

    def capture_installed(self, db: peewee.Database) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        cursor = db.execute_sql(
            "SELECT event_object_table, trigger_name, action_statement "
            "FROM information_schema.triggers "
            "WHERE trigger_schema = DATABASE() AND trigger_name LIKE '\\_pylight\\_%%'")
        for table, name, body in cursor.fetchall():
            found.setdefault(table, {})[name] = body
        return found

    def capture_drop_sql(self, table: str, trigger: str) -> str:
        return f"DROP TRIGGER IF EXISTS {_ident(trigger)}"

    def capture_prune_sql(self, param: str) -> str:
        return f"DELETE FROM _pylight_changes WHERE at < NOW(6) - INTERVAL {param} SECOND"


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _trigger_name(short: str, table: str) -> str:
    name = f"_pylight_{short}_{table}"
    if len(name) <= 64:  # MySQL's limit on identifiers
        return name
    digest = hashlib.sha1(table.encode()).hexdigest()[:10]
    return f"{name[:53]}_{digest}"


@hookimpl
def pylight_database_backends() -> list[Backend]:
    return [MysqlBackend()]
