"""The rows of the exposed tables as the REST handlers use them.

Reads run in the database's worker pool; writes go through the writes unit
(one transaction, then the change path). The blocking work itself is
:mod:`pylight.store`'s.
"""

from __future__ import annotations

from typing import Any

from pylight import query as ql
from pylight import store
from pylight.backend import Backend
from pylight.db import Database
from pylight.schema import TableInfo
from pylight.writes import Writes

Row = dict[str, Any]


class Rows:
    def __init__(self, database: Database, writes: Writes, backend: Backend) -> None:
        self.database = database
        self.writes = writes
        self.backend = backend

    async def page(self, table: TableInfo, q: ql.ListQuery) -> store.Page:
        return await self.database.read(store.list_rows, table, self.backend, q)

    async def get(self, table: TableInfo, key: list[Any]) -> Row | None:
        return await self.database.read(store.get_row, table, key)

    async def insert(self, table: TableInfo, rows: list[Row],
                     check: store.RowCheck | None) -> list[Row]:
        return await self.writes.run(table.name, store.insert_rows, table, self.backend, rows,
                                     check)

    async def update(self, table: TableInfo, key: list[Any], row: Row,
                     check: store.RowCheck | None) -> Row:
        return await self.writes.run(table.name, store.update_row, table, self.backend, key,
                                     row, check)

    async def delete(self, table: TableInfo, key: list[Any],
                     check: store.RowCheck | None) -> None:
        await self.writes.run(table.name, store.delete_row, table, self.backend, key, check)
