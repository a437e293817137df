"""The bundled API-key plugin (``[plugin:apikeys]``) on every backend: keys, per-table
permissions over REST and WebSocket, ``?token=`` for browsers, and start-up validation."""

from __future__ import annotations

from typing import Any

import pylight_apikeys
import pytest

from pylight import StartupError
from pylight import hookimpl as pylight_hookimpl
from tests.auth_support import (
    UPGRADE,
    LogCapture,
    assert_denied,
    assert_error,
    bearer,
    open_feed,
    send_auth,
)

READER = "reader-key-4f1c9a2b7d3e8f60"
WRITER = "writer-key-9a7e44c2f1b05d3c"
ORDERS = "orders-key-0c55d7e8aa41b296"


def keys_section(**extra: str) -> dict[str, dict[str, Any]]:
    section = {"reader.key": READER, "reader.permissions": "products: read",
               "writer.key": WRITER, "writer.permissions": "*: *"}
    section.update(extra)
    return {"plugin:apikeys": section}


NEW = {"name": "Keyed", "price": "3.50", "sku": "KEY-1"}


@pytest.fixture
def keyed(make_server):
    """The acceptance set-up: a read-only key for products and a key with full rights."""
    return make_server(keys_section())


@pytest.fixture
def filed(make_server, tmp_path):
    key_file = tmp_path / "keys.ini"
    key_file.write_text(f"# more keys\norders.key = {ORDERS}\norders.permissions = orders: *; "
                        "*: read\n")
    return make_server(keys_section(file=str(key_file)))


@pytest.fixture
def restricted(make_server):
    return make_server({**keys_section(), "table:users": {"hidden": "password_hash"},
                        "table:products": {"read_only": "true"}})


@pytest.mark.gen_test(timeout=60)
async def test_acceptance_read_only_key_watches_full_key_write(keyed):
    """The issue's story: a read-only key and a full key; denials name the permission;
    the read-only key's socket sees the full key's product changes but cannot write."""
    server = keyed
    reader, writer = bearer(READER), {"X-API-Key": WRITER}

    assert (await server.get("/api/products", headers=reader)).status == 200
    assert (await server.get("/api/products/1", headers=reader)).status == 200
    assert_denied(await server.post("/api/products", NEW, headers=reader), "create", "products")
    assert_denied(await server.put("/api/products/1", {"name": "x"}, headers=reader),
                  "update", "products")
    assert_denied(await server.patch("/api/products/1", {"name": "x"}, headers=reader),
                  "update", "products")
    assert_denied(await server.delete("/api/products/1", headers=reader), "delete", "products")
    assert_denied(await server.get("/api/orders", headers=reader), "read", "orders")
    assert_denied(await server.get("/api/orders/1", headers=reader), "read", "orders")
    denied = await server.post("/api/products", NEW, headers=reader)
    assert "reader" in denied.body["error"]["message"]
    assert READER not in denied.raw.decode()
    assert server.changes == []  # nothing was written by the refused requests

    feed = await open_feed(server, "/ws/products", reader)
    created = await server.post("/api/products", NEW, headers=writer)
    assert created.status == 201
    pk = created.body["id"]
    assert (await server.put(f"/api/products/{pk}", {"name": "Renamed"}, headers=writer)).status == 200
    assert (await server.delete(f"/api/products/{pk}", headers=writer)).status == 204
    events = await feed.drain()
    assert [(m["event"], m["pk"]) for m in events] == [("created", pk), ("updated", pk),
                                                        ("deleted", pk)]
    assert events[1]["record"]["name"] == "Renamed"
    # the socket carries no write path, and the key still cannot write over REST
    assert_denied(await server.post("/api/products", NEW, headers=reader), "create", "products")
    feed.close()

    # no read permission on orders: refused before the upgrade
    refused = await server.get("/ws/orders", headers={**UPGRADE, **reader})
    assert_denied(refused, "read", "orders")
    with pytest.raises(Exception) as info:
        await open_feed(server, "/ws/orders", reader)
    assert getattr(info.value, "code", None) == 403


