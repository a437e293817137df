"""The MySQL/MariaDB backend plugin: `mysql://user:password@host:3306/dbname`."""

from __future__ import annotations

import datetime
import hashlib
import math
import re
import struct
from dataclasses import replace
from typing import Any

import peewee
import pymysql
from playhouse.pool import PooledMySQLDatabase

from pylight import hookimpl, values
from pylight.backend import Backend, change_log_inserts
from pylight.errors import ApiError, unavailable
from pylight.types import ColumnType, JSONTextField, SortKey
from pylight.values import BadValue, coercer

# Strict mode: without it MySQL stores '' or 0 for bad or missing values
# instead of refusing them. Zero dates ('0000-00-00', '2010-05-00') are allowed, as
# the applications that keep them allow them (WordPress's columns default to one):
# a value given in ISO 8601 is never one, and a zero date read is written back as is.
SQL_MODE = "STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"
# A date or date-time with a zero year, month or day, as MySQL writes it (the
# driver gives such values as this text).
ZERO_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}( [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?)?"
_DISCONNECT = {1053, 1077, 1927, 2002, 2003, 2006, 2013, 2055, 4031}
# 1265 data truncated (an unknown ENUM/SET member), 1690 out of range, 167 and 1467 the
# auto-increment is exhausted, 3105/1906 a value for a generated column, 1411/1416/
# 3037 bad date or geometry text.
_BAD_VALUE = {167, 1048, 1264, 1265, 1292, 1364, 1366, 1406, 1411, 1416, 1467, 1690, 1906, 3037,
              3105, 3140, 3819, 4025}
_RETRY = {1205, 1213}  # lock wait timeout, deadlock
# Not the request's fault and not worth a retry: a privilege the user lacks (on the
# table, a column, a routine), a write to a read-only server or transaction, and a
# view whose DEFINER does not exist on this server (a dump restored elsewhere: 1449,
# or 1045 "access denied" when the user reading it is not a superuser). A refused
# login is not among them: connecting is answered apart (Database._on_connection).
_REFUSED = {1036, 1044, 1045, 1142, 1143, 1227, 1290, 1370, 1449, 1792}
_COLUMN = re.compile(r"(?:Column|Field) '([^']+)'")
# "for column `db`.`table`.`col`": the last name is the column.
_FOR_COLUMN = re.compile(r"for column (?:[`'][^`']+[`']\.)*[`']([^`']+)[`']")
_JSON_CHECK = re.compile(r"json_valid\(`([^`]+)`\)", re.IGNORECASE)
_MEMBER = re.compile(r"'((?:[^']|'')*)'")
_WIDTH = re.compile(r"\((\d+)\)")
_TIME = re.compile(r"-?[0-9]{1,3}:[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?")
_INT_BITS = {"tinyint": 8, "smallint": 16, "mediumint": 24, "int": 32, "bigint": 64}
_LOGGED = {"BLOB": "HEX({})", "BIT": "CAST({} AS UNSIGNED)", "GEOMETRY": "ST_AsText({})",
           "FLOAT": "CAST({} AS DOUBLE)"}
_SPATIAL = {"geometry", "point", "linestring", "polygon", "multipoint", "multilinestring",
            "multipolygon", "geometrycollection"}


# -- what a write surely accepts (the OpenAPI request schemas) -------------------------
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_HEX4 = "[0-9a-f]{1,4}"
_XY = r"-?[0-9]{1,3}(\.[0-9]{1,2})? -?[0-9]{1,3}(\.[0-9]{1,2})?"
_LINE = rf"\({_XY},{_XY}(,{_XY})?\)"
# A closed ring of three distinct corners.
_RING = r"\(0 0,[1-9][0-9]? 0,[0-9]{1,2} [1-9][0-9]?,0 0\)"
_WKT = {
    "point": rf"POINT\({_XY}\)",
    "linestring": f"LINESTRING{_LINE}",
    "polygon": rf"POLYGON\({_RING}\)",
    "multipoint": rf"MULTIPOINT\({_XY}(,{_XY})?\)",
    "multilinestring": rf"MULTILINESTRING\({_LINE}(,{_LINE})?\)",
    "multipolygon": rf"MULTIPOLYGON\(\({_RING}\)\)",
    "geometrycollection": rf"GEOMETRYCOLLECTION\(POINT\({_XY}\)(,LINESTRING{_LINE})?\)",
}
_WKT["geometry"] = "|".join(_WKT[t] for t in ("point", "linestring", "polygon"))
_DAY = r"-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
_CLOCK = r"([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?"
_ZONE = r"(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])?"
_REQUEST: dict[str, dict[str, Any]] = {
    "inet4": {"type": "string", "pattern": rf"^{_OCTET}(\.{_OCTET}){{3}}$",
              "description": "an IPv4 address"},
    "inet6": {"type": "string", "pattern": rf"^(({_HEX4}:){{7}}{_HEX4}|::({_HEX4}(:{_HEX4}){{0,5}})?)$",
              "description": "an IPv6 address"},
    # TIME is a duration too, -838:59:59 to 838:59:59; a time of day may carry an offset.
    "time": {"type": "string", "pattern": r"^((-([0-9]{1,2}|[1-7][0-9]{2}|8[0-2][0-9]|83[0-7])|"
                                          r"2[4-9]|[3-9][0-9]|[1-7][0-9]{2}|8[0-2][0-9]|83[0-7])"
                                          r":[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?|"
                                          rf"{_CLOCK}{_ZONE})$",
             "description": "a time of day (ISO 8601) or hours up to 838"},
    # TIMESTAMP holds 1970-01-01 00:00:01 to 2038-01-19 03:14:07 UTC.
    "timestamp": {"type": "string",
                  "pattern": rf"^(197[1-9]|19[89][0-9]|20[0-2][0-9]|203[0-7]){_DAY}[T ]{_CLOCK}{_ZONE}$",
                  "description": "ISO 8601 date-time between 1970 and 2038"},
    # YEAR: 1901 to 2155, or 0 to 99 (0000, 2001-2069 and 1970-1999).
    "year": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 99},
                       {"type": "integer", "minimum": 1901, "maximum": 2155}]},
    # FLOAT: up to the largest single-precision number (smaller ones round to 0).
    "float": {"type": "number", "minimum": -3.4028234663852886e38,
              "maximum": 3.4028234663852886e38},
    **{name: {"type": "string", "pattern": f"^({wkt})$", "description": "WKT"}
       for name, wkt in _WKT.items()},
}


