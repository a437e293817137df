"""The WebSocket change feeds (API.md section 3) on every backend: the seed procedure,
message shape, tables, hidden columns, refusals before the upgrade, filters and formatting."""

from __future__ import annotations

import datetime
import json
import threading
from typing import Any
from urllib.parse import quote

import pytest
import websocket
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect  # websocket-client, as the seed procedure uses

from tests.plugins import alt_formatter
from tests.realtime_support import TIMEOUT, FeedClient, in_thread, ws_url

UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def assert_change(message: dict[str, Any], event: str, table: str, pk: Any,
                  record: dict[str, Any], old: dict[str, Any] | None) -> None:
    assert message["type"] == "change", message
    assert message["event"] == event
    assert message["table"] == table
    assert isinstance(message["seq"], int)
    assert message["pk"] == pk
    assert message["record"] == record
    assert message["old"] == old
    assert "matches" not in message
    at = datetime.datetime.fromisoformat(message["at"].replace("Z", "+00:00"))
    assert message["at"].endswith("Z")
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs((now - at).total_seconds()) < 60


# -- the seed procedure, step by step ------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_hello_message(server):
    await server.post("/api/products", {"name": "P", "price": "1.00", "sku": "H-1"})
    client = await FeedClient.open(server, "/ws/products")
    assert client.hello == {"type": "hello", "table": "products",
                            "seq": server.app.hub.feed("products").seq, "heartbeat": 20}
    assert client.hello["seq"] == 1
    client.close()


@pytest.mark.gen_test(timeout=30)
async def test_seed_step2_create_update_delete(server):
    client = await FeedClient.open(server, "/ws/products")
    assert client.hello["seq"] == 0

    created = await server.post("/api/products", {"name": "New Product", "price": "99.99",
                                                  "sku": "NEW-001"})
    assert created.status == 201
    (message,) = await client.drain()
    assert_change(message, "created", "products", created.body["id"], created.body, None)
    assert message["record"]["price"] == "99.99"
    seqs = [message["seq"]]

    before = (await server.get("/api/products/1")).body
    updated = await server.put("/api/products/1", {"name": "Updated Product"})
    assert updated.status == 200
    (message,) = await client.drain()
    assert_change(message, "updated", "products", 1, updated.body, before)
    assert message["record"]["name"] == "Updated Product"
    assert message["old"]["name"] == "Widget"
    seqs.append(message["seq"])

    assert (await server.delete("/api/products/1")).status == 204
    (message,) = await client.drain()
    assert_change(message, "deleted", "products", 1, updated.body, None)
    seqs.append(message["seq"])

    assert seqs == [1, 2, 3]
    assert await client.drain() == []
    client.close()


@pytest.mark.gen_test(timeout=30)
async def test_seed_with_websocket_client_three_connections(server):
    """Steps 1 and 3 literally: websocket-client connections (in threads), all notified."""
    url = ws_url(server, "/ws/products")
    conns = [await in_thread(websocket.create_connection, url, TIMEOUT) for _ in range(3)]
    assert all(ws.connected for ws in conns)
    hellos = [json.loads(await in_thread(ws.recv)) for ws in conns]
    assert {h["type"] for h in hellos} == {"hello"}

    received: list[list[dict[str, Any]]] = [[] for _ in conns]

    def read(index: int, count: int) -> None:
        for _ in range(count):
            received[index].append(json.loads(conns[index].recv()))

    readers = [threading.Thread(target=read, args=(i, 3)) for i in range(3)]
    for thread in readers:
        thread.start()
    created = (await server.post("/api/products", {"name": "N", "price": 2, "sku": "W-3"})).body
    await server.patch(f"/api/products/{created['id']}", {"price": "3.5"})
    await server.delete(f"/api/products/{created['id']}")
    for thread in readers:
        await in_thread(thread.join, TIMEOUT)
    for messages in received:
        assert [(m["event"], m["pk"]) for m in messages] == [
            ("created", created["id"]), ("updated", created["id"]), ("deleted", created["id"])]
        assert messages[1]["record"]["price"] == "3.50"
        assert messages[1]["old"]["price"] == "2.00"
    assert received[0] == received[1] == received[2]
    for ws in conns:
        await in_thread(ws.close)


