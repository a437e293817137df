"""The list query language (API.md section 2) on the demo tables, on every backend."""

from __future__ import annotations

import itertools
from urllib.parse import quote

import pytest


def assert_bad_param(response, parameter: str) -> None:
    """A 400 whose error names ``parameter``."""
    assert response.status == 400, (response.status, response.raw[:400])
    error = response.body["error"]
    assert (error["status"], error["code"]) == (400, "bad_request")
    assert parameter in error["message"], error
    assert error["details"]["parameter"] == parameter


async def ids(server, query: str, table: str = "products") -> list[int]:
    response = await server.get(f"/api/{table}?{query}")
    assert response.status == 200, (query, response.body)
    return [item["id"] for item in response.body["items"]]


_skus = itertools.count()


async def add_products(server, *names: str, price: str = "1.00") -> list[int]:
    rows = [{"name": name, "price": price, "sku": f"SKU-{next(_skus)}"} for name in names]
    response = await server.post("/api/products", rows)
    assert response.status == 201, response.body
    return [item["id"] for item in response.body["items"]]


@pytest.fixture
def small_pages(make_server):
    return make_server({"api": {"default_limit": 2}})


@pytest.fixture
def capped(make_server):
    # default_limit must not exceed max_limit, or the server refuses to start
    return make_server({"api": {"max_limit": 5, "default_limit": 5}})


# -- operators -----------------------------------------------------------------------
# demo products: 1 Widget 9.99, 2 Gadget 24.50, 3 Gift Card 5.00

@pytest.mark.gen_test
async def test_comparison_operators(server):
    assert await ids(server, "name=Widget") == [1]
    assert await ids(server, "name=eq.Gadget") == [2]
    assert await ids(server, "name=neq.Gadget") == [1, 3]
    assert await ids(server, "price=gt.9.99") == [2]
    assert await ids(server, "price=gte.9.99") == [1, 2]
    assert await ids(server, "price=lt.9.99") == [3]
    assert await ids(server, "price=lte.9.99") == [1, 3]
    assert await ids(server, "price=5") == [3]
    assert await ids(server, "price=eq.5.00") == [3]
    assert await ids(server, "id=gt.1&id=lt.3") == [2]
    assert await ids(server, "id=gt.1&price=lt.10") == [3]
    assert await ids(server, "quantity=gte.2", "orders") == [1]
    assert await ids(server, "status=paid", "orders") == [1]


@pytest.mark.gen_test
async def test_in_and_is(server):
    assert await ids(server, "id=in.(1,3)") == [1, 3]
    assert await ids(server, "id=in.()") == []
    assert await ids(server, "name=in.(%22Gift%20Card%22,Widget)") == [1, 3]
    assert await ids(server, "id=not.in.(1,3)") == [2]
    assert (await server.patch("/api/products/2", {"description": None,
                                                   "in_stock": False})).status == 200
    assert await ids(server, "description=is.null") == [2]
    assert await ids(server, "description=not.is.null") == [1, 3]
    assert await ids(server, "in_stock=is.true") == [1, 3]
    assert await ids(server, "in_stock=is.false") == [2]
    assert await ids(server, "in_stock=false") == [2]
    assert await ids(server, "in_stock=eq.true") == [1, 3]


@pytest.mark.gen_test
async def test_not_negates(server):
    assert await ids(server, "name=not.eq.Widget") == [2, 3]
    assert await ids(server, "price=not.gt.9.99") == [1, 3]
    assert await ids(server, "name=not.like.G*") == [1]
    assert await ids(server, "name=not.ilike.*g*") == []


@pytest.mark.gen_test
async def test_or_and_nested_and(server):
    assert await ids(server, "or=(price.lt.6,name.ilike.*gad*)") == [2, 3]
    assert await ids(server, "or=(id.eq.1,id.eq.2)&price=gt.10") == [2]
    assert await ids(server, "or=(and(price.gt.20,name.eq.Gadget),id.eq.1)") == [1, 2]
    assert await ids(server, "or=(and(price.gt.20,name.eq.Widget),id.eq.3)") == [3]
    assert await ids(server, "or=(id.eq.3,not.and(id.gte.1,id.lte.2))") == [3]
    assert await ids(server, "or=(id.in.(1,2),name.eq.%22Gift%20Card%22)") == [1, 2, 3]
    assert await ids(server, "and=(id.gt.1,or(name.eq.Widget,name.eq.Gadget))") == [2]
    assert await ids(server, "or=(name.not.eq.Widget,id.eq.1)") == [1, 2, 3]
    assert await ids(server, "or=(description.is.null,id.eq.1)") == [1]


