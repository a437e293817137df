"""Test fixtures: real SQLite, PostgreSQL and MariaDB databases, and a Pylight server per test.

Each run creates its own PostgreSQL and MariaDB databases (dropped at the
end); each test starts from the demo tables. A server that is not running
skips its tests, unless PYLIGHT_REQUIRE_SERVICES=1, where it fails them.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import tornado.httpclient
from tornado.testing import bind_unused_port

from pylight.app import Pylight
from pylight.config import Config, load_config
from pylight.hub import Change
from pylight.plugins import make_plugin_manager

PG_HOST = os.environ.get("PYLIGHT_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
MYSQL_HOST = os.environ.get("PYLIGHT_TEST_MYSQL", "mysql://root@127.0.0.1:3306")
REQUIRE = os.environ.get("PYLIGHT_REQUIRE_SERVICES") == "1"
BACKENDS = ["sqlite", "postgresql", "mysql"]
RUN_ID = uuid.uuid4().hex[:8]


# -- raw connections to the servers (for set-up, outside writes and faults) ----------

def pg_connect(dbname: str = "postgres"):
    import psycopg2

    conn = psycopg2.connect(f"{PG_HOST}/{dbname}", connect_timeout=3)
    conn.autocommit = True
    return conn


def mysql_connect(dbname: str | None = None):
    import pymysql

    return pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                           database=dbname, autocommit=True, connect_timeout=3,
                           charset="utf8mb4")


def _unavailable(name: str, exc: Exception) -> None:
    message = f"{name} is not reachable ({str(exc).strip().splitlines()[0]})"
    if REQUIRE:
        pytest.fail(f"{message}; PYLIGHT_REQUIRE_SERVICES=1 requires it")
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    name = f"pylight_test_{RUN_ID}"
    try:
        conn = pg_connect()
    except Exception as exc:
        _unavailable("PostgreSQL on 127.0.0.1:5432", exc)
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    yield name
    with conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    conn.close()


@pytest.fixture(scope="session")
def mysql_database() -> Iterator[str]:
    name = f"pylight_test_{RUN_ID}"
    try:
        conn = mysql_connect()
    except Exception as exc:
        _unavailable("MariaDB/MySQL on 127.0.0.1:3306", exc)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    yield name
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


@dataclass
class TestDatabase:
    """A freshly emptied database of one backend, and a way to run raw SQL on it."""

    backend: str
    url: str
    name: str

    def execute(self, *statements: str) -> list[Any]:
        """Run statements on a connection of its own; returns the last one's rows."""
        rows: list[Any] = []
        if self.backend == "sqlite":
            import sqlite3

            conn = sqlite3.connect(self.name, isolation_level=None)
            conn.execute("PRAGMA foreign_keys=ON")
            try:
                for statement in statements:
                    rows = conn.execute(statement).fetchall()
            finally:
                conn.close()
            return rows
        conn = pg_connect(self.name) if self.backend == "postgresql" else mysql_connect(self.name)
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
                    rows = list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()
        return rows

    def ddl(self, sqlite: str, postgresql: str | None = None, mysql: str | None = None) -> None:
        """Run the statement written for this backend (the SQLite text when no other is given)."""
        statement = {"postgresql": postgresql, "mysql": mysql}.get(self.backend) or sqlite
        self.execute(*[s for s in statement.split(";\n") if s.strip()])


def _empty(backend: str, name: str) -> None:
    if backend == "postgresql":
        conn = pg_connect(name)
        with conn.cursor() as cur:
            cur.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        conn.close()
    elif backend == "mysql":
        conn = mysql_connect(name)
        with conn.cursor() as cur:
            cur.execute("SELECT table_name, table_type FROM information_schema.tables "
                        "WHERE table_schema = %s", (name,))
            found = cur.fetchall()
            cur.execute("SET FOREIGN_KEY_CHECKS = 0")
            for table, kind in found:
                what = "VIEW" if kind == "VIEW" else "TABLE"
                cur.execute(f"DROP {what} IF EXISTS `{table}`")
            cur.execute("SET FOREIGN_KEY_CHECKS = 1")
        conn.close()


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Any) -> TestDatabase:
    """An empty database on each backend in turn."""
    backend = request.param
    if backend == "sqlite":
        path = str(tmp_path / "test.db")
        return TestDatabase("sqlite", f"sqlite:///{path}" if path.startswith("/") else path, path)
    if backend == "postgresql":
        name = request.getfixturevalue("pg_database")
        _empty(backend, name)
        return TestDatabase(backend, f"{PG_HOST}/{name}", name)
    name = request.getfixturevalue("mysql_database")
    _empty(backend, name)
    return TestDatabase(backend, f"{MYSQL_HOST}/{name}", name)


# -- a running server --------------------------------------------------------------

@dataclass
class Response:
    status: int
    body: Any
    headers: Any
    raw: bytes = b""


