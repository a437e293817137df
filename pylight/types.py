"""What a backend tells the core about a column type that peewee's reflection does not.

Each backend plugin owns its database's types (:meth:`Backend.column_types`):
for a column it may give another peewee field class, the value kind
(``values.py`` turns JSON into Python values and back by kind), the type name
``GET /api/`` shows, enum members, whether the column can be written, and how
the database orders and compares it. Everything left out keeps the default
derived from the reflected peewee field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as _field
from typing import Any

import peewee

#: The ``type`` names of ``GET /api/`` for each value kind.
API_TYPES = {
    "integer": "integer", "float": "number", "decimal": "decimal", "boolean": "boolean",
    "text": "string", "date": "date", "time": "time", "datetime": "datetime",
    "duration": "duration", "binary": "binary", "json": "json", "uuid": "uuid",
    "array": "array", "any": "any",
}


@dataclass(frozen=True)
class SortKey:
    """The database orders the column by ``expression(column)``, not by its value;
    ``value`` turns a value as the API shows it into that order's terms (a MySQL
    ENUM orders by member index, while comparing it to a string compares text)."""

    expression: Callable[[Any], Any]
    value: Callable[[Any], Any]


@dataclass(frozen=True)
class ColumnType:
    field: type[peewee.Field] | None = None  # the peewee field class; None: as reflected
    kind: str | None = None  # the value kind; None: from the field class
    api_type: str | None = None  # the GET /api/ type; None: API_TYPES[kind]
    read_only: str | None = None  # why the column cannot be written (None: it can)
    enum: tuple[str, ...] | None = None  # the members, in the database's order
    items: ColumnType | None = None  # an array's element type
    orderable: bool = True  # ORDER BY works on it (a cursor can follow it)
    sort_key: SortKey | None = None
    #: Filters compare ``compare(column)`` with ``compare(value)`` (e.g. both cast to
    #: text, for types without an equality operator); None: the column itself.
    compare: Callable[[Any], Any] | None = None
    #: LIKE needs the column cast to text first (PostgreSQL non-text types).
    like_as_text: bool = False
    #: The SELECT list reads ``read(column)`` (e.g. spatial values as WKT); None: as is.
    read: Callable[[Any], Any] | None = None
    #: Turns a value (coerced, as a list for arrays) into what the driver binds.
    to_db: Callable[[Any], Any] | None = None
    #: The smallest and largest integer the column holds (None: 64-bit signed).
    bounds: tuple[int, int] | None = None
    #: Replace values.py's JSON -> Python value and database value -> JSON functions.
    coerce: Callable[[Any], Any] | None = None
    encode: Callable[[Any], Any] | None = None
    #: The column may hold values of any type whatever it declares (a SQLite table
    #: that is not STRICT): they are served as stored and cursors carry them, while
    #: writes and filter values must still fit the declared type.
    loose: bool = False
    #: What the filters of WebSocket feeds, evaluated in Python, compare for a value
    #: of this column, so they agree with ``compare`` in SQL; None: the value itself.
    compare_key: Callable[[Any], Any] | None = None
    #: gt/gte/lt/lte filters are offered: only where a feed can evaluate them as the
    #: database orders the type (not for a MariaDB UUID or a PostgreSQL inet, whose
    #: orders are the database's own; ORDER BY still works).
    range_filters: bool = True
    #: A JSON schema of what a write surely accepts (the OpenAPI request schema), for
    #: types whose valid text the kind does not describe (an inet, a range, WKT);
    #: None: derived from the kind.
    request_schema: dict[str, Any] | None = _field(default=None, hash=False)
    #: The database's own text for values the kind's Python type cannot hold
    #: (PostgreSQL's infinity and BC dates, MySQL's zero dates), as a pattern: such a
    #: value is served as that text, and that text is taken back by writes, filters
    #: and cursors (the database reads it), so the row round-trips unchanged.
    special_text: str | None = None


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    table: str
    references: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        return {"columns": list(self.columns),
                "references": {"table": self.table, "columns": list(self.references)}}


class JSONTextField(peewee.Field):
    """A JSON document kept as text (MariaDB's JSON, a SQLite column declared JSON).
    Text that is not JSON reads as the string it is."""

    field_type = "JSON"

    def db_value(self, value: Any) -> Any:
        if value is None or isinstance(value, peewee.Node):
            return value
        return json.dumps(value, ensure_ascii=False, allow_nan=False)

    def python_value(self, value: Any) -> Any:
        if isinstance(value, (str, bytes)):
            try:
                return json.loads(value)
            except ValueError:
                return value.decode(errors="replace") if isinstance(value, bytes) else value
        return value


@dataclass(frozen=True)
class DeclaredColumn:
    """What a database's catalog says of a column beyond reflection (for the OpenAPI
    document; read once, by the backend, while the table is reflected)."""

    length: int | None = None  # the most characters (bytes for binary) it holds
    fixed: bool = False  # exactly `length` (PostgreSQL's bit(n))
    generated: bool = False  # the database fills it in (a sequence, identity, rowid)
    #: An auto-increment counter that a large explicit value exhausts (MySQL's
    #: AUTO_INCREMENT, SQLite's AUTOINCREMENT): every later insert would then fail.
    counter: bool = False
