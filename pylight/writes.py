"""The change path's first half: a write's transaction, its commit, and the hand-over
of its changes, in commit order, to the publisher chosen at start-up.

Every write through the API runs here: ``fn`` runs in one transaction on a
worker thread and returns ``(result, changes)``. A rolled-back transaction
publishes nothing.

Order. Each table's writes take a ticket, and their changes go onto the event
loop in ticket order (:class:`Sequencer`). A transaction takes its ticket and
sends COMMIT under the table's commit lock, so tickets follow commit order. A
single-row insert that is its own transaction (:meth:`Writes.run_alone`) takes
its ticket before its one statement is sent, and sends it without the lock, so
such inserts run side by side. Two writes whose tickets and commits come in
different orders were both in flight at once, so neither can have read the
other's rows: either order is one the database could have committed them in.
A write that depends on another (an update of a row just inserted, or one that
waited for its row lock) starts after the other committed, so it takes the
later ticket.
"""

from __future__ import annotations

import threading
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


class Sequencer:
    """Queues one table's committed changes onto the event loop in ticket order.

    A write takes a ticket before its commit can happen and finishes it after
    (with no changes if it failed); whoever finishes the oldest open ticket queues
    every finished one up to the next open ticket. The lock guards only these
    few steps, never a database call."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        #: Held while a transaction takes its ticket and sends COMMIT, so its ticket
        #: follows commit order.
        self.commit_lock = threading.Lock()
        self.lock = threading.Lock()
        self.issued = 0
        self.head = 0  # the oldest ticket not yet queued
        self.finished: dict[int, tuple[list[Change], tuple[IOLoop | None, Actor]]] = {}

    def take(self) -> int:
        with self.lock:
            ticket = self.issued
            self.issued += 1
            return ticket

    def finish(self, ticket: int, changes: list[Change],
               target: tuple[IOLoop | None, Actor]) -> None:
        with self.lock:
            self.finished[ticket] = (changes, target)
            while self.head in self.finished:
                self._queue(*self.finished.pop(self.head))
                self.head += 1

    def _queue(self, changes: list[Change], target: tuple[IOLoop | None, Actor]) -> None:
        loop, actor = target
        if not changes or loop is None:
            return
        if actor is not None:
            changes = [replace(change, by=actor[0], by_shown=True) for change in changes]
        publish = self.publisher.publish
        for change in changes:
            loop.add_callback(publish, change)


class Writes:
    def __init__(self, database: Database, publisher: Publisher) -> None:
        self.database = database
        self.publisher = publisher
        self._sequencers: dict[str, Sequencer] = {}
        self._sequencers_lock = threading.Lock()
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

    async def run_alone(self, table: str, ready: Callable[..., bool], alone: Work[T],
                        fallback: Work[T], *args: Any, actor: Actor = None) -> T:
        """A write that is one statement: ``alone(*args)`` sends it as its own
        transaction, one round trip where :meth:`run` takes two (BEGIN goes with the
        first statement, then COMMIT), without the table's commit lock.

        ``fallback(*args)`` does the same work as :meth:`run` does it, instead, when
        ``ready(*args)`` says the write cannot be one statement; when this thread's
        connection may have been ended by the server (a statement lost in autocommit
        may have committed, so it is never retried, while a transaction lost before
        its COMMIT is); and when the statement would wait for a row lock for long
        (the backend's :meth:`~pylight.backend.Backend.alone` bounds the wait)."""
        return await self.database.run(self._alone, table, ready, alone, fallback, args,
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

    def _sequencer(self, table: str) -> Sequencer:
        sequencer = self._sequencers.get(table)
        if sequencer is None:
            with self._sequencers_lock:
                sequencer = self._sequencers.setdefault(table, Sequencer(self.publisher))
        return sequencer

    def _alone(self, attempt: Attempt, table: str, ready: Callable[..., bool],
               alone: Work[Any], fallback: Work[Any], args: tuple[Any, ...],
               target: tuple[IOLoop | None, Actor]) -> Any:
        backend = self.database.backend
        if self._writer is not None or not ready(*args) \
                or not backend.connection_quiet(self.database.db):
            return self._transaction(attempt, table, fallback, args, target)
        sequencer = self._sequencer(table)
        ticket = sequencer.take()  # before the statement is sent: it may commit from then on
        attempt.committing = True
        changes: list[Change] = []
        try:
            result, changes = alone(*args)
        except Exception as exc:
            if not backend.is_lock_timeout(exc):
                raise
        else:
            return result
        finally:
            sequencer.finish(ticket, changes, target)
        # It gave up waiting for a row lock and rolled back. An open ticket holds back
        # the table's later changes, so the wait goes on in a transaction instead,
        # whose ticket is taken only at its commit.
        attempt.committing = False
        return self._transaction(attempt, table, fallback, args, target)

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
        sequencer = self._sequencer(table)
        with sequencer.commit_lock:
            ticket = sequencer.take()
            attempt.committing = True
            committed: list[Change] = []
            try:
                db.commit()
                committed = changes
            finally:
                sequencer.finish(ticket, committed, target)
        return result
