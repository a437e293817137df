"""The blocking row operations behind the REST API; they run in the database worker threads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import peewee

from pylight import query as ql
from pylight.auth import forbidden
from pylight.backend import Backend
from pylight.changes import Change
from pylight.decoding import row_decoder
from pylight.errors import ApiError, not_found, unprocessable
from pylight.etag import Preconditions
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


@dataclass(eq=False)
class Joined:
    """A many-to-one related row read in the page's own statement, by a LEFT JOIN
    (pylight.embed chooses which): its object goes under ``key``, or None where
    there is no related row the caller may see."""

    key: str
    table: TableInfo
    parent_columns: tuple[str, ...]
    child_columns: tuple[str, ...]
    columns: tuple[str, ...]  # the related row's columns shown
    where: ql.Group  # its filters, the caller's row filter among them

    @property
    def read(self) -> tuple[str, ...]:
        """The columns read: those shown, then the join's (a match has them non-NULL)."""
        return tuple(dict.fromkeys([*self.columns, *self.child_columns]))

    def signature(self) -> tuple[Any, ...]:
        return (self.key, self.table.name, self.parent_columns, self.child_columns, self.columns)


def _join(select: Any, table: TableInfo, backend: Backend, joins: list[Joined]) -> Any:
    for joined in joins:
        child = joined.table
        on = None
        for parent_column, child_column in zip(joined.parent_columns, joined.child_columns,
                                               strict=True):
            step = child.columns[child_column].field == table.columns[parent_column].field
            on = step if on is None else on & step
        filters = ql.to_sql(child, backend, joined.where)
        if filters is not None:
            on = on & filters
        select = select.join_from(table.model, child.model, peewee.JOIN.LEFT_OUTER, on=on)
    return select


def _joined_fields(joins: list[Joined]) -> list[Any]:
    return [joined.table.columns[name].selected for joined in joins for name in joined.read]


def list_rows(table: TableInfo, backend: Backend, q: ql.ListQuery,
              joins: list[Joined] | None = None) -> Page:
    """A page of ``q``; ``joins``: related rows to read with it (see :class:`Joined`)."""
    joins = joins or []
    names = q.select or list(table.columns)
    # The order is always total (see query.full_order): a table with a key pages
    # by cursor under any order, one without a key by offset.
    keyset = ql.keyset_order(table, q)
    order = keyset or ql.full_order(table, q.order)
    # The order's columns beyond the selected ones, once each (a table without a key
    # is ordered by a column twice: as asked, then as a tie-breaker).
    fetch = names + list(dict.fromkeys(item.column for item in order if item.column not in names))
    where = ql.to_sql(table, backend, q.where)
    sql, params = _list_statement(table, backend, q, fetch, order, keyset, where, joins)
    # Rows are decoded and encoded in one pass by a per-shape decoder: peewee's
    # cursor wrapper costs more per row than the encoding itself.
    rows = table.model._meta.database.execute_sql(sql, params).fetchall()
    decode = _joined_decoder(table, tuple(fetch), joins) if joins else row_decoder(table, tuple(fetch))

    page = Page(items=[])
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    width = len(names)
    items = page.items
    if width == len(fetch):
        items.extend(map(decode, rows))
    else:
        for row in rows:
            record = decode(row)
            for extra in fetch[width:]:
                del record[extra]
            items.append(record)
    if more and rows:
        if keyset is not None:
            last = decode(rows[-1])
            page.after = ql.encode_cursor([last[item.column] for item in keyset])
        else:
            page.next_offset = q.offset + q.limit
    if q.count:
        counter = table.model.select(peewee.fn.COUNT(peewee.SQL("*")))
        if where is not None:
            counter = counter.where(where)
        page.total = counter.scalar()
    return page


def _joined_decoder(table: TableInfo, fetch: tuple[str, ...], joins: list[Joined]
                    ) -> Callable[[tuple[Any, ...]], dict[str, Any]]:
    """Decodes a row of ``fetch`` followed by each join's columns: the record, with
    each related row's object (or None) under its key. Made once per shape."""
    key = ("joined decoder", fetch, tuple(joined.signature() for joined in joins))
    decoder = table.statements.get(key)
    if decoder is not None:
        return decoder
    parent, width = row_decoder(table, fetch), len(fetch)
    parts = []
    start = width
    for joined in joins:
        read = joined.read
        end = start + len(read)
        matched = [start + read.index(name) for name in joined.child_columns]
        shown = None if len(read) == len(joined.columns) else joined.columns
        parts.append((joined.key, row_decoder(joined.table, read), start, end, matched, shown))
        start = end

    def decoder(row: tuple[Any, ...]) -> dict[str, Any]:
        record = parent(row[:width])
        for name, child, begin, end, matched, shown in parts:
            # The join's columns are NULL only where no related row matched.
            if all(row[i] is None for i in matched):
                record[name] = None
            else:
                related = child(row[begin:end])
                record[name] = related if shown is None else {n: related[n] for n in shown}
        return record

    table.statements[key] = decoder
    return decoder