@pytest.mark.gen_test(timeout=60)
async def test_missing_and_unknown_keys_are_401(keyed):
    server = keyed
    for path in ("/api/products", "/api/products/1"):
        assert_error(await server.get(path), 401, "authentication required")
    for headers in (bearer("nope"), {"X-API-Key": "nope"}, bearer(READER + "x"),
                    {"Authorization": f"Bearer {READER[:-1]}"}):
        assert_error(await server.get("/api/products", headers=headers), 401, "unknown API key")
    assert_error(await server.post("/api/products", NEW), 401)
    assert_error(await server.post("/api/products", NEW, headers=bearer("nope")), 401)
    assert_error(await server.delete("/api/products/1"), 401)
    assert server.changes == []
    # WebSocket upgrades: 401 with the JSON body before any 101
    assert_error(await server.get("/ws/products", headers=UPGRADE), 401)
    assert_error(await server.get("/ws/products?token=nope", headers=UPGRADE), 401,
                 "unknown API key")
    assert_error(await server.get("/ws/products", headers={**UPGRADE, **bearer("nope")}), 401)
    for headers in ({}, bearer("nope")):
        with pytest.raises(Exception) as info:
            await open_feed(server, "/ws/products", headers)
        assert getattr(info.value, "code", None) == 401
    assert server.app.connections.count() == 0
    # the schema lists only what the caller may read
    listing = await server.get("/api/", headers=bearer(READER))
    assert [t["name"] for t in listing.body["tables"]] == ["products"]


@pytest.mark.gen_test(timeout=60)
async def test_query_token_works_for_websockets_and_is_never_logged(keyed):
    server = keyed
    with LogCapture("tornado", "pylight") as logs:
        feed = await open_feed(server, f"/ws/products?token={READER}")
        assert (await server.put("/api/products/2", {"name": "Seen"},
                                 headers=bearer(WRITER))).status == 200
        (change,) = await feed.drain()
        assert change["record"]["name"] == "Seen"
        feed.close()
        # REST accepts it too, and it is a credential, not a column filter
        listed = await server.get(f"/api/products?token={READER}&limit=1")
        assert listed.status == 200
        assert "token" not in (listed.body["next"] or "")
        assert (await server.get(f"/ws/products?token={WRITER}x", headers=UPGRADE)).status == 401
        assert (await server.get(f"/api/orders?token={READER}")).status == 403
    access = [line for line in logs.lines if line.startswith("tornado.access")]
    assert any("/ws/products?token=***" in line for line in access), access
    assert any("/api/orders?token=***" in line for line in access), access
    assert READER not in logs.text and WRITER not in logs.text


@pytest.mark.gen_test(timeout=60)
async def test_key_file_wildcards_and_subject(filed):
    server = filed
    orders = {"X-API-Key": ORDERS}
    assert (await server.get("/api/users", headers=orders)).status == 200
    assert (await server.get("/api/orders", headers=orders)).status == 200
    created = await server.post("/api/orders", {"user_id": 1, "product_id": 2, "total": "1.00"},
                                headers=orders)
    assert created.status == 201
    assert (await server.delete(f"/api/orders/{created.body['id']}", headers=orders)).status == 204
    assert_denied(await server.post("/api/products", NEW, headers=orders), "create", "products")
    # the identity's subject is the key's NAME, never its secret
    feed = await open_feed(server, "/ws/orders", orders)
    answer = await send_auth(feed, WRITER)
    assert answer["type"] == "auth" and answer["ok"] is True
    assert answer["subject"] == "writer" and answer["expires_at"] is None
    refused = await send_auth(feed, "nope")
    assert refused["type"] == "error" and refused["code"] == "unauthorized"
    assert (await send_auth(feed, READER))["code"] == "forbidden"  # reader may not read orders
    assert await feed.drain() == []  # still open
    feed.close()


@pytest.mark.gen_test(timeout=60)
async def test_hidden_columns_and_read_only_tables_still_hold(restricted):
    server = restricted
    writer = bearer(WRITER)
    users = await server.get("/api/users", headers=writer)
    assert users.status == 200 and users.body["items"]
    assert all("password_hash" not in row for row in users.body["items"])
    assert "password_hash" not in (await server.get("/api/users/1", headers=writer)).body
    assert (await server.get("/api/users?password_hash=eq.x", headers=writer)).status == 400
    assert (await server.post("/api/users", {"name": "E", "email": "e@x.io",
                                             "password_hash": "h"}, headers=writer)).status == 422
    # full rights do not make a read-only table writable
    assert_error(await server.post("/api/products", NEW, headers=writer), 405)
    assert_error(await server.put("/api/products/1", {"name": "x"}, headers=writer), 405)
    assert_error(await server.delete("/api/products/1", headers=writer), 405)
    # nor does a read-only key get 405 instead of its 403 on a writable table
    assert_denied(await server.post("/api/users", {"name": "E", "email": "e@x.io"},
                                    headers=bearer(READER)), "create", "users")
    feed = await open_feed(server, "/ws/users", writer)
    assert (await server.put("/api/users/1", {"name": "Alicia"}, headers=writer)).status == 200
    (change,) = await feed.drain()
    assert change["record"]["name"] == "Alicia"
    assert "password_hash" not in change["record"] and "password_hash" not in change["old"]
    feed.close()


