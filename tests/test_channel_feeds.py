"""`ws://host/ws`: one socket, many subscriptions (API.md 6.1), and who made a change
(`source` and `by`, API.md 6.4), on every backend, as a client sees them."""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

import pytest

from pylight.hub import Change
from tests.auth_support import UPGRADE, assert_error, bearer, open_feed
from tests.realtime_support import (
    TIMEOUT,
    FeedClient,
    close_code,
    in_thread,
    parse_frames,
    port_of,
    raw_connect,
    wait_for,
)

READER = "reader-key-4f1c9a2b7d3e8f60"
WRITER = "writer-key-9a7e44c2f1b05d3c"
KEYS = {"plugin:apikeys": {"reader.key": READER, "reader.permissions": "products: read",
                           "writer.key": WRITER, "writer.permissions": "*: *"}}
NEW = {"name": "Channel", "price": "3.50", "sku": "CH-1"}


# -- helpers -------------------------------------------------------------------------------

def send(client: FeedClient, **message: Any) -> None:
    client.conn.write_message(json.dumps(message))


async def answer(client: FeedClient, **message: Any) -> dict[str, Any]:
    """Send ``message`` and return the next message the server sends."""
    send(client, **message)
    reply = await client.recv()
    assert reply is not None, f"closed after {message}"
    return reply


async def subscribe(client: FeedClient, sub: str, table: str, filter: str | None = None,
                    **extra: Any) -> dict[str, Any]:
    """Subscribe and check the ``subscribed`` answer; returns it."""
    message: dict[str, Any] = {"type": "subscribe", "id": sub, "table": table, **extra}
    if filter is not None:
        message["filter"] = filter
    reply = await answer(client, **message)
    assert reply["type"] == "subscribed", reply
    assert set(reply) == {"type", "sub", "table", "seq"}, reply
    assert (reply["sub"], reply["table"]) == (sub, table)
    assert isinstance(reply["seq"], int)
    return reply


def error_of(reply: dict[str, Any], status: int, code: str, sub: str | None) -> dict[str, Any]:
    """Check an ``error`` message of ``/ws``; returns its ``error`` object."""
    assert reply["type"] == "error", reply
    expected_keys = {"type", "error"} | ({"sub"} if sub is not None else set())
    assert set(reply) == expected_keys, reply
    if sub is not None:
        assert reply["sub"] == sub
    error = reply["error"]
    assert error["status"] == status, reply
    assert error["code"] == code, reply
    assert isinstance(error["message"], str) and error["message"], reply
    return error


