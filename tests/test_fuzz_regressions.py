"""What schemathesis (tests/test_schemathesis.py) found, kept as plain tests of what a client sees."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate


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
