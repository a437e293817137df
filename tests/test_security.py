"""Hostile input: injection, mass assignment and type confusion never reach SQL, never
change data they should not and never produce a 500, on every backend."""

from __future__ import annotations

from urllib.parse import quote

import pytest

PRODUCTS = [(1, "Widget", "9.99"), (2, "Gadget", "24.50"), (3, "Gift Card", "5.00")]
JSON = {"Content-Type": "application/json"}


async def assert_intact(server) -> None:
    """The demo data is as seeded and the tables still exist."""
    response = await server.get("/api/products")
    assert response.status == 200
    assert [(i["id"], i["name"], i["price"]) for i in response.body["items"]] == PRODUCTS
    users = (await server.get("/api/users")).body["items"]
    assert [u["email"] for u in users] == ["alice@example.com", "bob@example.com"]
    assert len((await server.get("/api/orders")).body["items"]) == 2


def assert_status(response, *statuses: int) -> None:
    assert response.status in statuses, (response.status, response.raw[:300])
    assert response.status < 500
    error = response.body["error"]
    assert error["status"] == response.status
    assert "Traceback" not in response.raw.decode("utf-8", "replace")


# -- table names -----------------------------------------------------------------------

TABLE_NAMES = [
    "sqlite_master", "sqlite_schema", "sqlite_sequence", "pg_catalog.pg_class", "pg_class",
    "pg_catalog.pg_user", "information_schema.tables", "information_schema.columns",
    "mysql.user", "%22products%22", "%60products%60", "products%22", "products%3B",
    "products%3BDROP%20TABLE%20products", "products'--", "public.products",
    "PRODUCTS", "products%00", "%E2%9C%93", "x" * 5000,
]


@pytest.mark.gen_test
async def test_table_name_injection_is_404(server):
    for path in TABLE_NAMES:
        for method, body in (("GET", None), ("POST", {"name": "x"}), ("DELETE", None)):
            target = f"/api/{path}" if method != "DELETE" else f"/api/{path}/1"
            response = await server.request(method, target, body)
            assert_status(response, 404)
            assert response.body["error"]["code"] == "not_found"
            assert len(response.raw) < 2000
        assert_status(await server.get(f"/api/{path}/1"), 404)
    await assert_intact(server)


# -- column names, order and select ------------------------------------------------------

INJECTED_PARAMETERS = [
    quote("name;DROP TABLE products", safe="") + "=1",
    quote('"name"') + "=Widget",
    quote("name) OR (1=1") + "=x",
    quote("1=1 OR name") + "=x",
    "order=" + quote("id;DROP TABLE products"),
    "order=" + quote("(SELECT 1)"),
    "order=" + quote("id desc"),
    "order=" + quote("price.desc;--"),
    "order=" + quote("price.desc nulls first"),
    "order=" + quote('"price"'),
    "select=" + quote("id,name FROM users--"),
    "select=" + quote("count(*)"),
    "select=" + quote("(SELECT password_hash FROM users)"),
    "select=" + quote('"id"'),
    "or=" + quote("(id.eq.1) OR 1=1"),
    "or=" + quote("(id.eq.1);DROP TABLE products"),
    "or=" + quote("(name;DELETE FROM products.eq.x)"),
    "id=" + quote("1 OR 1=1"),
    "id=" + quote("in.(1) OR 1=1"),
    "id=" + quote("1;DELETE FROM products"),
    "price=" + quote("gt.0 OR 1=1"),
    "limit=" + quote("1;DROP TABLE products"),
    "offset=" + quote("0 UNION SELECT 1"),
    "after=" + quote("' OR 1=1--"),
    "count=" + quote("true;--"),
]


@pytest.mark.gen_test
async def test_injection_in_query_parameters_is_400(server):
    for query in INJECTED_PARAMETERS:
        assert_status(await server.get(f"/api/products?{query}"), 400)
    await assert_intact(server)


INJECTED_VALUES = [
    "' OR '1'='1", "Widget' --", "Widget'; DROP TABLE products; --", '" OR ""="',
    "\\' OR 1=1 --", "%", "_", "Widget%", "*", "') OR ('1'='1", "1; SELECT pg_sleep(5)",
    "Widget\\", "ü' OR 'ü'='ü",
]


def in_list(value: str) -> str:
    """``value`` as the one quoted item of an ``in.(...)`` list."""
    return quote('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')


