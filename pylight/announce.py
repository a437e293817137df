"""The lines a server logs once it listens: what it exposes, and what in the
configuration selects nothing."""

from __future__ import annotations

import fnmatch
import logging
from typing import Any

from pylight.config import Config
from pylight.redaction import redact_url
from pylight.schema import TableInfo

log = logging.getLogger("pylight")

# How many names a start-up message lists before "and N more".
NAMES_SHOWN = 20


def ready(app: Any, port: int) -> None:
    """Log every exposed table and where the server listens (``app``: a started Pylight)."""
    config: Config = app.config
    base = f"http://{config.server.host}:{port}"
    for table in app.tables.values():
        kind = "view" if table.is_view else "table"
        flags = " (read-only)" if table.writable is False and not table.is_view else ""
        log.info("exposing %s %s at %s%s/%s%s", kind, table.name, base,
                 config.api.prefix, table.name, flags)
    selection(config, app.tables, app.database_names())
    log.info("Pylight serving %s on %s%s/ (database: %s)", app.backend.name, base,
             config.api.prefix, redact_url(config.database.url))


def selection(config: Config, tables: dict[str, TableInfo], found: list[str]) -> None:
    """Warn when [api] tables / exclude select nothing, naming what the database has."""
    api = config.api
    setting = f"[api] tables = {', '.join(api.tables) or '(empty)'}"
    where = f" in {config.source}" if config.source != "<defaults>" else ""
    if not tables and found:
        _nothing_selected(config, found, setting, where)
    elif not tables:
        hint = ("seed_demo creates the demo tables only in a database without any table"
                if config.database.seed_demo else
                "create some, or set [database] seed_demo = true to create the demo "
                "tables products, users and orders")
        log.warning("the database has no tables or views to expose; %s", hint)
    else:
        # Some are exposed: name the entries of the list that match nothing (typos).
        unmatched = [pattern for pattern in api.tables
                     if not any(fnmatch.fnmatchcase(name, pattern) for name in found)]
        if unmatched:
            log.warning("%s: %s matches no table or view of the database; check the "
                        "name%s", setting, ", ".join(unmatched), where)


def _nothing_selected(config: Config, found: list[str], setting: str, where: str) -> None:
    api = config.api
    listed = ", ".join(found[:NAMES_SHOWN])
    if len(found) > NAMES_SHOWN:
        listed += f" and {len(found) - NAMES_SHOWN} more"
    has = "1 table or view" if len(found) == 1 else f"{len(found)} tables and views"
    if api.exclude:
        what = f"{setting} with [api] exclude = {', '.join(api.exclude)} leaves nothing"
        change = ("[api] tables or [api] exclude", "PYLIGHT_API_TABLES / PYLIGHT_API_EXCLUDE")
    else:
        what = f"{setting} matches nothing"
        change = ("[api] tables", "PYLIGHT_API_TABLES")
    log.warning("no table is exposed: %s, and the database has %s: %s; change %s%s "
                "(or %s)", what, has, listed, change[0], where, change[1])
