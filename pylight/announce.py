"""The lines a server logs once it listens: what it exposes, and what in the
configuration selects nothing (or, for `[api] tables` matching nothing, the one
line that stops start-up)."""

from __future__ import annotations

import fnmatch
import logging
from typing import Any

from pylight.config import Config
from pylight.errors import StartupError
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
    selection(config, app.tables, app.database_names(), app.elsewhere)
    log.info("Pylight serving %s on %s%s/ (database: %s)", app.backend.name, base,
             config.api.prefix, redact_url(config.database.url))


def selection(config: Config, tables: dict[str, TableInfo], found: list[str],
              elsewhere: list[str] = ()) -> None:
    """Warn when [api] tables / exclude select nothing, naming what the database has
    (and, when it has nothing here, the ``elsewhere`` schemas that have tables)."""
    api = config.api
    setting = f"[api] tables = {', '.join(api.tables) or '(empty)'}"
    where = f" in {config.source}" if config.source != "<defaults>" else ""
    if not tables and found:
        _nothing_selected(config, found, setting, where)
    elif not tables and elsewhere:
        shown = ", ".join(elsewhere[:10]) + (", ..." if len(elsewhere) > 10 else "")
        log.warning("the database has no tables or views in the schema Pylight serves (the "
                    "first of the search_path); it has some in schemas %s: serve one with the "
                    "database URL's parameter options=-csearch_path%%3D%s", shown, elsewhere[0])
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


def check_selection(config: Config, found: list[str]) -> None:
    """Stop start-up when ``[api] tables`` matches none of the database's tables and
    views (``found``), naming them: a server exposing nothing is a typo's doing, and
    fails like an unknown ``[table:NAME]`` does. An empty database is no error (it
    is said to be empty once the server listens)."""
    api = config.api
    if not found or any(fnmatch.fnmatchcase(name, pattern)
                        for name in found for pattern in api.tables):
        return
    where = f" in {config.source}" if config.source != "<defaults>" else ""
    raise StartupError(
        f"[api] tables = {', '.join(api.tables) or '(empty)'} matches nothing, and the "
        f"database has {_names(found)}; change [api] tables{where} (or PYLIGHT_API_TABLES)")


def _names(found: list[str]) -> str:
    """``3 tables and views: a, b, c``, the first NAMES_SHOWN of them, then how many more."""
    listed = ", ".join(found[:NAMES_SHOWN])
    if len(found) > NAMES_SHOWN:
        listed += f" and {len(found) - NAMES_SHOWN} more"
    has = "1 table or view" if len(found) == 1 else f"{len(found)} tables and views"
    return f"{has}: {listed}"


def _nothing_selected(config: Config, found: list[str], setting: str, where: str) -> None:
    # `tables` itself matches something (check_selection stopped start-up otherwise):
    # `exclude` took it all away.
    what = f"{setting} with [api] exclude = {', '.join(config.api.exclude)} leaves nothing"
    log.warning("no table is exposed: %s, and the database has %s; change [api] tables or "
                "[api] exclude%s (or PYLIGHT_API_TABLES / PYLIGHT_API_EXCLUDE)",
                what, _names(found), where)
