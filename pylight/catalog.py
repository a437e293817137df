"""What the API says about itself: the table descriptions of ``GET /api/`` and the
OpenAPI document, built from the reflected tables without touching the database."""

from __future__ import annotations

from typing import Any

from pylight import openapi
from pylight.schema import TableInfo
from pylight.subscription import has_feed


class Catalog:
    def __init__(self, tables: dict[str, TableInfo], api_prefix: str,
                 feeds_prefix: str | None) -> None:
        """``feeds_prefix``: where the WebSocket feeds are (None: feeds are off)."""
        self.tables = tables
        self.api_prefix = api_prefix
        self.feeds_prefix = feeds_prefix
        self._openapi: dict[str, Any] | None = None

    def describe(self, table: TableInfo) -> dict[str, Any]:
        return {
            "name": table.name,
            "primary_key": table.primary_key,
            "columns": [column.describe() for column in table.columns.values()],
            "view": table.is_view,
            "read_only": not table.writable,
            "foreign_keys": [key.describe() for key in table.foreign_keys],
            "url": f"{self.api_prefix}/{table.name}",
            # A view has no feed unless a plugin provides its changes.
            "ws": f"{self.feeds_prefix}/{table.name}"
            if self.feeds_prefix is not None and has_feed(table) else None,
        }

    def openapi(self, tables: dict[str, TableInfo] | None = None) -> dict[str, Any]:
        """The OpenAPI document of all tables (built once), or of ``tables`` only."""
        if tables is not None:
            return openapi.build(tables, self.api_prefix)
        if self._openapi is None:
            self._openapi = openapi.build(self.tables, self.api_prefix)
        return self._openapi
