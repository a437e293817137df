"""How many rows each table has, for `GET /api/?count=true` (the explorer's table list):
counted where that is cheap, the database's own estimate where counting is costly."""

from __future__ import annotations

from typing import Any

import peewee

from pylight import query as ql
from pylight import values
from pylight.backend import Backend
from pylight.db import Database
from pylight.errors import ApiError, bad_request
from pylight.schema import TableInfo

#: A table the database estimates at more rows than this is not counted (COUNT(*)
#: reads the whole table on PostgreSQL and InnoDB): its estimate is given instead.
EXACT_UP_TO = 100_000


def wanted(arguments: dict[str, list[bytes]]) -> bool:
    """Whether ``count=true`` was asked for (400 for another value, or two)."""
    raw = arguments.get("count")
    if raw is None:
        return False
    if len(raw) != 1:
        raise bad_request("count: given more than once", parameter="count")
    truth = values.query_boolean(raw[0].decode("utf-8", "replace"))
    if truth is None:
        raise bad_request("count: expected true or false", parameter="count")
    return truth


def _count(table: TableInfo, backend: Backend, where: ql.Group | None) -> int:
    select = table.model.select(peewee.fn.COUNT(peewee.SQL("*")))
    condition = ql.to_sql(table, backend, where) if where is not None else None
    if condition is not None:
        select = select.where(condition)
    return int(select.scalar())


async def count_rows(database: Database, backend: Backend, tables: dict[str, TableInfo],
                     row_filters: dict[str, ql.Group | None]) -> dict[str, dict[str, Any]]:
    """``{table: {"rows": n, "rows_estimated": bool}}`` for ``tables``.

    ``row_filters``: the rows the caller may see per table (an auth plugin's row
    filter); such a table is counted with its filter, or left uncounted
    (``"rows": null``) when it is too large to count, as an estimate of the whole
    table would tell the caller about rows it may not see. Views have no estimate
    and may be costly to evaluate: they are not counted. A table whose count fails
    gets ``"rows": null`` and ``"rows_error"``: the database's message.
    """
    estimates = await database.read(backend.estimated_row_counts, database.db)
    counts: dict[str, dict[str, Any]] = {}
    for name, table in tables.items():
        estimate = estimates.get(name)
        where = row_filters.get(name)
        if table.is_view or (estimate is not None and estimate > EXACT_UP_TO and where):
            counts[name] = {"rows": None, "rows_estimated": False}
        elif estimate is not None and estimate > EXACT_UP_TO:
            counts[name] = {"rows": estimate, "rows_estimated": True}
        else:
            try:
                rows = await database.read(_count, table, backend, where)
            except ApiError as error:
                counts[name] = {"rows": None, "rows_estimated": False,
                                "rows_error": error.message}
                continue
            counts[name] = {"rows": rows, "rows_estimated": False}
    return counts
