"""Upsert and `Prefer` (API.md 7.2), on every backend.

`POST` with `Prefer: resolution=merge-duplicates` inserts each row or updates the
one with the same key (or the unique columns of `?on_conflict=`), one
transaction for an array, and each row's change is `created` or `updated` as it
really was, also when clients race to insert the same new key;
`resolution=ignore-duplicates` leaves existing rows alone and out of the answer;
`Prefer: return=minimal` answers POST, PUT and PATCH with a 204. Composite keys,
mixed-case and reserved names, NULLs in a unique column, a table without a key.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import pytest

from pylight import hookimpl
from pylight.auth import Identity
from tests.realtime_support import FeedClient

ACCOUNTS = "Accounts"
PATH = f"/api/{ACCOUNTS}"
MERGE = {"Prefer": "resolution=merge-duplicates"}
IGNORE = {"Prefer": "resolution=ignore-duplicates"}
KEY = ("Tenant", "user")

SCHEMA = """
CREATE TABLE "Accounts" (
    "Tenant" INTEGER NOT NULL,
    "user" VARCHAR(20) NOT NULL,
    email VARCHAR(40),
    "Order" INTEGER,
    note VARCHAR(20),
    PRIMARY KEY ("Tenant", "user"),
    UNIQUE (email),
    CHECK ("Order" IS NULL OR "Order" < 1000)
);
CREATE TABLE up_tags (
    name VARCHAR(20) NOT NULL UNIQUE,
    hits INTEGER NOT NULL DEFAULT 0
);
INSERT INTO "Accounts" ("Tenant", "user", email, "Order", note) VALUES
    (1, 'ada', 'ada@x.org', 1, NULL), (1, 'bob', NULL, 2, 'n'), (2, 'ada', 'ada2@x.org', NULL, NULL);