@pytest.mark.gen_test
async def test_plain_values_with_dots_and_eq_escape(server):
    created = await server.post("/api/users", {"name": "Ann", "email": "a.b@x.com"})
    assert created.status == 201
    assert await ids(server, "email=a.b@x.com", "users") == [created.body["id"]]
    assert await ids(server, "email=eq.a.b@x.com", "users") == [created.body["id"]]
    # a value that starts with an operator name and a dot needs eq. first
    [odd] = await add_products(server, "in.stock")
    [liked] = await add_products(server, "like.this")
    assert await ids(server, "name=eq.in.stock") == [odd]
    assert await ids(server, "name=eq.like.this") == [liked]
    assert await ids(server, "name=not.eq.in.stock&id=gt.3") == [liked]
    assert_bad_param(await server.get("/api/products?name=in.stock"), "name")
    # a value that merely contains dots and no operator prefix is plain
    [version] = await add_products(server, "v1.2.3")
    assert await ids(server, "name=v1.2.3") == [version]


# -- like / ilike ------------------------------------------------------------------

@pytest.mark.gen_test
async def test_like_is_case_sensitive_and_ilike_is_not(server):
    lower, upper = await add_products(server, "widget lower", "WIDGET UPPER")
    assert await ids(server, "name=like.*idget*") == [1, lower]
    assert await ids(server, "name=like.Widget*") == [1]
    assert await ids(server, "name=like.WIDGET*") == [upper]
    assert await ids(server, "name=like.widget") == []
    assert await ids(server, "name=ilike.widget*") == [1, lower, upper]
    assert await ids(server, "name=ilike.*UPPER") == [upper]
    assert await ids(server, "name=ilike.widget") == [1]
    # like is anchored: the whole value must match
    assert await ids(server, "name=like.idget") == []
    assert await ids(server, "description=ilike.*GADGET") == [2]


@pytest.mark.gen_test
async def test_like_accents_are_not_folded(server):
    [cafe] = await add_products(server, "café")
    [plain] = await add_products(server, "cafe")
    assert await ids(server, quote("name=like.caf*", safe="=.*")) == [cafe, plain]
    assert await ids(server, "name=" + quote("like.café")) == [cafe]
    assert await ids(server, "name=ilike.cafe") == [plain]
    assert await ids(server, "name=" + quote("ilike.CAFÉ")) in ([cafe], [])


@pytest.mark.gen_test
async def test_like_wildcards_and_literal_percent_underscore(server):
    pct, thousand, snake, snakex, star = await add_products(
        server, "100% cotton", "1000 threads", "snake_case", "snakeXcase", "a*b")
    assert await ids(server, "name=like.100%25*") == [pct]
    assert await ids(server, "name=ilike.100%25*") == [pct]
    assert await ids(server, "name=like.*%25*") == [pct]
    assert await ids(server, "name=like.snake_case") == [snake]
    assert await ids(server, "name=ilike.SNAKE_CASE") == [snake]
    assert await ids(server, "name=like.snake*case") == [snake, snakex]
    assert await ids(server, "name=like.*_*") == [snake]
    assert await ids(server, "name=like.*[*") == []
    assert await ids(server, "name=like.a*b") == [star]
    assert thousand not in await ids(server, "name=like.100%25*")
    assert await ids(server, "name=like.*\\*") == []


# -- order, limit, offset, select, count ---------------------------------------------

