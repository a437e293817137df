"""Writes of many rows in one transaction: update and delete by filter, and upsert.

Blocking, like :mod:`pylight.store`: each function runs in a worker thread inside
the transaction :class:`pylight.writes.Writes` opens, and returns its result and
one :class:`Change` per row it changed, in order. Every row a write changes is
first read and locked (``SELECT ... FOR UPDATE``; SQLite's writers are one at a
time), so each change carries the row exactly as it was; the write then names
those rows one by one (by key, or by the database's row identity where there is
no key), so a row that comes to match the filter meanwhile is not touched
unseen.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import peewee

from pylight import decoding, store, values
from pylight import query as ql
from pylight.auth import forbidden
from pylight.backend import RAISED, Backend
from pylight.changes import Change
from pylight.errors import bad_request, conflict, method_not_allowed
from pylight.schema import TableInfo

Row = dict[str, Any]
#: The rows (as :func:`fingerprint`) that the caller's authorisation hooks allowed
#: to be changed; None: every row (no hook to ask).
Allowed = frozenset[str] | None
#: A raw row's identity: its key, or its system row identity, as the driver gave it.
Identity = tuple[Any, ...]

# Values bound per statement when rows are named one by one: SQLite before 3.32
# takes at most 999.
CHUNK_VALUES = 900
# An upsert whose row appears and disappears under it (concurrent writers) retries.
ATTEMPTS = 3
# List parameters that mean nothing to a write: refused, not ignored (a PATCH with
# `limit=1` must not change every matching row).
_NOT_FOR_WRITES = tuple(name for name in ql.LIST_PARAMS if name not in ("or", "and"))


# -- what the handlers ask before the body is read ------------------------------------

def parse_where(table: TableInfo, arguments: Mapping[str, Any], ignore: tuple[str, ...]) -> ql.Group:
    """The filters of a write by filter (the query language of lists); 400 without any."""
    _, params = ql.split_arguments(table, arguments, [*ignore, *ql.LIST_PARAMS])
    for name in params:
        if name in _NOT_FOR_WRITES:
            raise bad_request(f"{name}: a write by filter takes filters only", parameter=name)
    where = ql.parse_filters(table, arguments, ignore)
    if not where.members:
        raise bad_request(f"a write by filter needs at least one filter on {table.name!r}, "
                          "e.g. ?id=eq.7 (every row: a filter every row matches, such as "
                          "?id=not.is.null)")
    return where


def check_updatable(table: TableInfo, allow: list[str]) -> None:
    """405 for an update by filter of a table whose changed rows cannot be told apart."""
    if table.has_key or table.row_identity:
        return
    raise method_not_allowed(
        f"{table.name!r} has no primary key and this database has no row identity, so the "
        "rows an update by filter leaves could not be reported one by one; add a primary "
        "key (DELETE by filter works)", allow)


def conflict_target(table: TableInfo, arguments: Mapping[str, Any]) -> tuple[str, ...]:
    """The columns whose values decide whether an upserted row exists: ``on_conflict``
    (a unique constraint's or index's columns), else the primary key."""
    raw = arguments.get("on_conflict")
    if not raw:
        if set(table.primary_key) not in [set(key) for key in table.unique_keys]:
            raise bad_request(f"{table.name!r} has no primary key an upsert can use: name the "
                              "columns of a unique constraint with on_conflict=a,b",
                              parameter="on_conflict")
        return tuple(table.primary_key)
    if len(raw) != 1:
        raise bad_request("on_conflict: given more than once", parameter="on_conflict")
    text = raw[0].decode("utf-8", "replace") if isinstance(raw[0], bytes) else str(raw[0])
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",")))
    for name in names:
        if name not in table.columns:
            raise bad_request(f"on_conflict: unknown column {name[:64]!r} in {table.name!r}",
                              parameter="on_conflict")
    for key in table.unique_keys:
        if set(key) == set(names):
            return names
    known = "; ".join(",".join(key) for key in table.unique_keys) or "none"
    raise bad_request(f"on_conflict: {text[:100]!r} is not a primary key or unique constraint of "
                      f"{table.name!r} (those are: {known})", parameter="on_conflict")


def fingerprint(record: Row) -> str:
    """A record as one comparable value: a row read twice gives the same one unless it changed."""
    return values.dumps(record)


# -- reading the rows to change ---------------------------------------------------------

def _identity(table: TableInfo) -> list[Any]:
    """What names one row: the key's fields, else the database's system columns."""
    if table.has_key:
        return table.key_fields()
    return [peewee.SQL(name) for name in table.row_identity]


def _select(table: TableInfo, where: Any, identity: list[Any]) -> peewee.Select:
    fields = [*identity, *[column.selected for column in table.columns.values()]]
    return table.model.select(*fields).where(where)


def _read(table: TableInfo, select: peewee.Select, width: int) -> list[tuple[Identity, Row]]:
    decode = decoding.row_decoder(table, tuple(table.columns))
    rows = table.model._meta.database.execute_sql(*select.sql()).fetchall()
    return [(tuple(row[:width]), decode(row[width:])) for row in rows]


def matching(table: TableInfo, backend: Backend, where: ql.Group,
             lock: bool = False) -> list[tuple[Identity, Row]]:
    """The rows ``where`` matches, in key order, each with its raw identity; locked
    against other writers until the transaction ends with ``lock``."""
    identity = _identity(table)
    condition = ql.to_sql(table, backend, where)
    select = _select(table, condition, identity)
    # One order for every writer: two bulk writes lock their rows in the same order.
    select = select.order_by(*ql.order_sql(table, ql.full_order(table, [])))
    if lock and backend.supports_for_update:
        select = select.for_update()
    try:
        return _read(table, select, len(identity))
    except peewee.DatabaseError as exc:
        # Nothing is written yet: a value refused here is a filter's (PostgreSQL's
        # inet given "abc"), a bad query parameter.
        if backend.is_disconnect(exc):
            raise  # the caller retries it once on a fresh connection
        mapped = backend.map_error(exc)
        if mapped is None:
            raise
        if mapped.status == 422 and mapped.details.get("reason") != RAISED:
            raise bad_request(f"a filter value does not fit its column: {mapped.message}") from None
        raise mapped from None


def rows_where(table: TableInfo, backend: Backend, where: ql.Group) -> list[Row]:
    """The rows a write by filter would change now (read before it, to authorise them)."""
    return [record for _, record in matching(table, backend, where)]


def _authorised(table: TableInfo, allowed: Allowed, records: list[Row]) -> None:
    """Refuse (and so roll back) a write reaching a row the hooks were not asked about:
    one that changed, or came to match, since they were."""
    if allowed is not None and any(fingerprint(record) not in allowed for record in records):
        raise conflict(f"rows of {table.name!r} changed while the request was being "
                       "authorised; retry it", table=table.name)


def _named(identity: list[Any], names: list[Identity]) -> Any:
    """A condition naming rows by their raw identities (bound as given, unconverted)."""
    if len(identity) == 1:
        return identity[0].in_([peewee.Value(name[0], converter=False) for name in names])
    rows = [peewee.NodeList([part == peewee.Value(value, converter=False)
                             for part, value in zip(identity, name, strict=True)],
                            glue=" AND ", parens=True) for name in names]
    # One flat OR, as query.to_sql does: nested ones overflow SQLite's parser stack.
    return peewee.NodeList(rows, glue=" OR ", parens=True)


def _chunks(items: list[Any], width: int) -> Iterator[list[Any]]:
    size = max(CHUNK_VALUES // max(width, 1), 1)
    for start in range(0, len(items), size):
        yield items[start:start + size]


# -- update and delete by filter ---------------------------------------------------------

def update_where(table: TableInfo, backend: Backend, where: ql.Group, data: Row,
                 check: store.RowCheck | None = None,
                 allowed: Allowed = None) -> tuple[list[Row], list[Change]]:
    """Set ``data`` on every row ``where`` matches: the rows as left, one change each."""
    check_updatable(table, ["GET", "POST", "DELETE"])
    old = matching(table, backend, where, lock=True)
    _authorised(table, allowed, [record for _, record in old])
    if table.has_key:
        pairs = _update_by_key(table, backend, old, data)
    else:
        pairs = [(record, _update_one(table, backend, name, data)) for name, record in old]
    for _, after in pairs:
        store._kept(table, data, after)
        store._check(table, check, after)
    changes = [Change(table.name, "updated", table.key_of(after), after, before)
               for before, after in pairs]
    return [after for _, after in pairs], changes


def _update_by_key(table: TableInfo, backend: Backend, old: list[tuple[Identity, Row]],
                   data: Row) -> list[tuple[Row, Row]]:
    """Update rows named by key, a chunk per statement; each old row with the new one.

    Rows are paired by the key columns the update leaves alone: the rest of the key
    is the body's, the same for every row, so those columns tell the rows apart
    whenever the update succeeded (else the new keys would clash).
    """
    fields = table.key_fields()
    names = table.primary_key
    kept = [name for name in names if name not in data]
    new: dict[str, list[Row]] = {}
    for chunk in _chunks(old, len(fields)):
        update = table.model.update(store._values(table, data)).where(
            _named(fields, [name for name, _ in chunk]))
        if backend.supports_returning:
            rows = _returning(table, update)
        else:
            update.execute()
            moved = [tuple(fields[i].db_value(data[n]) if n in data else part
                           for i, (n, part) in enumerate(zip(names, name, strict=True)))
                     for name, _ in chunk]
            rows = [record for _, record in _read(table, _select(table, _named(fields, moved), []), 0)]
        for record in rows:
            new.setdefault(_pairing(record, kept), []).append(record)
    pairs = []
    for _, record in old:
        found = new.get(_pairing(record, kept))
        if not found:  # the database changed a key value in a way we cannot follow
            raise conflict(f"an updated row of {table.name!r} can no longer be read back")
        pairs.append((record, found.pop()))
    return pairs


def _pairing(record: Row, names: list[str]) -> str:
    return values.dumps([record.get(name) for name in names])


def _returning(table: TableInfo, query: Any) -> list[Row]:
    decode = decoding.row_decoder(table, tuple(table.columns))
    query = query.returning(*[column.selected for column in table.columns.values()])
    return [decode(row) for row in table.model._meta.database.execute_sql(*query.sql()).fetchall()]


def _update_one(table: TableInfo, backend: Backend, name: Identity, data: Row) -> Row:
    """Update one row of a table without a key, named by its system row identity.

    One statement per row: PostgreSQL's ctid changes with the update, so only the
    statement that made the new row can say which old row it was.
    """
    identity = _identity(table)
    update = table.model.update(store._values(table, data)).where(_named(identity, [name]))
    if backend.supports_returning:
        rows = _returning(table, update)
    else:  # SQLite before 3.35: its rowid stays the same
        update.execute()
        rows = [record for _, record in _read(table, _select(table, _named(identity, [name]), []), 0)]
    if len(rows) != 1:
        raise conflict(f"a row of {table.name!r} changed while it was being updated; retry")
    return rows[0]


def delete_where(table: TableInfo, backend: Backend, where: ql.Group,
                 allowed: Allowed = None) -> tuple[list[Row], list[Change]]:
    """Delete every row ``where`` matches: the rows as they were, one change each."""
    old = matching(table, backend, where, lock=True)
    records = [record for _, record in old]
    _authorised(table, allowed, records)
    identity = _identity(table)
    deleted = 0
    if identity:
        for chunk in _chunks(old, len(identity)):
            deleted += table.model.delete().where(_named(identity, [n for n, _ in chunk])).execute()
    elif old:
        # MySQL/MariaDB, a table without a key: its rows cannot be named one by one, but
        # the locking read above (REPEATABLE READ: next-key locks) keeps every row the
        # filter matches as it is until commit, so the same filter deletes just those.
        deleted = table.model.delete().where(ql.to_sql(table, backend, where)).execute()
    if deleted != len(old):  # the rows are locked: only a trigger can keep one
        raise store.kept_by_trigger(table)
    return records, [Change(table.name, "deleted", table.key_of(r), r) for r in records]


# -- upsert ---------------------------------------------------------------------------

def upsert_rows(table: TableInfo, backend: Backend, rows: list[Row], target: tuple[str, ...],
                merge: bool, check: store.RowCheck | None = None,
                allowed: Allowed = None) -> tuple[list[Row], list[Change]]:
    """Insert each row, or where a row with its ``target`` values exists update it with the
    row's columns (``merge``) or leave it (and leave it out of the result)."""
    records: list[Row] = []
    changes: list[Change] = []
    # Rows this upsert wrote itself (a body naming a key twice) count as authorised.
    mine = set(allowed) if allowed is not None else None
    for data in rows:
        if any(data.get(name) is None for name in target):
            # Without every conflict column (NULL equals nothing in a unique index) the
            # row cannot conflict: a plain insert, its key generated.
            inserted, created = store.insert_rows(table, backend, [data], check)
            records += inserted
            changes += created
            continue
        change = _upsert_one(table, backend, data, target, merge, check,
                             None if mine is None else frozenset(mine))
        if change is not None:
            if mine is not None:
                mine.add(fingerprint(change.record))
            store._kept(table, data, change.record)
            store._check(table, check, change.record)
            records.append(change.record)
            changes.append(change)
    return records, changes


