"""REST CRUD on the demo tables, on every backend: what a client sees (API.md section 2)."""

from __future__ import annotations

import asyncio

import pytest
from openapi_spec_validator import validate

DEMO_TABLES = {"products", "users", "orders"}


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The contract's JSON error body with ``status`` (and ``code``); returns the error."""
    assert response.status == status, (response.status, response.raw[:500])
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.body["error"]
    assert error["status"] == status
    assert isinstance(error["code"], str) and error["code"]
    if code is not None:
        assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in response.raw.decode("utf-8", "replace")
    return error


async def ids(server, path: str) -> list[int]:
    response = await server.get(path)
    assert response.status == 200, response.body
    return [item["id"] for item in response.body["items"]]


# -- GET /api/ and OpenAPI --------------------------------------------------------

@pytest.mark.gen_test
async def test_schema_listing_shape(server):
    response = await server.get("/api/")
    assert response.status == 200
    tables = {table["name"]: table for table in response.body["tables"]}
    assert set(tables) == DEMO_TABLES
    products = tables["products"]
    assert products["primary_key"] == ["id"]
    assert products["url"] == "/api/products"
    assert products["ws"] == "/ws/products"
    columns = {column["name"]: column for column in products["columns"]}
    assert [c["name"] for c in products["columns"]] == [
        "id", "name", "description", "price", "sku", "in_stock", "created_at"]
    for column in products["columns"]:
        assert set(column) >= {"name", "type", "nullable", "default"}
    assert columns["id"]["type"] == "integer"
    assert columns["price"]["type"] == "decimal"
    assert columns["name"]["type"] == "string"
    assert columns["in_stock"]["type"] == "boolean"
    assert columns["created_at"]["type"] == "datetime"
    assert columns["name"]["nullable"] is False
    assert columns["description"]["nullable"] is True
    assert columns["id"]["nullable"] is False
    assert tables["orders"]["primary_key"] == ["id"]
    # /api without the slash answers the same
    assert (await server.get("/api")).body == response.body


@pytest.mark.gen_test
async def test_openapi_document_is_valid(server):
    response = await server.get("/api/openapi.json")
    assert response.status == 200
    document = response.body
    validate(document)  # raises on an invalid OpenAPI 3 document
    assert document["openapi"].startswith("3.")
    collections = {path for path in document["paths"] if "{" not in path}
    assert collections == {f"/api/{name}" for name in DEMO_TABLES}
    items = {path for path in document["paths"] if "{" in path}
    assert items == {f"/api/{name}/{{pk}}" for name in DEMO_TABLES}
    products = document["paths"]["/api/products"]
    assert {"get", "post"} <= set(products)
    assert set(document["paths"]["/api/products/{pk}"]) >= {"get", "put", "patch", "delete"}
    schema = document["components"]["schemas"]["products"]
    assert set(schema["properties"]) == {"id", "name", "description", "price", "sku",
                                         "in_stock", "created_at"}


# -- reading -----------------------------------------------------------------------

@pytest.mark.gen_test
async def test_list_shape(server):
    response = await server.get("/api/products")
    assert response.status == 200
    assert set(response.body) == {"items", "next"}
    assert response.body["next"] is None
    items = response.body["items"]
    assert [item["id"] for item in items] == [1, 2, 3]
    first = items[0]
    assert first["name"] == "Widget"
    assert first["description"] == "A small widget"
    assert first["price"] == "9.99"
    assert first["sku"] == "WID-001"
    assert first["in_stock"] is True
    assert isinstance(first["created_at"], str) and first["created_at"][:2] == "20"
    # trailing slash on a collection
    assert await ids(server, "/api/products/") == [1, 2, 3]


@pytest.mark.gen_test
async def test_get_one_and_missing(server):
    response = await server.get("/api/products/2")
    assert response.status == 200
    assert response.body["id"] == 2
    assert response.body["name"] == "Gadget"
    assert response.body["price"] == "24.50"
    error = assert_error(await server.get("/api/products/999"), 404, "not_found")
    assert "999" in error["message"]
    assert_error(await server.get("/api/products/abc"), 400, "bad_request")
    assert_error(await server.get("/api/products/1.5"), 400, "bad_request")
    assert_error(await server.get("/api/nope"), 404, "not_found")
    assert_error(await server.get("/api/nope/1"), 404, "not_found")
    assert_error(await server.get("/elsewhere"), 404, "not_found")