class GeometryField(peewee.TextField):
    """A spatial column, read and written as WKT text."""

    field_type = "GEOMETRY"


class BitField(peewee.Field):
    """BIT(n) as an integer (the driver gives bytes, big-endian)."""

    field_type = "BIT"

    def python_value(self, value):
        return int.from_bytes(value, "big") if isinstance(value, (bytes, bytearray)) else value


def _members(column_type: str) -> tuple[str, ...]:
    """The members of ``enum('a','b')`` / ``set(...)`` as information_schema spells them."""
    inner = column_type[column_type.index("(") + 1: column_type.rindex(")")]
    return tuple(match.replace("''", "'") for match in _MEMBER.findall(inner))


def _set_field(members: tuple[str, ...]) -> type[peewee.Field]:
    position = {member: i for i, member in enumerate(members)}

    class SetField(peewee.Field):
        """SET as a JSON array of its members, in the order the column declares them."""

        field_type = "SET"

        def db_value(self, value):
            if value is None or isinstance(value, (str, peewee.Node)):
                return value
            return ",".join(sorted(set(value), key=position.__getitem__))

        def python_value(self, value):
            if isinstance(value, str):
                value = value.split(",") if value else []
            if isinstance(value, (set, list)):
                return sorted(value, key=lambda m: position.get(m, len(position)))
            return value
    return SetField


def _set_value(members: tuple[str, ...]) -> Any:
    member = coercer("text", enum=members)

    def coerce(value: Any) -> list[str]:
        # Members only: a SET holds no NULL and no nested arrays.
        if not isinstance(value, list):
            raise BadValue(f"expected an array of members, got {str(value)[:40]!r}")
        return [member(item) for item in value]
    return coerce


def _time_text(value: Any) -> Any:
    """MySQL TIME spans -838:59:59 to 838:59:59: the driver gives a timedelta (the
    change log gives its text, "838:59:59.000000")."""
    if isinstance(value, str) and _TIME.fullmatch(value):
        value = _time_delta(value)
    if not isinstance(value, datetime.timedelta):
        return value.isoformat() if hasattr(value, "isoformat") else value
    sign = "-" if value < datetime.timedelta(0) else ""
    total = abs(value)
    hours, rest = divmod(total.days * 86400 + total.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    fraction = f".{total.microseconds:06d}" if total.microseconds else ""
    return f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}{fraction}"


_TIME_OF_DAY = coercer("time")


def _as_delta(value: Any) -> Any:
    """A TIME as the database compares it: a signed duration (feeds' filters)."""
    if isinstance(value, str) and _TIME.fullmatch(value):
        return _time_delta(value)
    if isinstance(value, datetime.time):
        return datetime.timedelta(hours=value.hour, minutes=value.minute,
                                  seconds=value.second, microseconds=value.microsecond)
    return value


