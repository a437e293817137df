"""A feed on a view (API.md section 5, last bullet), on every backend: views cannot be
captured, so `/ws/<view>` is refused with a 404 before the upgrade and `GET /api/` shows
`"ws": null` for it, unless a plugin provides the view's changes."""

from __future__ import annotations

from typing import Any

import pytest

from pylight import hookimpl
from pylight.hub import Change
from tests.realtime_support import FeedClient

UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}

ITEMS = """
CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(50) NOT NULL, price INTEGER NOT NULL);
CREATE VIEW cheap_items AS SELECT id, name, price FROM items WHERE price < 10;
INSERT INTO items (id, name, price) VALUES (1, 'pen', 2), (2, 'lamp', 40)
"""


@pytest.fixture
def items(database, make_server):
    database.ddl(ITEMS)
    return make_server()


def schema_ws(body: dict[str, Any]) -> dict[str, Any]:
    return {table["name"]: table["ws"] for table in body["tables"]}


@pytest.mark.gen_test(timeout=30)
async def test_feed_on_a_view_is_refused_before_the_upgrade(items):
    for headers in (UPGRADE, {}):
        response = await items.get("/ws/cheap_items", headers=headers)
        assert response.status == 404, response.raw[:300]
        assert response.headers["Content-Type"].startswith("application/json")
        error = response.body["error"]
        assert error["status"] == 404 and error["code"] == "not_found"
        assert "'cheap_items' is a view" in error["message"]
        assert "views cannot be captured" in error["message"]
        assert "/api/cheap_items" in error["message"]  # where to read it instead
    # A WebSocket client sees the refusal as the failed handshake, not as a silent feed.
    with pytest.raises(Exception) as info:
        await FeedClient.open(items, "/ws/cheap_items")
    assert getattr(info.value, "code", None) == 404
    assert items.app.connections.count() == 0
    # The view itself is still served over REST, and its table has its feed.
    listed = await items.get("/api/cheap_items")
    assert listed.status == 200 and [row["name"] for row in listed.body["items"]] == ["pen"]
    client = await FeedClient.open(items, "/ws/items")
    assert client.hello["table"] == "items"
    client.close()


@pytest.mark.gen_test(timeout=30)
async def test_schema_shows_no_feed_for_a_view(items):
    body = (await items.get("/api/")).body
    assert schema_ws(body) == {"items": "/ws/items", "cheap_items": None}
    view = next(table for table in body["tables"] if table["name"] == "cheap_items")
    assert view["view"] is True
    # Nor does the OpenAPI document promise a feed of any kind.
    document = (await items.get("/api/openapi.json")).raw.decode()
    assert "/ws/" not in document


class ViewChanges:
    """A plugin that provides a view's changes itself, and marks its table info so."""

    def __init__(self) -> None:
        self.app: Any = None

    @hookimpl
    def pylight_startup(self, app: Any) -> None:
        self.app = app
        app.tables["cheap_items"].change_source = "tests.view_changes"

    def publish(self, record: dict[str, Any]) -> None:
        self.app.hub.publish(Change("cheap_items", "created", record["id"], record))


@pytest.fixture
def plugin() -> ViewChanges:
    return ViewChanges()


@pytest.fixture
def provided(database, make_server, plugin):
    database.ddl(ITEMS)
    return make_server(plugins=[plugin])


@pytest.mark.gen_test(timeout=30)
async def test_a_view_whose_changes_a_plugin_provides_has_a_feed(provided, plugin):
    server = provided
    assert schema_ws((await server.get("/api/")).body) == {
        "items": "/ws/items", "cheap_items": "/ws/cheap_items"}
    client = await FeedClient.open(server, "/ws/cheap_items?price=lt.5")
    assert client.hello == {"type": "hello", "table": "cheap_items", "seq": 0, "heartbeat": 20}
    plugin.publish({"id": 3, "name": "lamp shade", "price": 30})  # filtered out
    plugin.publish({"id": 4, "name": "clip", "price": 1})
    (message,) = await client.drain()
    assert message["type"] == "change" and message["table"] == "cheap_items"
    assert message["seq"] == 2 and message["record"] == {"id": 4, "name": "clip", "price": 1}
    client.close()