@pytest.mark.gen_test
async def test_injection_in_values_matches_nothing(server):
    for value in INJECTED_VALUES:
        for query in (f"name={quote(value)}", f"name=eq.{quote(value)}",
                      f"name=neq.{quote(value)}&id=lt.0", f"name=in.({in_list(value)})",
                      f"or=(name.eq.{in_list(value)},id.lt.0)", f"sku=gt.{quote(value)}&id=lt.0"):
            response = await server.get(f"/api/products?{query}")
            assert response.status == 200, (query, response.body)
            assert response.body["items"] == [], query
        # as a like pattern only * is a wildcard: % and _ are literal
        like = await server.get(f"/api/products?name=like.{quote(value)}")
        assert like.status == 200
        assert like.body["items"] == ([] if value != "*" else like.body["items"])
    await assert_intact(server)
    # a quoted in-list item is matched exactly, quotes and backslashes included
    for name in ('say "hi"', "back\\slash", "a,b", "(x)"):
        created = await server.post("/api/products", {"name": name, "price": 1, "sku": name})
        assert created.status == 201
        found = await server.get(f"/api/products?name=in.({in_list(name)},nothing)")
        assert [i["name"] for i in found.body["items"]] == [name]
    assert len((await server.get("/api/products")).body["items"]) == 7


@pytest.mark.gen_test
async def test_hostile_strings_are_stored_verbatim(server):
    names = ["Robert'); DROP TABLE products;--", "' OR 1=1 --", 'quote " and \\ back',
             "%_*[]", "😀 emoji", "line\nbreak\ttab"]
    created = await server.post("/api/products", [
        {"name": name, "price": "1.00", "sku": f"H-{i}"} for i, name in enumerate(names)])
    assert created.status == 201
    for item, name in zip(created.body["items"], names, strict=True):
        assert item["name"] == name
        fetched = await server.get(f"/api/products?name={quote(name)}")
        assert [i["id"] for i in fetched.body["items"]] == [item["id"]], name
    listed = (await server.get("/api/products?id=gt.3")).body["items"]
    assert [i["name"] for i in listed] == names
    # NUL cannot be stored in PostgreSQL text: refused the same way everywhere
    assert_status(await server.post("/api/products", {"name": "a\x00b", "price": 1,
                                                      "sku": "NUL"}), 422)
    assert_status(await server.get("/api/products?name=a%00b"), 400)
    assert_status(await server.get("/api/products/1%00"), 400)


# -- mass assignment -----------------------------------------------------------------

@pytest.fixture
def hidden(make_server):
    return make_server({"table:users": {"hidden": "password_hash"}})


@pytest.mark.gen_test
async def test_mass_assignment_is_refused(hidden, database):
    attempts = [
        {"name": "Eve", "email": "eve@example.com", "is_admin": True},
        {"name": "Eve", "email": "eve@example.com", "password_hash": "owned"},
        {"name": "Eve", "email": "eve@example.com", "role": "admin"},
        {"name": "Eve", "email": "eve@example.com", "users.password_hash": "owned"},
        {"name": "Eve", "email": "eve@example.com", "password_hash ": "owned"},
        {"name": "Eve", "email": "eve@example.com", "PASSWORD_HASH": "owned"},
    ]
    for body in attempts:
        response = await hidden.post("/api/users", body)
        assert_status(response, 422)
        assert response.body["error"]["code"] == "unprocessable"
        assert_status(await hidden.put("/api/users/1", {k: v for k, v in body.items()
                                                        if k not in ("name", "email")}), 422)
    assert_status(await hidden.post("/api/users", [
        {"name": "Ok", "email": "ok@example.com"},
        {"name": "Eve", "email": "eve@example.com", "password_hash": "owned"}]), 422)
    assert hidden.changes == []
    rows = database.execute("SELECT id, password_hash FROM users ORDER BY id")
    assert [tuple(r) for r in rows] == [(1, "x" * 20), (2, "y" * 20)]


# -- type confusion ---------------------------------------------------------------------

HUGE = "9" * 5000
BODY_CONFUSION = [
    ("quantity", '"abc"'), ("quantity", "true"), ("quantity", "{}"), ("quantity", "[1]"),
    ("quantity", "1.5"), ("quantity", HUGE), ("quantity", "-" + HUGE), ("quantity", "1e400"),
    ("quantity", "9223372036854775808"),
    ("total", '"abc"'), ("total", "true"), ("total", "{}"), ("total", "[]"), ("total", HUGE),
    ("total", "1e400"), ("total", "-1e400"), ("total", '"1e400"'), ("total", '"NaN"'),
    ("total", '"Infinity"'), ("total", '"-inf"'), ("total", '"0x10"'), ("total", '"1e-9999"'),
    ("status", "5"), ("status", "true"), ("status", '["paid"]'), ("status", '{"a": 1}'),
    ("user_id", '"1"'), ("user_id", "true"), ("user_id", "null"),
    ("created_at", "12"), ("created_at", '"not a date"'), ("created_at", "[]"),
]


