"""The API docs page, `<prefix>/docs`: Swagger UI rendering `<prefix>/openapi.json`.

The page and its assets come from swagger-ui-py, which bundles Swagger UI's
files (no CDN). Its own Tornado integration registers routes on a finished
Application, after every table route, with Tornado's HTML error pages; here its
page is served from Pylight's route list, so the order against the table routes
is decided in one place (app.py) and errors are the API's JSON ones.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Collection
from functools import cache
from pathlib import Path
from typing import Any

from tornado.web import RequestHandler, StaticFileHandler

from pylight.handlers import JsonErrors

# Swagger UI options, as JavaScript source (swagger-ui-py's `parameters`).
_PARAMETERS = {
    "layout": '"BaseLayout"',  # without the top bar for browsing other documents
    "validatorUrl": "null",  # the default sends the document to validator.swagger.io
    # The explorer's token (sessionStorage) goes with "Try it out" and the
    # document itself, so the docs work with an auth plugin too.
    "requestInterceptor": "function (request) {"
                          " var token = window.sessionStorage.getItem('pylight.token');"
                          " if (token) request.headers.Authorization = 'Bearer ' + token;"
                          " return request; }",
}


@cache
def _page(assets_prefix: str, openapi_url: str) -> str:
    """swagger-ui-py's page for a document it does not serve itself, rendered on the
    first visit: the library (with jinja2 and yaml) costs a server that nobody asks for
    its docs several megabytes."""
    from swagger_ui.core import ApplicationDocument

    class Document(ApplicationDocument):  # type: ignore[misc]
        @property
        def swagger_json_uri_absolute(self) -> str:
            return openapi_url

    return Document(None, config_rel_url=openapi_url, url_prefix=assets_prefix,
                    title="Pylight API docs", parameters=_PARAMETERS).doc_html


def _static_dir() -> str:
    """swagger-ui-py's bundled files, found without importing it."""
    spec = importlib.util.find_spec("swagger_ui")
    assert spec is not None and spec.submodule_search_locations, "swagger-ui-py is missing"
    return str(Path(next(iter(spec.submodule_search_locations))) / "static")


def page_url(api_prefix: str, tables: Collection[str]) -> str:
    """Where the docs page is. A table named ``docs`` keeps ``<prefix>/docs`` (its list,
    its `next` links and its writes are the contract's); the page then moves to
    ``<prefix>/openapi.html``, beside the document it renders."""
    return f"{api_prefix}/openapi.html" if "docs" in tables else f"{api_prefix}/docs"


class DocsPage(JsonErrors, RequestHandler):
    metrics_route = ":page"
    cors_origins: list[str] = []

    def initialize(self, assets: str, document: str) -> None:
        self.assets = assets
        self.document = document

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.finish(_page(self.assets, self.document))


class DocsAsset(JsonErrors, StaticFileHandler):
    """Swagger UI's scripts and styles, as swagger-ui-py installed them."""

    metrics_route = ":page"
    cors_origins: list[str] = []

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")  # revalidated: an upgrade shows at once
        self.set_header("X-Content-Type-Options", "nosniff")


def routes(api_prefix: str, tables: Collection[str]) -> list[tuple[str, type, dict[str, Any]]]:
    """The page and its assets; listed before the table routes (`/api/<table>`) so that
    ``<prefix>/docs`` is the page unless a table takes it (see :func:`page_url`).
    The assets' paths (``<prefix>/docs/static/<file>``) have one segment more than any
    table route, so they never hide a table's rows."""
    assets = f"{api_prefix}/docs"
    page = page_url(api_prefix, tables)
    return [
        (re.escape(page) + "/?", DocsPage,
         {"assets": assets, "document": f"{api_prefix}/openapi.json"}),
        (re.escape(assets) + "/static/(.+)", DocsAsset, {"path": _static_dir()}),
    ]