def _upsert_one(table: TableInfo, backend: Backend, data: Row, target: tuple[str, ...],
                merge: bool, check: store.RowCheck | None, allowed: Allowed) -> Change | None:
    """One row's upsert: its change (None: skipped, as it exists).

    A plain read first, so no lock is taken on a key that is absent (MySQL's gap
    locks would deadlock two clients inserting it); then an insert that does
    nothing where the row exists, or the existing row locked and updated. A row
    that appears (another transaction inserted it) or vanishes in between is
    looked at again; a locking read sees the latest committed row even in MySQL's
    REPEATABLE READ, where a plain one keeps its first snapshot.
    """
    old = existing(table, backend, data, target)
    for _ in range(ATTEMPTS):
        if old is None:
            record = _insert_absent(table, backend, data, target)
            if record is not None:
                return Change(table.name, "created", table.key_of(record), record)
        elif not merge:
            return None
        old = existing(table, backend, data, target, lock=True)
        if old is not None:
            return _merge(table, backend, data, target, old, check, allowed) if merge else None
    # It never appeared: the insert conflicted on another unique column (MySQL's
    # ON DUPLICATE KEY takes any), or the row kept coming and going.
    raise backend.unique_conflict(f"the row conflicts with an existing row of {table.name!r} "
                                  f"other than by {', '.join(target)}")


