"""Adds `GET /hello` and `GET /api/login` through the pylight_routes hook."""

from __future__ import annotations

from typing import Any

import tornado.web

from pylight import hookimpl


class HelloHandler(tornado.web.RequestHandler):
    def initialize(self, app: Any) -> None:
        self.app = app

    def get(self) -> None:
        self.write({"hello": "world", "tables": sorted(self.app.tables)})


class LoginHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write({"login": "plugin"})


@hookimpl
def pylight_routes(app: Any) -> list[tuple[Any, ...]]:
    return [
        (r"/hello", HelloHandler, {"app": app}),
        # Would otherwise look like the table "login" (a 404).
        (app.config.api.prefix + r"/login", LoginHandler),
    ]
