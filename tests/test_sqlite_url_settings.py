"""A SQLite URL may set how durable commits are: ``sqlite:///app.db?synchronous=normal``."""

from __future__ import annotations

from pathlib import Path

import pytest
from pylight_sqlite import SqliteBackend


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
