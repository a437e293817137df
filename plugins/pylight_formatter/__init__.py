"""The default WebSocket message shape (API.md section 3), as a replaceable plugin."""

from __future__ import annotations

from typing import Any

from pylight import hookimpl
from pylight.hub import Change


@hookimpl(trylast=True)
def pylight_format_notification(change: Change, seq: int) -> dict[str, Any]:
    at = change.at.isoformat(timespec="microseconds").replace("+00:00", "Z")
    message = {
        "type": "change",
        "event": change.event,
        "table": change.table,
        "seq": seq,
        "pk": change.pk,
        "record": change.record,
        "old": change.old,
        "at": at,
        "source": change.source,
    }
    if change.by_shown:  # [realtime] expose_actor: who made an API write (None: anonymous)
        message["by"] = change.by
    return message