@pytest.mark.gen_test(timeout=30)
async def test_seed_step5_each_table_sees_only_its_own(server):
    clients = {name: await FeedClient.open(server, f"/ws/{name}")
               for name in ("products", "users", "orders")}
    product = (await server.post("/api/products", {"name": "T", "price": 1, "sku": "T-1"})).body
    user = (await server.post("/api/users", {"name": "Carol", "email": "c@example.com"})).body
    order = (await server.post("/api/orders", {"user_id": user["id"], "product_id": product["id"],
                                               "total": "1.00"})).body
    await server.put(f"/api/orders/{order['id']}", {"status": "paid"})
    await server.delete(f"/api/orders/{order['id']}")
    await server.put(f"/api/users/{user['id']}", {"active": False})

    got = {name: await client.drain() for name, client in clients.items()}
    assert [(m["table"], m["event"], m["pk"]) for m in got["products"]] == [
        ("products", "created", product["id"])]
    assert [(m["table"], m["event"], m["pk"]) for m in got["users"]] == [
        ("users", "created", user["id"]), ("users", "updated", user["id"])]
    assert [(m["table"], m["event"], m["pk"]) for m in got["orders"]] == [
        ("orders", "created", order["id"]), ("orders", "updated", order["id"]),
        ("orders", "deleted", order["id"])]
    # seq is per table
    assert [m["seq"] for m in got["orders"]] == [1, 2, 3]
    assert got["users"][1]["record"]["active"] is False
    assert got["users"][1]["old"]["active"] is True
    for client in clients.values():
        client.close()


@pytest.fixture
def hidden_server(make_server):
    return make_server({"table:users": {"hidden": "password_hash"}})


@pytest.mark.gen_test(timeout=30)
async def test_hidden_columns_never_sent(hidden_server):
    server = hidden_server
    client = await FeedClient.open(server, "/ws/users")
    filtered = await FeedClient.open(server, "/ws/users?name=eq.Bob")
    user = (await server.post("/api/users", {"name": "Dan", "email": "d@example.com"})).body
    await server.put("/api/users/1", {"name": "Alicia"})
    await server.put("/api/users/2", {"name": "Bobby"})  # leaves the filter: matches false
    await server.delete(f"/api/users/{user['id']}")
    messages = await client.drain() + await filtered.drain()
    assert [m["event"] for m in messages] == ["created", "updated", "updated", "deleted", "updated"]
    assert messages[-1]["matches"] is False
    for message in messages:
        assert "password_hash" not in json.dumps(message)
        assert "password_hash" not in message["record"]
        assert "name" in message["record"]
    # filtering on a hidden column is refused like in REST
    response = await server.get("/ws/users?password_hash=eq.x", headers=UPGRADE)
    assert response.status == 400
    client.close()
    filtered.close()


# -- refusals before the upgrade -----------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_unknown_table_is_404_before_upgrade(server):
    for headers in (UPGRADE, {}):
        response = await server.get("/ws/nope", headers=headers)
        assert response.status == 404
        assert response.body["error"]["status"] == 404
        assert response.body["error"]["code"] == "not_found"
    with pytest.raises(Exception) as info:
        await FeedClient.open(server, "/ws/nope")
    assert getattr(info.value, "code", None) == 404


@pytest.mark.gen_test(timeout=30)
async def test_refusals_are_json_and_leave_no_connection(server):
    """Tornado's own refusals (no upgrade, foreign Origin, old protocol) are JSON errors too."""
    plain = await server.get("/ws/products")
    assert plain.status == 400
    assert plain.body["error"]["status"] == 400
    host = server.base_url.split("//", 1)[1]
    foreign = await server.get("/ws/products", headers={**UPGRADE, "Origin": "http://evil.example"})
    assert foreign.status == 403
    assert foreign.body["error"]["code"] == "forbidden"
    old = await server.get("/ws/products", headers={**UPGRADE, "Sec-WebSocket-Version": "8"})
    assert old.status == 426
    assert old.body["error"]["status"] == 426
    assert old.headers["Sec-WebSocket-Version"] == "13"
    # same host in Origin, and no Origin (non-browser clients), are accepted
    same = await FeedClient.open(server, "/ws/products")
    request = HTTPRequest(ws_url(server, "/ws/products"), headers={"Origin": f"http://{host}"})
    browser = await websocket_connect(request)
    assert json.loads(await browser.read_message())["type"] == "hello"
    assert server.app.connections.count() == 2
    same.close()
    browser.close()