@pytest.mark.gen_test(timeout=60)
async def test_absent_section_leaves_the_server_open(server):
    assert not server.app.auth.enabled
    assert not server.app.pm.has_plugin("apikeys.keys") and not server.app.pm.has_plugin("jwt.auth")
    assert (await server.get("/api/orders")).status == 200
    assert (await server.post("/api/products", NEW)).status == 201
    assert (await server.get("/api/products", headers=bearer("anything"))).status == 200


# -- start-up validation -------------------------------------------------------------------

BAD_SECTIONS = [
    ({"reader.key": READER}, "needs reader.permissions"),
    ({"reader.permissions": "products: read"}, "needs reader.key"),
    ({"reader.key": READER, "reader.permissions": "products: write"}, "unknown action 'write'"),
    ({"reader.key": READER, "reader.permissions": "products read"}, "expected 'table: action"),
    ({"reader.key": READER, "reader.permissions": "prodcts: read"}, "'prodcts'"),
    ({"reader.secret": READER}, "unknown setting 'reader.secret'"),
    ({"a.key": READER, "a.permissions": "*: read", "b.key": READER, "b.permissions": "*: read"},
     "share one secret"),
    ({"file": "/nonexistent/keys.ini"}, "cannot read it"),
    ({"file": ""}, "defines no keys"),
]


def test_bad_sections_stop_startup_with_one_line(server, tmp_path):
    tables = server.app.tables
    for section, words in BAD_SECTIONS:
        with pytest.raises(StartupError) as info:
            pylight_apikeys.load_keys(section, tables)
        message = str(info.value)
        assert words in message and "\n" not in message and "[plugin:apikeys]" in message, message
    twice = tmp_path / "twice.ini"
    twice.write_text(f"reader.key = {ORDERS}\nreader.permissions = *: read\n")
    with pytest.raises(StartupError, match="already defined"):
        pylight_apikeys.load_keys({"file": str(twice), "reader.key": READER,
                                   "reader.permissions": "*: read"}, tables)
    broken = tmp_path / "broken.ini"
    broken.write_text("this is not a setting\n")
    with pytest.raises(StartupError, match="malformed"):
        pylight_apikeys.load_keys({"file": str(broken)}, tables)


def test_a_bad_section_stops_the_real_startup(tmp_path, servers):
    """Through the plugin manager and pylight_startup, as `python -m pylight` runs it."""
    from pylight.config import load_config

    conf = tmp_path / "pylight.ini"
    conf.write_text(f"[database]\nurl = sqlite:///{tmp_path}/db.sqlite\nseed_demo = true\n\n"
                    f"[plugin:apikeys]\nreader.key = {READER}\n")
    with pytest.raises(StartupError, match=r"\[plugin:apikeys\].*needs reader.permissions"):
        servers(config=load_config(str(conf), environ={}))


@pytest.mark.gen_test
async def test_schema_documents_show_only_readable_tables(keyed):
    """GET /api/ and the OpenAPI document list what the caller may read, nothing more."""
    anonymous = await keyed.get("/api/openapi.json")
    assert anonymous.status == 200 and anonymous.body["paths"] == {}
    reader = await keyed.get("/api/openapi.json", headers=bearer(READER))
    assert sorted(reader.body["paths"]) == ["/api/products", "/api/products/{pk}"]
    listing = await keyed.get("/api/", headers=bearer(READER))
    assert [t["name"] for t in listing.body["tables"]] == ["products"]
    writer = await keyed.get("/api/openapi.json", headers=bearer(WRITER))
    assert "/api/orders" in writer.body["paths"] and "/api/users" in writer.body["paths"]


class _Crash:
    """A plugin route that fails, as a bug would: Tornado logs it with the request."""

    @staticmethod
    @pylight_hookimpl
    def pylight_routes(app: Any) -> list[tuple[Any, ...]]:
        import tornado.web

        class CrashHandler(tornado.web.RequestHandler):
            def get(self) -> None:
                raise RuntimeError(f"crashed on {self.request.uri}")
        return [(r"/crash", CrashHandler)]


@pytest.fixture
def crashing(make_server):
    return make_server(keys_section(), plugins=[_Crash])


@pytest.mark.gen_test(timeout=60)
async def test_no_log_line_carries_a_credential_even_when_a_request_fails(crashing):
    with LogCapture("tornado", "pylight", "asyncio") as logs:
        failed = await crashing.get(f"/crash?token={READER}&x=1",
                                    headers={"Authorization": f"Bearer {WRITER}"})
        assert failed.status == 500
        deep = "[" * 2000
        import base64

        cursor = base64.urlsafe_b64encode(deep.encode()).decode().rstrip("=")
        nested = await crashing.get(f"/api/products?token={READER}&after={cursor}")
        assert nested.status == 400  # not a RecursionError
    assert any("Uncaught exception" in line for line in logs.lines), logs.text
    assert READER not in logs.text and WRITER not in logs.text, logs.text
