"""The change path's second half: where a committed change goes, chosen once at start-up.

- :class:`LocalDelivery`: this process numbers the change and fans it out
  (the hub's :meth:`~pylight.hub.Hub.deliver`).
- :class:`BusRelay`: a bus between processes (``[bus] url``, offered by a
  plugin through the ``pylight_change_bus`` hook) numbers it the same way on
  every process and hands it back to each process's hub.
- :class:`CaptureWakeUp`: with ``[realtime] capture = database`` the triggers
  log every write, the API's included. The change the API built is dropped on
  purpose: the capture reader publishes the same change from the log, so each
  change is delivered exactly once whoever made it; the API's commit only
  wakes the reader so its clients see the change at once.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import replace
from typing import Any, Protocol

from pylight import values
from pylight.changes import Change
from pylight.hub import Hub


class Publisher(Protocol):
    def publish(self, change: Change) -> None:
        """Take one committed change (called on the event loop, in commit order)."""


class Bus(Protocol):
    """What a bus plugin's ``pylight_change_bus`` returns."""

    def relay(self, change: Change) -> None:
        """Carry ``change`` to every process, this one included, which then
        ``hub.deliver(change, seq)`` it with the same seq everywhere."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class LocalDelivery:
    def __init__(self, hub: Hub) -> None:
        self.publish = hub.deliver  # one call less per change on the hot path


class BusRelay:
    def __init__(self, bus: Bus) -> None:
        self.publish = bus.relay


class CaptureWakeUp:
    """Wakes the capture reader for each API change, and remembers the change for a
    while: when the reader finds it in the log, :meth:`claim` says the API made it
    (``source`` and ``by``), which the log itself does not know. Only the process that
    made the write knows it; with a bus, the process that relays the change first wins."""

    KEEP_SECONDS = 60.0
    KEEP_MOST = 10000

    def __init__(self, wake: Any) -> None:
        self._wake = wake
        self._made: dict[tuple[str, str, str], deque[tuple[float, Change]]] = {}
        self._count = 0

    def publish(self, change: Change) -> None:
        now = time.monotonic()
        self._made.setdefault(_identity(change), deque()).append((now, change))
        self._count += 1
        if self._count > self.KEEP_MOST:
            self._forget(now)
        self._wake()

    def claim(self, change: Change) -> Change:
        """``change``, read from the log, as the API's own when the API made it."""
        entries = self._made.get(_identity(change))
        if not entries:
            return change
        made_at, made = entries.popleft()
        self._count -= 1
        if not entries:
            del self._made[_identity(change)]
        if time.monotonic() - made_at > self.KEEP_SECONDS:
            return change
        return replace(change, source=made.source, by=made.by, by_shown=made.by_shown)

    def _forget(self, now: float) -> None:
        for key in list(self._made):
            entries = self._made[key]
            while entries and now - entries[0][0] > self.KEEP_SECONDS:
                entries.popleft()
                self._count -= 1
            if not entries:
                del self._made[key]


def _identity(change: Change) -> tuple[str, str, str]:
    return change.table, change.event, values.dumps(change.pk)