def _list_statement(table: TableInfo, backend: Backend, q: ql.ListQuery, fetch: list[str],
                    order: list[ql.OrderBy], keyset: list[ql.OrderBy] | None, where: Any,
                    joins: list[Joined]) -> tuple[str, list[Any]]:
    if where is None and not any(joined.where.members for joined in joins):
        # No filters: the statement depends only on the columns, the order, the
        # joins and whether there is a cursor or an offset, so it is compiled once.
        shape = _ListShape.get(table, backend, fetch, order,
                               keyset if q.after is not None else None, bool(q.offset), q.after,
                               joins)
        return shape.bind(q)
    conditions = where
    if q.after is not None and keyset is not None:
        after = ql.keyset_condition(table, keyset, q.after)
        conditions = after if conditions is None else conditions & after
    fields = [table.columns[name].selected for name in fetch]
    select = _join(table.model.select(*fields, *_joined_fields(joins)), table, backend, joins)
    if conditions is not None:
        select = select.where(conditions)
    select = select.order_by(*ql.order_sql(table, order)).limit(q.limit + 1)
    if q.offset:
        select = select.offset(q.offset)
    return select.sql()


class _ListShape:
    """An unfiltered list statement with slots for the cursor values, limit and offset.

    NULLs in a cursor change the statement's text (``IS NULL`` has no slot), so
    which cursor values are NULL is part of the shape.
    """

    def __init__(self, table: TableInfo, backend: Backend, fetch: list[str],
                 order: list[ql.OrderBy], keyset: list[ql.OrderBy] | None, offset: bool,
                 nulls: tuple[bool, ...], joins: list[Joined]) -> None:
        self.cursor_slots = [None if null else object() for null in nulls]
        self.limit_slot, self.offset_slot = object(), object()
        self.cursor_columns = [table.columns[item.column] for item in keyset or ()]
        select = table.model.select(*[table.columns[name].selected for name in fetch],
                                    *_joined_fields(joins))
        select = _join(select, table, backend, joins)
        if keyset:
            select = select.where(ql.keyset_condition(
                table, keyset, [None if slot is None else peewee.Value(slot, converter=False)
                                for slot in self.cursor_slots]))
        select = select.order_by(*ql.order_sql(table, order)).limit(self.limit_slot)
        if offset:
            select = select.offset(self.offset_slot)
        self.sql, self.params = select.sql()

    @classmethod
    def get(cls, table: TableInfo, backend: Backend, fetch: list[str], order: list[ql.OrderBy],
            keyset: list[ql.OrderBy] | None, offset: bool, after: list[Any] | None,
            joins: list[Joined]) -> _ListShape:
        nulls = tuple(value is None for value in after or ()) if keyset else ()
        key = ("list", tuple(fetch), tuple(order), tuple(keyset or ()), offset, nulls,
               tuple(joined.signature() for joined in joins))
        shape = table.statements.get(key)
        if shape is None:
            shape = table.statements[key] = cls(table, backend, fetch, order, keyset, offset,
                                                nulls, joins)
        return shape

    def bind(self, q: ql.ListQuery) -> tuple[str, list[Any]]:
        fills: dict[int, Any] = {id(self.limit_slot): q.limit + 1, id(self.offset_slot): q.offset}
        for slot, column, value in zip(self.cursor_slots, self.cursor_columns, q.after or (),
                                       strict=False):
            if slot is not None:
                fills[id(slot)] = ql.bound_sort_value(column, value)
        return self.sql, [fills.get(id(param), param) for param in self.params]


class _InsertReturning:
    """``INSERT (<given columns>) VALUES (...) RETURNING <columns>``, compiled once per
    table and set of given columns."""

    def __init__(self, table: TableInfo, given: tuple[str, ...]) -> None:
        self.names = list(table.columns)
        self.slots = {name: object() for name in given}
        self.fields = {name: table.columns[name].field for name in given}
        insert = table.model.insert({self.fields[name]: peewee.Value(slot, converter=False)
                                     for name, slot in self.slots.items()})
        insert = insert.returning(*[table.columns[n].selected for n in self.names])
        self.sql, self.params = insert.sql()
        self.position = {id(slot): name for name, slot in self.slots.items()}
        self.alone: str | None = None  # the statement as sent alone (insert_alone)

    @classmethod
    def get(cls, table: TableInfo, given: tuple[str, ...]) -> _InsertReturning:
        key = ("insert", given)
        statement = table.statements.get(key)
        if statement is None:
            statement = table.statements[key] = cls(table, given)
        return statement

    def run(self, table: TableInfo, data: dict[str, Any],
            sql: str | None = None) -> dict[str, Any] | None:
        """Insert ``data``; ``sql``: the statement as the backend sends it alone. None
        when a trigger kept the row out of the table (see insert_rows)."""
        params = []
        for param in self.params:
            name = self.position.get(id(param))
            params.append(param if name is None else self.fields[name].db_value(data[name]))
        row = table.model._meta.database.execute_sql(sql or self.sql, params).fetchone()
        return None if row is None else row_decoder(table, tuple(self.names))(row)