def _time_delta(text: str) -> datetime.timedelta:
    sign = -1 if text.startswith("-") else 1
    hours, minutes, *rest = text.lstrip("-").split(":")
    seconds = float(rest[0]) if rest else 0.0
    return sign * datetime.timedelta(hours=int(hours), minutes=int(minutes), seconds=seconds)


def _time_value(value: Any) -> Any:
    """A time of day as for any time column; past a day or negative as MySQL spells it."""
    if isinstance(value, str) and _TIME.fullmatch(value) and (
            value.startswith("-") or int(value.split(":", 1)[0]) > 23):
        return value
    return _TIME_OF_DAY(value)


def _int_bounds(data_type: str, column_type: str) -> tuple[int, int] | None:
    bits = _INT_BITS.get(data_type)
    if bits is None:
        return None
    if "unsigned" in column_type:
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _column_type(data_type: str, column_type: str, declared: str) -> ColumnType:
    """How one MySQL/MariaDB column type is served (see pylight/types.py)."""
    if data_type in ("enum", "set"):
        return _members_type(data_type, _members(declared))
    if data_type == "bit":
        width = int(_WIDTH.search(column_type).group(1)) if _WIDTH.search(column_type) else 1
        return ColumnType(field=BitField, kind="integer", bounds=(0, 2**width - 1))
    if data_type == "year":
        return ColumnType(field=peewee.IntegerField, kind="integer", bounds=(0, 2155),
                          request_schema=_REQUEST["year"])
    if data_type == "time":
        return ColumnType(field=peewee.Field, kind="time", coerce=_time_value, encode=_time_text,
                          request_schema=_REQUEST["time"], compare_key=_as_delta)
    if data_type in _SPATIAL:
        # Read and written as WKT; ordered and compared as WKT too, so a cursor
        # holds exactly what a GET shows.
        return ColumnType(field=GeometryField, kind="text", api_type="string",
                          read=peewee.fn.ST_AsText, to_db=peewee.fn.ST_GeomFromText,
                          compare=peewee.fn.ST_AsText,
                          sort_key=SortKey(peewee.fn.ST_AsText, _same),
                          request_schema=_REQUEST[data_type])
    if data_type == "tinyint" and column_type.startswith("tinyint(1)"):
        # BOOLEAN is TINYINT(1), which holds any small integer: 0 and 1 are served
        # as false and true, other values as the numbers they are.
        return ColumnType(field=peewee.IntegerField, kind="boolean", coerce=_small_bool)
    if data_type == "float":
        # Single precision. The server prints a FLOAT with 6 digits (16777216 reads
        # as 16777200): read it as a double and serve the shortest decimal that is
        # the same FLOAT; filters and cursors compare with the value cast to FLOAT.
        return ColumnType(kind="float", read=_as_double, encode=_shortest_float32,
                          compare=_as_float, request_schema=_REQUEST["float"])
    if data_type == "uuid":
        # MariaDB orders UUIDs by their time fields, not as text: no gt/lt filters.
        return ColumnType(field=peewee.TextField, kind="uuid", like_as_text=True,
                          range_filters=False)
    if data_type in ("inet4", "inet6"):
        return ColumnType(field=peewee.TextField, kind="text", request_schema=_REQUEST[data_type],
                          range_filters=False)  # ordered as addresses, not as text
    if data_type == "timestamp":
        return ColumnType(request_schema=_REQUEST["timestamp"], special_text=ZERO_DATE,
                          compare_key=_date_order)
    if data_type in ("date", "datetime"):
        return ColumnType(special_text=ZERO_DATE, compare_key=_date_order)
    bounds = _int_bounds(data_type, column_type)
    if bounds is not None:
        return ColumnType(field=peewee.BigIntegerField, kind="integer", bounds=bounds)
    return ColumnType()


def _members_type(data_type: str, members: tuple[str, ...]) -> ColumnType:
    """An ENUM (one of ``members``) or a SET (any of them, a JSON array)."""
    if data_type == "enum":
        index = {member: i + 1 for i, member in enumerate(members)}
        # The database orders an ENUM by member index but compares it to a string
        # as text: order and page by the index so cursors agree with the order.
        # '' is the error value (index 0) a non-strict server stored for an unknown
        # member: filters and cursors take it, a write of it is the database's 422.
        return ColumnType(field=peewee.CharField, kind="text", enum=members,
                          sort_key=SortKey(_plus_zero, lambda v: index.get(v, 0)),
                          special_text="")
    bit = {member: 1 << i for i, member in enumerate(members)}
    return ColumnType(field=_set_field(members), kind="array",
                      items=ColumnType(kind="text", enum=members),
                      coerce=_set_value(members), range_filters=False,
                      sort_key=SortKey(_plus_zero, lambda v: sum(bit.get(m, 0) for m in v)),
                      request_schema={"type": "array", "items": {"type": "string",
                                                                 "enum": list(members)}})


