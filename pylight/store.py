"""The blocking row operations behind the REST API; they run in the database worker threads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import peewee

from pylight import query as ql
from pylight.auth import forbidden
from pylight.backend import Backend
from pylight.errors import not_found
from pylight.hub import Change
from pylight.schema import TableInfo

RowCheck = Callable[[dict[str, Any]], bool]


@dataclass
class Page:
    items: list[dict[str, Any]]
    after: str | None = None  # cursor of the next page
    next_offset: int | None = None  # offset of the next page, where there is no cursor
    total: int | None = None


def _key_condition(table: TableInfo, key: list[Any]) -> Any:
    condition = None
    for fld, value in zip(table.key_fields(), key, strict=False):
        step = fld == value
        condition = step if condition is None else condition & step
    return condition


def _default_order(table: TableInfo) -> list[ql.OrderBy]:
    if table.has_key:
        return [ql.OrderBy(name) for name in table.primary_key]
    # Without a key, order by every comparable column so offset pages are stable.
    return [ql.OrderBy(name) for name, column in table.columns.items()
            if column.kind not in ("json", "binary", "any")]


def list_rows(table: TableInfo, backend: Backend, q: ql.ListQuery) -> Page:
    names = q.select or list(table.columns)
    keyset = ql.keyset_order(table, q)
    order = keyset or q.order or _default_order(table)
    fetch = names + [item.column for item in order if item.column not in names]
    fields = [table.columns[name].field for name in fetch]

    where = ql.to_sql(table, backend, q.where)
    conditions = where
    if q.after is not None and keyset is not None:
        step = ql.keyset_condition(table, keyset, q.after)
        conditions = step if conditions is None else conditions & step
    select = table.model.select(*fields)
    if conditions is not None:
        select = select.where(conditions)
    select = select.order_by(*ql.order_sql(table, order)).limit(q.limit + 1)
    if q.offset:
        select = select.offset(q.offset)
    rows = list(select.tuples())

    page = Page(items=[])
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    for row in rows:
        page.items.append(table.encode_row(names, row[: len(names)]))
    if more and rows:
        if keyset is not None:
            last = table.encode_row(fetch, rows[-1])
            page.after = ql.encode_cursor([last[item.column] for item in keyset])
        else:
            page.next_offset = q.offset + q.limit
    if q.count:
        counter = table.model.select(peewee.fn.COUNT(peewee.SQL("*")))
        if where is not None:
            counter = counter.where(where)
        page.total = counter.scalar()
    return page


class _ByKey:
    """``SELECT <columns> WHERE <key> = ? LIMIT 1``, compiled once per table.

    Reading one row by key is the hottest path; peewee would rebuild the same
    SQL text on every request, which costs about as much as the query itself.
    """

    _SLOT = object()

    def __init__(self, table: TableInfo, for_update: bool) -> None:
        self.names = list(table.columns)
        fields = [table.columns[n].field for n in self.names]
        self.key_fields = table.key_fields()
        condition = None
        for fld in self.key_fields:
            # converter=False keeps the placeholder out of the field's db_value.
            step = fld == peewee.Value(self._SLOT, converter=False)
            condition = step if condition is None else condition & step
        select = table.model.select(*fields).where(condition).limit(1)
        if for_update:
            select = select.for_update()
        self.sql, params = select.sql()
        self.slots = [i for i, param in enumerate(params) if param is self._SLOT]
        self.params = params
        self.converters = [fld.python_value for fld in fields]

    def run(self, table: TableInfo, key: list[Any]) -> dict[str, Any] | None:
        params = list(self.params)
        for slot, fld, value in zip(self.slots, self.key_fields, key, strict=True):
            params[slot] = fld.db_value(value)
        row = table.model._meta.database.execute_sql(self.sql, params).fetchone()
        if row is None:
            return None
        values = tuple(None if v is None else convert(v)
                       for convert, v in zip(self.converters, row, strict=True))
        return table.encode_row(self.names, values)


def get_row(table: TableInfo, key: list[Any], for_update: bool = False,
            backend: Backend | None = None) -> dict[str, Any] | None:
    lock = bool(for_update and backend is not None and backend.supports_for_update)
    statement = table.statements.get(("by_key", lock))
    if statement is None:
        statement = table.statements[("by_key", lock)] = _ByKey(table, lock)
    return statement.run(table, key)


def _values(table: TableInfo, data: dict[str, Any]) -> dict[peewee.Field, Any]:
    return {table.columns[name].field: value for name, value in data.items()}


def _key_from(table: TableInfo, data: dict[str, Any], fallback: list[Any] | None) -> list[Any]:
    if fallback is None:
        return [data[name] for name in table.primary_key]
    return [data.get(name, old) for name, old in zip(table.primary_key, fallback, strict=False)]


def _check(table: TableInfo, check: RowCheck | None, record: dict[str, Any] | None) -> None:
    """Refuse (and so roll back) a write whose row falls outside the caller's row filter."""
    if check is not None and record is not None and not check(record):
        raise forbidden(f"the row is outside the rows you may change in {table.name!r}")


def insert_rows(table: TableInfo, backend: Backend, rows: list[dict[str, Any]],
                check: RowCheck | None = None) -> tuple[list[dict[str, Any]], list[Change]]:
    names = list(table.columns)
    records = []
    for data in rows:
        insert = table.model.insert(_values(table, data))
        if backend.supports_returning:
            returned = list(insert.returning(*[table.columns[n].field for n in names])
                            .tuples().execute())
            record = table.encode_row(names, returned[0])
        else:
            last_id = insert.execute()
            record = None
            if table.has_key:
                if len(table.primary_key) == 1 and table.primary_key[0] not in data:
                    key = [last_id]
                else:
                    key = [data[name] for name in table.primary_key]
                record = get_row(table, key)
            if record is None:
                # No key to read the row back by: answer with what was stored.
                record = table.encode_row(list(data), tuple(data.values()))
        records.append(record)
    for record in records:
        _check(table, check, record)
    changes = [Change(table.name, "created", table.key_of(r), r) for r in records]
    return records, changes


def _locked_row(table: TableInfo, backend: Backend, key: list[Any],
                check: RowCheck | None) -> dict[str, Any]:
    old = get_row(table, key, for_update=True, backend=backend)
    if old is None or (check is not None and not check(old)):
        # A row outside the caller's row filter does not exist for them.
        raise not_found(f"no row in {table.name!r} with key {_show(key)}")
    return old


def update_row(table: TableInfo, backend: Backend, key: list[Any], data: dict[str, Any],
               check: RowCheck | None = None) -> tuple[dict[str, Any], list[Change]]:
    old = _locked_row(table, backend, key, check)
    if not data:
        return old, []
    table.model.update(_values(table, data)).where(_key_condition(table, key)).execute()
    new_key = [data.get(name, value) for name, value in zip(table.primary_key, key, strict=False)]
    record = get_row(table, new_key)
    if record is None:  # the new key was coerced by the database in a way we cannot follow
        raise not_found(f"the updated row in {table.name!r} can no longer be read back")
    _check(table, check, record)
    return record, [Change(table.name, "updated", table.key_of(record), record, old)]


def delete_row(table: TableInfo, backend: Backend, key: list[Any],
               check: RowCheck | None = None) -> tuple[None, list[Change]]:
    old = _locked_row(table, backend, key, check)
    table.model.delete().where(_key_condition(table, key)).execute()
    return None, [Change(table.name, "deleted", table.key_of(old), old)]


def _show(key: list[Any]) -> str:
    return ",".join(str(part) for part in key)[:100]
