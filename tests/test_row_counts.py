"""Row counts of the table list, `GET /api/?count=true` (the explorer's first page), on every
backend: exact where counting is cheap, the database's own estimate for large tables,
never a count of rows the caller may not see."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pylight import hookimpl, row_counts
from tests.auth_support import CallerByHeader
from tests.awkward_schemas import catalog, load_awkward

PROPERTY = settings(max_examples=8, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _q(backend: str, name: str) -> str:
    return f"`{name}`" if backend == "mysql" else f'"{name}"'


def real_count(database: Any, table: str) -> int:
    return int(database.execute(f"SELECT COUNT(*) FROM {_q(database.backend, table)}")[0][0])


@pytest.fixture
def awkward(make_server: Any, database: Any) -> Any:
    load_awkward(database)
    return make_server(seed=False)


@pytest.mark.gen_test(timeout=60)
async def test_every_table_is_counted_and_views_are_not(awkward, database):
    server = awkward
    plain = await server.get("/api/")
    assert all("rows" not in table for table in plain.body["tables"])
    listed = (await server.get("/api/?count=true")).body["tables"]
    relations = catalog(database)
    assert {t["name"] for t in listed} == set(relations)
    for table in listed:
        if relations[table["name"]].view:
            # a view may be costly to evaluate and has no estimate: not counted
            assert (table["rows"], table["rows_estimated"]) == (None, False), table["name"]
        else:
            assert table["rows"] == real_count(database, table["name"]), table["name"]
            assert table["rows_estimated"] is False


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("query", ["count=maybe", "count=true&count=true", "count="])
async def test_a_bad_count_is_a_400_naming_it(server, query):
    response = await server.get(f"/api/?{query}")
    assert response.status == 400
    assert response.body["error"]["details"] == {"parameter": "count"}


def _estimate(database: Any, table: str) -> int | None:
    """What the database's statistics say, read the way a DBA would."""
    if database.backend == "postgresql":
        rows = database.execute(f"SELECT reltuples::bigint FROM pg_class WHERE relname = '{table}' "
                                "AND relnamespace = 'public'::regnamespace")
        return int(rows[0][0]) if rows and rows[0][0] >= 0 else None
    if database.backend == "mysql":
        rows = database.execute("SELECT table_rows FROM information_schema.tables "
                                f"WHERE table_schema = DATABASE() AND table_name = '{table}'")
        return int(rows[0][0]) if rows and rows[0][0] is not None else None
    return None  # SQLite keeps no row estimate: always counted


def test_large_tables_give_the_databases_estimate(make_server, database, io_loop):
    """Whatever the table's size and the size up to which tables are counted: a table
    the statistics put above it gets their estimate, marked as one; any other is
    counted exactly."""
    server = make_server()
    analyze = {"postgresql": "ANALYZE products", "mysql": "ANALYZE TABLE products"}
    seen: set[bool] = set()

    @PROPERTY
    @given(size=st.integers(0, 12), exact_up_to=st.integers(0, 12))
    def check(size: int, exact_up_to: int) -> None:
        database.execute("DELETE FROM orders", "DELETE FROM products")
        if size:
            database.execute("INSERT INTO products (name, price, sku) VALUES " + ", ".join(
                f"('p{i}', 1.50, 'SKU-{i}')" for i in range(size)))
        if database.backend in analyze:
            database.execute(analyze[database.backend])
        estimate = _estimate(database, "products")
        saved, row_counts.EXACT_UP_TO = row_counts.EXACT_UP_TO, exact_up_to
        try:
            response = io_loop.run_sync(lambda: server.get("/api/?count=true"))
        finally:
            row_counts.EXACT_UP_TO = saved
        products = next(t for t in response.body["tables"] if t["name"] == "products")
        estimated = estimate is not None and estimate > exact_up_to
        assert products["rows_estimated"] is estimated
        assert products["rows"] == (estimate if estimated else size)
        seen.add(estimated)

    check()
    # both ways were taken (SQLite keeps no estimates: always counted)
    assert seen == ({False} if database.backend == "sqlite" else {False, True})


class RowGate(CallerByHeader):
    """Callers named by X-User: "1" sees only its own orders; nobody else gets in."""

    @hookimpl
    def pylight_authorize(self, identity: Any, action: str, table: str, record: Any,
                          app: Any) -> bool:
        return identity is not None and table != "users"

    @hookimpl
    def pylight_row_filter(self, identity: Any, table: str, app: Any) -> str | None:
        return f"user_id=eq.{identity.subject}" if identity and table == "orders" else None


@pytest.fixture
def gated(make_server: Any) -> Any:
    return make_server(plugins=[RowGate()])


@pytest.mark.gen_test(timeout=60)
async def test_counts_show_only_what_the_caller_may_read(gated, database):
    server = gated
    database.execute("INSERT INTO orders (user_id, product_id, quantity, total, status) "
                     "VALUES (1, 2, 1, 24.50, 'paid'), (2, 3, 1, 5.00, 'paid')")
    anonymous = await server.get("/api/?count=true")
    assert anonymous.status == 200 and anonymous.body["tables"] == []
    one = {"X-User": "1"}
    listed = {t["name"]: t for t in (await server.get("/api/?count=true", headers=one)).body["tables"]}
    assert set(listed) == {"products", "orders"}  # not users
    own = (await server.get("/api/orders?count=true", headers=one)).body["total"]
    assert listed["orders"]["rows"] == own == 2 and listed["products"]["rows"] == 3

    # A table too large to count is not estimated for a caller who sees part of it:
    # the whole table's estimate would tell of rows it may not see.
    saved, row_counts.EXACT_UP_TO = row_counts.EXACT_UP_TO, 0
    try:
        if database.backend == "postgresql":
            database.execute("ANALYZE orders", "ANALYZE products")
        elif database.backend == "mysql":
            database.execute("ANALYZE TABLE orders", "ANALYZE TABLE products")
        listed = {t["name"]: t for t in
                  (await server.get("/api/?count=true", headers=one)).body["tables"]}
    finally:
        row_counts.EXACT_UP_TO = saved
    if database.backend == "sqlite":  # no estimates: counted, with the filter
        assert listed["orders"]["rows"] == 2
    else:
        assert (listed["orders"]["rows"], listed["orders"]["rows_estimated"]) == (None, False)
        assert listed["products"]["rows_estimated"] is True