def _date_order(value: Any) -> Any:
    """How MySQL orders dates, zero dates first ('0000-00-00', then '2010-05-00' just
    before 2010-05-01), for the filters feeds evaluate in Python."""
    order = values.instant_order(value)
    return value if order is None else order


def _same(value: Any) -> Any:
    return value


def _as_float(node: Any) -> Any:
    return peewee.Cast(node, "FLOAT")


def _as_double(node: Any) -> Any:
    return peewee.Cast(node, "DOUBLE")


def _shortest_float32(value: Any) -> Any:
    number = float(value)
    if not math.isfinite(number):
        return None
    single = struct.pack("<f", number)
    for digits in range(6, 10):
        shorter = float(f"{number:.{digits}g}")
        if struct.pack("<f", shorter) == single:
            return shorter
    return number


def _small_bool(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and -128 <= value <= 127:
        return value
    raise BadValue(f"expected true or false (or a TINYINT number), got {str(value)[:40]!r}")



def _plus_zero(node: Any) -> Any:
    return peewee.NodeList((node, peewee.SQL("+ 0")), parens=True)


def _json_columns(db: peewee.Database, table: str) -> list[str]:
    """MariaDB's JSON is LONGTEXT plus a json_valid() check: without this the column
    reflects as text and documents come back as strings."""
    try:
        cursor = db.execute_sql(
            "SELECT check_clause FROM information_schema.check_constraints "
            "WHERE constraint_schema = DATABASE() AND table_name = %s", (table,))
        clauses = [row[0] for row in cursor.fetchall()]
    except peewee.DatabaseError:  # MySQL: no table_name column, JSON reflects as JSON
        return []
    return [match.group(1) for clause in clauses
            if (match := _JSON_CHECK.fullmatch((clause or "").strip()))]


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

    def estimated_row_counts(self, db: peewee.Database) -> dict[str, int]:
        # InnoDB's TABLE_ROWS is an estimate from its statistics (exact for MyISAM/Aria).
        cursor = db.execute_sql(
            "SELECT table_name, table_rows FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' "
            "AND table_rows IS NOT NULL")
        return {name: int(rows) for name, rows in cursor.fetchall()}

    def column_types(self, db: peewee.Database, table: str) -> dict[str, ColumnType]:
        cursor = db.execute_sql(
            "SELECT column_name, data_type, column_type, extra FROM information_schema.columns "
            "WHERE table_schema = DATABASE() AND table_name = %s", (table,))
        types = {}
        for name, data_type, column_type, extra in cursor.fetchall():
            ctype = _column_type(str(data_type).lower(), str(column_type).lower(),
                                 str(column_type))
            if "GENERATED" in str(extra).upper():
                ctype = replace(ctype, read_only="a generated column")
            if ctype != ColumnType():
                types[name] = ctype
        for name in _json_columns(db, table):
            types[name] = replace(types.get(name, ColumnType()), field=JSONTextField,
                                  compare=peewee.fn.JSON_COMPACT)
        return types

    def exact_text(self, node: Any) -> Any:
        return peewee.NodeList((peewee.SQL("BINARY"), node))

    def insert_if_absent(self, insert: peewee.Insert, target: list[peewee.Field]) -> peewee.Insert:
        # No conflict target here, and INSERT IGNORE would also turn other errors
        # (NOT NULL, out of range) into warnings: a no-op ON DUPLICATE KEY UPDATE
        # instead, whose row count is 0 when the row existed (pymysql does not ask
        # for CLIENT_FOUND_ROWS, which would count it as 1).
        return insert.on_conflict(update={target[0]: target[0]})

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
            match = _COLUMN.search(message) or _FOR_COLUMN.search(message)
            return self.bad_value(message, match.group(1) if match else None)
        if errno in _REFUSED:
            return self.refused(message)
        if errno == 1644:  # SIGNAL SQLSTATE '45000' in a trigger or a routine
            return self.raised(message)
        if self.is_disconnect(exc):
            return self.down()
        if errno in _RETRY:
            return unavailable(f"the database could not complete the request now ({message}); "
                               "retry shortly")
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
        types = dict(columns)

        def value(row: str, name: str) -> str:
            # Logged in the form a read gives: JSON_OBJECT would write BIT and
            # geometry bytes raw (invalid JSON, or text the log column refuses) and
            # a FLOAT with 6 digits.
            ref = f"{row}.{_ident(name)}"
            return _LOGGED.get(types.get(name, ""), "{}").format(ref)

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
