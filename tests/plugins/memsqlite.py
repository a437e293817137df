"""A third-party backend: `memsqlite://NAME` serves a private in-memory SQLite database.

It proves the backend hook end to end: the scheme is unknown to Pylight, the
plugin claims it, opens the database and Pylight reflects and serves it. On
open it creates a `notes` table of its own, so the server has something to
serve even without `seed_demo`.
"""

from __future__ import annotations

import peewee
from pylight_sqlite import SqliteBackend

from pylight import hookimpl
from pylight.backend import Backend


class MemSqliteBackend(SqliteBackend):
    name = "memsqlite"
    schemes = ("memsqlite",)

    def open(self, url: str, pool_size: int, connect_timeout: float) -> peewee.Database:
        db = super().open("sqlite:///:memory:", pool_size, connect_timeout)
        with db.connection_context():
            db.execute_sql("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
            db.execute_sql("INSERT INTO notes (body) VALUES (?)", (f"opened {url}",))
        return db

    def describe(self, db: peewee.Database) -> str:
        return "in-memory SQLite database"


@hookimpl
def pylight_database_backends() -> list[Backend]:
    return [MemSqliteBackend()]
