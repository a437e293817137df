"""Pylight plugin: appends one JSON line per committed write to a file.

Enable it with a ``[plugin:audit_log]`` section in Pylight's ini file::

    [plugin:audit_log]
    path = var/audit.jsonl

Each create, update and delete that Pylight commits becomes one line::

    {"time": "2026-11-25T08:31:02.123456Z", "table": "products", "event": "updated",
     "pk": 1, "changes": {"name": {"old": "Widget", "new": "Gizmo"}}}

``changes`` holds the columns the write changed: every column with its
``new`` value for a create, the columns whose value differs with ``old`` and
``new`` for an update, and every column with its ``old`` value for a delete.
Hidden columns (``[table:NAME] hidden``) never reach a plugin, so they are
never logged. Without the section the plugin does nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import IO, Any

from pylight import StartupError, hookimpl
from pylight.hub import Change

NAME = "audit_log"  # the entry-point name, and so the [plugin:audit_log] section
KEYS = ("path",)


class AuditLog:
    """The open log file of one running server, and the hub listener writing to it."""

    def __init__(self, path: str, stream: IO[str]) -> None:
        self.path = path
        self.stream = stream
        self.unsubscribe: Callable[[], None] | None = None

    def write(self, change: Change) -> None:
        entry = {
            "time": change.at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "table": change.table,
            "event": change.event,
            "pk": change.pk,
            "changes": changed_columns(change),
        }
        # Line-buffered: each line reaches the file when it is written.
        self.stream.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")

    def close(self) -> None:
        if self.unsubscribe is not None:
            self.unsubscribe()
            self.unsubscribe = None
        self.stream.close()


def changed_columns(change: Change) -> dict[str, dict[str, Any]]:
    """``{column: {"old": ..., "new": ...}}`` for the columns ``change`` changed."""
    if change.event == "created":
        return {name: {"new": value} for name, value in change.record.items()}
    if change.event == "deleted":
        return {name: {"old": value} for name, value in change.record.items()}
    old = change.old
    if old is None:  # the origin did not know the row before the update
        return {name: {"new": value} for name, value in change.record.items()}
    return {name: {"old": old.get(name), "new": value}
            for name, value in change.record.items() if old.get(name) != value}


def audit_log_of(app: Any) -> AuditLog | None:
    """The audit log ``app`` writes to, or None when the plugin is not enabled for it.

    Each server keeps its own in ``app.state`` (a process, a test suite say, may
    run several), rather than in a module global.
    """
    return app.state.get(NAME)


def open_log(settings: dict[str, str]) -> AuditLog:
    """Check the ``[plugin:audit_log]`` settings and open the file; StartupError if bad."""
    where = f"[plugin:{NAME}]"
    unknown = sorted(set(settings) - set(KEYS))
    if unknown:
        raise StartupError(f"{where}: unknown key {unknown[0]!r} (known keys: {', '.join(KEYS)})")
    path = settings.get("path", "").strip()
    if not path:
        raise StartupError(f"{where} path: give the file to append the audit log to")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise StartupError(f"{where} path: the directory {folder} of {path!r} does not exist")
    try:
        stream = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (closed at shutdown)
    except OSError as exc:
        raise StartupError(f"{where} path: cannot append to {path!r}: "
                           f"{exc.strerror or exc}") from None
    return AuditLog(path, stream)


@hookimpl
def pylight_startup(app: Any) -> None:
    settings = app.config.plugin_section(NAME)
    if not settings:
        return  # no [plugin:audit_log] section: stay inert
    log = open_log(settings)
    log.unsubscribe = app.hub.subscribe(None, log.write)
    app.state[NAME] = log


@hookimpl
def pylight_shutdown(app: Any) -> None:
    log = app.state.pop(NAME, None)
    if log is not None:
        log.close()
