"""The publish point for committed changes: per-table seq, replay ring and subscribers.

The hub does not care where a change came from (this process's REST writes,
a change-capture reader, a bus from other processes): ``publish`` takes a
change, numbers it, keeps it for resume and hands it to the subscribers.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from pylight import messages, values
from pylight.changes import Change, utcnow

log = logging.getLogger("pylight")

__all__ = ["Change", "Feed", "Hub", "Notice", "utcnow"]


class Notice:
    """A numbered change with its message, encoded at most once per variant."""

    __slots__ = ("change", "seq", "message", "_texts", "_formatter", "encodings")

    #: The message variants a subscriber may get (see :mod:`pylight.messages`).
    VARIANTS = ("plain", "unmatched", "without_old", "left")

    def __init__(self, change: Change, seq: int, formatter: messages.Formatter) -> None:
        self.change = change
        self.seq = seq
        self._formatter = formatter
        self.message = formatter(change, seq)
        self._texts: dict[str, str] = {}
        # Transports keep their encodings of the texts here (a WebSocket frame),
        # made once by the transport and shared by all its subscribers.
        self.encodings: dict[Any, bytes] = {}

    def variant(self, name: str, key: Any = None) -> str:
        """The text of one of :attr:`VARIANTS`, encoded at most once; ``name|a,b`` is
        it with ``record`` and ``old`` cut to columns a and b (a feed's ``select``).
        ``key``: for ``left``, the key of the row as it was (the same for everyone)."""
        text = self._texts.get(name)
        if text is None:
            base, _, columns = name.partition("|")
            if base == "left":
                message = messages.left(self._formatter, self.change, self.seq, key)
            else:
                message = messages.variant(self.message, base)
            if columns:
                message = messages.project(message, columns.split(","))
            text = self._texts[name] = values.dumps(message)
        return text

    @property
    def text(self) -> str:
        return self.variant("plain")


class Subscriber(Protocol):
    def deliver(self, notice: Notice) -> None:
        """Queue ``notice`` for the client (or drop it if the filter says so)."""


Listener = Callable[[Change], None]


class Feed:
    """One table's live state: the last seq, the replay ring and the subscribers."""

    def __init__(self, table: str, replay_buffer: int) -> None:
        self.table = table
        self.seq = 0
        self.ring: deque[Notice] = deque(maxlen=max(replay_buffer, 0))
        self.subscribers: set[Subscriber] = set()

    def since(self, seq: int) -> Iterator[Notice] | None:
        """The buffered notices after ``seq``, or None if they cannot all be given."""
        if seq > self.seq:
            return None  # ahead of us: the server restarted since the client saw it
        if seq == self.seq:
            return iter(())
        oldest = self.ring[0].seq if self.ring else self.seq + 1
        if seq + 1 < oldest:
            return None
        return (notice for notice in self.ring if notice.seq > seq)

    def after(self, seq: int, limit: int) -> list[Notice] | None:
        """Up to ``limit`` buffered notices after ``seq``, in order; None if some were evicted.

        For a resuming client that catches up a batch at a time (its queue is
        bounded), so each batch is found by bisection, not by a scan of the ring.
        """
        ring = self.ring
        if seq >= self.seq:
            return []
        if not ring or ring[0].seq > seq + 1:
            return None
        low, high = 0, len(ring)
        while low < high:
            middle = (low + high) // 2
            if ring[middle].seq <= seq:
                low = middle + 1
            else:
                high = middle
        return [ring[index] for index in range(low, min(low + limit, len(ring)))]


class Hub:
    def __init__(self, formatter: messages.Formatter, replay_buffer: int = 10000) -> None:
        self.formatter = formatter
        self.replay_buffer = replay_buffer
        self.feeds: dict[str, Feed] = {}
        self._listeners: dict[str | None, list[Listener]] = {}
        self._outward: Callable[[Change], Any] = self.deliver

    def route_through(self, publish: Callable[[Change], Any]) -> None:
        """Where :meth:`publish` sends changes (a bus between processes): chosen once,
        by the server at start-up (see :mod:`pylight.publisher`)."""
        self._outward = publish

    def notice(self, change: Change, seq: int) -> Notice:
        """``change`` numbered ``seq``, with its message formatted."""
        return Notice(change, seq, self.formatter)

    def feed(self, table: str) -> Feed:
        feed = self.feeds.get(table)
        if feed is None:
            feed = self.feeds[table] = Feed(table, self.replay_buffer)
        return feed

    def subscribe(self, table: str | None, listener: Listener) -> Callable[[], None]:
        """Call ``listener(change)`` for every change of ``table`` (None: every table).

        For in-process consumers (plugins, tests); WebSocket clients attach to
        the table's :class:`Feed` instead.
        """
        self._listeners.setdefault(table, []).append(listener)

        def unsubscribe() -> None:
            listeners = self._listeners.get(table, [])
            if listener in listeners:
                listeners.remove(listener)
        return unsubscribe

    def publish(self, change: Change) -> None:
        """Take a change that originated in this process (change capture, a plugin).

        With a bus between processes the bus numbers it the same way on every
        process and hands it back through :meth:`deliver`; otherwise it is
        delivered here at once.
        """
        self._outward(change)

    def deliver(self, change: Change, seq: int | None = None) -> Notice:
        """Number ``change`` (or take ``seq`` from its origin), keep it and fan it out.

        Runs on the event loop, so numbering, buffering and delivery of one
        change never interleave with another's or with a subscriber joining.
        """
        feed = self.feed(change.table)
        feed.seq = seq if seq is not None else feed.seq + 1
        notice = Notice(change, feed.seq, self.formatter)
        feed.ring.append(notice)
        for subscriber in list(feed.subscribers):
            try:
                subscriber.deliver(notice)
            except Exception:
                log.exception("delivering a change of %s failed", change.table)
        for listener in [*self._listeners.get(change.table, ()), *self._listeners.get(None, ())]:
            try:
                listener(change)
            except Exception:
                # One broken listener must not keep the change from the others.
                log.exception("a change listener failed for table %s", change.table)
        return notice
