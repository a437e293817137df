"""The browser side: the data explorer at `/` and the JavaScript client at `/pylight.js`."""

from __future__ import annotations

import os
from typing import Any

from tornado.template import Template
from tornado.web import RequestHandler, StaticFileHandler

from pylight.handlers import JsonErrors

STATIC = os.path.join(os.path.dirname(__file__), "static")


class PageHandler(JsonErrors, StaticFileHandler):
    """Serves the bundled files with revalidation, so an upgrade is picked up at once."""

    metrics_route = ":page"
    cors_origins: list[str] = []

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Content-Type-Options", "nosniff")


class ExplorerPage(JsonErrors, RequestHandler):
    """`/`: the explorer's page, told where the API, the feeds and the docs are (they
    move with ``[api] prefix`` and ``[realtime] prefix``)."""

    metrics_route = ":page"
    cors_origins: list[str] = []

    def initialize(self, html: str) -> None:
        self.html = html

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.finish(self.html)


def explorer_html(api_prefix: str, feeds_prefix: str | None, docs_url: str) -> str:
    with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as file:
        template = Template(file.read(), name="index.html")  # autoescaped
    page: bytes = template.generate(api_prefix=api_prefix, feeds_prefix=feeds_prefix or "",
                                    docs_url=docs_url)
    return page.decode("utf-8")


def routes(api_prefix: str, feeds_prefix: str | None,
           docs_url: str) -> list[tuple[str, type, dict[str, Any]]]:
    """``feeds_prefix``: where `/ws` is (None: feeds are off and the explorer reads only)."""
    return [
        (r"/", ExplorerPage, {"html": explorer_html(api_prefix, feeds_prefix, docs_url)}),
        (r"/(pylight\.js|explorer\.js|explorer\.css)", PageHandler, {"path": STATIC}),
    ]
