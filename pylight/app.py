"""The running server: opens the database, reflects it, builds the Tornado app and serves it."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

import pluggy
import tornado.web
from tornado.httpserver import HTTPServer

from pylight import demo, openapi, ops, realtime, rest, web
from pylight.auth import Auth
from pylight.backend import Backend, redact_url, url_scheme
from pylight.capture import Capture
from pylight.config import Config
from pylight.db import Database
from pylight.errors import StartupError
from pylight.handlers import NotFoundHandler
from pylight.hub import Hub
from pylight.schema import TableInfo, reflect

log = logging.getLogger("pylight")


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

    def __init__(self, config: Config, pm: pluggy.PluginManager) -> None:
        self.config = config
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
            self.tables = reflect(raw, self.backend, self.config)
        if self.capture is not None:
            self.capture.prepare()

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
        api, realtime = self.config.api, self.config.realtime
        return {
            "name": table.name,
            "primary_key": table.primary_key,
            "columns": [column.describe() for column in table.columns.values()],
            "view": table.is_view,
            "read_only": not table.writable,
            "url": f"{api.prefix}/{table.name}",
            "ws": f"{realtime.prefix}/{table.name}" if realtime.enabled else None,
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
        self.server = HTTPServer(
            self.make_app(),
            # Bodies are streamed and limited by the handlers, which answer 413;
            # this only stops a client streaming forever.
            max_body_size=max(self.config.api.max_body_bytes * 4, 64 * 1024 * 1024),
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
        if not self.tables:
            log.warning("the database has no tables to expose")
        log.info("Pylight serving %s on %s%s/ (database: %s)", self.backend.name, base,
                 self.config.api.prefix, redact_url(self.config.database.url))

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
