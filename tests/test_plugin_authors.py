"""What a plugin author meets following docs/plugins.md alone (issue 14, item 5): the
formatter reaches its server and its `[plugin:NAME]` section, routes a plugin adds answer
errors as the contract's JSON, and pluggy's refusals of a plugin are one line. The
guide's own examples are run from the guide's text."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import tornado.web

from pylight import ApiError, StartupError, hookimpl
from pylight.plugin_routes import JsonHandler
from pylight.plugins import make_plugin_manager
from tests.conftest import Servers
from tests.live_server import one_error_line, run_cli
from tests.realtime_support import FeedClient
from tests.test_startup import write_ini

ROOT = Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "docs" / "plugins.md").read_text()


def guide_module(name: str) -> types.ModuleType:
    """The module ``name`` as the guide prints it: its ``# name.py`` code blocks, in order."""
    blocks = re.findall(r"```python\n(# " + re.escape(name) + r"\.py\b.*?)```", GUIDE, re.S)
    assert blocks, f"docs/plugins.md has no {name}.py example"
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    try:
        exec(compile("\n".join(blocks), f"docs/plugins.md ({name}.py)", "exec"), module.__dict__)
    finally:
        del sys.modules[name]
    return module


# -- the formatter and its section ---------------------------------------------------------

def test_the_formatter_reaches_its_server_and_its_section(make_server: Servers,
                                                          io_loop: Any) -> None:
    """Two servers in one process, one plugin module: each formats with its own settings."""
    flat = guide_module("flat_messages")
    lower = make_server({"plugin:flat_messages": {"event_case": "lower"}}, plugins=[flat])
    upper = make_server(plugins=[flat])  # no section: the default
    assert lower.app.state["flat_messages"] is str.lower
    assert upper.app.state["flat_messages"] is str.upper

    async def check(server: Any, event: str, sku: str) -> None:
        feed = await FeedClient.open(server, "/ws/products")
        created = await server.post("/api/products", {"name": "Flat", "price": "3.00",
                                                      "sku": sku})
        assert created.status == 201
        message = await feed.recv()
        assert message["eventType"] == event and message["new"] == created.body
        assert message["type"] == "change" and message["table"] == "products"
        feed.close()

    # Both on one database: one row each (SKUs differ beyond case, for MySQL's collation).
    io_loop.run_sync(lambda: check(lower, "created", "FLAT-1"))
    io_loop.run_sync(lambda: check(upper, "CREATED", "FLAT-2"))
    with pytest.raises(StartupError, match=r"\[plugin:flat_messages\] event_case: expected upper "
                                           r"or lower, got 'shout'"):
        make_server({"plugin:flat_messages": {"event_case": "shout"}}, plugins=[flat])


# -- routes a plugin adds -------------------------------------------------------------------

class Plain(tornado.web.RequestHandler):
    """A handler written as Tornado's documentation shows, knowing nothing of Pylight."""

    def get(self) -> None:
        what = self.get_argument("what")  # missing: Tornado's 400
        if what == "conflict":
            raise ApiError(409, "conflict", "that name is taken", {"name": "x"})
        if what == "teapot":
            raise tornado.web.HTTPError(403, "not for %s", what)
        if what == "bug":
            raise KeyError("a bug in the plugin")
        self.write({"what": what})


class OwnErrors(tornado.web.RequestHandler):
    """A handler that renders its errors itself keeps doing so."""

    def get(self) -> None:
        raise tornado.web.HTTPError(400)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish(f"own error {status_code}")


class Echo(JsonHandler):
    def post(self) -> None:
        self.write_json({"got": self.json_body()}, status=202)


class Routes:
    @hookimpl
    def pylight_routes(self, app: Any) -> list[Any]:
        return [(r"/plain", Plain), tornado.web.url(r"/plain-spec", Plain, name="spec"),
                (r"/own", OwnErrors, {}), (app.config.api.prefix + r"/echo", Echo)]


def assert_json_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, response.raw
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    error = response.body["error"]
    assert (error["status"], error["code"]) == (status, code)
    assert b"Traceback" not in response.raw and b"<html" not in response.raw
    return error


def test_plugin_routes_answer_errors_as_json(make_server: Servers, io_loop: Any) -> None:
    server = make_server({"api": {"cors_origins": "https://app.example.com"}},
                         plugins=[Routes(), guide_module("sku_route")])
    io_loop.run_sync(lambda: plain_routes(server))
    io_loop.run_sync(lambda: json_routes(server))


