"""A test plugin that replaces the WebSocket message shape (pylight_format_notification)."""

from __future__ import annotations

from typing import Any

from pylight import hookimpl


@hookimpl
def pylight_format_notification(change: Any, seq: int) -> dict[str, Any]:
    return {
        "kind": "row-changed",
        "op": change.event[0].upper(),  # C, U or D
        "n": seq,
        "where": f"{change.table}/{change.pk}",
        "data": change.record,
    }
