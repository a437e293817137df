"""The change path's first half: a write's transaction, its commit, and the hand-over
of its changes, in commit order, to the publisher chosen at start-up.

Every write through the API runs here: ``fn`` runs in one transaction on a
worker thread and returns ``(result, changes)``. The commit and the queueing
of the changes onto the event loop happen under a per-table lock, so the
order in which changes reach the publisher is the order in which their
transactions committed. A rolled-back transaction publishes nothing.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from tornado.ioloop import IOLoop

from pylight.changes import Change
from pylight.db import Attempt, Database
from pylight.publisher import Publisher

T = TypeVar("T")
Work = Callable[..., tuple[T, list[Change]]]
#: Who made a write, as ``(subject or None,)`` when it is to be shown; None: not shown.
Actor = tuple[str | None] | None


class Writes:
    def __init__(self, database: Database, publisher: Publisher) -> None:
        self.database = database
        self.publisher = publisher
        self._commit_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        # A database with one writer at a time (SQLite): queue writers here, where
        # they wake as soon as the lock is free, instead of in the database's
        # busy handler, which sleeps 1, 2, 5, 10... ms between retries.
        self._writer = threading.Lock() if database.backend.single_writer else None

    async def run(self, table: str, fn: Work[T], *args: Any, actor: Actor = None) -> T:
        """Run ``fn(*args)`` in a transaction on ``table``; publish its changes once committed.

        ``actor``: ``(subject,)`` of who made the write, to be shown on its changes
        (``[realtime] expose_actor``); None shows no one."""
        return await self.database.run(self._transaction, table, fn, args,
                                       (IOLoop.current(), actor))

    async def maintain(self, table: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in a transaction that changes no exposed row (pruning the
        change log): it queues with the API's writes but publishes nothing."""
        def work(*given: Any) -> tuple[None, list[Change]]:
            fn(*given)
            return None, []
        await self.database.run(self._transaction, table, work, args, (None, None))

    def _transaction(self, attempt: Attempt, table: str, fn: Work[Any], args: tuple[Any, ...],
                     target: tuple[IOLoop | None, Actor]) -> Any:
        if self._writer is None:
            return self._commit(attempt, table, fn, args, target)
        with self._writer:
            return self._commit(attempt, table, fn, args, target)

    def _commit(self, attempt: Attempt, table: str, fn: Work[Any], args: tuple[Any, ...],
                target: tuple[IOLoop | None, Actor]) -> Any:
        db = self.database.db
        self.database.backend.begin_write(db)
        try:
            result, changes = fn(*args)
        except BaseException:
            try:
                db.rollback()
            except Exception:
                pass
            raise
        loop, actor = target
        if actor is not None:
            changes = [replace(change, by=actor[0], by_shown=True) for change in changes]
        with self._commit_locks[table]:
            attempt.committing = True
            db.commit()
            if changes and loop is not None:
                publish = self.publisher.publish
                for change in changes:
                    loop.add_callback(publish, change)
        return result