@pytest.fixture
def origins_server(make_server):
    return make_server({"realtime": {"allowed_origins": "https://app.example.com"}})


@pytest.mark.gen_test(timeout=30)
async def test_allowed_origins(origins_server):
    server = origins_server
    ok = HTTPRequest(ws_url(server, "/ws/users"), headers={"Origin": "https://app.example.com"})
    client = await websocket_connect(ok)
    assert json.loads(await client.read_message())["type"] == "hello"
    client.close()
    refused = await server.get("/ws/users", headers={**UPGRADE, "Origin": "https://other.example"})
    assert refused.status == 403
    assert refused.body["error"]["status"] == 403


@pytest.fixture
def excluding_server(make_server):
    return make_server({"api": {"exclude": "orders"}, "realtime": {"prefix": "/live"}})


@pytest.mark.gen_test(timeout=30)
async def test_excluded_table_and_custom_prefix(excluding_server):
    server = excluding_server
    assert (await server.get("/live/orders", headers=UPGRADE)).status == 404
    assert (await server.get("/ws/products", headers=UPGRADE)).status == 404
    client = await FeedClient.open(server, "/live/products")
    await server.put("/api/products/3", {"name": "Card"})
    (message,) = await client.drain()
    assert (message["table"], message["pk"]) == ("products", 3)
    client.close()


@pytest.fixture
def composite_server(database, make_server):
    database.ddl(
        "CREATE TABLE stock (warehouse VARCHAR(10) NOT NULL, item INTEGER NOT NULL, "
        "qty INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (warehouse, item))")
    return make_server()


@pytest.mark.gen_test(timeout=30)
async def test_composite_key_pk_is_a_list(composite_server):
    server = composite_server
    client = await FeedClient.open(server, "/ws/stock")
    filtered = await FeedClient.open(server, "/ws/stock?warehouse=eq.B")
    assert (await server.post("/api/stock", {"warehouse": "A", "item": 7, "qty": 1})).status == 201
    assert (await server.post("/api/stock", {"warehouse": "B", "item": 7, "qty": 2})).status == 201
    assert (await server.patch("/api/stock/B,7", {"qty": 3})).status == 200
    assert (await server.delete("/api/stock/A,7")).status == 204
    messages = await client.drain()
    assert [(m["event"], m["pk"]) for m in messages] == [
        ("created", ["A", 7]), ("created", ["B", 7]), ("updated", ["B", 7]), ("deleted", ["A", 7])]
    assert messages[2]["record"] == {"warehouse": "B", "item": 7, "qty": 3}
    assert messages[2]["old"] == {"warehouse": "B", "item": 7, "qty": 2}
    assert [(m["event"], m["pk"]) for m in await filtered.drain()] == [
        ("created", ["B", 7]), ("updated", ["B", 7])]
    client.close()
    filtered.close()


@pytest.mark.parametrize("query", ["price=gt.abc", "nosuch=eq.1", "price=zz.1", "id=in.(1,x)"])
@pytest.mark.gen_test(timeout=30)
async def test_invalid_filter_is_400_with_the_rest_error(server, query):
    rest = await server.get(f"/api/products?{query}")
    assert rest.status == 400
    response = await server.get(f"/ws/products?{query}", headers=UPGRADE)
    assert response.status == 400
    assert response.body == rest.body
    assert response.body["error"]["code"] == "bad_request"
    assert server.app.connections.count() == 0


