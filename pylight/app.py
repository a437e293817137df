"""The running server: opens the database, reflects it, builds the Tornado app and serves it."""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import inspect
import logging
from typing import Any

import pluggy
import tornado.web
from tornado.httpserver import HTTPServer

from pylight import demo, openapi, ops, realtime, rest, web
from pylight.auth import Auth
from pylight.backend import Backend, url_scheme
from pylight.capture import Capture
from pylight.config import Config, TableSettings
from pylight.db import Database
from pylight.errors import StartupError
from pylight.handlers import NotFoundHandler
from pylight.http_limits import JsonRefusalsHTTPServer
from pylight.hub import Hub
from pylight.redaction import redact_logs, redact_url
from pylight.schema import TableInfo, reflect

log = logging.getLogger("pylight")

# The demo's own table settings. `python -m pylight` applies them (Pylight's
# ``demo_settings``) with seed_demo = true when the database holds the demo
# tables, unless the configuration has a section of its own for the table: the
# shipped etc/pylight.ini serves any database, so it cannot carry a live
# [table:users] (a section naming a missing table stops start-up).
DEMO_TABLES = ("products", "users", "orders")
DEMO_TABLE_SETTINGS = {"users": TableSettings(hidden=["password_hash"])}
# How many names a start-up message lists before "and N more".
NAMES_SHOWN = 20


def choose_backend(pm: pluggy.PluginManager, url: str) -> Backend:
    """The backend plugin serving ``url``'s scheme (the latest registered wins)."""
    schemes: dict[str, Backend] = {}
    for offered in pm.hook.pylight_database_backends():
        for backend in offered or []:
            for scheme in backend.schemes:
                schemes.setdefault(scheme, backend)
    scheme = url_scheme(url)
    if scheme not in schemes:
        known = ", ".join(sorted(schemes)) or "none installed"
        raise StartupError(
            f"database url {redact_url(url)!r}: unknown scheme {scheme!r} "
            f"(known: {known}); install or load the plugin for it"
        )
    return schemes[scheme]


# The access log: one JSON line per request, never a token (see pylight/ops.py).
log_request = ops.log_request


async def _await_all(results: list[Any]) -> None:
    for result in results:
        if inspect.isawaitable(result):
            await result