def order_body(column: str, raw: str) -> bytes:
    fields = {"user_id": "1", "product_id": "2", "quantity": "1", "total": '"1.00"',
              "status": '"new"'}
    fields[column] = raw
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}").encode()


@pytest.mark.gen_test(timeout=30)
async def test_type_confusion_in_bodies_is_422(server):
    for column, raw in BODY_CONFUSION:
        response = await server.post("/api/orders", raw=order_body(column, raw), headers=JSON)
        assert_status(response, 422)
        assert column in response.body["error"]["message"], (column, raw)
        patch = await server.patch("/api/orders/1", raw=f'{{"{column}": {raw}}}'.encode(),
                                   headers=JSON)
        assert_status(patch, 422)
    assert server.changes == []
    assert len((await server.get("/api/orders")).body["items"]) == 2
    assert (await server.get("/api/orders/1")).body["total"] == "49.00"


@pytest.mark.gen_test
async def test_numbers_that_are_valid_after_all(server):
    # a tiny decimal rounds to the column's scale; 1e2 is the integer 100
    response = await server.post("/api/orders", raw=order_body("total", "1e-400"), headers=JSON)
    assert response.status == 201, response.body
    assert response.body["total"] == "0.00"
    response = await server.post("/api/orders", raw=order_body("quantity", "1e2"), headers=JSON)
    assert response.status == 201, response.body
    assert response.body["quantity"] == 100
    response = await server.post("/api/orders", raw=order_body("total", "12345678.99"),
                                 headers=JSON)
    assert response.body["total"] == "12345678.99"


INVALID_JSON = [
    b'{"name": NaN, "price": 1, "sku": "x"}', b'{"name": "x", "price": Infinity, "sku": "x"}',
    b'{"name": "x", "price": -Infinity, "sku": "x"}', b"[" * 100000 + b"]" * 100000,
    b'{"name": "x", "price": 1, "sku": "x"', b"{'name': 'x'}", b'{"name": "x",}',
    b"\x00", b'{"a": 1} {"b": 2}',
]


@pytest.mark.gen_test
async def test_invalid_json_is_400(server):
    for raw in INVALID_JSON:
        response = await server.post("/api/products", raw=raw, headers=JSON)
        assert_status(response, 400)
        assert response.body["error"]["code"] == "bad_request"
        assert_status(await server.put("/api/products/1", raw=raw, headers=JSON), 400)
    # a lone surrogate is valid JSON syntax but not text any database can store
    response = await server.post("/api/products", raw=b'{"name": "\\ud800", "price": 1, "sku": "s"}',
                                 headers=JSON)
    assert_status(response, 400, 422)
    assert server.changes == []
    await assert_intact(server)


QUERY_CONFUSION = [
    f"id={HUGE}", f"id=gt.{HUGE}", f"id=in.(1,{HUGE})", "id=1e400", "price=1e400",
    "price=gt.1e400", "price=NaN", "price=Infinity", "price=-Infinity", f"price={HUGE}",
    "in_stock=300", "created_at=gt.1e400", "id=0x10",
    "id=in.(" + ",".join(["1"] * 1001) + ")", "&".join(f"id=neq.{i}" for i in range(101)),
    "after=" + quote("W1swXV0"), "after=" + quote("WyJ4Il0"),
]


@pytest.mark.gen_test
async def test_type_confusion_in_query_parameters_is_400(server):
    for query in QUERY_CONFUSION:
        assert_status(await server.get(f"/api/products?{query}"), 400)
    response = await server.get("/api/products?price=gt.1e-400")  # a valid, tiny number
    assert response.status == 200, response.body
    assert len(response.body["items"]) == 3


@pytest.mark.gen_test
async def test_odd_item_keys_are_400_or_404(server):
    for key in (HUGE, "1e400", "NaN", "-1", "0x1", "1 OR 1=1", "%27", "1.0", "1,2", "+-1"):
        assert_status(await server.get(f"/api/products/{quote(key)}"), 400, 404)
        assert_status(await server.delete(f"/api/products/{quote(key)}"), 400, 404)
        assert_status(await server.patch(f"/api/products/{quote(key)}", {"name": "x"}), 400, 404)
    await assert_intact(server)


@pytest.mark.gen_test
async def test_json_answers_are_never_sniffed(server):
    """Browsers must not reinterpret API answers (or error bodies echoing input) as HTML."""
    for response in (await server.get("/api/products"),
                     await server.get("/api/products?name=eq.<script>"),
                     await server.get("/api/<script>")):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Type"].startswith("application/json")