class _ByKey:
    """``SELECT <columns> WHERE <key> = ? LIMIT 1``, compiled once per table.

    Reading one row by key is the hottest path; peewee would rebuild the same
    SQL text on every request, which costs about as much as the query itself.
    """

    _SLOT = object()

    def __init__(self, table: TableInfo, for_update: bool) -> None:
        self.names = list(table.columns)
        fields = [table.columns[n].selected for n in self.names]
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

    def run(self, table: TableInfo, key: list[Any]) -> dict[str, Any] | None:
        params = list(self.params)
        for slot, fld, value in zip(self.slots, self.key_fields, key, strict=True):
            params[slot] = fld.db_value(value)
        row = table.model._meta.database.execute_sql(self.sql, params).fetchone()
        if row is None:
            return None
        return row_decoder(table, tuple(self.names))(row)


def get_row(table: TableInfo, key: list[Any], for_update: bool = False,
            backend: Backend | None = None) -> dict[str, Any] | None:
    lock = bool(for_update and backend is not None and backend.supports_for_update)
    statement = table.statements.get(("by_key", lock))
    if statement is None:
        statement = table.statements[("by_key", lock)] = _ByKey(table, lock)
    return statement.run(table, key)


def _values(table: TableInfo, data: dict[str, Any]) -> dict[peewee.Field, Any]:
    return {table.columns[name].field: value for name, value in data.items()}


def _kept(table: TableInfo, data: dict[str, Any], record: dict[str, Any]) -> None:
    """Refuse (and so roll back) a write whose row reads back NULL where a value was
    given: the database dropped it (MariaDB stores text that is not WKT as NULL)."""
    for name, value in data.items():
        if value is not None and name in record and record[name] is None:
            raise unprocessable(f"column {name!r}: the database could not store the value "
                                f"given (it reads back as null)", column=name)


def _check(table: TableInfo, check: RowCheck | None, record: dict[str, Any] | None) -> None:
    """Refuse (and so roll back) a write whose row falls outside the caller's row filter."""
    if check is not None and record is not None and not check(record):
        raise forbidden(f"the row is outside the rows you may change in {table.name!r}")


def insert_rows(table: TableInfo, backend: Backend, rows: list[dict[str, Any]],
                check: RowCheck | None = None) -> tuple[list[dict[str, Any]], list[Change]]:
    """Insert ``rows``; the records stored and their changes. A row a trigger kept out
    of the table (PostgreSQL's BEFORE trigger returning NULL, as old-style partitioning
    does after routing the row to a child table; SQLite's RAISE(IGNORE)) comes back
    from RETURNING as nothing: it has no record here and no change event."""
    records = []
    for data in rows:
        if backend.supports_returning:
            record = _InsertReturning.get(table, tuple(data)).run(table, data)
            if record is None:
                continue
        else:
            last_id = table.model.insert(_values(table, data)).execute()
            record = None
            missing = [name for name in table.primary_key if name not in data]
            if len(table.primary_key) > 1 and missing:
                record = _read_back_defaulted(table, data, missing, last_id)
            elif table.has_key:
                key = [last_id] if missing else [data[name] for name in table.primary_key]
                record = get_row(table, key)
                if record is None and len(table.primary_key) == 1 and last_id:
                    # MySQL/MariaDB generate the key when given 0 for an AUTO_INCREMENT
                    # column: the row is under last_id (found by fuzzing; the answer
                    # was the request echoed back with id 0).
                    record = get_row(table, [last_id])
            if record is None:
                record = _find_inserted(table, backend, data)
        _kept(table, data, record)
        _check(table, check, record)
        records.append(record)
    changes = [Change(table.name, "created", table.key_of(r), r) for r in records]
    return records, changes


def inserts_alone(table: TableInfo, backend: Backend, rows: list[dict[str, Any]],
                  check: RowCheck | None = None) -> bool:
    """Whether this insert may be one statement that commits by itself
    (:meth:`pylight.writes.Writes.run_alone`): one row, read back by RETURNING, and
    nothing that could refuse it once written (no row filter to check, no trigger or
    rule that rewrites the row, so it reads back as given)."""
    if len(rows) != 1 or check is not None or not backend.supports_returning or table.is_view:
        return False
    known = table.statements.get("inserts_alone")
    if known is None:
        known = table.statements["inserts_alone"] = backend.inserts_alone(
            table.model._meta.database, table.name)
    return known