@pytest.mark.parametrize("since", ["abc", "-1", "1.5", "%C2%B2", "1" * 19, ""])
@pytest.mark.gen_test(timeout=30)
async def test_invalid_since_is_400(server, since):
    response = await server.get(f"/ws/products?since={since}", headers=UPGRADE)
    assert response.status == 400
    assert response.body["error"]["status"] == 400


@pytest.fixture
def no_realtime(make_server):
    return make_server({"realtime": {"enabled": "false"}})


@pytest.mark.gen_test(timeout=30)
async def test_realtime_disabled_has_no_routes(no_realtime):
    server = no_realtime
    response = await server.get("/ws/products", headers=UPGRADE)
    assert response.status == 404
    assert response.body["error"]["status"] == 404
    tables = (await server.get("/api/")).body["tables"]
    assert {t["name"]: t["ws"] for t in tables} == {"products": None, "users": None, "orders": None}
    assert server.app.connections.count() == 0


# -- filters ---------------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_filter_sends_matching_rows_and_leaving_rows_once(server):
    client = await FeedClient.open(server, "/ws/products?price=gt.20")
    cheap = (await server.post("/api/products", {"name": "C", "price": "3", "sku": "F-1"})).body
    dear = (await server.post("/api/products", {"name": "D", "price": "30", "sku": "F-2"})).body
    await server.put(f"/api/products/{cheap['id']}", {"name": "C2"})   # never matched
    await server.put(f"/api/products/{dear['id']}", {"name": "D2"})    # still matches
    (m1, m2) = await client.drain()
    assert (m1["event"], m1["pk"]) == ("created", dear["id"])
    assert (m2["event"], m2["pk"], m2["record"]["name"]) == ("updated", dear["id"], "D2")
    assert "matches" not in m2

    await server.put(f"/api/products/{dear['id']}", {"price": "10"})   # moves out
    (out,) = await client.drain()
    assert out["event"] == "updated" and out["matches"] is False
    assert out["record"]["price"] == "10.00" and out["old"]["price"] == "30.00"
    await server.put(f"/api/products/{dear['id']}", {"name": "D3"})    # out: nothing
    await server.delete(f"/api/products/{cheap['id']}")                 # never matched
    assert await client.drain() == []

    await server.put(f"/api/products/{cheap['id'] - 1}", {"price": "25"})  # Gift Card moves in
    (into,) = await client.drain()
    assert (into["event"], into["pk"], into["record"]["price"]) == ("updated", cheap["id"] - 1,
                                                                     "25.00")
    assert "matches" not in into
    await server.delete(f"/api/products/{dear['id']}")                  # deleted while out
    await server.put("/api/products/2", {"price": "24.49"})             # Gadget stays in
    (stays,) = await client.drain()
    assert (stays["event"], stays["pk"]) == ("updated", 2)
    client.close()


@pytest.mark.gen_test(timeout=30)
async def test_filtered_feed_sees_deletes_of_matching_rows(server):
    client = await FeedClient.open(server, "/ws/orders?user_id=eq.2")
    await server.delete("/api/orders/1")
    await server.delete("/api/orders/2")
    (message,) = await client.drain()
    assert (message["event"], message["pk"], message["record"]["user_id"]) == ("deleted", 2, 2)
    client.close()


def encoded(query: str) -> str:
    """``query`` with each value percent-encoded (values hold ``%``, tabs, non-ASCII)."""
    pairs = (part.partition("=") for part in query.split("&"))
    return "&".join(f"{name}={quote(value, safe='(),.*')}" for name, _, value in pairs)


# Rows chosen to probe the corners where Python and SQL could disagree: case,
# non-ASCII letters, NULLs, LIKE metacharacters, trailing spaces, decimals.
PROBE_ROWS = [
    {"name": "Widget", "description": None, "price": "10.00", "in_stock": True},
    {"name": "widget", "description": "small", "price": "9.99", "in_stock": False},
    {"name": "WIDGET deluxe", "description": "100% cotton", "price": "10.01", "in_stock": True},
    {"name": "Éclair", "description": "a_b", "price": "0.50", "in_stock": None},
    {"name": "éclair", "description": "aXb", "price": "1000.00", "in_stock": True},
    {"name": "Straße", "description": "", "price": "7.25", "in_stock": False},
    {"name": "gift box", "description": "Gift*", "price": "4.99", "in_stock": True},
    {"name": "Tab\tname", "description": "line\nbreak", "price": "5.00", "in_stock": None},
    {"name": "plain", "description": None, "price": "5.01", "in_stock": False},
    {"name": "Plain ", "description": "trailing space", "price": "5.02", "in_stock": True},
    {"name": "_under", "description": "[x]", "price": "99999999.99", "in_stock": True},
]

