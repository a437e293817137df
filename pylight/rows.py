"""The rows of the exposed tables as the REST handlers use them.

Reads run in the database's worker pool; writes go through the writes unit
(one transaction, then the change path). The blocking work itself is
:mod:`pylight.store`'s.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pylight import bulk, store
from pylight import query as ql
from pylight.auth import Identity
from pylight.backend import Backend
from pylight.db import Database
from pylight.etag import Preconditions
from pylight.schema import TableInfo
from pylight.writes import Actor, Writes

Row = dict[str, Any]
#: Record-level authorisation of one row a write would change (raises 401/403).
Authorize = Callable[[Row], Awaitable[None]]


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
        if len(rows) == 1 and check is None and self.backend.supports_returning:
            return await self.writes.run_alone(table.name, store.inserts_alone, store.insert_alone,
                                               store.insert_rows, table, self.backend, rows, check,
                                               actor=self._actor(identity))
        return await self.writes.run(table.name, store.insert_rows, table, self.backend, rows,
                                     check, actor=self._actor(identity))

    async def update(self, table: TableInfo, key: list[Any], row: Row,
                     check: store.RowCheck | None, identity: Identity | None = None,
                     expected: Preconditions | None = None) -> Row:
        """``expected``: the request's If-Match/If-None-Match, checked under the row lock."""
        return await self.writes.run(table.name, store.update_row, table, self.backend, key,
                                     row, check, expected, actor=self._actor(identity))

    async def delete(self, table: TableInfo, key: list[Any], check: store.RowCheck | None,
                     identity: Identity | None = None,
                     expected: Preconditions | None = None) -> None:
        await self.writes.run(table.name, store.delete_row, table, self.backend, key, check,
                              expected, actor=self._actor(identity))

    # -- many rows at once (pylight.bulk) -------------------------------------------
    async def _allowed(self, rows: list[Row], authorize: Authorize | None) -> bulk.Allowed:
        """Ask the record-level hooks about every row a write would change, before it
        (hooks may be async; the write runs in a worker thread): the rows allowed."""
        if authorize is None:
            return None
        for record in rows:
            await authorize(record)
        return frozenset(bulk.fingerprint(record) for record in rows)

    async def _allowed_where(self, table: TableInfo, where: ql.Group,
                             authorize: Authorize | None) -> bulk.Allowed:
        """The rows ``where`` matches that the record-level hooks allow (None: no hooks)."""
        if authorize is None:
            return None
        found = await self.database.read(bulk.rows_where, table, self.backend, where)
        return await self._allowed(found, authorize)

    async def update_where(self, table: TableInfo, where: ql.Group, row: Row,
                           check: store.RowCheck | None, identity: Identity | None = None,
                           authorize: Authorize | None = None) -> list[Row]:
        """Set ``row`` on every row ``where`` matches; the rows as left."""
        allowed = await self._allowed_where(table, where, authorize)
        return await self.writes.run(table.name, bulk.update_where, table, self.backend, where,
                                     row, check, allowed, actor=self._actor(identity))

    async def delete_where(self, table: TableInfo, where: ql.Group,
                           identity: Identity | None = None,
                           authorize: Authorize | None = None) -> list[Row]:
        """Delete every row ``where`` matches; the rows as they were."""
        allowed = await self._allowed_where(table, where, authorize)
        return await self.writes.run(table.name, bulk.delete_where, table, self.backend, where,
                                     allowed, actor=self._actor(identity))

    async def upsert(self, table: TableInfo, rows: list[Row], target: tuple[str, ...],
                     merge: bool, check: store.RowCheck | None,
                     identity: Identity | None = None,
                     authorize: Authorize | None = None) -> list[Row]:
        """Insert ``rows``, updating (``merge``) or skipping those whose ``target`` values
        exist; the rows inserted or updated. ``authorize``: of the updates."""
        allowed = None
        if authorize is not None and merge:
            found = await self.database.read(bulk.existing_rows, table, self.backend, rows, target)
            allowed = await self._allowed(found, authorize)
        return await self.writes.run(table.name, bulk.upsert_rows, table, self.backend, rows,
                                     target, merge, check, allowed, actor=self._actor(identity))