INSERT INTO up_tags (name, hits) VALUES ('red', 1), ('blue', 0)
"""
# A unique index an upsert cannot name: partial (PostgreSQL, SQLite), on a prefix (MySQL).
PARTIAL = {"mysql": 'CREATE UNIQUE INDEX accounts_note ON "Accounts" (note(5))'}
PARTIAL_DEFAULT = 'CREATE UNIQUE INDEX accounts_note ON "Accounts" (note) WHERE note IS NOT NULL'


def _sql(database: Any, text: str) -> str:
    return text.replace('"', "`") if database.backend == "mysql" else text


def create(database: Any) -> None:
    statements = [s for s in SCHEMA.split(";\n") if s.strip()]
    statements.append(PARTIAL.get(database.backend, PARTIAL_DEFAULT))
    database.execute(*[_sql(database, s) for s in statements])


@pytest.fixture
def server(database: Any, make_server: Any) -> Any:
    create(database)
    return make_server(seed=False)


def key_of(record: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(record[name] for name in KEY)


async def table(server: Any, name: str = ACCOUNTS) -> dict[Any, dict[str, Any]]:
    response = await server.get(f"/api/{quote(name)}?limit=1000")
    assert response.status == 200, response.body
    if name == ACCOUNTS:
        return {key_of(r): r for r in response.body["items"]}
    return {r["name"]: r for r in response.body["items"]}


def assert_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, (response.status, response.raw[:400])
    return response.body["error"]


def account(tenant: int, user: str, **values: Any) -> dict[str, Any]:
    return {"Tenant": tenant, "user": user, **values}


@pytest.mark.gen_test(timeout=60)
async def test_merge_updates_an_existing_row_and_creates_a_new_one(server: Any) -> None:
    feed = await FeedClient.open(server, f"/ws/{ACCOUNTS}")
    before = await table(server)
    response = await server.post(PATH, account(1, "ada", note="hi"), headers=MERGE)
    assert response.status == 201, response.body
    assert response.body == {**before[(1, "ada")], "note": "hi"}  # the rest as it was
    assert response.headers["Location"] == f"{PATH}/1,ada"
    assert response.headers["Pylight-Affected"] == "1"
    assert response.headers["Preference-Applied"] == "resolution=merge-duplicates"

    response = await server.post(PATH, account(3, "cy", email="cy@x.org"), headers=MERGE)
    assert response.status == 201, response.body
    assert response.body == account(3, "cy", email="cy@x.org", Order=None, note=None)
    changes = await feed.drain()
    assert [(c["event"], c["pk"], c["old"]) for c in changes] == [
        ("updated", [1, "ada"], before[(1, "ada")]), ("created", [3, "cy"], None)]
    assert [c["record"] for c in changes] == [{**before[(1, "ada")], "note": "hi"},
                                               response.body]
    feed.close()


@pytest.mark.gen_test(timeout=60)
async def test_an_array_is_one_transaction_each_row_created_or_updated(server: Any) -> None:
    feed = await FeedClient.open(server, f"/ws/{ACCOUNTS}")
    before = await table(server)
    body = [account(1, "bob", Order=5), account(3, "dee"), account(3, "dee", note="again")]
    response = await server.post(PATH, body, headers=MERGE)
    assert response.status == 201, response.body
    items = response.body["items"]
    assert items == [{**before[(1, "bob")], "Order": 5},
                     account(3, "dee", email=None, Order=None, note=None),
                     account(3, "dee", email=None, Order=None, note="again")]
    assert response.headers["Pylight-Affected"] == "3"
    changes = await feed.drain()
    assert [(c["event"], c["record"], c["old"]) for c in changes] == [
        ("updated", items[0], before[(1, "bob")]), ("created", items[1], None),
        ("updated", items[2], items[1])]

    # A row that cannot be stored refuses the whole array: the first row is not kept.
    after = await table(server)
    assert_error(await server.post(PATH, [account(1, "ada", note="kept?"),
                                          account(1, "bob", Order=5000)], headers=MERGE), 422)
    assert_error(await server.post(PATH, [account(4, "eve"), account(4, "fay", email="ada@x.org")],
                                   headers=MERGE), 409)  # a unique column other than the key
    assert await table(server) == after
    assert await feed.drain() == []
    feed.close()


@pytest.mark.gen_test(timeout=60)
async def test_ignore_duplicates_leaves_existing_rows_out(server: Any) -> None:
    feed = await FeedClient.open(server, f"/ws/{ACCOUNTS}")
    before = await table(server)
    response = await server.post(PATH, [account(1, "ada", note="zzz"), account(4, "eve")],
                                 headers=IGNORE)
    assert response.status == 201, response.body
    assert response.body["items"] == [account(4, "eve", email=None, Order=None, note=None)]
    assert response.headers["Pylight-Affected"] == "1"
    # One object that exists: nothing created, nothing to show.
    response = await server.post(PATH, account(1, "ada", note="zzz"), headers=IGNORE)
    assert (response.status, response.raw, response.headers["Pylight-Affected"]) == (204, b"", "0")
    after = await table(server)
    assert after[(1, "ada")] == before[(1, "ada")]
    assert [c["event"] for c in await feed.drain()] == ["created"]
    feed.close()


@pytest.mark.gen_test(timeout=60)
async def test_on_conflict_names_unique_columns(server: Any) -> None:
    feed = await FeedClient.open(server, "/ws/up_tags")
    before = await table(server)
    # By email, without the key: the row with that email is updated.
    response = await server.post(f"{PATH}?on_conflict=email", {"email": "ada2@x.org", "note": "e"},
                                 headers=MERGE)
    assert response.status == 201, response.body
    assert response.body == {**before[(2, "ada")], "note": "e"}
    # A NULL email conflicts with nothing (NULLs are distinct in a unique index): inserted.
    for user in ("n1", "n2"):
        response = await server.post(f"{PATH}?on_conflict=email", account(5, user, email=None),
                                     headers=MERGE)
        assert response.status == 201, response.body
    assert {(5, "n1"), (5, "n2")} <= set(await table(server))
    # Without Prefer: resolution, on_conflict does nothing (as in PostgREST): an insert.
    response = await server.post(f"{PATH}?on_conflict=email", account(1, "ada", email="a@b"))
    assert_error(response, 409)

    # A table without a key: only by a unique column.
    response = await server.post("/api/up_tags?on_conflict=name",
                                 [{"name": "red", "hits": 2}, {"name": "green"}], headers=MERGE)
    assert response.status == 201, response.body
    assert response.body["items"] == [{"name": "red", "hits": 2}, {"name": "green", "hits": 0}]
    changes = await feed.drain()
    assert [(c["event"], c["pk"], c["old"]) for c in changes] == [
        ("updated", [], {"name": "red", "hits": 1}), ("created", [], None)]
    assert_error(await server.post("/api/up_tags", {"name": "red"}, headers=MERGE), 400)
    feed.close()


@pytest.mark.gen_test(timeout=60)
async def test_refusals_write_nothing(server: Any) -> None:
    feed = await FeedClient.open(server, f"/ws/{ACCOUNTS}")
    before = await table(server)
    body = account(1, "ada", note="x")
    refused = [
        await server.post(f"{PATH}?on_conflict=note", body, headers=MERGE),  # partial/prefix
        await server.post(f"{PATH}?on_conflict=Order", body, headers=MERGE),  # not unique
        await server.post(f"{PATH}?on_conflict=nope", body, headers=MERGE),
        await server.post(f"{PATH}?on_conflict=email&on_conflict=email", body, headers=MERGE),
        await server.post(f"{PATH}?on_conflict=Order", body),  # checked without Prefer too
        await server.post(PATH, body, headers={"Prefer": "resolution=merge"}),
        await server.post(PATH, body, headers={
            "Prefer": "resolution=merge-duplicates, resolution=ignore-duplicates"}),
    ]
    for response in refused:
        assert_error(response, 400)
    assert refused[0].body["error"]["details"] == {"parameter": "on_conflict"}
    assert "Tenant,user" in refused[1].body["error"]["message"]
    assert await table(server) == before
    assert await feed.drain() == []
    feed.close()


@pytest.mark.gen_test(timeout=60)
async def test_prefer_return_minimal_on_post_put_and_patch(server: Any) -> None:
    minimal = {"Prefer": "handling=lenient, return=minimal; x=1, tx=commit"}  # others ignored
    response = await server.post(PATH, account(6, "gus"), headers=minimal)
    assert (response.status, response.raw) == (204, b"")
    assert response.headers["Location"] == f"{PATH}/6,gus"
    assert response.headers["Preference-Applied"] == "return=minimal"
    response = await server.post(PATH, account(6, "gus", note="up"),
                                 headers={"Prefer": "return=minimal, resolution=merge-duplicates"})
    assert (response.status, response.raw, response.headers["Location"]) == (204, b"",
                                                                             f"{PATH}/6,gus")
    for method in ("PUT", "PATCH"):
        response = await server.request(method, f"{PATH}/6,gus", {"Order": 7}, headers=minimal)
        assert (response.status, response.raw) == (204, b"")
    response = await server.patch(f"{PATH}/6,gus", {"Order": 8},
                                  headers={"Prefer": "return=representation"})
    assert (response.status, response.body["Order"]) == (200, 8)
    assert (await table(server))[(6, "gus")] == account(6, "gus", email=None, Order=8, note="up")
    # A bad resolution is refused before anything is written, whatever the method.
    assert_error(await server.put(f"{PATH}/6,gus", {"Order": 9},
                                  headers={"Prefer": "resolution=nope"}), 400)
    assert (await table(server))[(6, "gus")]["Order"] == 8


@pytest.mark.gen_test(timeout=60)
async def test_racing_upserts_of_one_new_key_create_it_once(server: Any) -> None:
    feed = await FeedClient.open(server, f"/ws/{ACCOUNTS}")
    responses = await asyncio.gather(*[
        server.post(PATH, account(7, "race", note=f"n{i}"), headers=MERGE) for i in range(6)])
    assert [r.status for r in responses] == [201] * 6, [r.body for r in responses]
    changes = sorted(await feed.drain(), key=lambda c: c["seq"])
    assert [c["event"] for c in changes] == ["created"] + ["updated"] * 5
    # Each update saw the row the change before it left: nothing was lost in between.
    for earlier, later in zip(changes, changes[1:], strict=False):
        assert later["old"] == earlier["record"]
    assert (await table(server))[(7, "race")] == changes[-1]["record"]
    feed.close()


class Roles:
    """X-Role: "writer" may create and update (not a row whose note is "locked"),
    "creator" may only create."""

    @hookimpl
    def pylight_authenticate(self, request: Any, token: Any, app: Any) -> Any:
        role = request.headers.get("X-Role")
        return None if role is None else Identity(role, "test")

    @hookimpl
    def pylight_authorize(self, identity: Any, action: str, table: str, record: Any,
                          app: Any) -> Any:
        if action == "read":
            return True
        if identity is None or (identity.subject == "creator" and action != "create"):
            return False
        return not (action == "update" and record and record.get("note") == "locked")


@pytest.fixture
def guarded_server(database: Any, make_server: Any) -> Any:
    create(database)
    database.execute(_sql(database, """UPDATE "Accounts" SET note = 'locked' WHERE "user" = 'bob'"""))
    return make_server(seed=False, plugins=[Roles()])


@pytest.mark.gen_test(timeout=60)
async def test_an_upsert_needs_the_update_permission_for_what_it_updates(
        guarded_server: Any) -> None:
    server = guarded_server
    before = await table(server)
    creator, writer = {"X-Role": "creator"}, {"X-Role": "writer"}
    assert_error(await server.post(PATH, account(1, "ada", note="c"), headers={**MERGE, **creator}),
                 403)
    response = await server.post(PATH, account(8, "new"), headers={**IGNORE, **creator})
    assert response.status == 201, response.body
    # The stored row is asked about: a locked one refuses the whole array.
    assert_error(await server.post(PATH, [account(1, "ada", note="w"), account(1, "bob", note="w")],
                                   headers={**MERGE, **writer}), 403)
    after = await table(server)
    assert {k: v for k, v in after.items() if k != (8, "new")} == before
    response = await server.post(PATH, account(1, "ada", note="w"), headers={**MERGE, **writer})
    assert (response.status, response.body["note"]) == (201, "w")
