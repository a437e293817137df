"""`/favicon.ico`: an empty answer, so a browser's request for it is no 404 on every page."""

from __future__ import annotations

from typing import Any

from pylight.handlers import BaseHandler, HttpContext


class FaviconHandler(BaseHandler):
    """204 No Content, cached for a day: the browser shows its default icon and stops asking."""

    def get(self) -> None:
        self.set_status(204)
        self.set_header("Cache-Control", "public, max-age=86400")
        self.finish()

    head = get


def routes(http: HttpContext) -> list[tuple[str, type, dict[str, Any]]]:
    return [(r"/favicon\.ico", FaviconHandler, {"http": http})]
