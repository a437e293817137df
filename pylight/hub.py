"""The in-process publish point for committed changes, owned by the app."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("pylight")


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class Change:
    """One committed create, update or delete of one row.

    ``record`` is the row after the change (for ``deleted``, as it was);
    ``old`` is the row before an update when known. Both hold JSON values of
    the visible columns only.
    """

    table: str
    event: str  # "created", "updated" or "deleted"
    pk: Any
    record: dict[str, Any]
    old: dict[str, Any] | None = None
    at: datetime.datetime = field(default_factory=utcnow)


Listener = Callable[[Change], None]


class Hub:
    """Receives every committed change and hands it to the table's listeners.

    A change may come from this process's REST writes or from elsewhere (a
    change-capture reader, a bus); listeners cannot tell and need not care.
    """

    def __init__(self) -> None:
        self._listeners: dict[str | None, list[Listener]] = {}

    def subscribe(self, table: str | None, listener: Listener) -> Callable[[], None]:
        """Call ``listener(change)`` for every change of ``table`` (None: every table)."""
        self._listeners.setdefault(table, []).append(listener)

        def unsubscribe() -> None:
            listeners = self._listeners.get(table, [])
            if listener in listeners:
                listeners.remove(listener)
        return unsubscribe

    def publish(self, change: Change) -> None:
        for listener in [*self._listeners.get(change.table, ()), *self._listeners.get(None, ())]:
            try:
                listener(change)
            except Exception:
                # One broken listener must not keep the change from the others.
                log.exception("a change listener failed for table %s", change.table)