# -- creating ------------------------------------------------------------------

@pytest.mark.gen_test
async def test_create_single(server):
    response = await server.post("/api/products", {"name": "Lamp", "price": "12.5",
                                                   "sku": "LAMP-1"})
    assert response.status == 201
    record = response.body
    assert record["id"] == 4
    assert record["name"] == "Lamp"
    assert record["price"] == "12.50"
    assert record["in_stock"] is True  # the column default, filled in
    assert record["description"] is None
    assert isinstance(record["created_at"], str)
    assert response.headers["Location"] == "/api/products/4"
    assert (await server.get("/api/products/4")).body == record
    [change] = server.changes
    assert (change.table, change.event, change.pk, change.old) == ("products", "created", 4, None)
    assert change.record == record


@pytest.mark.gen_test
async def test_create_array_in_one_request(server):
    response = await server.post("/api/products", [
        {"name": "A", "price": 1, "sku": "A-1"},
        {"name": "B", "price": "2.25", "sku": "B-1", "in_stock": False},
    ])
    assert response.status == 201
    assert set(response.body) == {"items"}
    items = response.body["items"]
    assert [(i["id"], i["name"], i["price"], i["in_stock"]) for i in items] == [
        (4, "A", "1.00", True), (5, "B", "2.25", False)]
    assert await ids(server, "/api/products") == [1, 2, 3, 4, 5]
    assert [(c.event, c.pk, c.record) for c in server.changes] == [
        ("created", 4, items[0]), ("created", 5, items[1])]


@pytest.mark.gen_test
async def test_create_array_with_a_conflicting_row_inserts_nothing(server):
    response = await server.post("/api/products", [
        {"name": "A", "price": 1, "sku": "A-1"},
        {"name": "B", "price": 2, "sku": "WID-001"},  # duplicate sku: unique conflict
    ])
    assert_error(response, 409, "conflict")
    assert await ids(server, "/api/products") == [1, 2, 3]
    assert server.changes == []


@pytest.mark.gen_test
async def test_create_array_with_a_bad_row_inserts_nothing(server):
    response = await server.post("/api/products", [
        {"name": "A", "price": 1, "sku": "A-1"},
        {"name": "B", "price": "lots", "sku": "B-1"},
    ])
    error = assert_error(response, 422, "unprocessable")
    assert "item 1" in error["message"]
    assert "price" in error["message"]
    response = await server.post("/api/products", [{"name": "A", "price": 1, "sku": "A-1"}, 7])
    assert_error(response, 400, "bad_request")
    assert_error(await server.post("/api/products", []), 400, "bad_request")
    assert await ids(server, "/api/products") == [1, 2, 3]
    assert server.changes == []


@pytest.mark.gen_test
async def test_create_missing_not_null_column(server):
    error = assert_error(await server.post("/api/products", {"name": "No price", "sku": "NP"}),
                         422, "unprocessable")
    assert "price" in error["message"]
    assert_error(await server.post("/api/products", {"name": None, "price": 1, "sku": "X"}),
                 422, "unprocessable")
    assert_error(await server.post("/api/products", {}), 422, "unprocessable")
    assert await ids(server, "/api/products") == [1, 2, 3]
    assert server.changes == []


@pytest.mark.gen_test
async def test_create_unknown_column_and_wrong_type(server):
    error = assert_error(await server.post("/api/products", {"name": "X", "price": 1, "sku": "X",
                                                             "colour": "red"}), 422)
    assert "colour" in error["message"]
    error = assert_error(await server.post("/api/orders", {"user_id": 1, "product_id": 2,
                                                           "quantity": "two", "total": 1}), 422)
    assert "quantity" in error["message"]
    assert server.changes == []


# -- updating ------------------------------------------------------------------

