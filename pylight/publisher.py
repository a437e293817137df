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

from typing import Any, Protocol

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
    def __init__(self, wake: Any) -> None:
        self._wake = wake

    def publish(self, change: Change) -> None:
        self._wake()