PROBE_FILTERS = [
    "name=eq.Widget",
    "name=neq.widget",
    "name=like.*idget*",
    "name=like.W*",
    "name=ilike.w*",
    "name=ilike.*ÉCLAIR*",
    "name=ilike.*éclair",
    "name=like.*a*",
    "name=not.like.*e*",
    "name=in.(widget,plain,Straße)",
    "name=gt.m",
    "name=lt.a",
    "name=gt._",
    "name=eq.eclair",
    "name=eq.PLAIN",
    "name=eq.strase",
    "name=in.(ECLAIR,plain)",
    "name=like.plain*",
    "name=ilike.*PLAIN",
    "name=like._*",
    "description=like.[*",
    "description=is.null",
    "description=not.is.null",
    "description=eq.",
    "description=neq.small",
    "description=like.*%*",
    "description=like.a_b",
    "description=like.*\\**",
    "description=ilike.gift*",
    "price=gt.10",
    "price=gte.10",
    "price=lt.5.01",
    "price=in.(5,9.99)",
    "price=not.in.(5,9.99)",
    "in_stock=is.true",
    "in_stock=is.false",
    "in_stock=is.null",
    "in_stock=not.is.true",
    "or=(price.lt.5,name.ilike.*gift*)",
    "or=(description.is.null,in_stock.is.false)",
    "and=(not.or(description.is.null,price.gt.100),name.neq.plain)",
    "name=ilike.*e*&price=lt.100",
]


@pytest.mark.gen_test(timeout=60)
async def test_python_matcher_agrees_with_sql(server):
    """For each filter, the rows REST returns are those whose `created` a subscriber got."""
    clients = []
    for query in PROBE_FILTERS:
        client = await FeedClient.open(server, "/ws/products?" + encoded(query))
        clients.append(client)
    rows = [{key: value for key, value in row.items() if value is not None or key != "in_stock"}
            | {"sku": f"PROBE-{i}"} for i, row in enumerate(PROBE_ROWS)]  # in_stock: NOT NULL
    created = await server.post("/api/products", rows)
    assert created.status == 201, created.body
    new_ids = {item["id"] for item in created.body["items"]}
    disagreements = []
    for query, client in zip(PROBE_FILTERS, clients, strict=True):
        rest = await server.get(f"/api/products?{encoded(query)}&limit=1000")
        assert rest.status == 200, (query, rest.body)
        expected = sorted(item["id"] for item in rest.body["items"] if item["id"] in new_ids)
        messages = await client.drain()
        assert all(m["event"] == "created" for m in messages)
        got = sorted(m["pk"] for m in messages)
        if got != expected:
            names = {item["id"]: item["name"] for item in created.body["items"]}
            disagreements.append((query, [names[i] for i in expected], [names[i] for i in got]))
        client.close()
    assert disagreements == [], "filter: (REST rows, WebSocket rows)"