@dataclass
class Server:
    """A Pylight server listening on a free port, with a small JSON client."""

    app: Pylight
    base_url: str
    changes: list[Change] = field(default_factory=list)

    async def request(self, method: str, path: str, body: Any = None, *,
                      raw: bytes | None = None, headers: dict[str, str] | None = None) -> Response:
        client = tornado.httpclient.AsyncHTTPClient()
        sent_headers = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            sent_headers.setdefault("Content-Type", "application/json")
        if data is None and method in ("POST", "PUT", "PATCH"):
            data = b""
        response = await client.fetch(
            self.base_url + path, method=method, body=data, headers=sent_headers,
            raise_error=False, allow_nonstandard_methods=True, request_timeout=30,
        )
        content = response.body or b""
        try:
            parsed = json.loads(content) if content else None
        except ValueError:
            parsed = None
        return Response(response.code, parsed, response.headers, content)

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("POST", path, body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("PUT", path, body, **kw)

    async def patch(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("PATCH", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> Response:
        return await self.request("DELETE", path, **kw)


def write_config(path: Any, url: str, settings: dict[str, dict[str, Any]] | None = None, *,
                 seed: bool = True) -> str:
    """An ini file for ``url`` with ``settings`` ({section: {key: value}}); the demo
    tables are seeded unless ``seed`` is False."""
    sections: dict[str, dict[str, Any]] = {"database": {"url": url,
                                                        "seed_demo": "true" if seed else "false",
                                                        "pool_size": 4}}
    for section, values in (settings or {}).items():
        sections.setdefault(section, {}).update(values)
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in values.items())
        lines.append("")
    target = path / f"pylight-{uuid.uuid4().hex[:6]}.ini"
    target.write_text("\n".join(lines))
    return str(target)


# -- the one way tests build, open and serve a Pylight app in-process ----------------------
#
# build_app: construct only (errors of the constructor); open_app: construct and open
# (errors of open(), or an app whose tables are used without serving); serve: listen on
# a free port. Tests start servers through the ``make_server`` / ``servers`` fixtures,
# which stop them at teardown; tests/live_server.py runs `python -m pylight` instead.

def make_config(directory: Any, url: str, settings: dict[str, dict[str, Any]] | None = None, *,
                seed: bool = True) -> Config:
    """The configuration of ``write_config(directory, url, settings, seed=seed)``."""
    return load_config(write_config(directory, url, settings, seed=seed), environ={})


def build_app(config: Config, plugins: Iterable[Any] = (), *, entry_points: bool = True) -> Pylight:
    """A Pylight app (not opened): the plugins of ``[plugins] load``, the installed ones
    unless ``entry_points`` is False, and the extra plugin objects ``plugins``."""
    pm = make_plugin_manager(config.plugins.load, entry_points=entry_points)
    for plugin in plugins:
        pm.register(plugin)
    return Pylight(config, pm)


def open_app(config: Config, plugins: Iterable[Any] = ()) -> Pylight:
    """``build_app`` and ``open()``: connected, seeded if asked, tables reflected; not serving
    (the caller closes ``app.db`` or serves it)."""
    app = build_app(config, plugins)
    app.open()
    return app


async def serve(app: Pylight) -> Server:
    """Start the opened ``app`` on a free port; ``server.changes`` collects every change.

    If start-up fails (e.g. a ``pylight_startup`` hook refuses), the socket and the
    database pool are closed and the error is raised. The caller stops the app.
    """
    sock, port = bind_unused_port()
    try:
        await app.start(sockets=[sock])
    except BaseException:
        sock.close()
        app.db.close()
        raise
    server = Server(app, f"http://127.0.0.1:{port}")
    app.hub.subscribe(None, server.changes.append)
    return server


class Servers:
    """In-process servers on a test's ``io_loop``, all stopped at teardown (see ``servers``)."""

    def __init__(self, io_loop: Any, tmp_path: Any, url: str | None = None) -> None:
        self.io_loop = io_loop
        self.tmp_path = tmp_path
        self.url = url
        self.started: list[Pylight] = []

    def __call__(self, settings: dict[str, dict[str, Any]] | None = None,
                 plugins: Iterable[Any] = (), *, url: str | None = None,
                 config: Config | None = None, seed: bool = True) -> Server:
        """A server on ``url`` (by default the test's database) with ``settings`` and the
        extra plugin objects ``plugins``; or on a ready ``config`` (then ``url``,
        ``settings`` and ``seed`` do not apply)."""
        if config is None:
            url = url or self.url
            if url is None:
                raise TypeError("no database: pass url=... (or use the make_server fixture)")
            config = make_config(self.tmp_path, url, settings, seed=seed)
        elif settings is not None or url is not None:
            raise TypeError("give either a config or url/settings, not both")
        return self.serve(open_app(config, plugins))

    def serve(self, app: Pylight) -> Server:
        """Start an app of ``open_app`` (when the test needs the app itself, e.g. after a
        refused start-up); stopped at teardown if it started."""
        server = self.io_loop.run_sync(lambda: serve(app))
        self.started.append(app)
        return server

    def stop_all(self) -> None:
        # Pylight.stop() is idempotent: a test may have stopped its app already.
        for app in self.started:
            self.io_loop.run_sync(app.stop)


@pytest.fixture
def servers(io_loop: Any, tmp_path: Any) -> Iterator[Servers]:
    """Start servers on any URL: ``servers({...}, url="memsqlite://demo", plugins=[...])``."""
    started = Servers(io_loop, tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
def make_server(io_loop: Any, database: TestDatabase, tmp_path: Any) -> Iterator[Servers]:
    """Start a server on ``database``: ``make_server({"api": {"max_limit": 5}}, plugins=[...])``."""
    started = Servers(io_loop, tmp_path, database.url)
    yield started
    started.stop_all()


@pytest.fixture
def server(make_server: Servers) -> Server:
    """A server on the demo tables with default settings."""
    return make_server()


@pytest.fixture
def live_server(database: TestDatabase, tmp_path: Any) -> Iterator[Any]:
    """A Pylight process on ``database`` (see tests/live_server.py); stopped afterwards."""
    from tests.live_server import LiveServer, free_port

    conf = write_config(tmp_path, database.url, {"table:users": {"hidden": "password_hash"}})
    server = LiveServer(conf, free_port(), tmp_path).start()
    yield server
    server.stop()
