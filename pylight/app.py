"""The composition root: builds one server's parts, wires them together, starts and stops them.

Nothing else in the package imports this module (the command line does);
every other part is handed exactly the collaborators it needs. Plugins get
the :class:`Pylight` object itself through their hooks' ``app`` argument
(``app.config``, ``app.tables``, ``app.hub``, ``app.db``, ``app.backend``,
``app.auth``, ``app.state``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

import pluggy
import tornado.web
from tornado.httpserver import HTTPServer

from pylight import announce, apidocs, demo, favicon, ops, realtime, rest, sse, web
from pylight.auth import Auth
from pylight.backend import Backend, choose_backend
from pylight.capture import Capture
from pylight.catalog import Catalog
from pylight.changes import Change
from pylight.config import Config
from pylight.connections import Connections
from pylight.db import Database
from pylight.errors import StartupError
from pylight.handlers import HttpContext, NotFoundHandler
from pylight.http_limits import JsonRefusalsHTTPServer
from pylight.hub import Hub
from pylight.plugin_routes import with_json_errors
from pylight.publisher import Bus, BusRelay, CaptureWakeUp, LocalDelivery, Publisher
from pylight.redaction import redact_logs
from pylight.rows import Rows
from pylight.schema import TableInfo, reflect
from pylight.session import FeedContext
from pylight.window import Windows
from pylight.writes import Writes

log = logging.getLogger("pylight")


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
        self.backend: Backend = choose_backend(pm, config.database.url)
        self.hub = Hub(self.format_notification, config.realtime.replay_buffer)
        self.connections = Connections(config.realtime.heartbeat_interval,
                                       config.realtime.heartbeat_timeout)
        self.auth = Auth(pm, self, self.backend)
        self.http = HttpContext(config.api.max_body_bytes, config.api.cors_origins)
        self.tables: dict[str, TableInfo] = {}
        # Every table and view of the database, exposed or not (for start-up messages).
        self.database_tables: list[str] = []
        self.elsewhere: list[str] = []  # schemas holding tables when this one has none
        self.server: HTTPServer | None = None
        self.bus: Bus | None = None
        self.capture: Capture | None = None
        # Plugins' per-server objects, by plugin name (what a plugin built from its
        # [plugin:NAME] section in pylight_startup): one process may run several
        # servers, so a module global would mix them up.
        self.state: dict[str, Any] = {}
        self._stopped = False

    @property
    def stopping(self) -> bool:
        return self._stopped

    @property
    def in_flight(self) -> set[Any]:
        """The HTTP requests being handled (a graceful stop waits for them)."""
        return self.http.in_flight

    # -- building (blocking) ---------------------------------------------------------------
    def open(self) -> None:
        """Connect, seed the demo if asked, reflect the tables and build the change path."""
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
                self.config = demo.with_demo_settings(self.config, raw, self.database_tables)
            # A database whose tables all live in other schemas (PostgreSQL) serves
            # nothing: start-up says where they are.
            self.elsewhere = [] if self.database_tables else self.backend.other_schemas(raw)
            announce.check_selection(self.config, self.database_names())
            self.tables = reflect(raw, self.backend, self.config)
        self._build_change_path()
        self.rows = Rows(self.db, self.writes, self.backend,
                         expose_actor=self.config.realtime.expose_actor)
        feeds = self.config.realtime
        self.catalog = Catalog(self.tables, self.config.api.prefix,
                               feeds.prefix if feeds.enabled else None)
        self.metrics = ops.Metrics(ops.ServerState(
            self.tables, self.connections, feeds.enabled, self.http.in_flight, self.db,
            lambda: self._stopped))

    def _build_change_path(self) -> None:
        """Choose, once, where committed changes go (see pylight/publisher.py)."""
        self.bus = self.pm.hook.pylight_change_bus(app=self)
        outward: Publisher = LocalDelivery(self.hub) if self.bus is None else BusRelay(self.bus)
        self.hub.route_through(outward.publish)
        if self.config.realtime.capture != "database":
            self.writes = Writes(self.db, outward)
            return
        # The triggers report every write, the API's included: an API write
        # only wakes the capture reader, which publishes each change once.
        wanted = asyncio.Event()
        wake_up = CaptureWakeUp(wanted.set)
        self.writes = Writes(self.db, wake_up)
        self.capture = Capture(self.db, self.writes, self.tables, self.hub.publish, wanted,
                               self.config, wake_up.claim)
        self.capture.prepare()

    def database_names(self) -> list[str]:
        """The database's tables and views that are not Pylight's own, exposed or not."""
        internal = ("_pylight", *self.backend.internal_table_prefixes)
        return [name for name in self.database_tables if not name.startswith(internal)]

    def make_app(self) -> tornado.web.Application:
        """The Tornado application: every route, handed its collaborators."""
        config = self.config
        handlers: list[Any] = []
        for extra in self.pm.hook.pylight_routes(app=self):
            handlers.extend(with_json_errors(extra or [], config.api.cors_origins))
        handlers.extend(ops.routes(self.http, self.metrics))  # before the API: an empty
        # prefix would catch them
        handlers.extend(favicon.routes(self.http))
        # Before the table routes: `<prefix>/docs` is the docs page unless a table is
        # named `docs` (then the table keeps it; see apidocs.page_url).
        handlers.extend(apidocs.routes(config.api.prefix, self.tables))
        handlers.extend(rest.routes(self.http, rest.RestContext(
            self.tables, self.rows, self.auth, self.catalog, config.api)))
        if config.realtime.enabled:
            feeds = FeedContext(self.tables, self.hub, self.auth, self.connections,
                                Windows(self.rows.page), config.realtime, config.api)
            handlers.extend(realtime.routes(config.realtime.prefix, feeds))
            if config.realtime.sse:
                handlers.extend(sse.routes(feeds))
        handlers.extend(web.routes(
            config.api.prefix, config.realtime.prefix if config.realtime.enabled else None,
            apidocs.page_url(config.api.prefix, self.tables)))
        return tornado.web.Application(
            handlers,
            default_handler_class=NotFoundHandler,
            default_handler_args={"http": self.http},
            compress_response=False,
            log_function=self.metrics.log_request,
            # A larger client message closes its socket with 1009.
            websocket_max_message_size=config.realtime.max_message_bytes,
        )

    def format_notification(self, change: Change, seq: int) -> dict[str, Any]:
        return self.pm.hook.pylight_format_notification(change=change, seq=seq, app=self)

    # -- serving ---------------------------------------------------------------------------
    async def start(self, sockets: list[Any] | None = None) -> None:
        """Listen (on ``sockets`` if given) and run the start-up hooks."""
        await _await_all(self.pm.hook.pylight_startup(app=self))
        self.server = self._http_server()
        self.connections.start()
        if self.bus is not None:
            await self.bus.start()
        if self.capture is not None:
            await self.capture.start()
        if sockets is not None:
            self.server.add_sockets(sockets)
            return
        server = self.config.server
        try:
            self.server.listen(server.port, server.host)
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {server.host}:{server.port}: {exc.strerror or exc}; "
                "choose another --port or stop what uses it"
            ) from None

    def _http_server(self) -> HTTPServer:
        server, api = self.config.server, self.config.api
        # Tornado's own refusals (malformed or oversized requests) answered with
        # the JSON error body rather than an empty 400 or no answer at all.
        return JsonRefusalsHTTPServer(
            self.make_app(),
            # Bodies are streamed and limited by the handlers, which answer 413;
            # this only stops a client streaming forever.
            max_body_size=max(api.max_body_bytes * 4, 64 * 1024 * 1024),
            max_body_bytes=api.max_body_bytes,
            # Tornado also uses idle_connection_timeout as the time allowed for a
            # request's headers (slowloris), and maps 0 to an hour.
            idle_connection_timeout=server.idle_timeout,
            # 0 means no limit: Tornado would take 0 literally and drop every body.
            body_timeout=server.body_timeout or None,
            xheaders=False,
        )

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, close feeds with 1001, let in-flight requests finish, close the pool."""
        if self._stopped:
            return
        self._stopped = True
        if self.server is not None:
            self.server.stop()
        self.connections.stop()
        self.connections.close_all(1001, "server shutting down")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.http.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self.server is not None:
            await self.server.close_all_connections()
        await _await_all(self.pm.hook.pylight_shutdown(app=self))
        if self.capture is not None:
            await self.capture.stop()
        if self.bus is not None:
            await self.bus.stop()
        await loop.run_in_executor(None, self.db.close)