@pytest.mark.gen_test
@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_update_is_partial(server, method):
    before = (await server.get("/api/products/2")).body
    response = await server.request(method, "/api/products/2", {"price": 30})
    assert response.status == 200
    assert response.body == {**before, "price": "30.00"}
    assert (await server.get("/api/products/2")).body == response.body
    [change] = server.changes
    assert (change.table, change.event, change.pk) == ("products", "updated", 2)
    assert change.record == response.body
    assert change.old == before


@pytest.mark.gen_test
async def test_update_several_columns_and_null(server):
    response = await server.patch("/api/products/1", {"description": None, "in_stock": False,
                                                      "name": "Widget 2"})
    assert response.status == 200
    assert (response.body["description"], response.body["in_stock"], response.body["name"]) == (
        None, False, "Widget 2")
    assert response.body["sku"] == "WID-001"


@pytest.mark.gen_test
async def test_update_errors(server):
    assert_error(await server.put("/api/products/999", {"name": "x"}), 404, "not_found")
    assert_error(await server.put("/api/products/1", {"sku": "GAD-001"}), 409, "conflict")
    assert_error(await server.put("/api/products/1", {"name": None}), 422)
    assert_error(await server.put("/api/products/1", {"nope": 1}), 422)
    assert_error(await server.put("/api/products/1", {"price": [1]}), 422)
    assert_error(await server.put("/api/products/1", [{"name": "x"}]), 400)
    assert_error(await server.put("/api/products/x", {"name": "x"}), 400)
    assert (await server.get("/api/products/1")).body["sku"] == "WID-001"
    assert server.changes == []


# -- deleting ------------------------------------------------------------------

@pytest.mark.gen_test
async def test_delete_then_404(server):
    before = (await server.get("/api/products/1")).body
    response = await server.delete("/api/products/1")
    assert response.status == 204
    assert response.raw == b""
    assert_error(await server.get("/api/products/1"), 404, "not_found")
    assert_error(await server.delete("/api/products/1"), 404, "not_found")
    assert await ids(server, "/api/products") == [2, 3]
    [change] = server.changes
    assert (change.table, change.event, change.pk, change.record, change.old) == (
        "products", "deleted", 1, before, None)


# -- conflicts -----------------------------------------------------------------

@pytest.mark.gen_test
async def test_unique_conflict(server):
    error = assert_error(await server.post("/api/users", {"name": "Eve",
                                                          "email": "alice@example.com"}), 409)
    assert error["code"] == "conflict"
    assert "Traceback" not in str(error)
    assert server.changes == []


@pytest.mark.gen_test
async def test_foreign_key_conflicts(server):
    # an order for a user that does not exist
    assert_error(await server.post("/api/orders", {"user_id": 999, "product_id": 2,
                                                   "quantity": 1, "total": "1.00"}), 409)
    assert_error(await server.patch("/api/orders/1", {"product_id": 999}), 409)
    # products 2 and 3 are referenced by orders
    assert_error(await server.delete("/api/products/2"), 409, "conflict")
    assert_error(await server.delete("/api/users/1"), 409, "conflict")
    assert await ids(server, "/api/products") == [1, 2, 3]
    assert (await server.get("/api/orders/1")).body["product_id"] == 2
    assert server.changes == []
    # a valid order is accepted and its defaults filled
    created = await server.post("/api/orders", {"user_id": 2, "product_id": 1, "total": 9.99})
    assert created.status == 201
    assert (created.body["quantity"], created.body["status"], created.body["total"]) == (
        1, "pending", "9.99")


# -- request errors ------------------------------------------------------------------

@pytest.mark.gen_test
async def test_malformed_bodies(server):
    json_header = {"Content-Type": "application/json"}
    error = assert_error(await server.post("/api/products", raw=b'{"name": ', headers=json_header),
                         400, "bad_request")
    assert "JSON" in error["message"]
    assert_error(await server.post("/api/products", raw=b"", headers=json_header), 400)
    assert_error(await server.post("/api/products", raw=b"\xff\xfe", headers=json_header), 400)
    for body in (b"5", b'"text"', b"null", b"true"):
        assert_error(await server.post("/api/products", raw=body, headers=json_header), 400)
        assert_error(await server.put("/api/products/1", raw=body, headers=json_header), 400)
    assert server.changes == []