@pytest.mark.gen_test
async def test_order(server):
    assert await ids(server, "") == [1, 2, 3]
    assert await ids(server, "order=price") == [3, 1, 2]
    assert await ids(server, "order=price.asc") == [3, 1, 2]
    assert await ids(server, "order=price.desc") == [2, 1, 3]
    assert await ids(server, "order=name.desc") == [1, 3, 2]
    await add_products(server, "Cheap", "Cheaper", price="5.00")  # ids 4, 5
    assert await ids(server, "order=price,id.desc") == [5, 4, 3, 1, 2]
    assert await ids(server, "order=price.desc,name.desc") == [2, 1, 3, 5, 4]
    assert await ids(server, "order=price&order=id.desc") == [5, 4, 3, 1, 2]


@pytest.mark.gen_test
async def test_limit_offset_and_default_limit(small_pages):
    server = small_pages
    response = await server.get("/api/products")
    assert [i["id"] for i in response.body["items"]] == [1, 2]
    assert response.body["next"] is not None
    assert response.body["next"].startswith("/api/products?")
    assert await ids(server, "limit=1") == [1]
    assert await ids(server, "limit=0") == []
    assert await ids(server, "offset=1") == [2, 3]
    assert await ids(server, "offset=1&limit=1") == [2]
    assert await ids(server, "offset=5") == []
    assert await ids(server, "order=price.desc&offset=1") == [1, 3]


@pytest.mark.gen_test
async def test_limit_is_capped_at_max_limit(capped):
    server = capped
    await add_products(server, *[f"P{i}" for i in range(7)])
    response = await server.get("/api/products?limit=100")
    assert [i["id"] for i in response.body["items"]] == [1, 2, 3, 4, 5]
    assert response.body["next"] is not None
    assert len((await server.get("/api/products")).body["items"]) == 5
    assert len((await server.get("/api/products?limit=3")).body["items"]) == 3
    items, pages = await walk(server, "/api/products?limit=1000")
    assert [i["id"] for i in items] == list(range(1, 11))
    assert pages == 2


@pytest.mark.gen_test
async def test_select(server):
    response = await server.get("/api/products?select=id,name&order=id.desc")
    assert response.body["items"] == [{"id": 3, "name": "Gift Card"}, {"id": 2, "name": "Gadget"},
                                      {"id": 1, "name": "Widget"}]
    response = await server.get("/api/products?select=price&id=1")
    assert response.body["items"] == [{"price": "9.99"}]
    # select without the ordering column still orders and pages
    response = await server.get("/api/products?select=name&order=price&limit=2")
    assert response.body["items"] == [{"name": "Gift Card"}, {"name": "Widget"}]
    follow = await server.get(response.body["next"])
    assert follow.body["items"] == [{"name": "Gadget"}]
    assert follow.body["next"] is None


@pytest.mark.gen_test
async def test_count(server):
    response = await server.get("/api/products?count=true&limit=1")
    assert response.body["total"] == 3
    assert len(response.body["items"]) == 1
    assert (await server.get("/api/products?count=true&price=lt.10")).body["total"] == 2
    assert (await server.get("/api/products?count=true&id=gt.100")).body == {
        "items": [], "next": None, "total": 0}
    assert "total" not in (await server.get("/api/products?count=false")).body
    assert "total" not in (await server.get("/api/products")).body


# -- keyset paging ---------------------------------------------------------------------

async def walk(server, first: str) -> tuple[list[dict], int]:
    """Follow `next` links from ``first``; all items and the number of pages."""
    items, pages, path = [], 0, first
    while path is not None:
        response = await server.get(path)
        assert response.status == 200, (path, response.body)
        items.extend(response.body["items"])
        pages += 1
        path = response.body["next"]
        assert pages < 100
    return items, pages


@pytest.mark.gen_test
async def test_keyset_paging_walks_every_row_once(server):
    await add_products(server, *[f"Item {i:02}" for i in range(20)])  # ids 4..23
    items, pages = await walk(server, "/api/products?limit=5")
    assert [i["id"] for i in items] == list(range(1, 24))
    assert pages == 5
    first = await server.get("/api/products?limit=5")
    assert "after=" in first.body["next"]
    assert "offset=" not in first.body["next"]
    assert "limit=5" in first.body["next"]
    # the last page has no next link, also when it is exactly full
    items, pages = await walk(server, "/api/products?limit=23")
    assert (len(items), pages) == (23, 1)


