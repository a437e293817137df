"""A committed change of one row: what the change path carries from a write (or
the change log) to the hub, a bus and the subscribers."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any


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
    # Where the change was observed, when several processes may observe the same
    # one (e.g. "capture:<log id>"): a bus relays each origin once.
    origin: str | None = field(default=None, compare=False)
    #: "api" for a write through the REST API, "database" for one change capture read.
    source: str = "api"
    #: Who made an API write (the identity's subject, None when anonymous), shown
    #: only when ``by_shown`` ([realtime] expose_actor).
    by: str | None = None
    by_shown: bool = False
