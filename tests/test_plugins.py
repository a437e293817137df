"""The plugin system: documented hooks, entry points, `[plugins] load`, and each hook end to end."""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pluggy
import pytest
from pylight_sqlite import SqliteBackend

from pylight import StartupError, hookimpl, hookspecs
from pylight.app import Pylight
from pylight.backend import Backend
from pylight.config import load_config
from pylight.plugins import make_plugin_manager
from tests.conftest import Servers, build_app, make_config, open_app

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_BACKENDS = {"sqlite": "pylight_sqlite", "postgresql": "pylight_postgres",
                    "mysql": "pylight_mysql"}


def hook_specs() -> dict[str, Callable[..., Any]]:
    specs = {name: fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
             if hasattr(fn, "pylight_spec")}
    assert specs, "hookspecs.py defines no hooks"
    return specs


# -- the hook reference -----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_hook_is_documented_for_plugin_authors(name: str) -> None:
    fn = hook_specs()[name]
    assert name.startswith("pylight_")
    doc = inspect.getdoc(fn) or ""
    assert len(doc.split()) >= 20, f"{name} needs a docstring saying what it is for and when it runs"
    # When it runs, and what is done with the result.
    assert re.search(r"\b(called|runs?)\b", doc, re.IGNORECASE), f"{name}: say when it runs"
    assert "Returns:" in doc, f"{name}: document the return value ('Returns: ...')"
    returns = doc.split("Returns:", 1)[1]
    first_result = fn.pylight_spec["firstresult"]
    if first_result:
        assert re.search(r"first (non-None )?result|first non-None", returns, re.IGNORECASE), (
            f"{name} is firstresult: its docstring must say the first non-None result wins")
        # DESIGN: no firstresult on hooks that may be async (pluggy cannot await).
        assert "coroutine" not in doc and "await" not in doc
    else:
        assert re.search(r"\ball\b", returns, re.IGNORECASE), (
            f"{name}: say that all implementations run / all results are collected")
        assert not re.search(r"first (non-None )?result", returns, re.IGNORECASE)
    # Typed, keyword-called: every argument and the result are annotated.
    signature = inspect.signature(fn)
    assert signature.return_annotation is not inspect.Signature.empty, f"{name}: annotate the result"
    for param in signature.parameters.values():
        assert param.annotation is not inspect.Parameter.empty, f"{name}({param.name}) is untyped"


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_hook_is_called_from_exactly_one_place(name: str) -> None:
    sources = [*ROOT.joinpath("pylight").rglob("*.py"), *ROOT.joinpath("plugins").rglob("*.py")]
    calls = [(path.name, line) for path in sources
             for line in path.read_text().splitlines() if f"hook.{name}(" in line]
    assert len(calls) == 1, f"{name} is called from {len(calls)} places: {calls}"
    # Hooks are called with keyword arguments only (pluggy refuses positional ones).
    assert re.search(rf"hook\.{name}\((\)|\w+=)", calls[0][1]), calls[0]


# -- building the plugin manager ---------------------------------------------------------

def test_bundled_plugins_come_from_the_entry_point_group() -> None:
    pm = make_plugin_manager()
    registered = dict(pm.list_name_plugin())
    for name, module in BUNDLED_BACKENDS.items():
        assert registered[name].__name__ == module
    # Everything installed in the `pylight` group is registered under its entry-point name.
    for entry_point in importlib.metadata.entry_points(group="pylight"):
        assert registered[entry_point.name] is entry_point.load()
    schemes = {scheme for backends in pm.hook.pylight_database_backends()
               for backend in backends for scheme in backend.schemes}
    assert {"sqlite", "postgresql", "postgres", "mysql", "mariadb"} <= schemes


def test_without_entry_points_no_backend_exists() -> None:
    """The backends are plugins like any other: skip the entry points and they are gone."""
    with pytest.raises(StartupError, match=r"unknown scheme 'sqlite' \(known: none installed\)"):
        build_app(load_config(None, environ={}), entry_points=False)


def test_misspelled_hook_is_a_startup_error() -> None:
    with pytest.raises(StartupError) as caught:
        make_plugin_manager(["tests.plugins.misspelled"])
    message = str(caught.value)
    assert "tests.plugins.misspelled" in message
    assert "pylight_statrup" in message
    assert "\n" not in message


def test_misspelled_hook_on_a_registered_object_is_caught_by_check_pending() -> None:
    class Typo:
        @hookimpl
        def pylight_shutdwon(self, app: Any) -> None:
            pass

    pm = make_plugin_manager()
    pm.register(Typo(), name="typo")
    with pytest.raises(pluggy.PluginValidationError):
        pm.check_pending()


def test_plugins_load_tolerates_repeats_and_bundled_modules() -> None:
    """Naming a module twice, or a bundled plugin again, loads it once instead of crashing."""
    pm = make_plugin_manager(["tests.plugins.hello_route", "tests.plugins.hello_route",
                              "pylight_sqlite"])
    names = [name for name, _ in pm.list_name_plugin()]
    assert names.count("tests.plugins.hello_route") == 1
    assert "pylight_sqlite" not in names and "sqlite" in names
    assert len(pm.hook.pylight_routes.get_hookimpls()) == 1


