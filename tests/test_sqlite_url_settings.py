"""A SQLite URL may set how durable commits are (``sqlite:///app.db?synchronous=normal``)
and serve the file read-only, exactly as it is (``?mode=ro``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pylight_sqlite import SqliteBackend

from pylight.errors import StartupError


@pytest.mark.parametrize("query,expected", [("", 2), ("?synchronous=normal", 1),
                                            ("?synchronous=FULL", 2), ("?synchronous=off", 0),
                                            ("?synchronous=extra", 3)])
def test_synchronous_is_set_on_every_pooled_connection(tmp_path: Path, query: str,
                                                       expected: int) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}{query}"
    db = SqliteBackend().open(url, 2, 1.0)
    try:
        with db.connection_context():
            assert db.execute_sql("PRAGMA synchronous").fetchone()[0] == expected
            # the settings never reach the file name
            assert db.execute_sql("PRAGMA database_list").fetchone()[2] == str(tmp_path / "app.db")
            assert db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close_all()


@pytest.fixture
def read_only_file(tmp_path: Path) -> Path:
    """A database file as another program keeps it: rollback journal, not WAL."""
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "shop floor.db"  # a space: the file URI must quote it
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);"
                       "INSERT INTO items (name) VALUES ('lamp'), ('desk');")
    conn.close()
    return path


@pytest.fixture
def read_only_server(read_only_file: Path, servers: Any) -> Any:
    return servers(url=f"sqlite:///{read_only_file}?mode=ro", seed=False)


@pytest.mark.gen_test(timeout=60)
async def test_mode_ro_serves_the_file_as_it_is_and_refuses_writes(read_only_server,
                                                                   read_only_file):
    server = read_only_server
    before = read_only_file.read_bytes()
    assert (await server.get("/api/items?order=name")).body["items"] == [
        {"id": 2, "name": "desk"}, {"id": 1, "name": "lamp"}]
    described = (await server.get("/api/")).body["tables"]
    assert [(t["name"], t["read_only"]) for t in described] == [("items", True)]
    for method, path, body in (("POST", "/api/items", {"name": "x"}),
                               ("PATCH", "/api/items/1", {"name": "x"}),
                               ("DELETE", "/api/items?id=eq.1", None)):
        refused = await server.request(method, path, body)
        assert refused.status == 405, (method, refused.body)
    paths = (await server.get("/api/openapi.json")).body["paths"]
    assert set(paths["/api/items"]) == {"get"}
    # Not switched to WAL, no -wal or -shm file beside it, not a byte changed.
    assert read_only_file.read_bytes() == before
    assert sorted(p.name for p in read_only_file.parent.iterdir()) == [read_only_file.name]
    conn = sqlite3.connect(read_only_file)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_mode_ro_needs_an_existing_file(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="mode=ro serves an existing file"):
        SqliteBackend().open(f"sqlite:///{tmp_path / 'missing.db'}?mode=ro", 1, 1.0)
