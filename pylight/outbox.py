"""One feed connection's outgoing queue: bounded, written in coalesced batches.

Messages arrive ready-made (bytes a transport built once per change and
shares between its clients). At most one batch sits in Tornado's unbounded
write buffer; the rest waits here, and a client that lets more than
``max_pending`` messages wait is given up on (``overflow``) rather than
allowed to grow the server's memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError

# How much of the queue is handed to the stream at once.
BATCH_BYTES = 64 * 1024
# Replayed messages queued at a time while a resuming client catches up.
REPLAY_BATCH = 500
# Messages that wait for the end of the event loop's pass before they are written
# anyway (with at most half of max_pending).
FLUSH_AT = 64

Writer = Callable[[bytes, "list[bytes] | None"], Any]

# Outboxes with something new to write, flushed together once the event loop has
# run what is ready (every change committed in a burst is delivered first): the
# frames that wait for one socket then go out in one write, not one each.
_due: list[Outbox] = []
# A flush pass over many sockets costs one system call each (most of a large
# fan-out's time). After such a pass the next one waits as long as it took (at
# most COALESCE_MAX_S), so the changes committed meanwhile share those calls;
# with few subscribers, or after a quiet spell, nothing waits.
COALESCE_SOCKETS = 200
COALESCE_MAX_S = 0.008
_last_pass = [0, 0.0, 0.0]  # sockets written, how long it took, when it ended
# The loop a flush of _due is scheduled on (None: none is). Compared with the
# current loop, not just set: a loop that stopped before its flush ran (a test's,
# or a server's that was stopped) must not keep every later change waiting.
_scheduled_on: list[IOLoop | None] = [None]


def _schedule_flush() -> None:
    loop = IOLoop.current()
    if _scheduled_on[0] is loop:
        return
    _scheduled_on[0] = loop
    sockets, took, ended = _last_pass
    wait = min(took, COALESCE_MAX_S) - (time.monotonic() - ended)
    if sockets >= COALESCE_SOCKETS and wait > 0:
        loop.call_later(wait, _flush_due)
    else:
        loop.add_callback(_flush_due)


def _flush_due() -> None:
    _scheduled_on[0] = None
    due = list(_due)
    _due.clear()
    started = time.monotonic()
    for outbox in due:
        outbox.scheduled = False
        if outbox.queue and not outbox.in_flight:
            outbox._flush()
    ended = time.monotonic()
    _last_pass[:] = (len(due), ended - started, ended)


class Outbox:

    __slots__ = (
        "queue", "max_pending", "replay_batch", "flush_at", "_write", "_is_open", "_overflow", "sent",
        "in_flight", "scheduled", "closed", "refills",
    )
    def __init__(self, max_pending: int, write: Writer, is_open: Callable[[], bool],
                 overflow: Callable[[], None]) -> None:
        """``write(data, pieces)`` writes ``data`` (the ``pieces`` joined, or one piece
        when ``pieces`` is None) and returns a future, or None when all of it went to
        the socket at once; ``is_open()`` says whether the
        stream still takes writes; ``overflow()`` is called once too much waits."""
        # A list, not a deque: an empty deque costs 0.7 KB, and most connections are
        # idle; a flush takes its batch off the front with one slice.
        self.queue: list[bytes] = []
        self.max_pending = max_pending
        self.replay_batch = max(1, min(max_pending // 2, REPLAY_BATCH))
        self.flush_at = max(1, min(max_pending // 2, FLUSH_AT))
        self._write = write
        self._is_open = is_open
        self._overflow = overflow
        self.sent = 0  # messages written (for metrics; one add per write)
        self.in_flight = False
        self.scheduled = False  # waiting in _due
        self.closed = False
        # Called when a write completes, while subscriptions replay (see Subscription).
        self.refills: list[Callable[[], None]] = []

    def __len__(self) -> int:
        return len(self.queue)

    def has_room(self) -> bool:
        return not self.closed and len(self.queue) < self.replay_batch

    def send(self, data: bytes) -> None:
        """Queue one message; past ``max_pending`` waiting ones, overflow."""
        if self.closed:
            return
        queue = self.queue
        queue.append(data)
        if len(queue) > self.max_pending:
            self._overflow()
            return
        if self.in_flight:
            return
        if len(queue) >= self.flush_at:
            # A burst (one statement that changed many rows): write what has come so
            # far now, so a client that reads is never dropped for the server's delay.
            self._flush()
        elif not self.scheduled:
            self.scheduled = True
            _due.append(self)
            _schedule_flush()

    def close(self) -> None:
        """Take nothing more and forget what waits."""
        self.closed = True
        self.queue.clear()
        self.refills.clear()

    def _flush(self) -> None:
        """Hand queued messages to the stream as one write."""
        if not self._is_open():
            self.queue.clear()
            return
        queue = self.queue
        pieces: list[bytes] | None = None
        if len(queue) == 1:
            data = queue.pop()
            self.sent += 1
        else:
            taken = 0
            size = 0
            while taken < len(queue) and size < BATCH_BYTES:
                size += len(queue[taken])
                taken += 1
            if taken == len(queue):
                pieces = queue
                queue = self.queue = []
            else:
                pieces = queue[:taken]
                del queue[:taken]
            data = b"".join(pieces)
            self.sent += taken
        try:
            future = self._write(data, pieces)
        except StreamClosedError:
            queue.clear()
            return
        if future is None or future.done():
            # Written to the socket at once (the common case): nothing to wait for.
            if future is not None:
                future.exception()  # marks a failure as seen; it has closed the stream
            if queue or self.refills:  # more to send, or a replay to go on with
                self.in_flight = True
                IOLoop.current().add_callback(self._flushed, future)
            return
        self.in_flight = True
        future.add_done_callback(self._flushed)

    def _flushed(self, future: Any) -> None:
        self.in_flight = False
        if future is not None and (future.cancelled() or future.exception() is not None):
            self.queue.clear()
            return
        for refill in list(self.refills):
            refill()
        if self.queue and not self.in_flight:
            self._flush()


class OutboxSink:
    """What every transport's sink shares: its connection's outbox, whether a replay may
    queue more, and giving up on (``drop_slow``) or closing the connection."""

    __slots__ = ("outbox", "drop_slow", "close")

    def __init__(self, outbox: Outbox, drop_slow: Callable[[], None], close: Any) -> None:
        self.outbox = outbox
        self.drop_slow = drop_slow
        self.close = close

    def has_room(self) -> bool:
        return self.outbox.has_room()

    def replaying(self, catch_up: Callable[[], None], on: bool) -> None:
        refills = self.outbox.refills
        if on:
            refills.append(catch_up)
        elif catch_up in refills:
            refills.remove(catch_up)