@pytest.mark.gen_test
async def test_keyset_paging_with_custom_order_and_ties(server):
    prices = ["5.00", "5.00", "7.50", "9.99", "9.99", "9.99", "1.00", "30.00"]
    for i, price in enumerate(prices):
        created = await server.post("/api/products", {"name": f"T{i}", "price": price,
                                                      "sku": f"T-{i}"})
        assert created.status == 201
    everything = (await server.get("/api/products?order=price.desc,id&limit=100")).body["items"]
    items, pages = await walk(server, "/api/products?order=price.desc&limit=3")
    assert [i["id"] for i in items] == [i["id"] for i in everything]
    assert len({i["id"] for i in items}) == 11
    assert pages == 4
    prices_seen = [float(i["price"]) for i in items]
    assert prices_seen == sorted(prices_seen, reverse=True)
    # with a filter and select, the filter holds on every page
    items, _ = await walk(server, "/api/products?price=lt.10&order=name.desc&select=id,name&limit=2")
    names = [i["name"] for i in items]
    assert names == sorted(names, reverse=True)
    assert len(names) == 9
    assert set(items[0]) == {"id", "name"}


@pytest.mark.gen_test
async def test_paging_by_nullable_column_uses_a_null_aware_cursor(server):
    await add_products(server, *[f"N{i}" for i in range(5)])  # description null
    items, pages = await walk(server, "/api/products?order=description&limit=3")
    assert sorted(i["id"] for i in items) == list(range(1, 9))
    assert pages == 3
    first = await server.get("/api/products?order=description&limit=3")
    assert "after=" in first.body["next"]


@pytest.mark.gen_test
async def test_cursor_sees_rows_inserted_behind_it_exactly_once(server):
    first = await server.get("/api/products?limit=2")
    await add_products(server, "Late")
    rest, _ = await walk(server, first.body["next"])
    assert [i["id"] for i in first.body["items"] + rest] == [1, 2, 3, 4]


# -- bad parameters --------------------------------------------------------------------

BAD_PARAMETERS = [
    ("nope=1", "nope"),
    ("price=gt.abc", "price"),
    ("price=abc", "price"),
    ("id=1.5", "id"),
    ("id=gt.", "id"),
    ("id=in.1,2", "id"),
    ("id=in.(1,x)", "id"),
    ("id=like.1*", "id"),
    ("in_stock=maybe", "in_stock"),
    ("in_stock=is.maybe", "in_stock"),
    ("description=is.5", "description"),
    ("created_at=gt.yesterday", "created_at"),
    ("order=nope", "order"),
    ("order=price.sideways", "order"),
    ("order=price.desc.asc.up", "order"),
    ("limit=-1", "limit"),
    ("limit=abc", "limit"),
    ("limit=%C2%B2", "limit"),
    ("offset=%C2%B2", "offset"),
    ("id=%C2%B2", "id"),
    ("id=%2B-1", "id"),
    ("limit=1&limit=2", "limit"),
    ("offset=x", "offset"),
    ("select=nope", "select"),
    ("select=id,nope", "select"),
    ("count=maybe", "count"),
    ("after=garbage!!", "after"),
    ("after=WzFd&offset=1", "after"),
    ("or=price.lt.5", "or"),
    ("or=(price.lt.5", "or"),
    ("or=(nope.eq.1)", "or"),
    ("or=(price.wat.5)", "or"),
    ("or=(price)", "or"),
    ("or=()", "or"),
    ("and=(id.eq.x)", "and"),
]


@pytest.mark.gen_test
async def test_bad_parameters_are_400_naming_the_parameter(server):
    for query, parameter in BAD_PARAMETERS:
        response = await server.get(f"/api/products?{query}")
        assert response.status == 400, query
        assert_bad_param(response, parameter)


@pytest.mark.gen_test
async def test_cursor_from_another_order_is_rejected(server):
    first = await server.get("/api/products?limit=1&order=price")
    cursor = first.body["next"].split("after=")[1].split("&")[0]
    assert_bad_param(await server.get(f"/api/products?limit=1&after={cursor}"), "after")
