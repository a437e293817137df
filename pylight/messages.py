"""Every message a feed client receives, shaped in this one place.

Change messages go through the ``pylight_format_notification`` hook (the
bundled formatter gives the contract's shape; a plugin may replace it), once
per change, and their variants are derived from that one result:

- ``plain``: as formatted;
- ``unmatched``: with ``"matches": false``, for a row that left the
  subscriber's filter;
- ``without_old``: with ``"old": null``, when the row as it was is one the
  subscriber may not read (an auth row filter);
- ``left``: the row left the rows the subscriber may see at all: formatted
  from the change with ``record`` and ``old`` emptied, so not even a
  replaced formatter can show what the row became.

The connection's own messages (hello, resync, pong, auth, errors) are the
functions below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pylight import values

if TYPE_CHECKING:
    from pylight.auth import Identity
    from pylight.changes import Change
    from pylight.errors import ApiError

Formatter = Callable[["Change", int], dict[str, Any]]

PONG = '{"type":"pong"}'
UNSUBSCRIBED = '{"type":"unsubscribed"}'
UNKNOWN = values.dumps({"type": "error", "message": 'unknown message; send {"type": "ping"}'})


def variant(message: dict[str, Any], name: str) -> dict[str, Any]:
    """The ``unmatched`` or ``without_old`` variant of a formatted change message."""
    if name == "unmatched":
        return {**message, "matches": False}
    if name == "without_old":
        return {**message, "old": None} if "old" in message else message
    return message


def project(message: dict[str, Any], columns: list[str]) -> dict[str, Any]:
    """``message`` with its ``record`` and ``old`` cut to ``columns`` (a feed's ``select``)."""
    out = dict(message)
    for name in ("record", "old"):
        row = out.get(name)
        if isinstance(row, dict):
            out[name] = {column: row[column] for column in columns if column in row}
    return out


def left(formatter: Formatter, change: Change, seq: int, key: Any) -> dict[str, Any]:
    """The ``left`` variant: an update that took the row (key ``key``, as it was)
    out of what the subscriber may read, told without its contents."""
    hidden = dataclasses.replace(change, pk=key, record=None, old=None)
    return {**formatter(hidden, seq), "matches": False}


def hello(table: str, seq: int, heartbeat: float) -> str:
    return values.dumps({"type": "hello", "table": table, "seq": seq,
                         "heartbeat": int(heartbeat) if float(heartbeat).is_integer()
                         else heartbeat})


def resync(table: str, seq: int, since: int) -> str:
    reason = ("since is ahead of this server (it restarted)" if since > seq
              else "since is older than the replay buffer")
    return values.dumps({"type": "resync", "table": table, "seq": seq, "reason": reason})


def channel_hello(heartbeat: float, max_subscriptions: int) -> str:
    """The first message on ``/ws``: the heartbeat, and how many subscriptions it takes."""
    return values.dumps({"type": "hello", "heartbeat": int(heartbeat)
                         if float(heartbeat).is_integer() else heartbeat,
                         "max_subscriptions": max_subscriptions})


def subscribed(table: str, seq: int) -> str:
    return values.dumps({"type": "subscribed", "table": table, "seq": seq})


def channel_error(error: ApiError) -> str:
    """An error on ``/ws``, shaped as the REST error body (a subscription's gets ``sub``)."""
    return values.dumps({"type": "error", **error.to_dict()})


def error(message: str, code: str | None = None) -> str:
    body: dict[str, Any] = {"type": "error"}
    if code is not None:
        body["code"] = code
    body["message"] = message
    return values.dumps(body)


def authenticated(identity: Identity) -> str:
    return values.dumps({"type": "auth", "ok": True, "subject": identity.subject,
                         "expires_at": identity.expires_at})


def window_snapshot(table: str, seq: int, rows: list[dict[str, Any]]) -> str:
    """A live window's rows, in order (API.md 6.3)."""
    return values.dumps({"type": "window", "op": "snapshot", "table": table, "seq": seq,
                         "rows": rows})


def window_op(fields: dict[str, Any], seq: int, record: dict[str, Any] | None) -> str:
    """One step of a live window: ``update``/``enter`` (``at``), ``move`` (``from``,
    ``to``) with the row, or ``leave`` (``from``) with its key."""
    message: dict[str, Any] = {"type": "window", "op": fields["op"], "seq": seq,
                               "event": fields["event"]}
    for name in ("from", "to", "at"):
        if name in fields:
            message[name] = fields[name]
    if fields["op"] == "leave":
        message["pk"] = fields["pk"]
    else:
        message["record"] = record
    return values.dumps(message)
