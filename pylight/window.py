"""Live windows (API.md 6.3): an ordered, limited query kept true as rows enter and leave it.

A subscription whose filter has ``order`` and ``limit`` follows the rows
``GET /api/<table>?<filters>&order=...&limit=N`` returns. One :class:`Window`
serves every subscriber with the same shape (table, filters with the auth row
filter, order, limit, select): it holds the rows, and when a change may touch
them (its row matches the filter, or was in the window) it reads the query
again, once for every subscriber, and sends the difference as ``update``,
``move``, ``enter`` and ``leave`` messages. Reading the database, rather than
placing rows by comparing values in Python, keeps the order exactly the
database's, collations, NULLs and ties included. Changes that arrive while a
read is running are handled together by the next read.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from pylight import messages, values
from pylight import query as ql
from pylight.auth import Auth, Identity
from pylight.hub import Feed, Notice
from pylight.schema import TableInfo
from pylight.subscription import Sink

log = logging.getLogger("pylight")

Row = dict[str, Any]
Reader = Callable[[TableInfo, ql.ListQuery], Awaitable[Any]]


def shape_of(table: TableInfo, query: ql.ListQuery) -> Hashable:
    """What makes two windows the same: the table and the whole query."""
    return (table.name, repr(query.where), repr(query.order), query.limit, tuple(query.select))


class Window:
    def __init__(self, table: TableInfo, query: ql.ListQuery, matcher: ql.Matcher | None,
                 read: Reader, feed: Feed, on_empty: Callable[[Window], None]) -> None:
        self.table = table
        self.query = query
        self.matcher = matcher
        self.feed = feed
        self._read = read
        self._on_empty = on_empty
        # Rows are told apart by their key; a table without one by all the values read.
        self.shown = query.select or list(table.columns)
        self.keyed = table.has_key
        extra = [c for c in table.primary_key if c not in self.shown] if self.keyed else []
        self.read_query = ql.ListQuery(query.where, query.order, query.limit,
                                       select=[*query.select, *extra] if query.select else [])
        self.keys: list[Any] = []
        self.rows: dict[Any, Row] = {}
        self.seq = feed.seq
        self.sinks: set[Sink] = set()
        self.waiting: list[Sink] = []  # joined during a read: a snapshot once it is done
        self.pending: list[Notice] = []
        self.task: asyncio.Future[None] | None = None
        self.loaded = False
        feed.subscribers.add(self)
        self._schedule()

    # -- subscribers ---------------------------------------------------------------------
    def join(self, sink: Sink) -> None:
        if self.task is None and self.loaded:
            self.sinks.add(sink)
            sink.send_text(self._snapshot())
        else:
            self.waiting.append(sink)

    def leave(self, sink: Sink) -> None:
        self.sinks.discard(sink)
        if sink in self.waiting:
            self.waiting.remove(sink)
        if not self.sinks and not self.waiting:
            self.feed.subscribers.discard(self)
            if self.task is not None:
                self.task.cancel()
            self._on_empty(self)

    # -- changes ---------------------------------------------------------------------------
    def deliver(self, notice: Notice) -> None:
        """A change was published (the hub calls this in seq order)."""
        if self.task is not None:
            self.pending.append(notice)  # looked at once the running read is done
        elif self.pending or self._touches(notice):
            self.pending.append(notice)
            self._schedule()
        else:
            self.seq = notice.seq

    def _touches(self, notice: Notice) -> bool:
        change = notice.change
        if self.matcher is None or self.matcher(change.record):
            return True
        return any(self._key(row) in self.rows for row in (change.record, change.old) if row)

    def _key(self, row: Row) -> Any:
        if self.keyed:
            return values.dumps([row.get(name) for name in self.table.primary_key])
        return values.dumps([row.get(name) for name in self.shown])

    def _schedule(self) -> None:
        self.task = asyncio.ensure_future(self._refresh())

    async def _refresh(self) -> None:
        while True:
            notices, self.pending = self.pending, []
            touched = [n for n in notices if self._touches(n)] if self.loaded else notices
            if self.loaded and not touched:
                if notices:
                    self.seq = notices[-1].seq
                break
            try:
                page = await self._read(self.table, self.read_query)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next change reads again
                log.warning("live window on %s: reading it failed (%s)", self.table.name,
                            getattr(exc, "message", None) or type(exc).__name__)
                self.pending = notices + self.pending
                self.task = None
                return
            seq = notices[-1].seq if notices else self.seq
            self._apply(page.items, touched, seq)
            if not self.pending:
                break
        self.task = None
        for sink in self.waiting:
            self.sinks.add(sink)
            sink.send_text(self._snapshot())
        self.waiting = []

    def _apply(self, items: list[Row], notices: list[Notice], seq: int) -> None:
        """Move to the rows just read and tell the subscribers how (nothing at the first read)."""
        keys = [self._key(row) for row in items]
        keys = _distinct(keys)
        rows = dict(zip(keys, items, strict=True))
        if self.loaded:
            events: dict[Any, str] = {}
            for notice in notices:
                change = notice.change
                for row in (change.record, change.old):
                    if row:
                        events[self._key(row)] = change.event
            texts = [messages.window_op(op, seq, self._shown(record) if record is not None
                                        else None)
                     for op, record in diff(self.keys, self.rows, keys, rows, events,
                                            self._pk)]
            for sink in self.sinks:
                for text in texts:
                    sink.send_text(text)
        self.keys, self.rows, self.seq, self.loaded = keys, rows, seq, True

    def _pk(self, row: Row) -> Any:
        return self.table.key_of(row) if self.keyed else None

    def _shown(self, row: Row) -> Row:
        if len(row) == len(self.shown):
            return row
        return {name: row[name] for name in self.shown}

    def _snapshot(self) -> str:
        return messages.window_snapshot(self.table.name, self.seq,
                                        [self._shown(self.rows[key]) for key in self.keys])


class Windows:
    """The live windows of one server, one per shape."""

    def __init__(self, read: Reader) -> None:
        self.read = read
        self.open: dict[Hashable, Window] = {}

    def join(self, table: TableInfo, query: ql.ListQuery, matcher: ql.Matcher | None,
             feed: Feed, sink: Sink) -> Window:
        shape = shape_of(table, query)
        window = self.open.get(shape)
        if window is None:
            window = self.open[shape] = Window(table, query, matcher, self.read, feed,
                                               lambda done: self.open.pop(shape, None))
        window.join(sink)
        return window


def _distinct(keys: list[Any]) -> list[Any]:
    """Keys made unique by their occurrence (rows of a table without a key may repeat)."""
    seen: dict[Any, int] = {}
    out = []
    for key in keys:
        count = seen.get(key, 0)
        seen[key] = count + 1
        out.append(key if count == 0 else (key, count))
    return out


Op = tuple[dict[str, Any], Row | None]


def diff(old: list[Any], old_rows: dict[Any, Row], new: list[Any], new_rows: dict[Any, Row],
         events: dict[Any, str], pk_of: Callable[[Row], Any]) -> list[Op]:
    """The messages that turn the list ``old`` into ``new``, applied in order: leaves,
    then moves (the rows whose change moved them, where possible), then enters, then
    updates of rows that stayed in place. Each is ``(fields, record)``."""
    ops: list[Op] = []
    client = list(old)
    wanted = set(new)
    for index in range(len(client) - 1, -1, -1):
        key = client[index]
        if key not in wanted:
            ops.append(({"op": "leave", "event": events.get(key), "from": index,
                         "pk": pk_of(old_rows[key])}, None))
            del client[index]
    present = set(client)
    staying = [key for key in new if key in present]
    moved = _moved(client, staying, events)
    position = {key: index for index, key in enumerate(staying)}
    settled = present - moved
    for key in sorted(moved.copy(), key=position.__getitem__):
        source = client.index(key)
        del client[source]
        before = [k for k in staying[:position[key]] if k in settled]
        target = client.index(before[-1]) + 1 if before else 0
        client.insert(target, key)
        settled.add(key)
        if source == target:  # taken out and put back: the row changed in place
            moved.discard(key)
            continue
        ops.append(({"op": "move", "event": events.get(key), "from": source, "to": target},
                    new_rows[key]))
    for index, key in enumerate(new):
        if key not in present:
            client.insert(index, key)
            ops.append(({"op": "enter", "event": events.get(key), "at": index}, new_rows[key]))
    for index, key in enumerate(new):
        if key in present and key not in moved and new_rows[key] != old_rows[key]:
            ops.append(({"op": "update", "event": events.get(key), "at": index}, new_rows[key]))
    return ops


def _moved(current: list[Any], staying: list[Any], events: dict[Any, str]) -> set[Any]:
    """Rows to move so ``current`` becomes ``staying``: the changed rows when the others
    kept their order (the usual case), else those outside a longest run in order."""
    if current == staying:
        return set()
    changed = {key for key in current if key in events}
    if [k for k in current if k not in changed] == [k for k in staying if k not in changed]:
        return changed
    position = {key: index for index, key in enumerate(staying)}
    return set(current) - set(_longest_increasing(current, position))


def _longest_increasing(items: list[Any], position: dict[Any, int]) -> list[Any]:
    """The longest subsequence of ``items`` whose positions increase (patience sorting)."""
    tails: list[int] = []
    tail_items: list[int] = []
    parent = [-1] * len(items)
    for index, item in enumerate(items):
        value = position[item]
        spot = bisect.bisect_left(tails, value)
        if spot == len(tails):
            tails.append(value)
            tail_items.append(index)
        else:
            tails[spot] = value
            tail_items[spot] = index
        parent[index] = tail_items[spot - 1] if spot else -1
    out = []
    index = tail_items[-1] if tail_items else -1
    while index >= 0:
        out.append(items[index])
        index = parent[index]
    return out[::-1]


class WindowSubscription:
    """One subscriber of a live window: the shape its identity's row filter gives."""

    def __init__(self, windows: Windows, table: TableInfo, query: ql.ListQuery, auth: Auth,
                 feed: Feed, sink: Sink, identity: Identity | None) -> None:
        self.windows = windows
        self.table = table
        self.query = query
        self.auth = auth
        self.feed = feed
        self.sink = sink
        self.window: Window | None = None
        self.set_identity(identity)

    def set_identity(self, identity: Identity | None) -> None:
        """Join the window of what ``identity`` may see (a new one sends a new snapshot)."""
        rows = self.auth.row_filter(identity, self.table) if self.auth.enabled else None
        where = self.query.where if rows is None else ql.Group((self.query.where, rows))
        query = dataclasses.replace(self.query, where=where)
        if self.window is not None:
            if shape_of(self.table, query) == shape_of(self.table, self.window.query):
                return
            self.window.leave(self.sink)
        self.window = self.windows.join(self.table, query, self.auth.matcher_of(self.table, where),
                                        self.feed, self.sink)

    def stop(self) -> None:
        if self.window is not None:
            self.window.leave(self.sink)
            self.window = None