def insert_alone(table: TableInfo, backend: Backend, rows: list[dict[str, Any]],
                 check: RowCheck | None = None) -> tuple[list[dict[str, Any]], list[Change]]:
    """The insert of :func:`inserts_alone`: its one statement, committing by itself."""
    data = rows[0]
    statement = _InsertReturning.get(table, tuple(data))
    if statement.alone is None:
        statement.alone = backend.alone(statement.sql)
    record = statement.run(table, data, statement.alone)
    if record is None:  # only a trigger keeps a row out, and with one this is not used
        return [], []
    return [record], [Change(table.name, "created", table.key_of(record), record)]


def _read_back_defaulted(table: TableInfo, data: dict[str, Any], missing: list[str],
                         last_id: Any) -> dict[str, Any] | None:
    """The row just inserted without RETURNING into a table whose composite key was
    partly left to the database (WordPress's wp_term_relationships): its key is the
    values given and, for the rest, the AUTO_INCREMENT value or ``DEFAULT(column)``."""
    declared = table.declared or {}
    condition = None
    for name in table.primary_key:
        field = table.columns[name].field
        if name not in missing:
            value = data[name]
        elif name in declared and declared[name].generated:
            value = last_id
        else:
            value = peewee.fn.DEFAULT(field)
        step = field == value
        condition = step if condition is None else condition & step
    names = list(table.columns)
    select = table.model.select(*[table.columns[n].selected for n in names]).where(condition)
    row = table.model._meta.database.execute_sql(*select.limit(1).sql()).fetchone()
    return None if row is None else row_decoder(table, tuple(names))(row)


def _find_inserted(table: TableInfo, backend: Backend, data: dict[str, Any]) -> dict[str, Any]:
    """A row just inserted into a table without a key, read back by the values given
    (so its defaulted columns are filled in); the values given if it cannot be found."""
    conditions = ql.Group(tuple(
        ql.Condition(name, "is", None) if value is None else ql.Condition(name, "eq", value)
        for name, value in data.items() if table.columns[name].kind not in ("json", "binary")))
    where = ql.to_sql(table, backend, conditions)
    names = list(table.columns)
    select = table.model.select(*[table.columns[n].selected for n in names])
    if where is not None:
        select = select.where(where)
    row = table.model._meta.database.execute_sql(*select.limit(1).sql()).fetchone()
    if row is None:
        return table.encode_row(list(data), tuple(data.values()))
    return row_decoder(table, tuple(names))(row)


def _locked_row(table: TableInfo, backend: Backend, key: list[Any],
                check: RowCheck | None, expected: Preconditions | None = None) -> dict[str, Any]:
    old = get_row(table, key, for_update=True, backend=backend)
    if old is None or (check is not None and not check(old)):
        # A row outside the caller's row filter does not exist for them.
        raise not_found(f"no row in {table.name!r} with key {_show(key)}")
    if expected is not None:
        # If-Match is checked on the row as locked, so no other write can come
        # between the check and this transaction's own (412: rolled back).
        expected.require(old)
    return old


def update_row(table: TableInfo, backend: Backend, key: list[Any], data: dict[str, Any],
               check: RowCheck | None = None,
               expected: Preconditions | None = None) -> tuple[dict[str, Any], list[Change]]:
    old = _locked_row(table, backend, key, check, expected)
    if not data:
        return old, []
    table.model.update(_values(table, data)).where(_key_condition(table, key)).execute()
    new_key = [data.get(name, value) for name, value in zip(table.primary_key, key, strict=False)]
    record = get_row(table, new_key)
    if record is None:  # the new key was coerced by the database in a way we cannot follow
        raise not_found(f"the updated row in {table.name!r} can no longer be read back")
    _kept(table, data, record)
    _check(table, check, record)
    return record, [Change(table.name, "updated", table.key_of(record), record, old)]


def delete_row(table: TableInfo, backend: Backend, key: list[Any],
               check: RowCheck | None = None,
               expected: Preconditions | None = None) -> tuple[None, list[Change]]:
    old = _locked_row(table, backend, key, check, expected)
    if not table.model.delete().where(_key_condition(table, key)).execute():
        raise kept_by_trigger(table)
    return None, [Change(table.name, "deleted", table.key_of(old), old)]


def kept_by_trigger(table: TableInfo) -> ApiError:
    """A locked row that a DELETE did not remove: a trigger skipped it (PostgreSQL's
    BEFORE DELETE returning NULL, SQLite's RAISE(IGNORE)). Answered as the database's
    refusal, rolled back, and never published as deleted."""
    return unprocessable(f"a trigger of {table.name!r} kept a row from being deleted; "
                         "nothing was deleted", reason="kept_by_trigger")


def _show(key: list[Any]) -> str:
    return ",".join(str(part) for part in key)[:100]
