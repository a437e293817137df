"""Optimistic concurrency (API.md section 7.2): ETag, If-Match, If-None-Match, on every backend.

The table has a composite key with a mixed-case column and a reserved word
(``"Owner"``, ``"order"``), a name with a space, the types whose text is easiest
to get unstable (decimal, timestamp, binary, JSON) and a hidden column. What a
client sees:

- ``GET`` of a row sends a strong ``ETag``; the same stored row gives the same tag
  from any server, and a tag changes exactly when the row as served changes;
- ``If-None-Match`` answers 304 (no body) while the row is unchanged;
- ``PUT``/``PATCH``/``DELETE`` with ``If-Match`` answer 412 with a JSON error and
  write nothing (no change event) once the row has changed; checked under the row
  lock, so of several writers racing with one tag exactly one wins.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate

from tests.conftest import mysql_connect, pg_connect

TABLE = "Tagged Rows"
DDL = {
    "sqlite": f'''CREATE TABLE "{TABLE}" ("Owner" VARCHAR(20) NOT NULL, "order" INTEGER NOT NULL,
        amount DECIMAL(10,2), at TIMESTAMP, data BLOB, doc JSON, note TEXT, secret TEXT,
        PRIMARY KEY ("Owner", "order"))''',
    "postgresql": f'''CREATE TABLE "{TABLE}" ("Owner" varchar(20) NOT NULL, "order" integer NOT NULL,
        amount numeric(10,2), at timestamp, data bytea, doc jsonb, note text, secret text,
        PRIMARY KEY ("Owner", "order"))''',
    "mysql": f'''CREATE TABLE `{TABLE}` (`Owner` VARCHAR(20) NOT NULL, `order` INT NOT NULL,
        amount DECIMAL(10,2), at DATETIME(6), data BLOB, doc JSON, note TEXT, secret TEXT,
        PRIMARY KEY (`Owner`, `order`))''',
}
OWNER = "Ünï Co & Ltd."  # a space, an ampersand, non-ASCII: percent-encoded in the URL
ROW = {"amount": "12.50", "at": "2024-02-29T12:00:00.5", "data": "AP8Q",
       "doc": {"b": [1, 2.5, None], "a": {"é": "ü"}}, "note": "line1\nline2, \"quoted\""}
TAG = re.compile(r'^"[A-Za-z0-9_-]{20}"$')


def url(owner: str, order: int) -> str:
    return f"/api/{quote(TABLE)}/{quote(owner, safe='')},{order}"


def sql_table(backend: str) -> str:
    return f"`{TABLE}`" if backend == "mysql" else f'"{TABLE}"'


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status == status, (response.status, response.raw[:300])
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.body["error"]["code"] == code
    assert "ETag" not in response.headers


@pytest.fixture
def tagged(database: Any, make_server: Any) -> Any:
    database.execute(DDL[database.backend])
    return make_server({f"table:{TABLE}": {"hidden": "secret"}}, seed=False)


@pytest.fixture
def twin(tagged: Any, make_server: Any) -> Any:
    """A second server over the same table: another app, its own caches and pool."""
    return make_server({f"table:{TABLE}": {"hidden": "secret"}}, seed=False)


async def create(server: Any, owner: str, order: int, **values: Any) -> dict[str, Any]:
    response = await server.post(f"/api/{quote(TABLE)}",
                                 {"Owner": owner, "order": order, **ROW, **values})
    assert response.status == 201, response.body
    return response.body


# -- reading -----------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_a_row_has_one_strong_tag_whoever_serves_it(tagged: Any, twin: Any) -> None:
    await create(tagged, "a b", 1)
    await create(tagged, "a b", 2)
    first = await tagged.get(url("a b", 1))
    assert first.status == 200, first.body
    tag = first.headers["ETag"]
    assert TAG.match(tag), tag  # strong: no W/ prefix
    assert (await tagged.get(url("a b", 1))).headers["ETag"] == tag
    # Another server over the same database derives the same tag from the same values.
    again = await twin.get(url("a b", 1))
    assert again.headers["ETag"] == tag and again.body == first.body
    # Rows differing in their key (and nothing else) have different tags.
    assert (await tagged.get(url("a b", 2))).headers["ETag"] != tag


@pytest.mark.gen_test(timeout=30)
async def test_a_hidden_column_is_not_part_of_the_tag(database: Any, tagged: Any) -> None:
    """Hidden columns are never read (API.md section 1): a change to one alone leaves the
    tag (and If-Match) as it was, and the tag cannot reveal the hidden value."""
    await create(tagged, OWNER, 1)
    tag = (await tagged.get(url(OWNER, 1))).headers["ETag"]
    database.execute(f"UPDATE {sql_table(database.backend)} SET secret = 'changed'")
    assert (await tagged.get(url(OWNER, 1))).headers["ETag"] == tag
    response = await tagged.patch(url(OWNER, 1), {"note": "x"}, headers={"If-Match": tag})
    assert response.status == 200, response.body


@pytest.mark.gen_test(timeout=30)
async def test_if_none_match_answers_304_while_the_row_is_unchanged(tagged: Any) -> None:
    await create(tagged, OWNER, 1)
    path = url(OWNER, 1)
    first = await tagged.get(path)
    tag = first.headers["ETag"]
    for header in (tag, f"W/{tag}", f'"nope", {tag}', "*"):
        response = await tagged.get(path, headers={"If-None-Match": header})
        assert response.status == 304, (header, response.status)
        assert response.raw == b"" and response.headers["ETag"] == tag
    for header in ('"nope"', "not a tag", 'W/"nope"'):
        response = await tagged.get(path, headers={"If-None-Match": header})
        assert response.status == 200 and response.body == first.body, header

    changed = await tagged.patch(path, {"amount": 13})
    assert changed.status == 200
    new_tag = changed.headers["ETag"]
    assert new_tag != tag and TAG.match(new_tag)
    response = await tagged.get(path, headers={"If-None-Match": tag})
    assert response.status == 200 and response.headers["ETag"] == new_tag
    assert response.body["amount"] == "13.00"
    assert (await tagged.get(path, headers={"If-None-Match": new_tag})).status == 304
    # If-Match on a read: 412 once the row has changed.
    assert_error(await tagged.get(path, headers={"If-Match": tag}), 412, "precondition_failed")
    assert (await tagged.get(path, headers={"If-Match": new_tag})).status == 200
    # No row: 404 whatever the conditions say.
    response = await tagged.get(url(OWNER, 9), headers={"If-None-Match": "*"})
    assert_error(response, 404, "not_found")


@pytest.mark.gen_test(timeout=30)
async def test_a_read_with_select_is_not_the_row_and_has_no_tag(tagged: Any) -> None:
    """Some columns (or related rows, which change on their own) are not the row: no
    ETag and no 304 that could hide a change; If-Match still speaks of the row."""
    await create(tagged, OWNER, 1)
    path = url(OWNER, 1)
    tag = (await tagged.get(path)).headers["ETag"]
    response = await tagged.get(path + "?select=note,order", headers={"If-None-Match": tag})
    assert response.status == 200, response.body
    assert "ETag" not in response.headers and response.body["note"] == ROW["note"]
    response = await tagged.get(path + "?select=note", headers={"If-Match": '"stale"'})
    assert_error(response, 412, "precondition_failed")
    response = await tagged.get(path + "?select=note", headers={"If-Match": tag})
    assert response.status == 200


# -- conditional writes -----------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_a_stale_if_match_writes_nothing(tagged: Any) -> None:
    await create(tagged, OWNER, 1)
    path = url(OWNER, 1)
    tag = (await tagged.get(path)).headers["ETag"]
    updated = await tagged.put(path, {"note": "mine"}, headers={"If-Match": tag})
    assert updated.status == 200, updated.body
    assert updated.headers["ETag"] == (await tagged.get(path)).headers["ETag"] != tag
    row = (await tagged.get(path)).body
    changes = len(tagged.changes)

    # Every way of holding the old tag (or none that matches) is a 412, for each method.
    stale = [tag, f'"x", {tag}', f"W/{updated.headers['ETag']}", "no quotes", '""']
    for header in stale:
        for method in ("PUT", "PATCH"):
            response = await tagged.request(method, path, {"note": "theirs"},
                                            headers={"If-Match": header})
            assert_error(response, 412, "precondition_failed")
        assert_error(await tagged.delete(path, headers={"If-Match": header}), 412,
                     "precondition_failed")
    # If-None-Match on a write: 412 while it matches the row.
    response = await tagged.patch(path, {"note": "theirs"}, headers={"If-None-Match": "*"})
    assert_error(response, 412, "precondition_failed")
    await asyncio.sleep(0.05)
    assert (await tagged.get(path)).body == row
    assert len(tagged.changes) == changes  # nothing was published

    # A list holding the current tag, or *, matches; a missing row is a 404 first.
    current = updated.headers["ETag"]
    response = await tagged.patch(path, {"note": "again"}, headers={"If-Match": f'"x", {current}'})
    assert response.status == 200 and response.body["note"] == "again"
    response = await tagged.patch(path, {"amount": None}, headers={"If-Match": "*"})
    assert response.status == 200 and response.body["amount"] is None
    assert_error(await tagged.delete(url(OWNER, 9), headers={"If-Match": "*"}), 404, "not_found")
    # An empty update with a good tag: the row as it is, its tag unchanged.
    current = response.headers["ETag"]
    same = await tagged.patch(path, {}, headers={"If-Match": current})
    assert same.status == 200 and same.headers["ETag"] == current

    deleted = await tagged.delete(path, headers={"If-Match": current})
    assert deleted.status == 204
    assert_error(await tagged.get(path), 404, "not_found")
    assert [c.event for c in tagged.changes[changes:]] == ["updated", "updated", "deleted"]


def _writes(server: Any, path: str, tag: str, count: int, round: int = 0) -> Any:
    # Notes never written before: a write leaving the row as it was would leave its
    # tag too, and rightly let the next writer through.
    return asyncio.gather(*[server.patch(path, {"note": f"round {round} writer {i}"},
                                         headers={"If-Match": tag}) for i in range(count)])


async def _one_winner(server: Any, path: str, answers: list[Any], changes: int) -> None:
    statuses = sorted(answer.status for answer in answers)
    assert statuses == [200] + [412] * (len(answers) - 1), [
        (a.status, a.body) for a in answers]
    [winner] = [answer for answer in answers if answer.status == 200]
    row = await server.get(path)
    assert row.body == winner.body and row.headers["ETag"] == winner.headers["ETag"]
    await asyncio.sleep(0.05)
    assert [c.record["note"] for c in server.changes[changes:]] == [winner.body["note"]]


@pytest.mark.gen_test(timeout=60)
async def test_writers_racing_with_one_tag_one_wins(tagged: Any) -> None:
    await create(tagged, OWNER, 1)
    path = url(OWNER, 1)
    for round in range(3):
        tag = (await tagged.get(path)).headers["ETag"]
        changes = len(tagged.changes)
        await _one_winner(tagged, path, await _writes(tagged, path, tag, 4, round), changes)


@pytest.mark.gen_test(timeout=60)
async def test_writers_held_at_the_row_lock_check_the_row_as_committed(database: Any,
                                                                       tagged: Any) -> None:
    """All the writers are inside the database at once, queued on the row lock another
    session holds: each must compare its tag with the row as the one before it left
    it. (A check on a row read without the lock passes for every one of them.)"""
    if database.backend == "sqlite":
        pytest.skip("SQLite has one writer at a time: Pylight's writer queue orders them")
    await create(tagged, OWNER, 1)
    path = url(OWNER, 1)
    tag = (await tagged.get(path)).headers["ETag"]
    changes = len(tagged.changes)
    conn = pg_connect(database.name) if database.backend == "postgresql" else mysql_connect(
        database.name)
    try:
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute(f"SELECT * FROM {sql_table(database.backend)} FOR UPDATE")
            writes = asyncio.ensure_future(_writes(tagged, path, tag, 3))
            await asyncio.sleep(1.0)  # every writer is now waiting for the lock
            assert not writes.done()
            cur.execute("COMMIT")
        answers = await writes
    finally:
        conn.close()
    await _one_winner(tagged, path, answers, changes)


# -- the tag follows the row as served ---------------------------------------------------------

AMOUNTS = ["0", "1.5", "1.50", 1.5, "-99999999.99", None]
STAMPS = ["2024-02-29T12:00:00", "2024-02-29T12:00:00.000001", "1999-12-31T23:59:59.5", None]
BLOBS = ["", "AAE=", "AP8Q", None]
DOCS = [{"a": 1, "b": [1, 2.5]}, {"b": [1, 2.5], "a": 1}, [], "x", 0, None]
NOTES = ["", "x", "line1\nline2", "Ünïcode ✓", None]
CHANGE = st.fixed_dictionaries({}, optional={
    "amount": st.sampled_from(AMOUNTS), "at": st.sampled_from(STAMPS),
    "data": st.sampled_from(BLOBS), "doc": st.sampled_from(DOCS), "note": st.sampled_from(NOTES)})


def test_the_tag_changes_exactly_when_the_row_as_served_does(database: Any, tagged: Any,
                                                            io_loop: Any) -> None:
    """Whatever a PATCH writes (the same value in another spelling, as "1.5" and 1.50,
    included), the answer's tag is the tag a GET then sends, and it differs from the
    one before exactly when the row's JSON does; the old tag is then refused."""
    io_loop.run_sync(lambda: create(tagged, OWNER, 1))
    path = url(OWNER, 1)

    @settings(max_examples=12, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(changes=st.lists(CHANGE, min_size=1, max_size=4))
    def check(changes: list[dict[str, Any]]) -> None:
        async def run() -> None:
            before = await tagged.get(path)
            for change in changes:
                tag = before.headers["ETag"]
                response = await tagged.patch(path, change, headers={"If-Match": tag})
                assert response.status == 200, response.body
                after = await tagged.get(path)
                assert after.headers["ETag"] == response.headers["ETag"]
                assert (after.headers["ETag"] == tag) == (after.raw == before.raw), (
                    before.raw, after.raw)
                if after.raw != before.raw:
                    stale = await tagged.patch(path, change, headers={"If-Match": tag})
                    assert stale.status == 412
                before = after
        io_loop.run_sync(run, timeout=60)

    check()


@pytest.mark.gen_test(timeout=30)
async def test_the_openapi_document_describes_the_conditions(tagged: Any) -> None:
    document = (await tagged.get("/api/openapi.json")).body
    validate(document)
    item = document["paths"][f"/api/{TABLE}/{{pk}}"]
    for method in ("get", "put", "patch", "delete"):
        headers = {p["name"] for p in item[method]["parameters"] if p["in"] == "header"}
        assert {"If-Match", "If-None-Match"} <= headers, method
        assert item[method]["responses"]["412"]["content"]["application/json"]
    assert "ETag" in item["get"]["responses"]["200"]["headers"]
    assert "ETag" in item["put"]["responses"]["200"]["headers"]
    assert "ETag" in item["get"]["responses"]["304"]["headers"]