def per_change(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One table's messages by seq, and the copies of one change by ``sub`` (the
    contract orders a table's changes, not the copies of one change)."""
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(seqs), f"a table's changes arrive in seq order: {seqs}"
    return sorted(messages, key=lambda m: (m["seq"], m["sub"]))


def untagged(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "sub"}


async def channel(server: Any, headers: dict[str, str] | None = None) -> FeedClient:
    if headers:
        return await open_feed(server, "/ws", headers)
    return await FeedClient.open(server, "/ws")


# -- the hello, subscribe, changes ---------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_hello_on_the_channel(server):
    client = await channel(server)
    assert client.hello == {"type": "hello", "heartbeat": 20, "max_subscriptions": 100}
    assert await client.drain() == []  # nothing else until the client subscribes
    client.close()


@pytest.fixture
def limited(make_server):
    return make_server({"realtime": {"max_subscriptions": 2, "heartbeat_interval": 7}})


@pytest.mark.gen_test(timeout=30)
async def test_hello_reports_the_configured_limits(limited):
    server = limited
    client = await channel(server)
    assert client.hello == {"type": "hello", "heartbeat": 7, "max_subscriptions": 2}
    client.close()


@pytest.mark.gen_test(timeout=30)
async def test_subscribe_then_changes_carry_sub_and_equal_the_table_feed(server):
    await server.put("/api/products/2", {"name": "before subscribing"})  # products seq 1
    plain = await FeedClient.open(server, "/ws/products")
    client = await channel(server)
    assert await subscribe(client, "s1", "products") == {
        "type": "subscribed", "sub": "s1", "table": "products", "seq": 1}

    created = await server.post("/api/products", NEW)
    assert created.status == 201
    pk = created.body["id"]
    updated = await server.patch(f"/api/products/{pk}", {"price": "4"})
    assert updated.status == 200
    assert (await server.delete(f"/api/products/{pk}")).status == 204

    messages = await client.drain()
    assert [(m["type"], m["sub"], m["event"], m["seq"], m["pk"]) for m in messages] == [
        ("change", "s1", "created", 2, pk), ("change", "s1", "updated", 3, pk),
        ("change", "s1", "deleted", 4, pk)]
    assert messages[0]["record"] == created.body and messages[0]["old"] is None
    assert messages[1]["record"] == updated.body and messages[1]["old"] == created.body
    assert messages[1]["record"]["price"] == "4.00"
    assert messages[2]["record"] == updated.body
    # the same messages as /ws/products, each with "sub" added
    assert [untagged(m) for m in messages] == await plain.drain()
    client.close()
    plain.close()


@pytest.mark.gen_test(timeout=30)
async def test_subscribed_seq_is_the_tables_current_seq(server):
    for i in range(3):
        await server.put("/api/products/1", {"name": f"p{i}"})
    await server.put("/api/users/1", {"name": "Alicia"})
    client = await channel(server)
    assert (await subscribe(client, "p", "products"))["seq"] == 3
    assert (await subscribe(client, "u", "users"))["seq"] == 1
    assert (await subscribe(client, "o", "orders"))["seq"] == 0
    assert await client.drain() == []  # no replay without since
    client.close()


@pytest.mark.gen_test(timeout=30)
async def test_two_tables_on_one_socket(server):
    client = await channel(server)
    await subscribe(client, "products-feed", "products")
    await subscribe(client, "orders-feed", "orders", "status=eq.paid")

    product = (await server.post("/api/products", NEW)).body
    order = (await server.post("/api/orders", {"user_id": 1, "product_id": 2, "total": "1.00",
                                               "status": "paid"})).body
    await server.patch("/api/orders/2", {"quantity": 5})  # status pending: not for orders-feed
    await server.patch("/api/products/2", {"name": "Gadget 2"})

    messages = await client.drain()
    assert [(m["sub"], m["table"], m["event"], m["pk"], m["seq"]) for m in messages] == [
        ("products-feed", "products", "created", product["id"], 1),
        ("orders-feed", "orders", "created", order["id"], 1),
        ("products-feed", "products", "updated", 2, 2)]
    assert messages[1]["record"] == order
    assert messages[2]["record"]["name"] == "Gadget 2"
    client.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_change_matching_two_subscriptions_arrives_once_for_each(server):
    client = await channel(server)
    await subscribe(client, "all", "products")
    await subscribe(client, "cheap", "products", "price=lt.10")
    await subscribe(client, "dear", "products", "price=gt.100")
    await subscribe(client, "gift", "products", "or=(name.ilike.*gift*,sku.eq.NONE)")

    widget = await server.patch("/api/products/1", {"description": "cheap one"})  # 9.99
    gift = await server.patch("/api/products/3", {"description": "a gift"})  # 5.00, Gift Card
    messages = per_change(await client.drain())
    assert [(m["sub"], m["pk"], m["seq"]) for m in messages] == [
        ("all", 1, 1), ("cheap", 1, 1), ("all", 3, 2), ("cheap", 3, 2), ("gift", 3, 2)]
    # the copies differ only in "sub"
    assert untagged(messages[0]) == untagged(messages[1])
    assert messages[0]["record"] == widget.body
    assert untagged(messages[2]) == untagged(messages[3]) == untagged(messages[4])
    assert messages[4]["record"] == gift.body
    assert "matches" not in messages[4]
    client.close()


@pytest.mark.gen_test(timeout=30)
async def test_one_id_per_subscription_even_on_the_same_table_and_filter(server):
    client = await channel(server)
    await subscribe(client, "a", "products", "id=eq.2")
    await subscribe(client, "b", "products", "id=eq.2")
    await server.patch("/api/products/2", {"name": "twice"})
    messages = await client.drain()
    assert sorted(m["sub"] for m in messages) == ["a", "b"]
    assert untagged(messages[0]) == untagged(messages[1])
    assert all(m["record"]["name"] == "twice" for m in messages)
    client.close()


@pytest.mark.gen_test(timeout=30)
async def test_unsubscribe_stops_only_that_subscription(server):
    client = await channel(server)
    await subscribe(client, "s1", "products")
    await subscribe(client, "s2", "products")
    await server.patch("/api/products/1", {"name": "both"})
    assert sorted(m["sub"] for m in await client.drain()) == ["s1", "s2"]

    assert await answer(client, type="unsubscribe", id="s1") == {
        "type": "unsubscribed", "sub": "s1"}
    await server.patch("/api/products/1", {"name": "only s2"})
    messages = await client.drain()
    assert [(m["sub"], m["record"]["name"]) for m in messages] == [("s2", "only s2")]

    # the id is free again: a new subscription under it starts from now
    assert (await subscribe(client, "s1", "products", "id=eq.3"))["seq"] == 2
    await server.patch("/api/products/1", {"name": "s2 again"})
    await server.patch("/api/products/3", {"name": "both again"})
    messages = per_change(await client.drain())
    assert [(m["sub"], m["pk"]) for m in messages] == [("s2", 1), ("s1", 3), ("s2", 3)]
    client.close()


@pytest.mark.gen_test(timeout=30)
async def test_unsubscribe_of_an_unknown_id_is_a_404_for_that_id(server):
    client = await channel(server)
    await subscribe(client, "s1", "products")
    error_of(await answer(client, type="unsubscribe", id="nope"), 404, "not_found", "nope")
    # s1 still works; unsubscribing it twice is a 404 the second time
    await server.patch("/api/products/1", {"name": "still"})
    assert [m["sub"] for m in await client.drain()] == ["s1"]
    assert (await answer(client, type="unsubscribe", id="s1"))["type"] == "unsubscribed"
    error_of(await answer(client, type="unsubscribe", id="s1"), 404, "not_found", "s1")
    client.close()


# -- a bad subscribe is an error for its id, nothing more ----------------------------------------

BAD_SUBSCRIBES = [
    # (id, table, filter, status, code, words in the message)
    ("bad-table", "nope", None, 404, "not_found", "nope"),
    ("bad-column", "products", "colour=eq.red", 400, "bad_request", "colour"),
    ("bad-value", "products", "price=gt.cheap", 400, "bad_request", "price"),
    ("bad-operator", "products", "price=between.1", 400, "bad_request", "price"),
    ("bad-or", "products", "or=(price.lt.5", 400, "bad_request", "or"),
    ("bad-since", "products", None, 400, "bad_request", "since"),
]


@pytest.mark.parametrize("sub, table, filter, status, code, words", BAD_SUBSCRIBES,
                         ids=[case[0] for case in BAD_SUBSCRIBES])
@pytest.mark.gen_test(timeout=30)
async def test_a_bad_subscribe_is_an_error_for_its_id_only(server, sub, table, filter, status,
                                                            code, words):
    client = await channel(server)
    await subscribe(client, "good", "products")
    message: dict[str, Any] = {"type": "subscribe", "id": sub, "table": table}
    if filter is not None:
        message["filter"] = filter
    if sub == "bad-since":
        message["since"] = "yesterday"
    error = error_of(await answer(client, **message), status, code, sub)
    assert words in error["message"], error

    # the connection and the other subscription go on; the failed id holds nothing
    await server.patch("/api/products/1", {"name": "after the error"})
    messages = await client.drain()
    assert [(m["sub"], m["record"]["name"]) for m in messages] == [("good", "after the error")]
    await subscribe(client, sub, "products", "id=eq.1")
    await server.patch("/api/products/1", {"name": "now both"})
    assert sorted(m["sub"] for m in await client.drain()) == sorted(["good", sub])
    client.close()


@pytest.fixture
def with_view(make_server, database):
    make_server()  # seeds the demo tables
    database.ddl("CREATE VIEW cheap_products AS SELECT id, name FROM products WHERE price < 10")
    return make_server()  # reflects the view


@pytest.mark.gen_test(timeout=30)
async def test_a_view_has_no_feed_on_the_channel_either(with_view):
    server = with_view
    assert "cheap_products" in server.app.tables
    client = await channel(server)
    error_of(await answer(client, type="subscribe", id="v", table="cheap_products"), 404,
             "not_found", "v")
    client.close()


@pytest.mark.gen_test(timeout=30)
async def test_duplicate_id_is_refused_and_the_first_stays(server):
    client = await channel(server)
    await subscribe(client, "s1", "products", "id=eq.1")
    error = error_of(await answer(client, type="subscribe", id="s1", table="users"), 400,
                     "bad_request", "s1")
    assert "s1" in error["message"]
    await server.patch("/api/users/1", {"name": "not for s1"})
    await server.patch("/api/products/1", {"name": "for s1"})
    messages = await client.drain()
    assert [(m["sub"], m["table"]) for m in messages] == [("s1", "products")]
    client.close()


@pytest.mark.gen_test(timeout=30)
async def test_id_of_64_characters_is_taken_65_is_refused(server):
    client = await channel(server)
    longest, too_long = "x" * 64, "y" * 65
    await subscribe(client, longest, "products")
    error_of(await answer(client, type="subscribe", id=too_long, table="products"), 400,
             "bad_request", too_long)
    error_of(await answer(client, type="subscribe", id="", table="products"), 400,
             "bad_request", None)
    await server.patch("/api/products/1", {"name": "x"})
    assert [m["sub"] for m in await client.drain()] == [longest]
    client.close()


@pytest.mark.parametrize("bad_id", [5, None, ["s1"], {"id": "s1"}, True])
@pytest.mark.gen_test(timeout=30)
async def test_id_that_is_not_a_string_is_a_400_and_changes_nothing(server, bad_id):
    """The contract's ids are strings; an error naming no (valid) id carries no ``sub``."""
    client = await channel(server)
    await subscribe(client, "ok", "products")
    message: dict[str, Any] = {"type": "subscribe", "table": "products"}
    if bad_id is not None:
        message["id"] = bad_id
    error = error_of(await answer(client, **message), 400, "bad_request", None)
    assert "id" in error["message"]
    await server.patch("/api/products/1", {"name": "x"})
    assert [m["sub"] for m in await client.drain()] == ["ok"]
    client.close()


@pytest.mark.gen_test(timeout=30)
async def test_table_or_filter_of_the_wrong_type_is_a_400_for_that_id(server):
    client = await channel(server)
    error_of(await answer(client, type="subscribe", id="a", table=7), 400, "bad_request", "a")
    error_of(await answer(client, type="subscribe", id="b"), 400, "bad_request", "b")
    error_of(await answer(client, type="subscribe", id="c", table="products",
                          filter={"price": "gt.1"}), 400, "bad_request", "c")
    await subscribe(client, "a", "products")
    client.close()


@pytest.fixture
def two_subscriptions(make_server):
    return make_server({"realtime": {"max_subscriptions": 2}})


@pytest.mark.gen_test(timeout=30)
async def test_max_subscriptions_refuses_the_next_one_for_its_id(two_subscriptions):
    server = two_subscriptions
    client = await channel(server)
    assert client.hello["max_subscriptions"] == 2
    await subscribe(client, "s1", "products")
    await subscribe(client, "s2", "users")
    error = error_of(await answer(client, type="subscribe", id="s3", table="orders"), 400,
                     "bad_request", "s3")
    assert "2" in error["message"]
    await server.patch("/api/products/1", {"name": "p"})
    await server.patch("/api/orders/1", {"quantity": 9})
    await server.patch("/api/users/1", {"name": "u"})
    assert [(m["sub"], m["table"]) for m in await client.drain()] == [
        ("s1", "products"), ("s2", "users")]
    # freeing one makes room; the limit is per connection
    assert (await answer(client, type="unsubscribe", id="s1"))["type"] == "unsubscribed"
    await subscribe(client, "s3", "orders")
    other = await channel(server)
    await subscribe(other, "s1", "products")
    await subscribe(other, "s2", "products")
    await server.patch("/api/orders/1", {"quantity": 10})
    assert [(m["sub"], m["table"]) for m in await client.drain()] == [("s3", "orders")]
    client.close()
    other.close()


# -- since, resync, matches:false ----------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_since_per_subscription_replays_exactly_the_missed_changes(server):
    for i in range(4):
        await server.put("/api/products/1", {"price": f"{i}.00"})  # products seq 1..4
    await server.put("/api/users/1", {"name": "u1"})  # users seq 1
    await server.put("/api/users/2", {"name": "u2"})  # users seq 2
    client = await channel(server)

    assert await subscribe(client, "from2", "products", since=2) == {
        "type": "subscribed", "sub": "from2", "table": "products", "seq": 4}
    replayed = await client.drain()
    assert [(m["sub"], m["seq"], m["record"]["price"]) for m in replayed] == [
        ("from2", 3, "2.00"), ("from2", 4, "3.00")]

    await subscribe(client, "from0", "products", since=0)
    assert [(m["sub"], m["seq"]) for m in await client.drain()] == [
        ("from0", 1), ("from0", 2), ("from0", 3), ("from0", 4)]
    await subscribe(client, "current", "products", since=4)
    assert await client.drain() == []
    # since in the filter string is the same as the field; per table
    await subscribe(client, "users", "users", "since=1")
    assert [(m["sub"], m["seq"], m["record"]["name"]) for m in await client.drain()] == [
        ("users", 2, "u2")]

    # then live, once per subscription, no duplicate of what was replayed
    await server.put("/api/products/1", {"price": "9.00"})
    live = await client.drain()
    assert sorted((m["sub"], m["seq"]) for m in live) == [
        ("current", 5), ("from0", 5), ("from2", 5)]
    client.close()


@pytest.mark.gen_test(timeout=30)
async def test_since_with_a_filter_replays_only_its_rows(server):
    for pk, price in ((1, "50"), (2, "1"), (3, "60"), (1, "2")):
        await server.put(f"/api/products/{pk}", {"price": price})
    client = await channel(server)
    await subscribe(client, "dear", "products", "price=gt.20", since=0)
    assert [(m["sub"], m["seq"], m["pk"], m.get("matches", True))
            for m in await client.drain()] == [
        ("dear", 1, 1, True), ("dear", 2, 2, False), ("dear", 3, 3, True), ("dear", 4, 1, False)]
    client.close()


@pytest.fixture
def small_ring(make_server):
    return make_server({"realtime": {"replay_buffer": 3}})


@pytest.mark.gen_test(timeout=30)
async def test_since_too_old_or_ahead_gets_resync_for_that_subscription(small_ring):
    server = small_ring
    for i in range(6):
        await server.put("/api/products/1", {"price": f"{i}.00"})  # the ring keeps 4..6
    client = await channel(server)
    await subscribe(client, "fine", "products", since=3)
    assert [(m["sub"], m["seq"]) for m in await client.drain()] == [
        ("fine", 4), ("fine", 5), ("fine", 6)]

    await subscribe(client, "old", "products", since=1)
    assert await client.drain() == [{"type": "resync", "sub": "old", "table": "products",
                                     "seq": 6, "reason": "since is older than the replay buffer"}]
    await subscribe(client, "ahead", "products", since=100)
    (resync,) = await client.drain()
    assert resync == {"type": "resync", "sub": "ahead", "table": "products", "seq": 6,
                      "reason": resync["reason"]}
    assert "ahead" in resync["reason"]

    # then live changes only, to all three
    await server.put("/api/products/1", {"price": "7.00"})
    live = await client.drain()
    assert sorted((m["sub"], m["seq"], m["type"]) for m in live) == [
        ("ahead", 7, "change"), ("fine", 7, "change"), ("old", 7, "change")]
    client.close()


@pytest.mark.gen_test(timeout=30)
async def test_update_out_of_the_filter_is_sent_once_with_matches_false(server):
    client = await channel(server)
    await subscribe(client, "cheap", "products", "price=lt.10")
    await subscribe(client, "all", "products")

    out = await server.patch("/api/products/1", {"price": "20"})  # 9.99 -> 20: leaves cheap
    into = await server.patch("/api/products/2", {"price": "5"})  # 24.50 -> 5: enters cheap
    await server.patch("/api/products/1", {"price": "30"})  # still out of cheap: nothing
    messages = per_change(await client.drain())
    assert [(m["sub"], m["pk"], m["event"], m.get("matches")) for m in messages] == [
        ("all", 1, "updated", None), ("cheap", 1, "updated", False),
        ("all", 2, "updated", None), ("cheap", 2, "updated", None),
        ("all", 1, "updated", None)]
    left = messages[1]
    assert left["matches"] is False
    assert left["record"] == out.body and left["old"]["price"] == "9.99"
    assert messages[3]["record"] == into.body and messages[3]["old"]["price"] == "24.50"
    # creates and deletes of rows outside the filter are not sent; inside, they are
    await server.delete("/api/products/1")
    dear = (await server.post("/api/products", {**NEW, "price": "50"})).body
    await server.delete(f"/api/products/{dear['id']}")
    cheap = (await server.post("/api/products", {**NEW, "sku": "CH-2", "price": "1"})).body
    await server.delete(f"/api/products/{cheap['id']}")
    assert [(m["sub"], m["event"], m["pk"]) for m in per_change(await client.drain())] == [
        ("all", "deleted", 1), ("all", "created", dear["id"]), ("all", "deleted", dear["id"]),
        ("all", "created", cheap["id"]), ("cheap", "created", cheap["id"]),
        ("all", "deleted", cheap["id"]), ("cheap", "deleted", cheap["id"])]
    client.close()


@pytest.mark.gen_test(timeout=30)
async def test_select_in_the_filter_limits_the_columns_sent(server):
    client = await channel(server)
    await subscribe(client, "narrow", "products", "select=id,name")
    await server.patch("/api/products/1", {"name": "Narrow"})
    (message,) = await client.drain()
    assert message["record"] == {"id": 1, "name": "Narrow"}
    error_of(await answer(client, type="subscribe", id="x", table="products",
                          filter="select=nope"), 400, "bad_request", "x")
    client.close()


# -- auth --------------------------------------------------------------------------------------

@pytest.fixture
def keyed(make_server):
    return make_server(KEYS)


@pytest.mark.gen_test(timeout=30)
async def test_a_table_the_key_may_not_read_is_a_403_for_that_id_only(keyed):
    server = keyed
    client = await channel(server, bearer(READER))
    await subscribe(client, "p", "products")
    error = error_of(await answer(client, type="subscribe", id="o", table="orders"), 403,
                     "forbidden", "o")
    assert error["details"] == {"permission": "read", "table": "orders"}
    assert READER not in json.dumps(error)

    writer = bearer(WRITER)
    await server.patch("/api/orders/1", {"quantity": 3}, headers=writer)
    await server.patch("/api/products/1", {"name": "seen"}, headers=writer)
    messages = await client.drain()
    assert [(m["sub"], m["table"], m["record"]["name"]) for m in messages] == [
        ("p", "products", "seen")]
    # the id refused is free; the full key may read orders on its own socket
    full = await channel(server, writer)
    await subscribe(full, "o", "orders")
    await server.patch("/api/orders/1", {"quantity": 4}, headers=writer)
    assert [(m["sub"], m["record"]["quantity"]) for m in await full.drain()] == [("o", 4)]
    client.close()
    full.close()


@pytest.mark.gen_test(timeout=30)
async def test_anonymous_subscribe_is_a_401_for_that_id_and_token_query_works(keyed):
    server = keyed
    anonymous = await channel(server)
    error_of(await answer(anonymous, type="subscribe", id="p", table="products"), 401,
             "unauthorized", "p")
    assert await anonymous.drain() == []
    anonymous.close()

    assert_error(await keyed.get("/ws?token=nope", headers=UPGRADE), 401, "unknown API key")
    browser = await FeedClient.open(server, f"/ws?token={READER}")
    await subscribe(browser, "p", "products")
    await server.patch("/api/products/2", {"name": "via token"}, headers=bearer(WRITER))
    assert [(m["sub"], m["record"]["name"]) for m in await browser.drain()] == [
        ("p", "via token")]
    browser.close()


@pytest.mark.gen_test(timeout=30)
async def test_auth_message_upgrades_an_anonymous_channel(keyed):
    server = keyed
    client = await channel(server)
    error_of(await answer(client, type="subscribe", id="o", table="orders"), 401,
             "unauthorized", "o")
    reply = await answer(client, type="auth", token=WRITER)
    assert reply == {"type": "auth", "ok": True, "subject": "writer", "expires_at": None}
    await subscribe(client, "o", "orders")
    await server.patch("/api/orders/1", {"quantity": 6}, headers=bearer(WRITER))
    assert [(m["sub"], m["record"]["quantity"]) for m in await client.drain()] == [("o", 6)]
    # a key that may not read a subscribed table is refused and changes nothing
    refused = await answer(client, type="auth", token=READER)
    assert refused["type"] == "error" and refused["code"] == "forbidden"
    await server.patch("/api/orders/1", {"quantity": 7}, headers=bearer(WRITER))
    assert [m["record"]["quantity"] for m in await client.drain()] == [7]
    client.close()


# -- other messages -----------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_ping_gets_pong_and_unknown_messages_an_error(server):
    client = await channel(server)
    await subscribe(client, "s", "products")
    assert await answer(client, type="ping") == {"type": "pong"}
    for message in ('{"type": "bogus"}', "not json", "[1, 2]", '{"id": "s"}', '"subscribe"'):
        client.conn.write_message(message)
        reply = await client.recv()
        error_of(reply, 400, "bad_request", None)
        assert "subscribe" in reply["error"]["message"]
    assert await answer(client, type="ping", extra=1) == {"type": "pong"}
    await server.patch("/api/products/1", {"name": "still subscribed"})
    assert [m["sub"] for m in await client.drain()] == ["s"]
    client.close()
    await wait_for(lambda: server.app.connections.count() == 0, what="the client to be forgotten")


@pytest.mark.gen_test(timeout=30)
async def test_closing_the_socket_ends_every_subscription(server):
    client = await channel(server)
    await subscribe(client, "a", "products")
    await subscribe(client, "b", "users")
    feed = server.app.hub.feed("products")
    assert len(feed.subscribers) == 1
    client.close()
    await wait_for(lambda: server.app.connections.count() == 0, what="the client to go")
    assert len(feed.subscribers) == 0 and len(server.app.hub.feed("users").subscribers) == 0


@pytest.mark.gen_test(timeout=30)
async def test_server_stop_closes_the_channel_with_1001(server):
    client = await channel(server)
    await subscribe(client, "a", "products")
    await server.app.stop()
    assert await client.closed() == 1001


@pytest.fixture
def fast_heartbeat(make_server):
    return make_server({"realtime": {"heartbeat_interval": "0.5", "heartbeat_timeout": "0.5"}})


@pytest.mark.gen_test(timeout=30)
async def test_a_channel_that_misses_its_heartbeat_is_dropped(fast_heartbeat):
    server = fast_heartbeat
    connections = server.app.connections
    healthy = await channel(server)  # Tornado's client answers pings
    assert healthy.hello["heartbeat"] == 0.5
    await subscribe(healthy, "s", "products")
    sock, _ = await in_thread(raw_connect, port_of(server), "/ws")
    try:
        await wait_for(lambda: connections.count() == 2, what="the silent channel")
        await wait_for(lambda: connections.count() == 1, timeout=0.5 + 0.5 + 1.5,
                       what="the silent channel to be dropped")
        assert connections.dropped_by_heartbeat == 1
    finally:
        sock.close()
    await server.patch("/api/products/1", {"name": "still here"})
    assert [(m["sub"], m["record"]["name"]) for m in await healthy.drain()] == [
        ("s", "still here")]
    healthy.close()


# -- backpressure --------------------------------------------------------------------------------

def masked_text_frame(text: str) -> bytes:
    """A client's (masked) text frame."""
    payload = text.encode()
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = bytes([0x81, 0x80 | size])
    elif size < 65536:
        head = bytes([0x81, 0x80 | 126]) + struct.pack("!H", size)
    else:
        head = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", size)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_until_close_frame(sock: socket.socket, data: bytes) -> list[tuple[int, bytes]]:
    """Blocking: read frames until the close frame (or EOF)."""
    sock.settimeout(TIMEOUT)
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except (ConnectionResetError, TimeoutError):
            chunk = b""
        data += chunk
        frames = parse_frames(data)
        if not chunk or close_code(frames) is not None:
            return frames


@pytest.fixture
def small_queue(make_server):
    return make_server({"realtime": {"max_pending": 100, "replay_buffer": 20000}})


@pytest.mark.gen_test(timeout=60)
async def test_a_channel_that_stops_reading_is_closed_with_1013_and_resumes(small_queue):
    server = small_queue
    app = server.app
    sock, early = await in_thread(raw_connect, port_of(server), "/ws", 4096)
    await wait_for(lambda: app.connections.count() == 1, what="the stalled channel")
    (stalled,) = app.connections.open
    for sub, table in (("p", "products"), ("u", "users")):
        await in_thread(sock.sendall, masked_text_frame(json.dumps(
            {"type": "subscribe", "id": sub, "table": table})))
    await wait_for(lambda: set(stalled.session.subscriptions) == {"p", "u"},
                   what="both subscriptions")
    reader = await channel(server)
    await subscribe(reader, "p", "products")

    total, burst = 3000, 25
    longest = 0
    for start in range(0, total, burst):
        for i in range(start, start + burst):
            app.hub.publish(Change("products", "updated", 1, {"id": 1, "name": f"p{i}"}))
            app.hub.publish(Change("users", "updated", 1, {"id": 1, "name": f"u{i}"}))
            longest = max(longest, len(stalled.outbox.queue))
        await reader.changes(burst)  # the reading client keeps up
    assert app.connections.dropped_by_backpressure == 1
    assert stalled not in app.connections.open
    assert longest <= 100, "max_pending counts the connection's messages, all subscriptions"

    frames = await in_thread(read_until_close_frame, sock, early)
    sock.close()
    assert close_code(frames) == 1013
    texts = [json.loads(payload) for opcode, payload in frames if opcode == 0x1]
    assert texts[0]["type"] == "hello"
    assert sorted((m["type"], m["sub"]) for m in texts[1:3]) == [
        ("subscribed", "p"), ("subscribed", "u")]
    seen = {"p": [], "u": []}
    for message in texts[3:]:
        assert message["type"] == "change"
        seen[message["sub"]].append(message["seq"])
    for seqs in seen.values():
        assert seqs == list(range(1, len(seqs) + 1))  # in order, no gap, then the close
        assert len(seqs) < total

    # the reader was not disturbed
    assert await reader.drain() == []
    reader.close()

    # it resumes both subscriptions with since and gets exactly what it missed
    again = await channel(server)
    last = {sub: (seqs[-1] if seqs else 0) for sub, seqs in seen.items()}
    await subscribe(again, "p", "products", since=last["p"])
    replayed = await again.changes(total - last["p"])
    await subscribe(again, "u", "users", since=last["u"])
    replayed += await again.changes(total - last["u"])
    assert await again.drain() == []
    for sub, table, prefix in (("p", "products", "p"), ("u", "users", "u")):
        mine = [m for m in replayed if m["sub"] == sub]
        assert [m["seq"] for m in mine] == list(range(last[sub] + 1, total + 1))
        assert all(m["table"] == table for m in mine)
        assert mine[-1]["record"]["name"] == f"{prefix}{total - 1}"
    again.close()


# -- 6.4: source and by ------------------------------------------------------------------------

async def rest_writes(server: Any, headers: dict[str, str] | None = None) -> list[Any]:
    """Create, update and delete a product over REST."""
    created = await server.post("/api/products", NEW, headers=headers)
    assert created.status == 201, created.body
    pk = created.body["id"]
    assert (await server.patch(f"/api/products/{pk}", {"name": "by REST"},
                               headers=headers)).status == 200
    assert (await server.delete(f"/api/products/{pk}", headers=headers)).status == 204
    return [created, pk]


@pytest.mark.gen_test(timeout=30)
async def test_every_rest_change_says_source_api_and_has_no_by(server):
    plain = await FeedClient.open(server, "/ws/products")
    client = await channel(server)
    await subscribe(client, "s", "products")
    await rest_writes(server)
    await server.post("/api/products", [{**NEW, "sku": "BULK-1"}, {**NEW, "sku": "BULK-2"}])
    for messages in (await plain.drain(), await client.drain()):
        assert [m["event"] for m in messages] == [
            "created", "updated", "deleted", "created", "created"]
        assert [m["source"] for m in messages] == ["api"] * 5
        assert all("by" not in m for m in messages)
    client.close()
    plain.close()


@pytest.fixture
def keyed_actor(make_server):
    return make_server({**KEYS, "realtime": {"expose_actor": "true"}})


@pytest.fixture
def open_actor(make_server):
    return make_server({"realtime": {"expose_actor": "true"}})


@pytest.mark.gen_test(timeout=30)
async def test_expose_actor_names_the_keys_subject(keyed_actor):
    server = keyed_actor
    writer = bearer(WRITER)
    client = await channel(server, writer)
    await subscribe(client, "s", "products")
    plain = await open_feed(server, "/ws/products", bearer(READER))
    await rest_writes(server, writer)
    for messages in (await client.drain(), await plain.drain()):
        assert [(m["event"], m["source"], m["by"]) for m in messages] == [
            ("created", "api", "writer"), ("updated", "api", "writer"),
            ("deleted", "api", "writer")]
    client.close()
    plain.close()


@pytest.mark.gen_test(timeout=30)
async def test_expose_actor_without_auth_says_by_null(open_actor):
    server = open_actor
    client = await channel(server)
    await subscribe(client, "s", "products")
    await rest_writes(server)
    messages = await client.drain()
    assert len(messages) == 3
    for message in messages:
        assert "by" in message and message["by"] is None
        assert message["source"] == "api"
    client.close()


@pytest.mark.gen_test(timeout=30)
async def test_without_expose_actor_an_authenticated_write_has_no_by(keyed):
    server = keyed
    client = await channel(server, bearer(WRITER))
    await subscribe(client, "s", "products")
    await rest_writes(server, bearer(WRITER))
    messages = await client.drain()
    assert [m["source"] for m in messages] == ["api"] * 3
    assert all("by" not in m for m in messages)
    client.close()


CAPTURE = {"capture": "database", "install_triggers": "true"}


@pytest.fixture
def capturing(make_server):
    return make_server({"realtime": {**CAPTURE, "expose_actor": "true"}})


@pytest.mark.gen_test(timeout=60)
async def test_changes_caught_by_capture_say_source_database(capturing, database):
    server = capturing
    client = await channel(server)
    await subscribe(client, "s", "products")
    await in_thread(database.execute,
                    "INSERT INTO products (name, price, sku) VALUES ('Outside', 1, 'OUT-1')")
    (created,) = await client.changes(1)
    await in_thread(database.execute, "UPDATE products SET name = 'Outside 2' WHERE sku = 'OUT-1'")
    await in_thread(database.execute, "DELETE FROM products WHERE sku = 'OUT-1'")
    updated, deleted = await client.changes(2)
    assert [(m["sub"], m["event"], m["source"]) for m in (created, updated, deleted)] == [
        ("s", "created", "database"), ("s", "updated", "database"),
        ("s", "deleted", "database")]
    # a write outside Pylight has no identity to show
    assert all(m.get("by") is None for m in (created, updated, deleted))
    client.close()


@pytest.mark.gen_test(timeout=60)
async def test_rest_write_under_capture_still_says_source_api(capturing):
    server = capturing
    client = await channel(server)
    await subscribe(client, "s", "products")
    await server.patch("/api/products/1", {"name": "through REST"})
    (message,) = await client.changes(1)
    assert message["record"]["name"] == "through REST"
    assert message["source"] == "api"
    assert "by" in message and message["by"] is None  # anonymous, with expose_actor
    client.close()


@pytest.fixture
def capturing_fifty(make_server):
    return make_server({"realtime": {**CAPTURE, "max_pending": 50}})


@pytest.mark.gen_test(timeout=60)
async def test_a_reading_client_survives_one_statement_of_more_rows_than_max_pending(
        capturing_fifty, database):
    """Backpressure is for a client that stops reading: 60 rows inserted by one statement
    (caught by capture, published in one pass; max_pending 50) reach clients that read."""
    server = capturing_fifty
    client = await channel(server)
    await subscribe(client, "s", "products")
    plain = await FeedClient.open(server, "/ws/products")
    rows = ", ".join(f"('Bulk {i}', 1, 'BULK-{i:03d}')" for i in range(60))
    await in_thread(database.execute, f"INSERT INTO products (name, price, sku) VALUES {rows}")
    for feed in (client, plain):
        messages = await feed.changes(60)
        assert [m["seq"] for m in messages] == list(range(1, 61))
        assert await feed.drain() == []
    assert server.app.connections.dropped_by_backpressure == 0
    client.close()
    plain.close()