def _target(table: TableInfo, backend: Backend, data: Row, target: tuple[str, ...]) -> Any:
    """``target`` columns equal to the row's values, compared as filters compare them."""
    return ql.to_sql(table, backend, ql.Group(tuple(
        ql.Condition(name, "eq", data[name]) for name in target)))


def existing(table: TableInfo, backend: Backend, data: Row, target: tuple[str, ...],
             lock: bool = False) -> Row | None:
    """The stored row with ``data``'s ``target`` values, if any (locked with ``lock``)."""
    select = _select(table, _target(table, backend, data, target), []).limit(1)
    if lock and backend.supports_for_update:
        select = select.for_update()
    rows = _read(table, select, 0)
    return rows[0][1] if rows else None


def existing_rows(table: TableInfo, backend: Backend, rows: list[Row],
                  target: tuple[str, ...]) -> list[Row]:
    """The stored rows an upsert of ``rows`` would update now (to authorise them first)."""
    found = (existing(table, backend, data, target) for data in rows
             if all(data.get(name) is not None for name in target))
    return [record for record in found if record is not None]


def _insert_absent(table: TableInfo, backend: Backend, data: Row,
                   target: tuple[str, ...]) -> Row | None:
    """Insert the row unless one with its ``target`` values exists: the row, or None."""
    fields = [table.columns[name].field for name in target]
    insert = backend.insert_if_absent(table.model.insert(store._values(table, data)), fields)
    if backend.supports_returning:
        rows = _returning(table, insert)
        return rows[0] if rows else None
    cursor = table.model._meta.database.execute_sql(*insert.sql())
    if cursor.rowcount != 1:
        return None
    record = existing(table, backend, data, target)
    if record is None and list(target) == table.primary_key and len(target) == 1:
        # MySQL/MariaDB generate the key when given 0 for an AUTO_INCREMENT column.
        record = store.get_row(table, [cursor.lastrowid]) if cursor.lastrowid else None
    if record is None:  # inserted, but not to be found: rolled back, never inserted twice
        raise conflict(f"the row inserted into {table.name!r} can no longer be read back")
    return record


def _merge(table: TableInfo, backend: Backend, data: Row, target: tuple[str, ...], old: Row,
           check: store.RowCheck | None, allowed: Allowed) -> Change:
    """Update the existing (locked) row ``old`` with the row's columns."""
    if check is not None and not check(old):
        raise forbidden(f"the existing row is outside the rows you may change in {table.name!r}")
    _authorised(table, allowed, [old])
    update = table.model.update(store._values(table, data)).where(
        _target(table, backend, data, target))
    if backend.supports_returning:
        rows = _returning(table, update)
        record = rows[0] if rows else None
    else:
        update.execute()
        record = existing(table, backend, data, target)
    if record is None:
        raise conflict(f"the updated row of {table.name!r} can no longer be read back")
    return Change(table.name, "updated", table.key_of(record), record, old)
