"""Operations: Prometheus metrics at `/metrics`, `/healthz`, `/readyz` and the JSON access log.

Each server has its own :class:`Metrics` (its own
``CollectorRegistry``, so several servers can share one process). The hot
paths stay cheap: a request costs one counter increment and one histogram
observation (label children are cached); a WebSocket message costs one
integer addition on its connection. Everything else — open connections,
drops, queue depths, pool usage — is read when ``/metrics`` is scraped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _quote  # a JSON string literal, in C
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from pylight.connections import Connections
from pylight.db import Database
from pylight.errors import ApiError, unavailable
from pylight.handlers import BaseHandler, HttpContext
from pylight.redaction import redact
from pylight.schema import TableInfo

if TYPE_CHECKING:
    import tornado.web

access_log = logging.getLogger("tornado.access")

# Seconds /readyz waits for `SELECT 1` before answering 503.
READY_TIMEOUT = 2.0
# Request latency buckets, in seconds: GET by key is well under a millisecond.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Any other method is counted as OTHER: a client must not be able to mint label values.
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
# The `table` label of requests that are not about one table. Table names
# never start with ':' in practice, so these cannot be mistaken for one.
UNKNOWN_TABLE = ":unknown_table"
OTHER_ROUTE = ":other"


# -- the access log -------------------------------------------------------------------

_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def utc_time(now: float) -> str:
    """``now`` as ISO 8601 UTC with milliseconds; the seconds part is formatted once a second."""
    whole = int(now)
    if _second[0] != whole:
        _second[0], _second[1] = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{int((now - whole) * 1000):03d}Z"


def access_line(handler: tornado.web.RequestHandler, table: str) -> str:
    """One access log line: a JSON object (no header, body or credential is included).

    Written out by hand, the strings escaped by the json module's C encoder:
    a quarter of the cost of ``json.dumps`` on a dict, once per request.
    """
    request = handler.request
    uri = request.uri or ""
    if "?" in uri:
        uri = redact(uri)
    length = handler._headers.get("Content-Length")  # set by finish() for a plain response
    return (f'{{"time": "{utc_time(time.time())}", "method": {_quote(request.method or "")}, '
            f'"path": {_quote(uri[:2000])}, "status": {handler.get_status()}, '
            f'"duration_ms": {1000.0 * request.request_time():.3f}, '
            f'"remote": {_quote(request.remote_ip or "")}, "table": {_quote(table)}, '
            f'"bytes": {int(length) if length and length.isdigit() else 0}}}')


# -- metrics ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ServerState:
    """What the metrics read when scraped, and the readiness check asks."""

    tables: dict[str, TableInfo]
    connections: Connections
    feeds_enabled: bool
    in_flight: set[Any]
    database: Database
    stopping: Callable[[], bool]


class Metrics:
    """One server's registry: request metrics on the hot path, the rest collected at scrape."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("pylight_http_requests", "HTTP requests handled (WebSocket upgrades "
                                "are 101), by table or route, method and status",
                                ("table", "method", "status"), registry=self.registry)
        self.latency = Histogram("pylight_http_request_duration_seconds",
                                 "Time to handle an HTTP request, by table or route and method",
                                 ("table", "method"), buckets=BUCKETS, registry=self.registry)
        self.registry.register(StateCollector(state))
        ProcessCollector(registry=self.registry)
        # Label children, cached: .labels() costs more than the increment itself.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}
        self._routes: dict[type, str | None] = {}

    def table_label(self, handler: tornado.web.RequestHandler) -> str:
        """The table a request was about, or a fixed route name: never a raw path."""
        cls = type(handler)
        route = self._routes.get(cls, "")
        if route == "":
            route = self._routes[cls] = route_name(cls)
        if route is not None:
            return route
        # No path_args when Tornado refused the method before routing them (405).
        args = getattr(handler, "path_args", None)
        if args and args[0] in self.state.tables:
            return args[0]
        return UNKNOWN_TABLE

    def observe(self, table: str, method: str, status: int, seconds: float) -> None:
        if method not in METHODS:
            method = "OTHER"
        key = (table, method, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.requests.labels(table, method, str(status))
        counter.inc()
        pair = (table, method)
        histogram = self._histograms.get(pair)
        if histogram is None:
            histogram = self._histograms[pair] = self.latency.labels(table, method)
        histogram.observe(seconds)

    def log_request(self, handler: tornado.web.RequestHandler) -> None:
        """The application's ``log_function``: one observation and one access log line."""
        log_request(handler, self)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def route_name(cls: type) -> str | None:
    """The fixed ``table`` label of a handler class (its ``metrics_route``); None for the
    per-table routes, ``:other`` for a plugin's route."""
    return getattr(cls, "metrics_route", OTHER_ROUTE)


class StateCollector(Collector):
    """Gauges and counters read from the server's state when scraped, never kept up to date."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def describe(self) -> list[Any]:
        return []  # the metric set is fixed, but collect() reads live state: no dry run at register

    def collect(self) -> Iterator[Any]:
        state = self.state
        connections = state.connections
        per_table: dict[str, int] = {}
        queued = longest = 0
        for conn in connections.open:
            per_table[conn.table_name] = per_table.get(conn.table_name, 0) + 1
            depth = len(conn.outbox)
            queued += depth
            if depth > longest:
                longest = depth
        if state.feeds_enabled:
            for name in state.tables:
                per_table.setdefault(name, 0)
        gauge = GaugeMetricFamily("pylight_websocket_connections",
                                  "Open WebSocket feed connections, by table", labels=("table",))
        for name in sorted(per_table):
            gauge.add_metric((name,), per_table[name])
        yield gauge
        yield CounterMetricFamily("pylight_websocket_messages_sent",
                                  "WebSocket messages written to feed sockets (changes and "
                                  "control messages)", value=connections.sent_total())
        dropped = CounterMetricFamily("pylight_websocket_dropped",
                                      "WebSocket connections the server dropped, by reason",
                                      labels=("reason",))
        dropped.add_metric(("heartbeat",), connections.dropped_by_heartbeat)
        dropped.add_metric(("backpressure",), connections.dropped_by_backpressure)
        dropped.add_metric(("rate_limit",), connections.closed_by_rate)
        yield dropped
        yield CounterMetricFamily("pylight_websocket_refused",
                                  "WebSocket upgrades refused by the connection limits",
                                  value=connections.refused_by_limit)
        yield GaugeMetricFamily("pylight_websocket_queue_messages",
                                "Messages waiting in all feed connections' queues",
                                value=queued)
        yield GaugeMetricFamily("pylight_websocket_queue_messages_max",
                                "Messages waiting in the longest feed connection queue",
                                value=longest)
        yield GaugeMetricFamily("pylight_http_requests_in_flight",
                                "HTTP requests being handled", value=len(state.in_flight))
        yield from self._pool(state.database.stats())

    def _pool(self, stats: dict[str, int]) -> Iterator[Any]:
        """The database pool's figures."""
        pool = GaugeMetricFamily("pylight_db_connections",
                                 "Pooled database connections, by state", labels=("state",))
        pool.add_metric(("in_use",), stats["connections_in_use"])
        pool.add_metric(("idle",), stats["connections_idle"])
        yield pool
        yield GaugeMetricFamily("pylight_db_connections_max", "The pool's size ([database] "
                                "pool_size)", value=stats["connections_max"])
        yield GaugeMetricFamily("pylight_db_executor_busy",
                                "Worker threads running a database call",
                                value=stats["executor_busy"])
        yield GaugeMetricFamily("pylight_db_executor_queue",
                                "Database calls waiting for a worker thread",
                                value=stats["executor_queue"])


# -- the handlers ------------------------------------------------------------------------

class OpsHandler(BaseHandler):
    def initialize(self, http: HttpContext, metrics: Metrics) -> None:  # type: ignore[override]
        super().initialize(http)
        self.metrics = metrics
        self.state = metrics.state


class MetricsHandler(OpsHandler):
    metrics_route = ":metrics"

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.set_header("Cache-Control", "no-store")
        self.finish(self.metrics.exposition())


class HealthHandler(OpsHandler):
    """The process is alive and its event loop answers."""

    metrics_route = ":healthz"

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.write_json({"status": "ok"})


class ReadyHandler(OpsHandler):
    """The database answers ``SELECT 1`` in time (503 with Retry-After otherwise)."""

    metrics_route = ":readyz"

    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        if self.state.stopping():
            raise unavailable("the server is shutting down", retry_after=5)
        try:
            await self.state.database.ping(READY_TIMEOUT)
        except ApiError as exc:
            if exc.status != 503:
                raise unavailable(f"the database check failed: {exc.message}") from None
            raise
        except Exception as exc:  # not ready, whatever the driver says
            raise unavailable(f"the database check failed ({type(exc).__name__})") from None
        self.write_json({"status": "ready"})


def routes(http: HttpContext, metrics: Metrics) -> list[tuple[str, type, dict[str, Any]]]:
    kwargs = {"http": http, "metrics": metrics}
    return [
        (r"/metrics", MetricsHandler, kwargs),
        (r"/healthz", HealthHandler, kwargs),
        (r"/readyz", ReadyHandler, kwargs),
    ]


def log_request(handler: tornado.web.RequestHandler, metrics: Metrics | None = None) -> None:
    """Tornado's ``log_function`` (see :meth:`Metrics.log_request`): count, then log as JSON."""
    request = handler.request
    status = handler.get_status()
    if metrics is not None:
        table = metrics.table_label(handler)
        metrics.observe(table, request.method or "", status, request.request_time())
    else:
        table = OTHER_ROUTE
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if access_log.isEnabledFor(level):
        access_log.log(level, access_line(handler, table))


__all__ = ["Metrics", "log_request", "routes"]
