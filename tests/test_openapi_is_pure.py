"""Building the OpenAPI document never queries the database (pylight/openapi.py)."""

from __future__ import annotations

from typing import Any

from pylight import openapi
from pylight.app import Pylight
from tests.conftest import make_config, open_app


def _demo(tmp_path: Any) -> Pylight:
    return open_app(make_config(tmp_path, f"sqlite:///{tmp_path / 'demo.db'}"))


def _statements(app: Pylight, build: Any) -> tuple[list[Any], Any]:
    db = app.db.db
    calls: list[Any] = []
    plain = db.execute_sql

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return plain(*args, **kwargs)

    db.execute_sql = counting
    try:
        return calls, build()
    finally:
        db.execute_sql = plain


def test_build_is_pure_even_without_the_catalogs_facts(tmp_path: Any) -> None:
    """Without what the backend read from the catalog at reflection, the document is the
    one for an unreadable catalog, and still no query is made."""
    app = _demo(tmp_path)
    try:
        prepared = openapi.build(app.tables, "/api")
        for table in app.tables.values():
            table.declared = None
        calls, document = _statements(app, lambda: openapi.build(app.tables, "/api"))
        assert calls == []
        assert set(document["paths"]) == set(prepared["paths"])
        assert "products_create" in document["components"]["schemas"]
    finally:
        app.db.close()


def test_build_is_the_same_each_time(tmp_path: Any) -> None:
    app = _demo(tmp_path)
    try:
        calls, first = _statements(app, lambda: openapi.build(app.tables, "/api"))
        assert calls == []
        assert openapi.build(app.tables, "/api") == first
        assert openapi.build({}, "/api")["paths"] == {}
    finally:
        app.db.close()