@pytest.mark.gen_test
async def test_not_json_is_415(server):
    body = b'{"name": "x", "price": 1, "sku": "x"}'
    assert_error(await server.post("/api/products", raw=body), 415, "unsupported_media_type")
    assert_error(await server.post("/api/products", raw=body,
                                   headers={"Content-Type": "text/plain"}), 415)
    assert_error(await server.put("/api/products/1", raw=b"name=x",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"}),
                 415)
    ok = await server.post("/api/products", raw=body,
                           headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status == 201


@pytest.mark.gen_test
async def test_method_not_allowed(server):
    # A DELETE on the collection is a delete by filter (API.md 7.2): without one, a 400.
    assert_error(await server.delete("/api/products"), 400, "bad_request")
    assert_error(await server.put("/api/products", {"name": "x"}), 405, "method_not_allowed")
    assert_error(await server.post("/api/products/1", {"name": "x"}), 405)
    assert_error(await server.post("/api/", {"name": "x"}), 405)
    assert await ids(server, "/api/products") == [1, 2, 3]


@pytest.fixture
def small_bodies(make_server):
    return make_server({"api": {"max_body_bytes": 200}})


@pytest.mark.gen_test
async def test_body_over_limit_with_content_length(small_bodies):
    server = small_bodies
    big = {"name": "x" * 300, "price": 1, "sku": "BIG"}
    error = assert_error(await server.post("/api/products", big), 413, "payload_too_large")
    assert "200" in error["message"]
    assert_error(await server.put("/api/products/1", big), 413)
    small = await server.post("/api/products", {"name": "x", "price": 1, "sku": "SMALL"})
    assert small.status == 201
    assert [c.record["sku"] for c in server.changes] == ["SMALL"]


async def raw_http(server, request: bytes) -> bytes:
    """Send ``request`` on a plain socket and read what comes back until the server closes
    or stops talking."""
    host, port = server.base_url.split("//", 1)[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        try:
            await writer.drain()
        except ConnectionError:
            pass
        data = b""
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 3)
            except (asyncio.TimeoutError, ConnectionError):
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, rest = data.partition(b"\r\n\r\n")
                length = [line for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                if length and len(rest) >= int(length[0].split(b":")[1]):
                    break
        return data
    finally:
        writer.close()


@pytest.mark.gen_test(timeout=20)
async def test_chunked_body_over_limit(small_bodies):
    server = small_bodies
    chunk = b'{"name": "' + b"x" * 90
    body = b""
    for _ in range(4):
        body += b"%x\r\n%s\r\n" % (len(chunk), chunk)
    body += b"0\r\n\r\n"
    request = (b"POST /api/products HTTP/1.1\r\nHost: localhost\r\n"
               b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    answer = await raw_http(server, request)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"413", answer[:300]
    assert b'"payload_too_large"' in rest
    assert await ids(server, "/api/products") == [1, 2, 3]

    # a chunked body under the limit is fine
    small = b'{"name": "c", "price": "1.5", "sku": "CH-1"}'
    request = (b"POST /api/products HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
               b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n%s\r\n0\r\n\r\n" % (len(small), small))
    answer = await raw_http(server, request)
    assert answer.split(b"\r\n", 1)[0].split()[1] == b"201", answer[:300]
    assert [c.record["sku"] for c in server.changes] == ["CH-1"]


def test_building_the_openapi_document_runs_no_sql(server):
    """With auth on, the document is built per request on the event loop: what it needs
    from the catalog is read once at start-up (a blocking query per request before)."""
    app = server.app
    db = app.db.db
    calls = []
    plain = db.execute_sql

    def counting(*args, **kwargs):
        calls.append(args[0])
        return plain(*args, **kwargs)

    db.execute_sql = counting
    try:
        document = app.catalog.openapi(dict(app.tables))
    finally:
        db.execute_sql = plain
    assert calls == []
    assert set(document["components"]["schemas"]) >= {"products", "products_create"}