class Pylight:
    """One Pylight server: configuration, plugins, database, tables and hub."""

    def __init__(self, config: Config, pm: pluggy.PluginManager, *,
                 demo_settings: bool = False) -> None:
        """``demo_settings``: with ``seed_demo = true``, hide the demo's
        ``users.password_hash`` as ``[table:users] hidden = password_hash`` would
        (when the database holds the demo tables and the configuration has no
        ``[table:users]``). The command line passes True."""
        redact_logs()  # no log line may carry a credential, whatever logs it
        self.config = config
        self.demo_settings = demo_settings
        self.pm = pm
        self.hub = Hub(self.format_notification, config.realtime.replay_buffer)
        self.connections = realtime.Connections(config.realtime.heartbeat_interval,
                                                config.realtime.heartbeat_timeout)
        self.auth = Auth(pm, self)
        # With change capture the triggers report every write, REST ones
        # included: the REST path then publishes nothing itself, so each change
        # is delivered once (a committed REST write only wakes the reader).
        self.capture = Capture(self) if config.realtime.capture == "database" else None
        self.publish_writes = self.capture.wake if self.capture is not None else self.hub.publish
        self.in_flight: set[Any] = set()  # HTTP requests being handled, for graceful stop
        self.backend: Backend = choose_backend(pm, config.database.url)
        self.db: Database
        self.tables: dict[str, TableInfo] = {}
        # Every table and view of the database, exposed or not (for start-up messages).
        self.database_tables: list[str] = []
        self.server: HTTPServer | None = None
        self._openapi: dict[str, Any] | None = None
        self._stopped = False
        self.metrics = ops.Metrics(self)  # this server's own registry, served at /metrics

    @property
    def stopping(self) -> bool:
        return self._stopped

    # -- blocking start-up steps ----------------------------------------------
    def open(self) -> None:
        """Connect, seed the demo if asked and reflect the tables (blocking)."""
        settings = self.config.database
        raw = self.backend.open(settings.url, settings.pool_size, settings.connect_timeout)
        self.db = Database(raw, self.backend, settings.url, settings.pool_size)
        self.db.check_connection()
        if settings.seed_demo:
            demo.seed(raw)
        with raw.connection_context():
            self.database_tables = sorted({*raw.get_tables(),
                                           *(view.name for view in raw.get_views())})
            if settings.seed_demo and self.demo_settings:
                self._apply_demo_settings(raw)
            self.tables = reflect(raw, self.backend, self.config)
            openapi.prepare(self.tables)
        if self.capture is not None:
            self.capture.prepare()

    def _apply_demo_settings(self, raw: Any) -> None:
        """Add the demo's table settings when the database holds the demo tables."""
        if not set(DEMO_TABLES) <= set(self.database_tables):
            return
        added = {}
        for name, settings in DEMO_TABLE_SETTINGS.items():
            if name in self.config.tables:
                continue  # the file's own section wins
            columns = {column.name for column in raw.get_columns(name)}
            if set(settings.hidden) <= columns:
                added[name] = settings
        if added:
            for name, settings in added.items():
                log.info("the demo: hiding %s of %s (a [table:%s] section of your own "
                         "replaces this)", ", ".join(settings.hidden), name, name)
            self.config = dataclasses.replace(self.config,
                                              tables={**self.config.tables, **added})

    def database_names(self) -> list[str]:
        """The database's tables and views that are not Pylight's own, exposed or not."""
        internal = ("_pylight", *self.backend.internal_table_prefixes)
        return [name for name in self.database_tables if not name.startswith(internal)]

    # -- the Tornado application ---------------------------------------------------
    def make_app(self) -> tornado.web.Application:
        handlers: list[Any] = []
        for extra in self.pm.hook.pylight_routes(app=self):
            handlers.extend(extra or [])
        handlers.extend(ops.routes(self))  # before the API: an empty prefix would catch them
        handlers.extend(rest.routes(self.config.api.prefix, self))
        if self.config.realtime.enabled:
            handlers.extend(realtime.routes(self.config.realtime.prefix, self))
            handlers.extend(web.routes())
        return tornado.web.Application(
            handlers,
            default_handler_class=NotFoundHandler,
            default_handler_args={"app": self},
            compress_response=False,
            log_function=self.metrics.log_request,
            # A larger client message closes its socket with 1009.
            websocket_max_message_size=self.config.realtime.max_message_bytes,
        )

    def describe_table(self, table: TableInfo) -> dict[str, Any]:
        api, feeds = self.config.api, self.config.realtime
        return {
            "name": table.name,
            "primary_key": table.primary_key,
            "columns": [column.describe() for column in table.columns.values()],
            "view": table.is_view,
            "read_only": not table.writable,
            "foreign_keys": [key.describe() for key in table.foreign_keys],
            "url": f"{api.prefix}/{table.name}",
            # A view has no feed unless a plugin provides its changes.
            "ws": f"{feeds.prefix}/{table.name}"
            if feeds.enabled and realtime.has_feed(table) else None,
        }

    def format_notification(self, change: Any, seq: int) -> dict[str, Any]:
        return self.pm.hook.pylight_format_notification(change=change, seq=seq)

    def openapi(self, tables: dict[str, TableInfo] | None = None) -> dict[str, Any]:
        """The OpenAPI document of all tables (built once), or of ``tables`` only."""
        if tables is not None:
            return openapi.build(tables, self.config.api.prefix)
        if self._openapi is None:
            self._openapi = openapi.build(self.tables, self.config.api.prefix)
        return self._openapi

    # -- serving ---------------------------------------------------------------
    async def start(self, sockets: list[Any] | None = None) -> None:
        """Listen (on ``sockets`` if given) and run the start-up hooks."""
        await _await_all(self.pm.hook.pylight_startup(app=self))
        server = self.config.server
        # Tornado's own refusals (malformed or oversized requests) answered with
        # the JSON error body rather than an empty 400 or no answer at all.
        self.server = JsonRefusalsHTTPServer(
            self.make_app(),
            # Bodies are streamed and limited by the handlers, which answer 413;
            # this only stops a client streaming forever.
            max_body_size=max(self.config.api.max_body_bytes * 4, 64 * 1024 * 1024),
            max_body_bytes=self.config.api.max_body_bytes,
            # Tornado also uses idle_connection_timeout as the time allowed for a
            # request's headers (slowloris), and maps 0 to an hour.
            idle_connection_timeout=server.idle_timeout,
            # 0 means no limit: Tornado would take 0 literally and drop every body.
            body_timeout=server.body_timeout or None,
            xheaders=False,
        )
        self.connections.start()
        if self.capture is not None:
            await self.capture.start()
        if sockets is not None:
            self.server.add_sockets(sockets)
        else:
            try:
                self.server.listen(server.port, server.host)
            except OSError as exc:
                raise StartupError(
                    f"cannot listen on {server.host}:{server.port}: {exc.strerror or exc}; "
                    "choose another --port or stop what uses it"
                ) from None

    def log_ready(self, port: int) -> None:
        host = self.config.server.host
        base = f"http://{host}:{port}"
        for table in self.tables.values():
            kind = "view" if table.is_view else "table"
            flags = " (read-only)" if table.writable is False and not table.is_view else ""
            log.info("exposing %s %s at %s%s/%s%s", kind, table.name, base,
                     self.config.api.prefix, table.name, flags)
        self._log_selection()
        log.info("Pylight serving %s on %s%s/ (database: %s)", self.backend.name, base,
                 self.config.api.prefix, redact_url(self.config.database.url))

    def _log_selection(self) -> None:
        """Warn when [api] tables / exclude select nothing, naming what the database has."""
        api = self.config.api
        found = self.database_names()
        setting = f"[api] tables = {', '.join(api.tables) or '(empty)'}"
        where = f" in {self.config.source}" if self.config.source != "<defaults>" else ""
        if not self.tables and found:
            listed = ", ".join(found[:NAMES_SHOWN])
            if len(found) > NAMES_SHOWN:
                listed += f" and {len(found) - NAMES_SHOWN} more"
            has = ("1 table or view" if len(found) == 1
                   else f"{len(found)} tables and views")
            if api.exclude:
                what = f"{setting} with [api] exclude = {', '.join(api.exclude)} leaves nothing"
                change = ("[api] tables or [api] exclude", "PYLIGHT_API_TABLES / "
                          "PYLIGHT_API_EXCLUDE")
            else:
                what = f"{setting} matches nothing"
                change = ("[api] tables", "PYLIGHT_API_TABLES")
            log.warning("no table is exposed: %s, and the database has %s: %s; change %s%s "
                        "(or %s)", what, has, listed, change[0], where, change[1])
        elif not self.tables:
            hint = ("seed_demo creates the demo tables only in a database without any table"
                    if self.config.database.seed_demo else
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

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, close feeds with 1001, let in-flight requests finish, close the pool."""
        if self._stopped:
            return
        self._stopped = True
        if self.server is not None:
            self.server.stop()
        self.connections.stop()
        self.connections.close_all(1001, "server shutting down")
        deadline = asyncio.get_running_loop().time() + grace
        while self.in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        if self.server is not None:
            await self.server.close_all_connections()
        await _await_all(self.pm.hook.pylight_shutdown(app=self))
        if self.capture is not None:
            await self.capture.stop()
        await asyncio.get_running_loop().run_in_executor(None, self.db.close)
