"""Column values in and out of JSON (API.md section 2, "Values"), on every backend."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest

TYPED_SQLITE = """
CREATE TABLE typed (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    amount NUMERIC(10,2),
    exact NUMERIC(12,4),
    ratio REAL,
    flag BOOLEAN,
    day DATE,
    at_time TIME,
    stamp TIMESTAMP,
    data BLOB,
    note TEXT,
    big BIGINT,
    label VARCHAR(20) NOT NULL DEFAULT 'none'
);
CREATE TABLE measures (id INTEGER PRIMARY KEY, weight DECIMAL(8,3) NOT NULL);
INSERT INTO measures (id, weight) VALUES (1, 5), (2, 2.5), (3, 0.125)
"""
TYPED_POSTGRESQL = """
CREATE TABLE typed (
    id SERIAL PRIMARY KEY,
    amount NUMERIC(10,2),
    exact NUMERIC(12,4),
    ratio DOUBLE PRECISION,
    flag BOOLEAN,
    day DATE,
    at_time TIME,
    stamp TIMESTAMP,
    data BYTEA,
    note TEXT,
    big BIGINT,
    label VARCHAR(20) NOT NULL DEFAULT 'none',
    doc JSONB,
    doc2 JSON,
    uid UUID,
    stamp_tz TIMESTAMPTZ
);
CREATE TABLE measures (id INTEGER PRIMARY KEY, weight DECIMAL(8,3) NOT NULL);
INSERT INTO measures (id, weight) VALUES (1, 5), (2, 2.5), (3, 0.125)
"""
TYPED_MYSQL = """
CREATE TABLE typed (
    id INTEGER AUTO_INCREMENT PRIMARY KEY,
    amount NUMERIC(10,2),
    exact NUMERIC(12,4),
    ratio DOUBLE,
    flag BOOLEAN,
    day DATE,
    at_time TIME,
    stamp DATETIME(6),
    data BLOB,
    note TEXT,
    big BIGINT,
    label VARCHAR(20) NOT NULL DEFAULT 'none',
    doc JSON
);
CREATE TABLE measures (id INTEGER PRIMARY KEY, weight DECIMAL(8,3) NOT NULL);
INSERT INTO measures (id, weight) VALUES (1, 5), (2, 2.5), (3, 0.125)
"""


@pytest.fixture
def typed(database, make_server):
    """A server on a database holding only the `typed` and `measures` tables."""
    database.ddl(TYPED_SQLITE, TYPED_POSTGRESQL, TYPED_MYSQL)
    server = make_server()
    server.backend = database.backend
    return server


def assert_422(response, column: str) -> None:
    assert response.status == 422, (response.status, response.raw[:300])
    error = response.body["error"]
    assert (error["status"], error["code"]) == (422, "unprocessable")
    assert column in error["message"], error


async def create(server, **row):
    response = await server.post("/api/typed", row)
    assert response.status == 201, response.body
    return response.body


async def ids(server, query: str, table: str = "typed") -> list[int]:
    response = await server.get(f"/api/{table}?{query}")
    assert response.status == 200, (query, response.body)
    return [item["id"] for item in response.body["items"]]


@pytest.mark.gen_test
async def test_schema_types(typed):
    tables = {t["name"]: t for t in (await typed.get("/api/")).body["tables"]}
    assert set(tables) == {"typed", "measures"}
    kinds = {c["name"]: c["type"] for c in tables["typed"]["columns"]}
    expected = {"id": "integer", "amount": "decimal", "exact": "decimal", "ratio": "number",
                "flag": "boolean", "day": "date", "at_time": "time", "stamp": "datetime",
                "data": "binary", "note": "string", "big": "integer", "label": "string"}
    if typed.backend in ("postgresql", "mysql"):
        expected["doc"] = "json"
    if typed.backend == "postgresql":
        expected.update(doc2="json", uid="uuid", stamp_tz="datetime")
    assert kinds == expected


# -- decimals ----------------------------------------------------------------------

@pytest.mark.gen_test
async def test_decimals_are_exact_strings_with_the_column_scale(typed):
    # rows written outside Pylight, stored as 5 / 2.5 / 0.125 (REAL or INTEGER on SQLite)
    items = (await typed.get("/api/measures")).body["items"]
    assert [i["weight"] for i in items] == ["5.000", "2.500", "0.125"]
    assert (await typed.get("/api/measures/1")).body == {"id": 1, "weight": "5.000"}

    assert (await create(typed, amount="5"))["amount"] == "5.00"
    assert (await create(typed, amount=5))["amount"] == "5.00"
    assert (await create(typed, amount=5.5))["amount"] == "5.50"
    assert (await create(typed, amount="12345678.90"))["amount"] == "12345678.90"
    assert (await create(typed, amount="-0.01"))["amount"] == "-0.01"
    row = await create(typed, exact="0.1", amount="0.10")
    assert (row["exact"], row["amount"]) == ("0.1000", "0.10")
    # 0.1 + 0.2 done in binary floating point would not be 0.3
    row = await create(typed, exact=0.3)
    assert row["exact"] == "0.3000"
    assert (await typed.get(f"/api/typed/{row['id']}")).body["exact"] == "0.3000"


@pytest.mark.gen_test
async def test_decimal_filters(typed):
    assert await ids(typed, "weight=5", "measures") == [1]
    assert await ids(typed, "weight=eq.5.000", "measures") == [1]
    assert await ids(typed, "weight=gt.0.125", "measures") == [1, 2]
    assert await ids(typed, "weight=in.(2.5,0.125)", "measures") == [2, 3]
    assert await ids(typed, "order=weight", "measures") == [3, 2, 1]


@pytest.mark.gen_test
async def test_bad_decimals(typed):
    for bad in ("abc", "", True, [1], {"a": 1}, "1e5000", "NaN", "Infinity"):
        assert_422(await typed.post("/api/typed", {"amount": bad}), "amount")
    # more digits before the point than NUMERIC(10,2) holds
    assert_422(await typed.post("/api/typed", {"amount": "123456789012"}), "amount")
    assert (await typed.get("/api/typed")).body["items"] == []
    assert typed.changes == []


# -- other scalar types --------------------------------------------------------

@pytest.mark.gen_test
async def test_round_trip_of_every_type(typed):
    raw = b"\x00\x01\xfe\xffhello"
    row = {
        "ratio": 0.5, "flag": True, "day": "2024-02-29", "at_time": "13:45:30",
        "stamp": "2024-01-02T03:04:05.123456", "data": base64.b64encode(raw).decode(),
        "note": "ünïcode ✓ 'quotes' \"double\" \\ back", "big": 2**62 + 1,
    }
    created = await create(typed, **row)
    for name, value in row.items():
        assert created[name] == value, name
    assert created["label"] == "none"  # default filled
    assert created["amount"] is None
    fetched = (await typed.get(f"/api/typed/{created['id']}")).body
    assert fetched == created
    listed = (await typed.get("/api/typed")).body["items"]
    assert listed == [created]
    [change] = typed.changes
    assert change.record == created
    assert base64.b64decode(fetched["data"]) == raw


@pytest.mark.gen_test
async def test_times_without_fractions_and_false_and_null(typed):
    created = await create(typed, stamp="2024-12-31T23:59:59", flag=False, day="1999-01-01",
                           at_time="00:00:00", ratio=-1.25, big=0)
    assert created["stamp"] == "2024-12-31T23:59:59"
    assert created["flag"] is False
    assert (created["day"], created["at_time"], created["ratio"], created["big"]) == (
        "1999-01-01", "00:00:00", -1.25, 0)
    updated = await typed.patch(f"/api/typed/{created['id']}", {"flag": None, "stamp": None})
    assert updated.status == 200
    assert (updated.body["flag"], updated.body["stamp"]) == (None, None)


@pytest.mark.gen_test
async def test_offsets_in_naive_time_columns_become_utc(typed):
    # the same instant, whichever way it is written, on every backend
    stamps = ["2024-01-02T03:04:05Z", "2024-01-02T05:04:05+02:00", "2024-01-01T22:04:05-05:00",
              "2024-01-02T03:04:05"]
    created = [await create(typed, stamp=stamp) for stamp in stamps]
    row = await create(typed, at_time="13:45:30+01:00")
    if typed.backend == "sqlite":
        # SQLite keeps date and time text as written (API.md section 5: a value reads
        # back as stored); filters still compare the instants.
        assert [row["stamp"] for row in created] == stamps
        assert row["at_time"] == "13:45:30+01:00"
    else:
        assert [row["stamp"] for row in created] == ["2024-01-02T03:04:05"] * 4
        assert row["at_time"] == "12:45:30"
        assert_422(await typed.post("/api/typed", {"stamp": "0001-01-01T00:00:00+01:00"}),
                   "stamp")
    expected = [row["id"] for row in created]
    assert await ids(typed, "stamp=eq.2024-01-02T04:04:05%2B01:00") == expected
    assert await ids(typed, "stamp=gt.2024-01-02T03:00:00Z") == expected
    assert await ids(typed, "stamp=lt.2024-01-02T03:04:05Z") == []
    if typed.backend == "postgresql":
        zoned = await create(typed, stamp_tz="2024-01-02T05:04:05+02:00")
        assert zoned["stamp_tz"] == "2024-01-02T03:04:05+00:00"
        assert await ids(typed, "stamp_tz=eq.2024-01-02T03:04:05Z") == [zoned["id"]]


@pytest.mark.gen_test
async def test_filters_on_typed_columns(typed):
    a = await create(typed, day="2024-01-01", stamp="2024-01-01T10:00:00", flag=True, ratio=1.5,
                     at_time="08:00:00")
    b = await create(typed, day="2024-06-01", stamp="2024-06-01T10:00:00", flag=False, ratio=2.5,
                     at_time="18:30:00")
    assert await ids(typed, "day=gte.2024-03-01") == [b["id"]]
    assert await ids(typed, "day=2024-01-01") == [a["id"]]
    assert await ids(typed, "stamp=lt.2024-02-01T00:00:00") == [a["id"]]
    assert await ids(typed, "at_time=gt.12:00:00") == [b["id"]]
    assert await ids(typed, "flag=is.true") == [a["id"]]
    assert await ids(typed, "flag=false") == [b["id"]]
    assert await ids(typed, "ratio=gt.2") == [b["id"]]
    assert await ids(typed, "order=day.desc") == [b["id"], a["id"]]
    assert await ids(typed, "note=is.null") == [a["id"], b["id"]]


@pytest.mark.gen_test
async def test_wrong_types_are_422(typed):
    cases = [
        ("ratio", "fast"), ("ratio", True), ("flag", "true"), ("flag", "yes"),
        ("day", "2024-13-01"), ("day", "tomorrow"), ("day", 20240101), ("at_time", "24:61:00"),
        ("at_time", "noon"),
        ("stamp", "not a time"), ("stamp", 1700000000), ("data", "not base64!"), ("data", 5),
        ("note", 5), ("note", ["a"]), ("note", {"a": 1}), ("big", 2**70), ("big", "12"),
        ("big", 1.5), ("big", True), ("label", None),
    ]
    if typed.backend != "mysql":
        # A MySQL TIME also holds durations (-838:59:59 to 838:59:59), and a BOOLEAN is a
        # TINYINT(1) that holds small numbers, so there these are valid.
        cases += [("at_time", "25:00:00"), ("flag", 1)]
    else:
        cases.append(("flag", 300))
    for column, value in cases:
        assert_422(await typed.post("/api/typed", {column: value}), column)
    assert (await typed.get("/api/typed")).body["items"] == []
    assert typed.changes == []


# -- JSON and UUID columns (PostgreSQL json/jsonb/uuid, MySQL JSON) ----------------------

@pytest.mark.gen_test
async def test_json_columns(typed):
    if typed.backend == "sqlite":
        pytest.skip("SQLite has no JSON column type")
    document = {"a": [1, 2.5, {"b": None, "c": "ü"}], "ok": True}
    created = await create(typed, doc=document)
    assert created["doc"] == document
    fetched = (await typed.get(f"/api/typed/{created['id']}")).body
    assert fetched["doc"] == document
    for value in ([1, "two", None], "a string", 42, True):
        assert (await create(typed, doc=value))["doc"] == value
    if typed.backend == "postgresql":
        only2 = await create(typed, doc2={"x": [1]})
        assert only2["doc2"] == {"x": [1]}
        assert await ids(typed, "doc=is.null") == [only2["id"]]
        assert (await typed.patch(f"/api/typed/{only2['id']}", {"doc2": None})).body["doc2"] is None
        assert await ids(typed, "doc2=is.null&doc=not.is.null") == [
            i for i in await ids(typed, "") if i != only2["id"]]
    else:
        assert await ids(typed, "doc=is.null") == []
    updated = await typed.patch(f"/api/typed/{created['id']}", {"doc": {"replaced": 1}})
    assert updated.body["doc"] == {"replaced": 1}
    assert typed.changes[-1].record["doc"] == {"replaced": 1}
    # Documents compare by value (jsonb semantics on PostgreSQL, minified text on MariaDB).
    found = await typed.get("/api/typed?doc=" + quote('eq.{"replaced": 1}'))
    assert [item["id"] for item in found.body["items"]] == [created["id"]], found.body
    assert (await typed.get("/api/typed?order=doc")).status == 200
    if typed.backend == "postgresql":
        # json (unlike jsonb) has no ordering in PostgreSQL
        assert (await typed.get("/api/typed?doc2=gt.1")).status == 400
        assert (await typed.get("/api/typed?order=doc2")).status == 400
        again = await create(typed, doc2={"y": [2, {"z": None}]})
        found = await typed.get("/api/typed?doc2=" + quote('eq.{"y": [2, {"z": null}]}'))
        assert [item["id"] for item in found.body["items"]] == [again["id"]], found.body


@pytest.mark.gen_test
async def test_uuid_columns(typed):
    if typed.backend != "postgresql":
        pytest.skip("only PostgreSQL has a uuid column type")
    value = "12345678-1234-5678-1234-567812345678"
    created = await create(typed, uid=value)
    assert created["uid"] == value
    assert (await typed.get(f"/api/typed/{created['id']}")).body["uid"] == value
    # any case in, canonical lower case out
    other = await create(typed, uid="ABCDEF00-1234-5678-1234-567812345678")
    assert other["uid"] == "abcdef00-1234-5678-1234-567812345678"
    assert await ids(typed, f"uid={value}") == [created["id"]]
    assert await ids(typed, "uid=in.(" + quote(value) + ")") == [created["id"]]
    assert_422(await typed.post("/api/typed", {"uid": "nope"}), "uid")
    assert_422(await typed.post("/api/typed", {"uid": 5}), "uid")
    assert (await typed.get("/api/typed?uid=nope")).status == 400


@pytest.mark.gen_test
async def test_feed_filters_compare_moments_as_the_database_does(typed):
    """A WebSocket filter, evaluated in Python, finds the rows its SQL finds: on SQLite,
    date-time text in any ISO 8601 spelling compares as the instant it names."""
    from pylight import query as ql

    for stamp in ("2024-01-02T03:04:05Z", "2024-01-02T05:04:05+02:00", "2024-01-02 03:04:05",
                  "2024-01-02T03:04:06", "2024-01-02"):
        await create(typed, stamp=stamp)
    table = typed.app.tables["typed"]
    rows = (await typed.get("/api/typed?limit=100")).body["items"]
    for query in ("stamp=eq.2024-01-02T04:04:05%2B01:00", "stamp=gt.2024-01-02T03:04:05",
                  "stamp=lte.2024-01-02T00:00:00", "stamp=eq.2024-01-02"):
        found = await ids(typed, query)
        name, _, text = query.partition("=")
        where = ql.parse_filters(table, {name: [text.replace("%2B", "+")]})
        matcher = ql.Matcher(table, where, typed.app.backend)
        assert [row["id"] for row in rows if matcher(row)] == found, query
