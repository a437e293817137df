"""The browser side: the live page at `/` and the JavaScript client at `/pylight.js`."""

from __future__ import annotations

import os
from typing import Any

from tornado.web import StaticFileHandler

STATIC = os.path.join(os.path.dirname(__file__), "static")


class PageHandler(StaticFileHandler):
    """Serves the bundled files with revalidation, so an upgrade is picked up at once."""

    metrics_route = ":page"

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Content-Type-Options", "nosniff")


def routes() -> list[tuple[str, type, dict[str, Any]]]:
    return [
        (r"/()", PageHandler, {"path": STATIC, "default_filename": "index.html"}),
        (r"/(pylight\.js)", PageHandler, {"path": STATIC}),
    ]