@pytest.mark.gen_test(timeout=60)
async def test_python_matcher_agrees_with_sql_after_updates(server):
    """Updates too: a subscriber holding the filter's rows ends with exactly REST's rows."""
    rows = [{**row, "sku": f"PROBE-{i}"} for i, row in enumerate(PROBE_ROWS)]
    for row in rows:
        row.pop("in_stock")
    items = (await server.post("/api/products", rows)).body["items"]
    clients = [await FeedClient.open(server, "/ws/products?" + encoded(q)) for q in PROBE_FILTERS]
    held = [{item["id"] for item in
             (await server.get(f"/api/products?{encoded(q)}&limit=1000")).body["items"]}
            for q in PROBE_FILTERS]
    # Rotate names and descriptions between the rows: every row changes, many cross filters.
    for index, item in enumerate(items):
        source = PROBE_ROWS[(index + 3) % len(PROBE_ROWS)]
        response = await server.patch(f"/api/products/{item['id']}", {
            "name": source["name"], "description": source["description"],
            "price": source["price"], "in_stock": source["in_stock"] is not False})
        assert response.status == 200, response.body
    mismatches = []
    for query, client, rows_held in zip(PROBE_FILTERS, clients, held, strict=True):
        for message in await client.drain():
            if message.get("matches") is False:
                rows_held.discard(message["pk"])
            else:
                rows_held.add(message["pk"])
        rest = {item["id"] for item in
                (await server.get(f"/api/products?{encoded(query)}&limit=1000")).body["items"]}
        if rows_held != rest:
            mismatches.append((query, sorted(rest), sorted(rows_held)))
        client.close()
    assert mismatches == [], "filter: (REST ids, ids the subscriber holds)"


# -- the formatting hook -----------------------------------------------------------------------

@pytest.fixture
def formatted_server(make_server):
    return make_server(plugins=[alt_formatter])


@pytest.mark.gen_test(timeout=30)
async def test_format_notification_plugin_replaces_the_shape(formatted_server):
    server = formatted_server
    client = await FeedClient.open(server, "/ws/products")
    filtered = await FeedClient.open(server, "/ws/products?price=gt.20")
    created = (await server.post("/api/products", {"name": "F", "price": 30, "sku": "FMT"})).body
    await server.put(f"/api/products/{created['id']}", {"price": 1})
    await server.delete(f"/api/products/{created['id']}")
    messages = await client.drain()
    assert messages == [
        {"kind": "row-changed", "op": "C", "n": 1, "where": f"products/{created['id']}",
         "data": created},
        {"kind": "row-changed", "op": "U", "n": 2, "where": f"products/{created['id']}",
         "data": {**created, "price": "1.00"}},
        {"kind": "row-changed", "op": "D", "n": 3, "where": f"products/{created['id']}",
         "data": {**created, "price": "1.00"}},
    ]
    # a row leaving a filter gets the plugin's dict with "matches": false added
    assert await filtered.drain() == [messages[0], {**messages[1], "matches": False}]
    client.close()
    filtered.close()


@pytest.fixture
def agenda(database, make_server):
    """A table whose columns are named like the feed's own parameters."""
    database.ddl('CREATE TABLE agenda (id INTEGER PRIMARY KEY, since INTEGER, "order" INTEGER)',
                 mysql="CREATE TABLE agenda (id INTEGER PRIMARY KEY, since INTEGER, `order` INTEGER)")
    return make_server()


@pytest.mark.gen_test(timeout=30)
async def test_feed_filters_columns_named_like_its_parameters(agenda):
    """API.md section 5: `since=eq.3` filters a column named "since"; `since=0` resumes."""
    client = await FeedClient.open(agenda, "/ws/agenda?since=eq.3&order=gt.1")
    other = await FeedClient.open(agenda, "/ws/agenda?since=0")
    for row in ({"id": 1, "since": 3, "order": 2}, {"id": 2, "since": 4, "order": 2},
                {"id": 3, "since": 3, "order": 1}):
        assert (await agenda.post("/api/agenda", row)).status == 201
    (message,) = await client.drain()
    assert message["record"] == {"id": 1, "since": 3, "order": 2}
    assert [m["pk"] for m in await other.changes(3)] == [1, 2, 3]
    client.close()
    other.close()


@pytest.mark.gen_test(timeout=30)
async def test_deeply_nested_client_json_is_an_error_message_not_a_crash(server):
    """Issue: "[" * 2000 made a RecursionError, a traceback and an aborted connection."""
    client = await FeedClient.open(server, "/ws/products")
    await client.conn.write_message("[" * 2000)
    reply = await client.recv()
    assert reply is not None and reply["type"] == "error", reply
    await client.conn.write_message('{"type": "ping"}')
    assert await client.recv() == {"type": "pong"}
    client.close()
