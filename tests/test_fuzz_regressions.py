"""What schemathesis (tests/test_schemathesis.py) found, kept as plain tests of what a client sees."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from openapi_schema_validator import OAS30ReadValidator, OAS30WriteValidator
from openapi_spec_validator import validate

from tests.awkward_schemas import load_awkward


async def _doc(server) -> dict:
    response = await server.get("/api/openapi.json")
    assert response.status == 200
    validate(response.body)
    return response.body


@pytest.mark.gen_test
async def test_undeclared_method_is_405_with_allow(server):
    # TRACE got a 405 without the Allow header RFC 9110 requires.
    collection = await server.request("TRACE", "/api/products")
    assert collection.status == 405
    assert collection.body["error"]["code"] == "method_not_allowed"
    allowed = {m.strip() for m in collection.headers["Allow"].split(",")}
    assert {"GET", "POST"} <= allowed and "PUT" not in allowed
    item = await server.request("TRACE", "/api/products/1")
    assert item.status == 405
    allowed = {m.strip() for m in item.headers["Allow"].split(",")}
    assert {"GET", "PUT", "PATCH", "DELETE"} <= allowed and "POST" not in allowed


@pytest.mark.gen_test
async def test_create_with_key_zero_answers_the_stored_row(server):
    # MariaDB generates the key for 0 in an AUTO_INCREMENT column: the answer
    # echoed the request (id 0, missing columns) and Location pointed at a 404.
    created = await server.post("/api/users", {"id": 0, "name": "Zed", "email": "zed@x.com"})
    assert created.status == 201
    record = created.body
    assert set(record) == {"id", "name", "email", "password_hash", "active", "created_at"}
    fetched = await server.get(created.headers["Location"])
    assert fetched.status == 200 and fetched.body == record
    many = await server.post("/api/users", [{"id": 0, "name": "Ann", "email": "ann@x.com"}]
                             if record["id"] != 0 else
                             [{"name": "Ann", "email": "ann@x.com"}])
    assert many.status == 201
    item = many.body["items"][0]
    assert set(item) == set(record)
    assert (await server.get(f"/api/users/{item['id']}")).body == item


@pytest.mark.gen_test
async def test_timestamps_are_documented_as_they_are_returned(server):
    # The document said format: date-time (RFC 3339, offset required) but a
    # column without a time zone comes back as "2000-01-01T00:00:00".
    doc = await _doc(server)
    created = await server.post("/api/products", {"name": "T", "price": "1.00", "sku": "T-1",
                                                  "created_at": "2000-01-01T00:00:00Z"})
    assert created.status == 201
    returned = doc["components"]["schemas"]["products"]["properties"]["created_at"]
    if server.app.backend.name == "SQLite":
        # SQLite keeps date-time text as written, and any other value a column holds.
        assert created.body["created_at"] == "2000-01-01T00:00:00Z"
        returned = returned["anyOf"][0]
    else:
        assert created.body["created_at"] == "2000-01-01T00:00:00"
        # or the database's own text for a value Python cannot hold (infinity, a zero date)
        special = {"PostgreSQL": "infinity", "MySQL": "0000-00-00 00:00:00"}
        assert re.search(returned["anyOf"][1]["pattern"], special[server.app.backend.name])
        returned = returned["anyOf"][0]
    assert "format" not in returned
    assert re.search(returned["pattern"], created.body["created_at"])
    # Decimals: string or number in, always a string out.
    price_out = doc["components"]["schemas"]["products"]["properties"]["price"]
    assert price_out.get("anyOf", [price_out])[0]["type"] == "string"
    price_in = doc["components"]["schemas"]["products_create"]["properties"]["price"]
    assert {s["type"] for s in price_in["anyOf"]} == {"string", "number"}
    assert created.body["price"] == "1.00"


@pytest.mark.gen_test
async def test_create_documents_its_required_columns(server):
    # An empty object was schema-valid but answered 422 (NOT NULL columns).
    doc = await _doc(server)
    create = doc["components"]["schemas"]["products_create"]
    assert sorted(create["required"]) == ["name", "price", "sku"]
    assert create["additionalProperties"] is False
    empty = await server.post("/api/products", {})
    assert empty.status == 422
    unknown = await server.post("/api/products", {"name": "x", "price": 1, "sku": "u",
                                                  "colour": "red"})
    assert unknown.status == 422 and unknown.body["error"]["details"]["column"] == "colour"
    responses = doc["paths"]["/api/products"]["post"]["responses"]
    assert {"201", "400", "409", "413", "415", "422", "503"} <= set(responses)


@pytest.mark.gen_test
async def test_text_length_is_documented_where_enforced(server, database):
    # VARCHAR(64) refused 65 characters with a 422 on PostgreSQL and MariaDB,
    # though the document allowed any length; SQLite stores them.
    doc = await _doc(server)
    sku = doc["components"]["schemas"]["products_create"]["properties"]["sku"]
    response = await server.post("/api/products", {"name": "L", "price": 1, "sku": "s" * 65})
    if database.backend == "sqlite":
        assert "maxLength" not in sku
        assert response.status == 201
    else:
        assert sku["maxLength"] == 64
        assert response.status == 422
        ok = await server.post("/api/products", {"name": "L", "price": 1, "sku": "s" * 64})
        assert ok.status == 201


@pytest.mark.gen_test
async def test_integer_key_and_filters_are_documented(server):
    # Any string was a schema-valid key or filter, then answered 400.
    doc = await _doc(server)
    pk = doc["paths"]["/api/products/{pk}"]["parameters"][0]["schema"]
    assert pk["type"] == "integer"
    assert (await server.get("/api/products/abc")).status == 400
    params = {p["name"]: p["schema"] for p in doc["paths"]["/api/products"]["get"]["parameters"]}
    # Boolean filters accept 0/1/t/f too (in_stock=0 was refused by the pattern).
    for text in ("0", "1", "t", "false", "TRUE", "eq.true", "not.eq.f", "is.null"):
        assert re.search(params["in_stock"]["pattern"], text), text
        assert (await server.get(f"/api/products?in_stock={text}")).status == 200, text
    assert not re.search(params["id"]["pattern"], "")
    assert (await server.get("/api/products?id=")).status == 400


@pytest.mark.gen_test
async def test_links_chain_create_get_update_delete(server):
    doc = await _doc(server)
    post = doc["paths"]["/api/products"]["post"]["responses"]["201"]
    assert post["links"]["get_products"] == {"operationId": "get_products",
                                             "parameters": {"pk": "$response.body#/id"}}
    delete = doc["paths"]["/api/products/{pk}"]["delete"]["responses"]
    assert delete["204"]["links"]["get_products"]["parameters"] == {"pk": "$request.path.pk"}
    created = await server.post("/api/products", {"name": "L", "price": "2.5", "sku": "L-1"})
    key = created.body["id"]
    assert (await server.patch(f"/api/products/{key}", {"price": 3})).body["price"] == "3.00"
    assert (await server.delete(f"/api/products/{key}")).status == 204
    gone = await server.get(f"/api/products/{key}")
    assert gone.status == 404 and gone.body["error"]["code"] == "not_found"


# -- the awkward schemas (tests/awkward_schemas.py): every column type of each database --------

@pytest.fixture
def awkward_server(database, make_server):
    load_awkward(database)
    return make_server()


def _request_property(doc: dict, table: str, column: str) -> dict:
    return doc["components"]["schemas"][f"{table}_update"]["properties"][column]


def _fits(doc: dict, schema: dict, value, read: bool = False) -> bool:
    """Whether ``value`` is valid under ``schema`` (an OpenAPI 3.0 schema of ``doc``)."""
    root = {"allOf": [schema], "components": doc["components"]}
    validator = OAS30ReadValidator(root) if read else OAS30WriteValidator(root)
    return validator.is_valid(value)


def _list_filter(doc: dict, table: str, column: str) -> dict:
    parameters = doc["paths"][f"/api/{table}"]["get"]["parameters"]
    return next(p["schema"] for p in parameters if p["name"] == column)


@pytest.mark.gen_test(timeout=60)
async def test_keys_are_documented_as_the_server_reads_them(awkward_server):
    # A composite key was any string ("00": 400, it needs two values) and a UUID key
    # any text ("00": 400, not a UUID); now each part has its type's form.
    doc = await _doc(awkward_server)
    composite = doc["paths"]["/api/Order Items/{pk}"]["parameters"][0]["schema"]
    assert re.search(composite["pattern"], "1,1") and re.search(composite["pattern"], "-7,0")
    assert not re.search(composite["pattern"], "00")
    assert (await awkward_server.get("/api/Order%20Items/1,1")).status == 200
    assert (await awkward_server.get("/api/Order%20Items/0,0")).status == 404
    assert (await awkward_server.get("/api/Order%20Items/00")).status == 400
    text = doc["paths"]["/api/countries/{pk}"]["parameters"][0]["schema"]
    assert re.search(text["pattern"], "DE")
    # "." and ".." would be resolved away by a client as path segments
    assert not re.search(text["pattern"], ".") and not re.search(text["pattern"], "..")
    if "/api/Profiles/{pk}" in doc["paths"]:
        uuid_key = doc["paths"]["/api/Profiles/{pk}"]["parameters"][0]["schema"]
        assert re.search(uuid_key["pattern"], "00000000-0000-0000-0000-000000000000")
        assert not re.search(uuid_key["pattern"], "00")
        assert (await awkward_server.get("/api/Profiles/00")).status == 400


@pytest.mark.gen_test(timeout=60)
async def test_generated_keys_are_optional_and_plain_keys_required(awkward_server, database):
    # Any single integer key was taken to be generated, and a non-key identity column
    # to be required; a create without a plain key was answered 422.
    doc = await _doc(awkward_server)
    schemas = doc["components"]["schemas"]
    if database.backend == "postgresql":
        assert "ident" not in schemas["measurements_create"].get("required", [])  # identity
        assert "seq" not in schemas["measurements_create"].get("required", [])  # serial
        assert (await awkward_server.post("/api/measurements", {})).status == 201
        assert "id" in schemas["shapes_create"]["required"]  # integer PRIMARY KEY
        assert (await awkward_server.post("/api/shapes", {"p": "(1,2)"})).status == 422
    elif database.backend == "mysql":
        assert "id" in schemas["places_create"]["required"]  # INT PRIMARY KEY
        assert (await awkward_server.post("/api/places", {"p": "POINT(1 2)"})).status == 422
    else:
        assert "id" in schemas["shipments_create"]["properties"]  # the rowid
        assert "id" not in schemas["shipments_create"].get("required", [])


@pytest.mark.gen_test(timeout=60)
async def test_auto_increment_keys_are_left_to_the_database(awkward_server, database):
    # A fuzzer wrote the largest key an AUTO_INCREMENT (MariaDB) or AUTOINCREMENT
    # (SQLite) column holds; every later create was then refused. Those keys are
    # not in the request schemas (they can still be given).
    if database.backend == "postgresql":
        pytest.skip("a sequence does not follow explicit keys")
    table, key = ("measurements", "id") if database.backend == "mysql" else ("Customer",
                                                                            "CustomerID")
    doc = await _doc(awkward_server)
    for schema in (f"{table}_create", f"{table}_update"):
        assert key not in doc["components"]["schemas"][schema]["properties"]
    largest = doc["components"]["schemas"][table]["properties"][key].get("maximum", 2**63 - 1)
    row = {"FirstName": "x"} if table == "Customer" else {}
    assert (await awkward_server.post(f"/api/{table}", {**row, key: largest})).status == 201
    assert (await awkward_server.post(f"/api/{table}", row)).status == 422


@pytest.mark.gen_test(timeout=60)
async def test_nullable_enums_list_null(awkward_server, database):
    # OpenAPI 3.0: `nullable` does not add null to an `enum`; a null member was
    # generated as invalid data and accepted.
    if database.backend == "sqlite":
        pytest.skip("SQLite has no enum")
    doc = await _doc(awkward_server)
    mood = _request_property(doc, "Customer", "mood")
    assert None in mood["enum"] and _fits(doc, mood, None)
    created = await awkward_server.post("/api/Customer", {"FirstName": "N", "mood": None})
    assert created.status == 201 and created.body["mood"] is None


# (table, key, column, accepted values, refused values); every accepted one fits the
# request schema and is stored, every refused one fits none and is a 422.
AWKWARD_VALUES = {
    "postgresql": [
        ("group", 1, "name", ["x" * 40], ["x" * 41]),  # a domain: CHECK (char_length <= 40)
        ("network", 1, "ip", ["255.255.255.255/32", "10.0.0.1"], ["abc"]),
        ("network", 1, "net", ["10.1.0.0/16", "10", "1.2.3.4/32"], ["10.1.1.1/16"]),
        ("network", 1, "mac", ["08:00:2b:01:02:03"], ["08:00"]),
        ("network", 1, "mac8", ["08:00:2b:01:02:03:04:05"], []),
        ("network", 1, "flags", ["10101010"], ["1010", "x"]),
        ("network", 1, "mask", ["", "1", "B101"], ["2"]),
        ("network", 1, "ports", ["empty", "(,12345)", "[-5,10000]", "[1,)"], ["[5,3)", ""]),
        ("network", 1, "ids", ["[0,99999)"], []),
        ("network", 1, "band", ["(1.5,20000.25]", "(,)"], ["(2,1)"]),
        ("schedule", 1, "during", ["[1999-12-28 23:59:59,2000-01-01)"], ["[2001-01-01,2000-01-01)"]),
        ("schedule", 1, "during_tz", ["(1000-01-01,2999-12-28 00:00]"], []),
        ("schedule", 1, "days", ["[1999-01-01,2000-01-01)", "empty"], ["x"]),
        ("schedule", 1, "length", ["P1Y-2DT3H4M5.5S", "P1W", "PT0S"], ["-P1D", "P99999999999Y"]),
        ("schedule", 1, "starts", ["9899-12-28T23:59:59-13:59"], ["9999-12-31T23:00:00-05:00"]),
        ("shapes", 1, "p", ["(1,-2.5)"], ["(1)"]),
        ("shapes", 1, "l", ["{1,-1,0}"], ["{0,0,1}"]),
        ("shapes", 1, "s", ["[(0,0),(1,1)]"], []),
        ("shapes", 1, "b", ["(1,1),(0,0)"], []),
        ("shapes", 1, "pa", ["[(0,0)]", "((0,0),(1,1))"], []),
        ("shapes", 1, "po", ["((0,0),(1,0),(1,1))"], []),
        ("shapes", 1, "c", ["<(0,0),1.5>"], ["<(0,0),-1>"]),
        ("measurements", 1, "cost", ["", "($1,234.56)", "-7"], ["seven"]),
        ("measurements", 1, "lsn", ["16/B374D848", "0/0"], ["", "16"]),
        ("measurements", 1, "ratio", [0, 1e-45, -3.4028235677973366e38],
         [1e-46, 3.402823567797337e38]),
        ("Profiles", "00000000-0000-0000-0000-000000000000", "page",
         ["<p>ü</p>", "plain ]] text"], ["<p>", "a & b"]),
        ("Profiles", "00000000-0000-0000-0000-000000000000", "search",
         ["a:1 'b c':2A \\:d", ""], []),  # refused ones: see test_text_search_syntax_errors
        ("Profiles", "00000000-0000-0000-0000-000000000000", "query",
         ["!a & (b | c:*)", "a <-> 'b c'", ""], []),
        ("Profiles", "00000000-0000-0000-0000-000000000000", "settings",
         [{"k": ["v", None, 1.5]}], []),  # json keeps a NUL, jsonb cannot
        ("Profiles", "00000000-0000-0000-0000-000000000000", "prefs",
         [["x", {"y": True}]], [["\u0000"]]),
    ],
    "mysql": [
        ("measurements", 1, "yr", [0, 99, 1901, 2155], [150, 1900]),
        ("measurements", 1, "ratio", [3.4028234663852886e38], [3.402823466385289e38]),
        ("measurements", 1, "flag", [True, -128, 127], []),
        ("schedule", 1, "at", ["-837:59:59", "23:59:59+01:00", "100:00"], ["839:00:00"]),
        ("schedule", 1, "stamp", ["2037-12-28T23:00:00-10:00", "1971-01-01T00:00:00+13:00"],
         ["1970-01-01T00:00:00", "2038-01-19T03:14:08"]),
        ("schedule", 1, "starts", ["1100-01-01T00:00:00+13:59"], []),
        ("places", 1, "p", ["POINT(1.5 -2)"], ["LINESTRING(0 0,1 1)"]),
        ("places", 1, "route", ["LINESTRING(0 0,1 1)"], ["POINT(1 2)"]),
        ("places", 1, "area", ["POLYGON((0 0,10 0,5 5,0 0))"], []),
        ("places", 1, "shape", ["POINT(0 0)", "POLYGON((0 0,1 0,1 1,0 0))"], []),
        ("Profiles", "00000000-0000-0000-0000-000000000000", "ip4", ["10.0.0.255"], ["256.0.0.1"]),
        ("Profiles", "00000000-0000-0000-0000-000000000000", "ip6", ["::ffff", "1:2:3:4:5:6:7:8"],
         ["zzz"]),
        ("Profiles", "00000000-0000-0000-0000-000000000000", "perms", [["admin", "read"], []],
         [["root"]]),
        ("Profiles", "00000000-0000-0000-0000-000000000000", "magic", ["AAEC"], ["AAECAwQ="]),
    ],
    "sqlite": [
        ("inventory", 1, "updated", ["2006-02-15 04:34:33", "9899-12-28T23:59:59+01:00"], []),
        ("inventory", 1, "misc", ["text", 1.5, True], []),
    ],
}


@pytest.mark.gen_test(timeout=120)
async def test_awkward_values_the_document_allows_are_stored(awkward_server, database):
    # Every type served as text took any string (an inet "", a range "[5,3)", WKT
    # "AAA"), which the database refused with a 422; a real, a FLOAT, a YEAR, a
    # TIMESTAMP took numbers and dates past their range; an interval "-P1D".
    doc = await _doc(awkward_server)
    problems = []
    for table, key, column, accepted, refused in AWKWARD_VALUES[database.backend]:
        schema = _request_property(doc, table, column)
        path = f"/api/{quote(table)}/{key}"
        for value in accepted:
            if not _fits(doc, schema, value):
                problems.append(f"{table}.{column}: {value!r} does not fit {schema}")
            response = await awkward_server.patch(path, {column: value})
            if response.status != 200:
                problems.append(f"{table}.{column}: {value!r} -> {response.status} {response.body}")
        for value in refused:
            if _fits(doc, schema, value):
                problems.append(f"{table}.{column}: {value!r} fits {schema}")
            response = await awkward_server.patch(path, {column: value})
            if response.status != 422:
                problems.append(f"{table}.{column}: {value!r} -> {response.status}, not 422")
    assert not problems, "\n".join(problems)


@pytest.mark.gen_test(timeout=120)
async def test_awkward_rows_match_their_response_schemas(awkward_server):
    # PostgreSQL arrays of more than one dimension ('{{1,2},{3,4}}') and MariaDB
    # TIMEs past a day or negative ('-838:59:59') did not match the document.
    doc = await _doc(awkward_server)
    problems = []
    for path in doc["paths"]:
        if path.endswith("}"):
            continue
        table = path.rsplit("/", 1)[1]
        page = await awkward_server.get(f"/api/{quote(table)}?limit=1000")
        assert page.status == 200, (table, page.body)
        item = doc["components"]["schemas"][f"{table}_item"]
        for row in page.body["items"]:
            for column, value in row.items():
                if not _fits(doc, item["properties"][column], value, read=True):
                    problems.append(f"{table}.{column}: {value!r} does not fit "
                                    f"{item['properties'][column]}")
    assert not problems, "\n".join(problems)


@pytest.mark.gen_test(timeout=60)
async def test_json_and_tinyint_filters_are_documented(awkward_server, database):
    # A JSON filter was documented as `is.null` only, but any value is a filter;
    # a TINYINT(1) filter as true/false only, but it holds (and filters) numbers.
    doc = await _doc(awkward_server)
    detail = _list_filter(doc, "audit_log", "detail")
    assert "pattern" not in detail
    assert (await awkward_server.get("/api/audit_log?detail=")).status == 200
    assert (await awkward_server.get("/api/audit_log?detail=eq.[]")).status == 200
    if database.backend == "mysql":
        flag = _list_filter(doc, "measurements", "flag")
        for text in ("2", "-128", "127", "true", "eq.5", "is.null"):
            assert re.search(flag["pattern"], text), text
            assert (await awkward_server.get(f"/api/measurements?flag={text}")).status == 200
        assert not re.search(flag["pattern"], "128")
        assert (await awkward_server.get("/api/measurements?flag=128")).status == 400


# -- server bugs schemathesis found on the awkward schemas ------------------------------------
# Each concerns one database's types; the reason says what it was.

def _only(database, backend: str, reason: str) -> None:
    if database.backend != backend:
        pytest.skip(f"{backend} only: {reason}")


@pytest.mark.gen_test(timeout=60)
async def test_filter_value_the_database_refuses_is_a_400(awkward_server, database):
    _only(database, "postgresql",
               "a filter value PostgreSQL cannot read as the column's type is a 422")
    for query in ("lsn=", "lsn=eq.16", "ip=abc", "ports=x", "mac=1"):
        table = "measurements" if query.startswith("lsn") else "network"
        response = await awkward_server.get(f"/api/{table}?{query}")
        assert response.status == 400, (query, response.status, response.body)


@pytest.mark.gen_test(timeout=60)
async def test_text_search_syntax_errors_are_422(awkward_server, database):
    _only(database, "postgresql",
               "a tsquery/tsvector PostgreSQL cannot parse (SQLSTATE 42601) is a 500")
    key = "00000000-0000-0000-0000-000000000000"
    for column, value in (("query", "a b"), ("search", "'open")):
        response = await awkward_server.patch(f"/api/Profiles/{key}", {column: value})
        assert response.status == 422, (column, value, response.status)
    assert (await awkward_server.get("/api/Profiles?query=a%20b")).status == 400


@pytest.mark.gen_test(timeout=60)
async def test_set_with_a_null_member_is_a_422(awkward_server, database):
    _only(database, "mysql",
               "a SET given [null] or [[...]] is a 500 (KeyError: None, unhashable list)")
    for perms in ([None], [["read"]]):
        response = await awkward_server.post("/api/group", {"name": "n", "perms": perms})
        assert response.status == 422, (perms, response.status)


@pytest.mark.gen_test(timeout=60)
async def test_json_holding_nul_can_still_be_filtered(awkward_server, database):
    _only(database, "postgresql",
               "json keeps \\u0000, but filters compare json as jsonb: every filter on the "
               "column is then a 422")
    key = "00000000-0000-0000-0000-000000000000"
    stored = await awkward_server.patch(f"/api/Profiles/{key}", {"settings": {"k": "\u0000"}})
    assert stored.status == 200
    assert (await awkward_server.get("/api/Profiles?settings=eq.1")).status == 200


@pytest.mark.gen_test(timeout=60)
async def test_text_that_is_not_wkt_is_a_422(awkward_server, database):
    _only(database, "mysql", "WKT that does not parse is stored as NULL (201)")
    response = await awkward_server.post("/api/places", {"id": 77, "area": "AAA"})
    assert response.status == 422


@pytest.mark.gen_test(timeout=60)
async def test_mariadb_bad_value_names_its_column(awkward_server, database):
    _only(database, "mysql",
               "'for column `db`.`table`.`col`' names the database as the column")
    response = await awkward_server.post("/api/Customer", {"FirstName": "x",
                                                           "Created": "1000-01-01T00:00:00"})
    assert response.status == 422
    assert response.body["error"]["details"]["column"] == "Created"
