"""Routes a plugin adds (`pylight_routes`): their errors answered as the contract's JSON.

A plugin's handlers are Tornado handlers of its own, and Tornado renders an
error as an HTML page; a client of Pylight expects ``{"error": {...}}`` from
every path. So each plugin route's handler class is served as a subclass that
renders errors as Pylight's own routes do (and answers CORS per ``[api]
cors_origins``), unless the class renders its errors itself. A plugin may also
subclass :class:`JsonHandler`, which adds ``write_json`` and ``json_body``.
"""

from __future__ import annotations

from typing import Any

from tornado.routing import URLSpec
from tornado.web import RequestHandler

from pylight.handlers import JsonErrors, parse_json_body


class JsonHandler(JsonErrors, RequestHandler):
    """The base of a plugin's HTTP handler: JSON errors, JSON answers, JSON bodies.

    Raise :class:`pylight.ApiError` (or ``tornado.web.HTTPError``) for an error
    answer; any other exception is a 500 with the JSON body, its traceback in
    the server's log only.
    """

    cors_origins: list[str] = []  # set per server when its routes are built

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")

    def json_body(self) -> Any:
        """The request body as JSON: 415 unless it is sent as JSON, 400 when malformed."""
        return parse_json_body(self.request.body, self.request.headers.get("Content-Type", ""))


def with_json_errors(routes: list[Any], cors_origins: list[str]) -> list[Any]:
    """A plugin's routes (tuples or ``URLSpec``) with JSON errors given to each handler."""
    served = []
    for route in routes:
        if isinstance(route, URLSpec):
            handler = _json_errors(route.handler_class, cors_origins)
            route = URLSpec(route.regex.pattern, handler, route.kwargs, route.name)
        elif isinstance(route, (tuple, list)) and len(route) >= 2:
            route = (route[0], _json_errors(route[1], cors_origins), *route[2:])
        served.append(route)
    return served


def _json_errors(handler: Any, cors_origins: list[str]) -> Any:
    """``handler`` as a subclass rendering errors as JSON; itself when it renders its own
    (it overrides ``write_error``) or is no handler class (a nested application)."""
    if not (isinstance(handler, type) and issubclass(handler, RequestHandler)):
        return handler
    if not issubclass(handler, JsonErrors):
        if handler.write_error is not RequestHandler.write_error:
            return handler
        bases: tuple[type, ...] = (JsonErrors, handler)
    else:
        bases = (handler,)
    # Same name and module, so logs and metrics still name the plugin's class.
    return type(handler.__name__, bases, {"cors_origins": cors_origins,
                                          "__module__": handler.__module__,
                                          "__qualname__": handler.__qualname__,
                                          "__doc__": handler.__doc__})
