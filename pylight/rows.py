"""The rows of the exposed tables as the REST handlers use them.

Reads run in the database's worker pool; writes go through the writes unit
(one transaction, then the change path). The blocking work itself is
:mod:`pylight.store`'s.
"""

from __future__ import annotations

from typing import Any

from pylight import query as ql
from pylight import store
from pylight.auth import Identity
from pylight.backend import Backend
from pylight.db import Database
from pylight.schema import TableInfo
from pylight.writes import Actor, Writes

Row = dict[str, Any]


class Rows:
    def __init__(self, database: Database, writes: Writes, backend: Backend, *,
                 expose_actor: bool = False) -> None:
        """``expose_actor``: changes name who made them (``[realtime] expose_actor``)."""
        self.database = database
        self.writes = writes
        self.backend = backend
        self.expose_actor = expose_actor

    def _actor(self, identity: Identity | None) -> Actor:
        if not self.expose_actor:
            return None
        return (identity.subject if identity is not None else None,)

    async def page(self, table: TableInfo, q: ql.ListQuery) -> store.Page:
        return await self.database.read(store.list_rows, table, self.backend, q)

    async def get(self, table: TableInfo, key: list[Any]) -> Row | None:
        return await self.database.read(store.get_row, table, key)

    async def insert(self, table: TableInfo, rows: list[Row], check: store.RowCheck | None,
                     identity: Identity | None = None) -> list[Row]:
        return await self.writes.run(table.name, store.insert_rows, table, self.backend, rows,
                                     check, actor=self._actor(identity))

    async def update(self, table: TableInfo, key: list[Any], row: Row,
                     check: store.RowCheck | None, identity: Identity | None = None) -> Row:
        return await self.writes.run(table.name, store.update_row, table, self.backend, key,
                                     row, check, actor=self._actor(identity))

    async def delete(self, table: TableInfo, key: list[Any], check: store.RowCheck | None,
                     identity: Identity | None = None) -> None:
        await self.writes.run(table.name, store.delete_row, table, self.backend, key, check,
                              actor=self._actor(identity))
