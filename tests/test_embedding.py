"""Related rows through foreign keys (API.md 7.1), on every backend: `select=id,users(name)`
(an object or null) and `select=id,orders(id)` (an array), aliases, hints where two keys
link the same tables, composite and self-referencing keys, nesting, per-embed order,
limit, offset and filters, auth on embedded rows, one statement per embed whatever the
page size, and exact pagination while embedding."""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import quote

import jsonschema
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pylight import hookimpl
from tests.auth_support import CallerByHeader
from tests.awkward_schemas import load_awkward

PROPERTY = settings(max_examples=15, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def q(text: str) -> str:
    """A select or other value as a URL query value (spaces, parentheses, '!')."""
    return quote(text, safe="*,().:!=")


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, (response.status, response.body)
    error = response.body["error"]
    assert error["status"] == status
    return error


class Statements:
    """Counts the SQL statements the server sends to its database (all three backends
    run every statement through peewee's ``execute_sql``)."""

    def __init__(self, server: Any) -> None:
        self.db = server.app.db.db
        self.plain = self.db.execute_sql
        self.seen: list[str] = []
        self.lock = threading.Lock()

        def counting(sql: str, *args: Any, **kwargs: Any) -> Any:
            with self.lock:
                self.seen.append(sql)
            return self.plain(sql, *args, **kwargs)

        self.db.execute_sql = counting

    def take(self) -> list[str]:
        with self.lock:
            seen, self.seen = self.seen, []
        return seen


# -- the demo tables: both directions, aliases, *, the item route, refusals -------------------

@pytest.fixture
def demo(make_server: Any) -> Any:
    """The demo tables, with the users' password hashes hidden."""
    return make_server({"table:users": {"hidden": "password_hash"}})


@pytest.mark.gen_test(timeout=60)
async def test_both_directions_on_the_demo(demo, database):
    server = demo
    database.execute("INSERT INTO users (name, email) VALUES ('Carol', 'carol@example.com')")
    orders = await server.get("/api/orders?select=id,quantity,users(name,email)")
    assert orders.status == 200, orders.body
    assert orders.body["items"] == [
        {"id": 1, "quantity": 2, "users": {"name": "Alice", "email": "alice@example.com"}},
        {"id": 2, "quantity": 1, "users": {"name": "Bob", "email": "bob@example.com"}}]
    users = await server.get("/api/users?select=id,name,orders(id,quantity)")
    assert users.body["items"] == [
        {"id": 1, "name": "Alice", "orders": [{"id": 1, "quantity": 2}]},
        {"id": 2, "name": "Bob", "orders": [{"id": 2, "quantity": 1}]},
        {"id": 3, "name": "Carol", "orders": []}]
    # `*` on both sides; hidden columns stay hidden inside embeds too
    star = await server.get("/api/orders?select=*,users(*)&id=1")
    record = star.body["items"][0]
    plain = (await server.get("/api/orders/1")).body
    assert {k: v for k, v in record.items() if k != "users"} == plain
    assert record["users"] == (await server.get("/api/users/1")).body
    assert "password_hash" not in record["users"]
    # an alias renames; a select of embeds only shows only them
    aliased = await server.get(f"/api/orders?select={q('customer:users(name),products(sku)')}")
    assert aliased.body["items"] == [
        {"customer": {"name": "Alice"}, "products": {"sku": "GAD-001"}},
        {"customer": {"name": "Bob"}, "products": {"sku": "GIFT-005"}}]
    # an alias may be named like a column it does not select, even the join's own
    shadow = await server.get(f"/api/orders?select={q('id,user_id:users(name),u:users(email)')}")
    assert shadow.body["items"] == [
        {"id": 1, "user_id": {"name": "Alice"}, "u": {"email": "alice@example.com"}},
        {"id": 2, "user_id": {"name": "Bob"}, "u": {"email": "bob@example.com"}}]
    # the item route embeds the same way
    item = await server.get(f"/api/orders/2?select={q('id,users(name),products(*)')}")
    assert item.status == 200
    assert item.body == {"id": 2, "users": {"name": "Bob"},
                         "products": (await server.get("/api/products/3")).body}
    one = await server.get(f"/api/users/3?select={q('name,orders(*)')}")
    assert one.body == {"name": "Carol", "orders": []}
    # nested prefixes: a filter two levels down leaves the rows above it alone
    nested = await server.get(f"/api/users?select={q('name,orders(id,products(name))')}"
                              "&orders.products.name=like.Gift*")
    assert nested.body["items"] == [
        {"name": "Alice", "orders": [{"id": 1, "products": None}]},
        {"name": "Bob", "orders": [{"id": 2, "products": {"name": "Gift Card"}}]},
        {"name": "Carol", "orders": []}]


@pytest.mark.gen_test(timeout=60)
async def test_refusals_are_400s_naming_the_parameter(server):
    cases = {
        "users?select=id,nope(id)": ("select", "no table named 'nope'"),
        "orders?select=id,products(id,nope)": ("select", "unknown column 'nope'"),
        "orders?select=id,users(": ("select", "parentheses"),
        "orders?select=id,users(name)),x": ("select", "parentheses"),
        "orders?select=id,users!nope(name)": ("select", "users!nope"),
        "orders?select=id,:users(name)": ("select", "alias"),
        "orders?select=id,users()": ("select", "at least one column"),
        "orders?select=id,users(name),users(email)": ("select", "twice"),
        "orders?select=id,users:users(name),users(email)": ("select", "twice"),
        "orders?select=id,users(name)&users.limit=1": ("users.limit", "many-to-one"),
        "orders?select=id,users(name)&users.order=name": ("users.order", "many-to-one"),
        "users?select=id,orders(id)&orders.limit=x": ("orders.limit", "whole number"),
        "users?select=id,orders(id)&orders.order=nope": ("orders.order", "unknown column"),
        "users?select=id,orders(id)&orders.nope=1": ("orders.nope", "unknown column"),
        "users?select=id,orders(id)&orders.after=abc": ("orders.after", "not for embedded"),
        "users?select=id,orders(id)&orders.count=true": ("orders.count", "not for embedded"),
        "users?select=id,orders(id)&orders.select=id": ("orders.select", "in the select"),
        "users?select=id,orders(id)&other.limit=1": ("other.limit", "unknown column"),
        "users?select=id,orders(id,products(id))&orders.products.limit=1":
            ("orders.products.limit", "many-to-one"),
        "users?select=id,orders(id,products(id))&orders.products.nope=eq.1":
            ("orders.products.nope", "unknown column"),
        "users?select=id,o:orders(id,p:products(id))&o.p.price=gt.x":
            ("o.p.price", "o.p.price: "),
    }
    for query, (parameter, words) in cases.items():
        error = error_of(await server.get(f"/api/{query}"), 400)
        assert error["details"]["parameter"] == parameter, (query, error)
        assert words in error["message"], (query, error)
    # products and users are not linked by any key
    error = error_of(await server.get("/api/products?select=id,users(name)"), 400)
    assert "no foreign key links 'products' and 'users'" in error["message"]
    # nesting stops at three levels
    deep = "id,orders(id,users(id,orders(id,users(id))))"
    error = error_of(await server.get(f"/api/users?select={q(deep)}"), 400)
    assert "at most 3 levels" in error["message"]
    three = await server.get(f"/api/users?select={q('id,orders(id,users(id,orders(id)))')}")
    assert three.status == 200
    assert three.body["items"][0] == {"id": 1, "orders": [{"id": 1, "users": {
        "id": 1, "orders": [{"id": 1}]}}]}
    # the item route checks its select too
    error_of(await server.get("/api/orders/1?select=id,nope(id)"), 400)
    # a feed does not embed: a clear 400 before any upgrade
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    refused = await server.get("/ws/orders?select=id,users(name)", headers=upgrade)
    assert "feed cannot embed" in error_of(refused, 400)["message"]
    sse = await server.get("/sse/orders?select=id,users(name)",
                           headers={"Accept": "text/event-stream"})
    assert "feed cannot embed" in error_of(sse, 400)["message"]


@pytest.fixture
def hidden_keys(database: Any, make_server: Any) -> Any:
    """A key to a hidden column (authors.code), and a hidden key column (notes.book_id)."""
    database.execute(
        "CREATE TABLE authors (id INTEGER NOT NULL PRIMARY KEY, code VARCHAR(5) NOT NULL UNIQUE)",
        "CREATE TABLE reviews (id INTEGER NOT NULL PRIMARY KEY, author_code VARCHAR(5) NOT NULL, "
        "FOREIGN KEY (author_code) REFERENCES authors (code))",
        "CREATE TABLE notes (id INTEGER NOT NULL PRIMARY KEY, author_id INTEGER, book_id INTEGER, "
        "FOREIGN KEY (author_id) REFERENCES authors (id), "
        "FOREIGN KEY (book_id) REFERENCES authors (id))",
        "INSERT INTO authors VALUES (1, 'sec')",
        "INSERT INTO reviews VALUES (1, 'sec')", "INSERT INTO notes VALUES (1, 1, 1)")
    return make_server({"table:authors": {"hidden": "code"}, "table:notes": {"hidden": "book_id"}},
                       seed=False)


@pytest.mark.gen_test(timeout=60)
async def test_hidden_columns_are_never_a_way_in(hidden_keys):
    server = hidden_keys
    for path in ("/api/reviews?select=id,authors(id)", "/api/authors?select=id,reviews(id)"):
        error = error_of(await server.get(path), 400)
        assert "no foreign key links" in error["message"], path
    # notes has two keys to authors, one over a hidden column: only the other is a way
    notes = await server.get(f"/api/notes?select={q('*,authors(*)')}")
    assert notes.body["items"] == [{"id": 1, "author_id": 1, "authors": {"id": 1}}]
    authors = await server.get(f"/api/authors/1?select={q('*,notes(*)')}")
    assert authors.body == {"id": 1, "notes": [{"id": 1, "author_id": 1}]}


# -- the awkward schemas: two keys to one table, a composite key, a key to itself -------------

@pytest.fixture
def awkward(database: Any, make_server: Any) -> Any:
    load_awkward(database)
    return make_server(seed=False)


async def read_all(server: Any, table: str, query: str = "") -> list[dict[str, Any]]:
    response = await server.get(f"/api/{quote(table)}?limit=1000{query}")
    assert response.status == 200, response.body
    return response.body["items"]


async def embedded(server: Any, table: str, select: str, query: str = "") -> list[dict[str, Any]]:
    """``table``'s rows with ``select`` (every row: one page)."""
    response = await server.get(f"/api/{quote(table)}?limit=1000&select={q(select)}{query}")
    assert response.status == 200, (select, response.body)
    return response.body["items"]


def pick(record: dict[str, Any] | None, *names: str) -> dict[str, Any] | None:
    return None if record is None else {name: record[name] for name in names}


@pytest.mark.gen_test(timeout=120)
async def test_awkward_keys(awkward):
    server = awkward
    customers = {c["CustomerID"]: c for c in await read_all(server, "Customer")}
    orders = await read_all(server, "Orders")
    # Two keys from Orders to Customer: without a hint, a 400 listing both
    error = error_of(await server.get(f"/api/Orders?select={q('OrderID,Customer(FirstName)')}"),
                     400)
    candidates = {c["embed"]: c for c in error["details"]["candidates"]}
    assert set(candidates) == {"Customer!customer_id", "Customer!ship_to_id"}
    assert candidates["Customer!ship_to_id"]["cardinality"] == "many-to-one"
    assert "Customer!customer_id" in error["message"]
    # with hints (and aliases): an object, or null for a NULL key
    got = await embedded(server, "Orders", "OrderID,buyer:Customer!customer_id(FirstName,order),"
                                           "ship_to:Customer!ship_to_id(FirstName)")
    assert got == [{"OrderID": o["OrderID"],
                    "buyer": pick(customers[o["customer_id"]], "FirstName", "order"),
                    "ship_to": pick(customers.get(o["ship_to_id"]), "FirstName")}
                   for o in orders]
    assert [o["ship_to"] for o in got if o["OrderID"] in (3, 7)] == [None, None]
    # and the other way: arrays in the child's key order, empty where none
    got = await embedded(server, "Customer", "CustomerID,bought:Orders!customer_id(OrderID),"
                                             "shipped:Orders!ship_to_id(OrderID)")
    for customer in got:
        key = customer["CustomerID"]
        assert customer["bought"] == [{"OrderID": o["OrderID"]} for o in orders
                                      if o["customer_id"] == key]
        assert customer["shipped"] == [{"OrderID": o["OrderID"]} for o in orders
                                       if o["ship_to_id"] == key]
    assert [c["bought"] for c in got if c["CustomerID"] in (5, 6)] == [[], []]
    # a NULL key (Dan has no country): null; a country nobody lives in: []
    got = await embedded(server, "Customer", "FirstName,countries(name)")
    assert [c["countries"] for c in got if c["FirstName"] == "Dan"] == [None]
    assert all(c["countries"] is not None for c in got if c["FirstName"] != "Dan")
    got = await embedded(server, "countries", "code,Customer(FirstName)")
    assert {c["code"]: len(c["Customer"]) for c in got} == {
        "DE": 2, "CH": 1, "ÅX": 1, "VA": 0, "XX": 1, "NZ": 1, "TV": 1}
    # columns named like parameters filter inside an embed: Customer.order=eq.3
    got = await embedded(server, "countries", "code,Customer(FirstName)",
                         "&Customer.order=eq.3&Customer.limit=5")
    assert {c["code"]: [x["FirstName"] for x in c["Customer"]] for c in got if c["Customer"]} == {
        "DE": ["Ada"], "CH": ["Bob"], "XX": ["Hé"]}


@pytest.mark.gen_test(timeout=120)
async def test_awkward_composite_and_self_keys_and_nesting(awkward):
    server = awkward
    items = await read_all(server, "Order Items")
    shipments = await read_all(server, "shipments")
    # a composite key, both ways
    got = await embedded(server, "Order Items", "order_id,line_no,shipments(id,carrier)")
    assert got == [{"order_id": i["order_id"], "line_no": i["line_no"], "shipments": [
        pick(s, "id", "carrier") for s in shipments
        if (s["order_id"], s["line_no"]) == (i["order_id"], i["line_no"])]} for i in items]
    got = await embedded(server, "shipments", "id,Order Items(product,quantity)")
    by_key = {(i["order_id"], i["line_no"]): i for i in items}
    assert got == [{"id": s["id"], "Order Items": pick(by_key[(s["order_id"], s["line_no"])],
                                                        "product", "quantity")}
                   for s in shipments]
    # a key to itself goes both ways: the hint's direction chooses
    error = error_of(await server.get(f"/api/group?select={q('id,group(name)')}"), 400)
    assert {c["embed"] for c in error["details"]["candidates"]} == {
        "group!parent_id!one", "group!parent_id!many"}
    error_of(await server.get(f"/api/group?select={q('id,group!parent_id(name)')}"), 400)
    groups = await read_all(server, "group")
    by_id = {g["id"]: g for g in groups}
    got = await embedded(server, "group", "id,parent:group!parent_id!one(id,name),"
                                          "children:group!many(id)")
    assert got == [{"id": g["id"], "parent": pick(by_id.get(g["parent_id"]), "id", "name"),
                    "children": [{"id": c["id"]} for c in groups if c["parent_id"] == g["id"]]}
                   for g in groups]
    assert got[0]["parent"] is None and got[3]["children"] == []
    # three levels, each with its own order and limit, names with spaces and capitals
    select = "CustomerID,Orders!customer_id(OrderID,Order Items(line_no,quantity,shipments(id)))"
    # (parameters by the embeds' keys: Orders, then Orders.Order Items, ...)
    query = ("&Orders.limit=1&Orders.order=OrderID.desc&Orders.Order Items.order=quantity.desc"
             "&Orders.Order Items.shipments.order=id.desc")
    got = await embedded(server, "Customer", select, query.replace(" ", "%20"))
    ada = next(c for c in got if c["CustomerID"] == 1)
    assert ada["Orders"] == [{"OrderID": 2, "Order Items": [
        {"line_no": 1, "quantity": 2, "shipments": []}]}]
    frank = next(c for c in got if c["CustomerID"] == 7)
    assert frank["Orders"] == [{"OrderID": 6, "Order Items": [
        {"line_no": 2, "quantity": 2, "shipments": []},
        {"line_no": 1, "quantity": 1, "shipments": [pick(s, "id") for s in shipments
                                                    if (s["order_id"], s["line_no"]) == (6, 1)]},
        {"line_no": 3, "quantity": 1, "shipments": [pick(s, "id") for s in shipments
                                                    if (s["order_id"], s["line_no"]) == (6, 3)]},
    ]}]
    deeper = "code,Customer(Orders!customer_id(Order Items(shipments(id))))"
    error = error_of(await server.get(f"/api/countries?select={q(deeper)}"), 400)
    assert "at most 3 levels" in error["message"]


# -- per-embed order, limit, offset and filters, with ties and NULLs; paging; statements ----

LIBRARY = [
    "CREATE TABLE authors (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(20) NOT NULL)",
    "CREATE TABLE books (id INTEGER NOT NULL PRIMARY KEY, author_id INTEGER, "
    "title VARCHAR(20) NOT NULL, `rank` INTEGER, "
    "FOREIGN KEY (author_id) REFERENCES authors (id))",
]
AUTHORS = [(1, "Ann"), (2, "Ben"), (3, "Cy"), (4, "Di"), (5, "Ed"), (6, "Flo")]
# ranks tie and are NULL; titles repeat; author 5 has none, some books have no author
BOOKS = [(1, 1, "b", 2), (2, 1, "a", 2), (3, 1, "c", None), (4, 1, "a", 1), (5, 2, "c", 3),
         (6, 2, "b", None), (7, 2, "b", None), (8, 3, "a", 1), (9, 3, "a", 1), (10, 3, "a", 1),
         (11, None, "z", 1), (12, 4, "d", None), (13, None, "y", None), (14, 6, "c", 2),
         (15, 6, "b", 3), (16, 6, "a", 2), (17, 1, "c", 3), (18, 2, "a", 1)]


@pytest.fixture
def library(database: Any, make_server: Any) -> Any:
    statements = [s if database.backend == "mysql" else s.replace("`", '"') for s in LIBRARY]
    database.execute(
        *statements,
        "INSERT INTO authors (id, name) VALUES " + ", ".join(f"({i}, '{n}')" for i, n in AUTHORS),
        "INSERT INTO books VALUES " + ", ".join(
            f"({i}, {'NULL' if a is None else a}, '{t}', {'NULL' if r is None else r})"
            for i, a, t, r in BOOKS))
    return make_server(seed=False)


def expected_books(backend: str, author: int, order: list[tuple[str, bool, str | None]],
                   keep: Any, offset: int, limit: int) -> list[dict[str, Any]]:
    """What an author's embedded books must be: filtered, ordered (NULLs where the
    database puts them, ties broken by the key) and cut per author, in Python."""
    nulls_high = backend == "postgresql"
    rows = [{"id": i, "title": t, "rank": r} for i, a, t, r in BOOKS if a == author and keep(r, t)]
    for column, descending, nulls in reversed([*order, ("id", False, None)]):
        last = nulls == "last" if nulls else nulls_high != descending
        present = sorted((r for r in rows if r[column] is not None), key=lambda r: r[column],
                         reverse=descending)
        missing = [r for r in rows if r[column] is None]
        rows = present + missing if last else missing + present
    return [{"id": r["id"], "rank": r["rank"]} for r in rows[offset:offset + limit]]


ORDERS = st.lists(st.tuples(st.sampled_from(["rank", "title"]), st.booleans(),
                            st.sampled_from([None, "first", "last"])),
                  max_size=2, unique_by=lambda item: item[0])
FILTERS = {"": lambda r, t: True, "&books.rank=gt.1": lambda r, t: r is not None and r > 1,
           "&books.rank=is.null": lambda r, t: r is None,
           "&books.or=(title.eq.a,rank.eq.3)": lambda r, t: t == "a" or r == 3}


def test_per_embed_order_limit_offset_filters_and_paging(library, database, io_loop):
    """Whatever the embed's order (ties, NULLs first or last), limit, offset and filter,
    and whatever the parents' page size and order: walking `next` visits every author
    once, each with exactly its books as the rules say."""

    @PROPERTY
    @given(order=ORDERS, limit=st.integers(0, 4), offset=st.integers(0, 2),
           condition=st.sampled_from(sorted(FILTERS)), page=st.integers(1, 4),
           parent_order=st.sampled_from(["", "&order=name.desc", "&order=id.desc"]))
    # NULLs where the database puts them, ascending and descending; ties broken by the key
    @example(order=[("rank", False, None)], limit=3, offset=0, condition="", page=2,
             parent_order="")
    @example(order=[("rank", True, None), ("title", False, None)], limit=2, offset=1,
             condition="", page=3, parent_order="&order=name.desc")
    @example(order=[("title", True, "last")], limit=2, offset=0, condition="", page=4,
             parent_order="&order=id.desc")
    @example(order=[], limit=4, offset=0, condition="&books.or=(title.eq.a,rank.eq.3)", page=1,
             parent_order="")
    def check(order, limit, offset, condition, page, parent_order):
        io_loop.run_sync(lambda: check_example(library, database.backend, order, limit, offset,
                                               condition, page, parent_order), timeout=60)

    check()


AUTHOR_FILTERS = {"": lambda a: True,
                  "&authors.name=in.(Ann,Cy,Flo)": lambda a: a[1] in ("Ann", "Cy", "Flo"),
                  "&authors.id=gt.2": lambda a: a[0] > 2}
BOOK_COLUMNS = ("id", "author_id", "title", "rank")


def test_many_to_one_embeds_read_with_the_page(library, io_loop):
    """A many-to-one embed is read in the page's own statement (a LEFT JOIN): whatever
    the columns shown on either side, the embed's filter, the page size and the order
    (ties, NULLs), walking `next` visits every book once, each with its author as
    the rules say (null without one, or where the filter leaves it out)."""

    @PROPERTY
    @given(columns=st.sampled_from(["id", "id,title", "title,id,author_id", "*"]),
           shown=st.sampled_from(["name", "id,name", "*", "name,id"]),
           condition=st.sampled_from(sorted(AUTHOR_FILTERS)), page=st.integers(1, 5),
           parent_order=st.sampled_from(["", "&order=title.desc", "&order=rank.asc.nullsfirst",
                                         "&order=author_id.desc"]))
    @example(columns="id", shown="name", condition="&authors.id=gt.2", page=3,
             parent_order="&order=author_id.desc")
    def check(columns, shown, condition, page, parent_order):
        io_loop.run_sync(lambda: check_joined(library, columns, shown, condition, page,
                                              parent_order), timeout=60)

    check()


async def check_joined(server: Any, columns: str, shown: str, condition: str, page: int,
                       parent_order: str) -> None:
    select = q(f"{columns},authors({shown})")
    books = await walk(server, f"/api/books?select={select}&limit={page}{parent_order}{condition}")
    assert sorted(b["id"] for b in books) == [b[0] for b in BOOKS]
    book_columns = list(BOOK_COLUMNS) if columns == "*" else columns.split(",")
    author_columns = ["id", "name"] if shown == "*" else shown.split(",")
    authors = {a[0]: dict(zip(("id", "name"), a, strict=True)) for a in AUTHORS}
    for book in books:
        row = dict(zip(BOOK_COLUMNS, next(b for b in BOOKS if b[0] == book["id"]), strict=True))
        author = authors.get(row["author_id"])
        keep = author is not None and AUTHOR_FILTERS[condition]((author["id"], author["name"]))
        want = {**{c: row[c] for c in book_columns},
                "authors": {c: author[c] for c in author_columns} if keep else None}
        assert book == want, (select, condition, book)
        assert list(book) == [*book_columns, "authors"]
        if book["authors"] is not None:
            assert list(book["authors"]) == author_columns


async def walk(server: Any, path: str) -> list[dict[str, Any]]:
    """Every item of a list, following `next` links (each a different page)."""
    items, seen = [], set()
    while path:
        assert path not in seen, f"next points back at {path}"
        seen.add(path)
        response = await server.get(path)
        assert response.status == 200, (path, response.body)
        items.extend(response.body["items"])
        path = response.body["next"]
    return items


async def check_example(server: Any, backend: str, order: Any, limit: int, offset: int,
                        condition: str, page: int, parent_order: str) -> None:
    words = [f"{c}.{'desc' if d else 'asc'}" + (f".nulls{n}" if n else "") for c, d, n in order]
    query = (f"?select={q('id,books(id,rank)')}&limit={page}{parent_order}{condition}"
             f"&books.limit={limit}&books.offset={offset}")
    if words:
        query += f"&books.order={','.join(words)}"
    authors = await walk(server, f"/api/authors{query}")
    # every author once, in the parent's order, whatever the page size
    ids = [a["id"] for a in authors]
    assert sorted(ids) == [i for i, _ in AUTHORS], (query, ids)
    for author in authors:
        assert set(author) == {"id", "books"}
        want = expected_books(backend, author["id"], order, FILTERS[condition], offset, limit)
        assert author["books"] == want, (query, author["id"])


@pytest.mark.gen_test(timeout=60)
async def test_one_statement_per_embed_whatever_the_page_size(library):
    server = library
    statements = Statements(server)
    three = q("id,books(id,authors(name,books(id)))")
    await server.get(f"/api/authors?select={three}")  # a warm connection for each worker
    counts = {}
    for page in (1, 3, 6):
        statements.take()
        response = await server.get(f"/api/authors?select={three}&limit={page}")
        assert response.status == 200 and len(response.body["items"]) == page
        counts[page] = len(statements.take())
    # the page, then one statement per embed: three levels, whatever the page size
    assert counts == {1: 4, 3: 4, 6: 4}
    # A many-to-one embed with nothing below it is a LEFT JOIN in the page's own
    # statement; the other (with books below it) is read on its own, then its books.
    two = q("id,authors(name),other:authors(id,books(id))")
    for page in (2, 18):
        statements.take()
        response = await server.get(f"/api/books?select={two}&limit={page}")
        assert len(response.body["items"]) == page
        sent = statements.take()
        assert len(sent) == 3 and "LEFT OUTER JOIN" in sent[0], sent
    # the item route: the row by its key, then one per embed
    statements.take()
    item = await server.get(f"/api/authors/3?select={three}")
    assert item.body == {"id": 3, "books": [
        {"id": n, "authors": {"name": "Cy", "books": [{"id": 8}, {"id": 9}, {"id": 10}]}}
        for n in (8, 9, 10)]}
    assert len(statements.take()) == 4
    # no parent row with a key: nothing to read below it
    none = await server.get(f"/api/books?select={q('id,authors(name)')}&author_id=is.null")
    assert none.body["items"] == [{"id": 11, "authors": None}, {"id": 13, "authors": None}]
    assert len(statements.take()) == 1


# -- auth: permissions and row filters apply to embedded rows as to the table ----------------

class Gate(CallerByHeader):
    """``X-User: 1`` is user 1: reads everything, sees its own orders; user 2 may not read
    products; ``auditor`` sees every order but only active users."""

    @hookimpl
    def pylight_authorize(self, identity: Any, action: str, table: str, record: Any,
                          app: Any) -> bool:
        if identity is None:
            return False
        return not (identity.subject == "2" and table == "products")

    @hookimpl
    def pylight_row_filter(self, identity: Any, table: str, app: Any) -> str | None:
        if identity is None:
            return None
        if identity.subject == "auditor":
            return "active=is.true" if table == "users" else None
        return f"user_id=eq.{identity.subject}" if table == "orders" else None


@pytest.fixture
def gated(make_server: Any, database: Any) -> Any:
    server = make_server({"table:users": {"hidden": "password_hash"}}, plugins=[Gate()])
    database.execute("INSERT INTO orders (user_id, product_id, quantity, total, status) "
                     "VALUES (2, 2, 5, 122.50, 'paid')",
                     "UPDATE users SET active = FALSE WHERE id = 2")
    return server


@pytest.mark.gen_test(timeout=60)
async def test_auth_applies_to_embedded_rows(gated):
    server = gated
    one, two, auditor = ({"X-User": who} for who in ("1", "2", "auditor"))
    users = await server.get(f"/api/users?select={q('id,orders(id)')}", headers=one)
    assert users.body["items"] == [{"id": 1, "orders": [{"id": 1}]}, {"id": 2, "orders": []}]
    products = await server.get(f"/api/products?select={q('id,orders(id,users(name))')}",
                                headers=one)
    assert products.body["items"] == [
        {"id": 1, "orders": []}, {"id": 2, "orders": [{"id": 1, "users": {"name": "Alice"}}]},
        {"id": 3, "orders": []}]
    item = await server.get(f"/api/users/2?select={q('name,orders(*)')}", headers=one)
    assert item.body == {"name": "Bob", "orders": []}
    # a row filter on the embedded table hides a many-to-one row: null
    orders = await server.get(f"/api/orders?select={q('id,users(name)')}", headers=auditor)
    assert orders.body["items"] == [{"id": 1, "users": {"name": "Alice"}},
                                    {"id": 2, "users": None}, {"id": 3, "users": None}]
    # no read permission on an embedded table: 403 naming it, at any depth
    for path in ("/api/orders?select=id,products(name)",
                 "/api/users?select=id,orders(id,products(name))",
                 "/api/orders/2?select=id,products(name)"):
        error = error_of(await server.get(path, headers=two), 403)
        assert "'products'" in error["message"], path
    assert (await server.get("/api/orders?select=id,users(name)", headers=two)).status == 200
    # anonymous callers get their 401 as on the table itself
    error_of(await server.get("/api/users?select=id,orders(id)"), 401)


# -- the OpenAPI document and CSV say so too ----------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_openapi_describes_embeds_and_csv_carries_them(demo):
    import re

    server = demo
    document = (await server.get("/api/openapi.json")).body
    operation = document["paths"]["/api/orders"]["get"]
    select = next(p for p in operation["parameters"] if p["name"] == "select")
    assert "alias:table(columns)" in select["description"]
    pattern = re.compile(select["schema"]["pattern"])
    for text in ("id,quantity,users(name,email)", "*,customer:users(*)", "products!product_id(*)",
                 "id,users(id,orders(id))", "id", "*"):
        assert pattern.match(text), text
    for text in ("id,nope(name)", "id,:users(name)", "users", "id,users(name"):
        assert not pattern.match(text), text
    # a list item may carry related rows: an object or null, or an array
    item = document["components"]["schemas"]["orders_item"]
    assert item["additionalProperties"]["oneOf"][0] == {"type": "object", "nullable": True}
    assert document["components"]["schemas"]["orders"]["additionalProperties"] is False
    # and answers with embeds fit the documented list item
    schemas = document["components"]["schemas"]
    for table, select in (("orders", "id,users(name),products(*)"),
                          ("users", "*,orders(id,products(sku))")):
        items = (await server.get(f"/api/{table}?select={q(select)}")).body["items"]
        for record in items:
            jsonschema.validate(record, as_json_schema(schemas[f"{table}_item"]))
    # CSV: an embed is one column, its value JSON text; all=true embeds on every page
    response = await server.get(f"/api/orders?format=csv&select={q('id,users(name),products(sku)')}")
    assert response.status == 200
    assert read_csv(response.raw) == [["id", "users", "products"],
                                      ["1", {"name": "Alice"}, {"sku": "GAD-001"}],
                                      ["2", {"name": "Bob"}, {"sku": "GIFT-005"}]]
    every = await server.get(f"/api/users?format=csv&all=true&select={q('name,orders(id)')}")
    assert read_csv(every.raw) == [["name", "orders"], ["Alice", [{"id": 1}]],
                                   ["Bob", [{"id": 2}]]]


def as_json_schema(schema: Any) -> Any:
    """An OpenAPI 3.0 schema as JSON Schema (``nullable`` as a union with null)."""
    if isinstance(schema, list):
        return [as_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: as_json_schema(value) for key, value in schema.items() if key != "nullable"}
    return {"anyOf": [converted, {"type": "null"}]} if schema.get("nullable") else converted


def read_csv(raw: bytes) -> list[list[Any]]:
    """CSV rows, JSON text cells (objects, arrays) decoded."""
    import csv
    import io
    import json

    return [[json.loads(cell) if cell[:1] in "{[" and cell else cell for cell in row]
            for row in csv.reader(io.StringIO(raw.decode()))]


# -- whatever the select, a 200 or a clear 400 ---------------------------------------------------

TOKENS = ["users", "orders", "products", "id", "name", "user_id", "*", "(", ")", ",", ":", "!",
          "one", "many", "u", "x", " "]
SELECTS = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=14).map("".join)
EXTRAS = st.sampled_from(["", "&orders.limit=1", "&users.order=id", "&u.id=gt.1",
                          "&orders.users.name=eq.Bob", "&orders.offset=x", "&x.or=(id.eq.1)"])


def test_any_select_is_a_200_or_a_400(demo, io_loop):
    @PROPERTY
    @given(select=SELECTS, extra=EXTRAS, table=st.sampled_from(["users", "orders", "products"]))
    @example(select="id,u:orders(id,users(name)),users", extra="", table="products")
    def check(select, extra, table):
        for path in (f"/api/{table}?select={q(select)}{extra}",
                     f"/api/{table}/1?select={q(select)}{extra}"):
            response = io_loop.run_sync(lambda path=path: demo.get(path), timeout=30)
            assert response.status in (200, 400), (path, response.status, response.body)
            if response.status == 400:
                assert response.body["error"]["message"]

    check()