async def plain_routes(server: Any) -> None:
    for path in ("/plain", "/plain-spec"):
        assert (await server.get(f"{path}?what=fine")).body == {"what": "fine"}
        missing = assert_json_error(await server.get(path), 400, "bad_request")
        assert missing["message"] == "Missing argument what"
        conflict = assert_json_error(await server.get(f"{path}?what=conflict"), 409, "conflict")
        assert conflict == {"status": 409, "code": "conflict", "message": "that name is taken",
                            "details": {"name": "x"}}
        teapot = assert_json_error(await server.get(f"{path}?what=teapot"), 403, "forbidden")
        assert teapot["message"] == "not for teapot"
        bug = assert_json_error(await server.get(f"{path}?what=bug"), 500, "internal_error")
        assert "a bug in the plugin" not in bug["message"]
        refused = assert_json_error(await server.delete(path), 405, "method_not_allowed")
        assert refused["details"] == {"method": "DELETE"}
    cross = await server.get("/plain?what=conflict", headers={"Origin": "https://app.example.com"})
    assert cross.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    own = await server.get("/own")
    assert (own.status, own.raw) == (400, b"own error 400")


async def json_routes(server: Any) -> None:
    echoed = await server.post("/api/echo", {"a": [1, None]})
    assert (echoed.status, echoed.body) == (202, {"got": {"a": [1, None]}})
    assert_json_error(await server.post("/api/echo", raw=b"a=1", headers={
        "Content-Type": "application/x-www-form-urlencoded"}), 415, "unsupported_media_type")
    assert_json_error(await server.post("/api/echo", raw=b"{nope", headers={
        "Content-Type": "application/json"}), 400, "bad_request")

    # The guide's example, on every backend.
    found = await server.post("/api/lookup", {"sku": "WID-001"})
    assert (found.status, found.body) == (200, {"id": 1, "name": "Widget"})
    missing = assert_json_error(await server.post("/api/lookup", {"sku": "NOPE"}), 404,
                                "not_found")
    assert missing["message"] == "no product with SKU 'NOPE'"
    assert_json_error(await server.post("/api/lookup", [1]), 422, "unprocessable")


# -- the guide's other examples, as printed ----------------------------------------------------

def test_the_guides_examples_keep_their_state_per_server(make_server: Servers,
                                                         io_loop: Any) -> None:
    keys = {"alice": "pk_alice_7f3e, 1, admin", "bob": "pk_bob_93ab, 2, customer"}
    shop = make_server({"plugin:shop_keys": keys},
                       plugins=[guide_module("shop_keys"), guide_module("heartbeat_log")])
    assert set(shop.app.state) == {"shop_keys", "heartbeat_log"}

    async def check() -> None:
        assert (await shop.get("/api/orders")).status == 401
        bob = {"X-API-Key": "pk_bob_93ab"}
        mine = await shop.get("/api/orders", headers=bob)
        assert mine.status == 200 and {row["user_id"] for row in mine.body["items"]} == {2}
        refused = await shop.delete(f"/api/orders/{mine.body['items'][0]['id']}", headers=bob)
        assert refused.status == 403
        assert refused.body["error"]["details"]["permission"] == "delete"

    io_loop.run_sync(check)
    task = shop.app.state["heartbeat_log"]
    io_loop.run_sync(shop.app.stop)  # the teardown's stop() is then a no-op
    assert "heartbeat_log" not in shop.app.state and task.cancelled()


# -- pluggy's refusals, in one line -----------------------------------------------------------

def test_invalid_plugins_are_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(StartupError) as argument:
        make_plugin_manager(["tests.plugins.bad_argument"], entry_points=False)
    line = str(argument.value)
    assert "\n" not in line
    assert line.startswith("[plugins] load: plugin module 'tests.plugins.bad_argument' is invalid: ")
    assert "its pylight_startup takes 'settings', which the hook does not pass (it passes: app;" in line
    with pytest.raises(StartupError) as misspelt:
        make_plugin_manager(["tests.plugins.misspelled"], entry_points=False)
    assert str(misspelt.value) == (
        "plugin tests.plugins.misspelled implements unknown hook(s) pylight_statrup (did you "
        "mean pylight_startup?); the known hooks are listed in pylight/hookspecs.py")

    # What an operator sees.
    write_ini(tmp_path, "[database]\nurl = sqlite:///x.db\n[plugins]\nload = tests.plugins.bad_argument\n")
    assert one_error_line(run_cli(["--conf", "pylight.ini"], tmp_path)) == f"pylight: error: {line}"