def test_unknown_plugin_module_is_a_startup_error() -> None:
    with pytest.raises(StartupError, match=r"\[plugins\] load: .*'tests\.plugins\.nope'"):
        make_plugin_manager(["tests.plugins.nope"])


# -- servers with plugins ------------------------------------------------------------------

def test_backend_plugin_adds_a_url_scheme(servers: Servers, io_loop: Any) -> None:
    server = servers({"plugins": {"load": "tests.plugins.memsqlite"}}, url="memsqlite://demo")
    assert server.app.backend.name == "memsqlite"

    async def check() -> None:
        notes = await server.get("/api/notes")
        assert notes.status == 200
        assert notes.body["items"] == [{"id": 1, "body": "opened memsqlite://demo"}]
        # seed_demo fills only a database without tables; the plugin made one.
        assert (await server.get("/api/products")).status == 404
        created = await server.post("/api/notes", {"body": "written through the plugin"})
        assert created.status == 201
        assert (await server.get(f"/api/notes/{created.body['id']}")).body["body"] == (
            "written through the plugin")
        tables = {t["name"] for t in (await server.get("/api/")).body["tables"]}
        assert tables == {"notes"}

    io_loop.run_sync(check)


def test_scheme_is_unknown_without_the_plugin(tmp_path: Path) -> None:
    config = make_config(tmp_path, "memsqlite://demo")
    with pytest.raises(StartupError, match=r"unknown scheme 'memsqlite' \(known: .*sqlite"):
        build_app(config)


def test_outside_backend_wins_over_a_bundled_one_for_the_same_scheme(tmp_path: Path) -> None:
    class MySqlite(SqliteBackend):
        name = "my-sqlite"

    class Plugin:
        @hookimpl
        def pylight_database_backends(self) -> list[Backend]:
            return [MySqlite()]

    config = make_config(tmp_path, f"sqlite:///{tmp_path}/x.db")
    assert build_app(config, plugins=[Plugin()]).backend.name == "my-sqlite"
    assert build_app(config).backend.name == "SQLite"


def test_routes_hook_adds_routes_before_the_table_routes(servers: Servers,
                                                         io_loop: Any, tmp_path: Path) -> None:
    server = servers({"plugins": {"load": "tests.plugins.hello_route"}},
                     url=f"sqlite:///{tmp_path}/r.db")

    async def check() -> None:
        hello = await server.get("/hello")
        assert hello.status == 200
        assert hello.body == {"hello": "world", "tables": ["orders", "products", "users"]}
        # /api/login would be the (unknown) table "login"; the plugin's route wins.
        login = await server.get("/api/login")
        assert (login.status, login.body) == (200, {"login": "plugin"})
        assert (await server.get("/api/products")).status == 200
        assert (await server.get("/api/nosuch")).status == 404

    io_loop.run_sync(check)


def test_startup_and_shutdown_hooks_run_sync_and_async(servers: Servers,
                                                       io_loop: Any, tmp_path: Path) -> None:
    events: list[Any] = []

    class SyncPlugin:
        @hookimpl
        def pylight_startup(self, app: Pylight) -> None:
            events.append(("sync startup", sorted(app.tables), app.server is None))

        @hookimpl
        def pylight_shutdown(self, app: Pylight) -> None:
            events.append(("sync shutdown",))

    class AsyncPlugin:
        @hookimpl
        async def pylight_startup(self, app: Pylight) -> None:
            await asyncio.sleep(0.05)  # awaited before the server listens
            events.append(("async startup", sorted(app.tables), app.server is None))

        @hookimpl
        async def pylight_shutdown(self, app: Pylight) -> None:
            await asyncio.sleep(0.05)
            # The database pool is closed only after the shutdown hooks.
            count = await app.db.read(
                lambda: app.db.db.execute_sql("SELECT COUNT(*) FROM products").fetchone()[0])
            events.append(("async shutdown", count))

    server = servers(url=f"sqlite:///{tmp_path}/h.db", plugins=[SyncPlugin(), AsyncPlugin()])
    tables = ["orders", "products", "users"]
    # Reflected before the hooks run; the server was not listening yet.
    assert sorted(events) == [("async startup", tables, True), ("sync startup", tables, True)]
    assert io_loop.run_sync(lambda: server.get("/api/products")).status == 200

    events.clear()
    io_loop.run_sync(server.app.stop)  # the teardown's stop() is then a no-op
    assert sorted(events) == [("async shutdown", 3), ("sync shutdown",)]


def test_startup_hook_can_refuse_to_start(tmp_path: Path, servers: Servers) -> None:
    app = open_app(make_config(tmp_path, f"sqlite:///{tmp_path}/s.db",
                               {"plugins": {"load": "tests.plugins.refuse_start"}}))
    with pytest.raises(StartupError, match="licence key is missing"):
        servers.serve(app)  # closes the socket and the pool when start-up fails
    assert app.server is None  # never listened
