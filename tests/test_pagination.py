"""Property tests (hypothesis): pagination is exact under every order (API.md section 5).

On every backend, for random table contents (tiny value domains, so many ties and
NULLs, text in case variants and with trailing spaces), a random order (1-3 columns,
asc/desc, nullsfirst/nullslast), a random page size and at most one filter,
following `next` links from the first page of ``GET /api/<t>?order=...&limit=N``:

- never requests the same URL twice and ends;
- visits every row the query matches exactly once: the multiset of the rows visited
  equals that of a plain ``GET /api/<t>?<filter>&limit=1000`` (one page);
- visits them in the order the database sorts them: for tables with a key the
  concatenation of the pages is exactly ``GET /api/<t>?order=...&<filter>&limit=1000``;
  without a key (a table without one, a view) the rows may differ only where the
  database cannot tell them apart (MariaDB's case-insensitive, PAD SPACE collation),
  so the pages, seen through the collation, equal that single GET seen the same way.

Tables: ``p_int`` (integer key), ``p_comp`` (composite key, one part text), ``p_nokey``
(no key, duplicate rows) and the view ``p_view`` over ``p_int``. The rows are written
with SQL (the server reflects the schema once, at start; only rows change between
examples).

Deterministic (``derandomize=True``, no example database); ``PYLIGHT_PROPERTY_SCALE=10``
runs ten times as many examples.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, Phase, event, example, given, note, settings
from hypothesis import strategies as st

SCALE = max(int(os.environ.get("PYLIGHT_PROPERTY_SCALE", "1")), 1)


def budget(examples: int) -> settings:
    return settings(max_examples=examples * SCALE, deadline=None, derandomize=True,
                    database=None, print_blob=True, report_multiple_bugs=False,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture,
                                           HealthCheck.filter_too_much])


# -- the schema ---------------------------------------------------------------------------

TS = {"sqlite": "TIMESTAMP", "postgresql": "TIMESTAMP", "mysql": "DATETIME"}


def ddl(backend: str) -> list[str]:
    ts = TS[backend]
    return [
        f"CREATE TABLE p_int (id INTEGER NOT NULL PRIMARY KEY, g INTEGER NOT NULL, "
        f"n INTEGER, s VARCHAR(8), d DATE, ts {ts})",
        f"CREATE TABLE p_comp (a INTEGER NOT NULL, b VARCHAR(8) NOT NULL, n INTEGER, "
        f"s VARCHAR(8), ts {ts}, PRIMARY KEY (a, b))",
        f"CREATE TABLE p_nokey (g INTEGER NOT NULL, n INTEGER, s VARCHAR(8), d DATE, ts {ts})",
        "CREATE VIEW p_view AS SELECT id, g, n, s, d, ts FROM p_int",
    ]


# Tiny domains: many ties. Texts in case variants and with trailing spaces (on MariaDB
# 'a' = 'A' = 'a '); every character sorts after the space.
INTS = [0, 1]
TEXTS = ["a", "A", "a ", "b", "B ", "ab"]
DATES = ["2024-01-01", "2024-01-02", "2023-12-31"]
STAMPS = ["2024-01-01 00:00:00", "2024-01-01 12:30:00", "2023-12-31 23:59:59"]

# column -> (kind, nullable)
COLUMNS: dict[str, dict[str, tuple[str, bool]]] = {
    "p_int": {"id": ("int", False), "g": ("int", False), "n": ("int", True),
              "s": ("text", True), "d": ("date", True), "ts": ("stamp", True)},
    "p_comp": {"a": ("int", False), "b": ("text", False), "n": ("int", True),
               "s": ("text", True), "ts": ("stamp", True)},
    "p_nokey": {"g": ("int", False), "n": ("int", True), "s": ("text", True),
                "d": ("date", True), "ts": ("stamp", True)},
}
COLUMNS["p_view"] = COLUMNS["p_int"]
KEYED = {"p_int", "p_comp"}
SOURCE = {"p_view": "p_int"}  # the table a view's rows are written to
DOMAIN = {"int": INTS, "text": TEXTS, "date": DATES, "stamp": STAMPS}


def comparable(kind: str, value: Any) -> Any:
    """A value as written or as read, in one spelling: a timestamp may be read as
    ISO 8601 with a T, or (SQLite, which keeps the text as stored) with a space."""
    if value is not None and kind == "stamp":
        return value.replace("T", " ")
    return value


def collated(backend: str, kind: str, value: Any) -> Any:
    """What the database compares of a value: MariaDB's utf8mb4_general_ci ignores case
    and trailing spaces; the others compare text exactly."""
    if backend == "mysql" and kind == "text" and value is not None:
        return value.lower().rstrip(" ")
    return value


def sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    return "'" + value + "'"


# -- strategies ---------------------------------------------------------------------------

def column_values(kind: str, nullable: bool) -> st.SearchStrategy[Any]:
    values = st.sampled_from(DOMAIN[kind])
    return st.one_of(st.none(), values) if nullable else values


@st.composite
def table_rows(draw: Any, table: str, backend: str) -> list[dict[str, Any]]:
    """Rows for ``table`` (for a view: for the table under it), keys unique as the
    database sees them."""
    source = SOURCE.get(table, table)
    columns = COLUMNS[source]
    row = st.fixed_dictionaries({name: column_values(kind, nullable)
                                 for name, (kind, nullable) in columns.items() if name != "id"})
    size = draw(st.integers(3, 24))  # drawn first: lists left to themselves stay short
    if source == "p_int":
        ids = draw(st.lists(st.integers(-5, 40), unique=True, min_size=size, max_size=size))
        return [{"id": i, **draw(row)} for i in ids]
    data = draw(st.lists(row, min_size=size, max_size=size))
    if source == "p_comp":
        seen: set[Any] = set()
        unique = []
        for item in data:
            key = (item["a"], collated(backend, "text", item["b"]))
            if key not in seen:
                seen.add(key)
                unique.append(item)
        return unique
    return data


@st.composite
def orders(draw: Any, table: str) -> str:
    names = draw(st.lists(st.sampled_from(sorted(COLUMNS[table])), unique=True,
                          min_size=1, max_size=3))
    items = []
    for name in names:
        words = [name]
        direction = draw(st.sampled_from([None, "asc", "desc"]))
        nulls = draw(st.sampled_from([None, "nullsfirst", "nullslast"]))
        words += [w for w in (direction, nulls) if w]
        items.append(".".join(words))
    return ",".join(items)


def render(kind: str, value: Any, grouped: bool) -> str:
    text = str(value)
    if grouped and kind == "text" and text != text.strip():
        text = '"' + text + '"'  # or=(...) strips its items unless quoted
    return text


@st.composite
def conditions(draw: Any, table: str, grouped: bool) -> tuple[str, str]:
    """(column, [not.]op.value)."""
    name = draw(st.sampled_from(sorted(COLUMNS[table])))
    kind = COLUMNS[table][name][0]
    op = draw(st.sampled_from(["eq", "neq", "gt", "gte", "lt", "lte", "in", "is"]))
    if op == "is":
        spec = "is.null"
    elif op == "in":
        values = draw(st.lists(st.sampled_from(DOMAIN[kind]), min_size=1, max_size=2))
        spec = "in.(" + ",".join(f'"{v}"' if kind == "text" else render(kind, v, True)
                                 for v in values) + ")"
    else:
        spec = f"{op}.{render(kind, draw(st.sampled_from(DOMAIN[kind])), grouped)}"
    if draw(st.integers(0, 3)) == 0:
        spec = "not." + spec
    return name, spec


@st.composite
def filters(draw: Any, table: str) -> str:
    """At most one filter: ``col=op.value`` or ``or=(...)``, URL-encoded; "" for none."""
    choice = draw(st.sampled_from(["none", "none", "none", "top", "or"]))
    if choice == "none":
        return ""
    if choice == "top":
        name, spec = draw(conditions(table, grouped=False))
        return f"{name}={quote(spec, safe='(),.')}"
    members = draw(st.lists(conditions(table, grouped=True), min_size=1, max_size=3))
    inner = ",".join(f"{name}.{spec}" for name, spec in members)
    return f"or={quote('(' + inner + ')', safe='(),.')}"


@st.composite
def queries(draw: Any, table: str) -> tuple[str, int, str]:
    # Small pages more often than large ones: more pages, more boundaries between them.
    return draw(orders(table)), draw(st.sampled_from([1, 2, 1, 3, 2, 4, 5, 6, 7])), draw(
        filters(table))


# -- the check ---------------------------------------------------------------------------------

def fill(database: Any, table: str, data: list[dict[str, Any]]) -> None:
    source = SOURCE.get(table, table)
    statements = [f"DELETE FROM {name}" for name in ("p_int", "p_comp", "p_nokey")]
    if data:
        names = list(data[0])
        values = ", ".join("(" + ", ".join(sql_literal(row[n]) for n in names) + ")"
                           for row in data)
        statements.append(f"INSERT INTO {source} ({', '.join(names)}) VALUES {values}")
    database.execute(*statements)


def identity(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True)


async def fetch(server: Any, url: str) -> dict[str, Any]:
    response = await server.get(url)
    assert response.status == 200, (url, response.status, response.body)
    return response.body


def describe(problem: str, case: dict[str, Any], **details: Any) -> str:
    """A failure message: the problem, the rows, each page requested and what it held."""
    lines = [problem, f"first page: {case['first']}", f"rows written: {case['written']}"]
    lines += [f"{name}: {value}" for name, value in details.items()]
    lines += [f"page {i + 1} {url}: {items}"
              for i, (url, items) in enumerate(zip(case["requested"], case["pages"], strict=False))]
    lines.append(f"single page of the same order: {case['single']}")
    return "\n".join(lines)


async def crawl(server: Any, case: dict[str, Any], size: int, most: int) -> None:
    """Follow next links from ``case["first"]``, filling ``requested`` and ``pages``."""
    url: str | None = case["first"]
    while url is not None:
        assert url not in case["requested"], describe(
            f"a next link repeats a URL already requested: {url}", case)
        assert len(case["pages"]) < most, describe("next links do not end", case)
        case["requested"].append(url)
        body = await fetch(server, url)
        assert len(body["items"]) <= size, describe(f"more than limit={size} rows", case,
                                                    page=body["items"])
        case["pages"].append(body["items"])
        url = body["next"]


def check_pages(server: Any, backend: str, table: str, data: list[dict[str, Any]],
                cases: list[tuple[str, int, str]]) -> Callable[[], Any]:
    columns = COLUMNS[table]

    def seen_through_collation(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [tuple(collated(backend, columns[n][0], r[n]) for n in sorted(columns))
                for r in records]

    async def run() -> None:
        # The fixture itself: the table (or view) holds what was written.
        everything = await fetch(server, f"/api/{table}?limit=1000")
        assert everything["next"] is None
        written = [{n: row[n] for n in columns} for row in data]

        def spelled(records: list[dict[str, Any]]) -> Counter[str]:
            return Counter(identity({n: comparable(columns[n][0], r[n]) for n in columns})
                           for r in records)

        assert spelled(everything["items"]) == spelled(written), (everything["items"], written)

        for order, size, flt in cases:
            extra = f"&{flt}" if flt else ""
            # Independent of the order: every row the filter matches, in one page.
            matching = await fetch(server, f"/api/{table}?limit=1000{extra}")
            assert matching["next"] is None
            expected = matching["items"]
            event(f"matching rows: {'0' if not expected else '1-4' if len(expected) < 5 else '5+'}"
                  f" ({'filtered' if flt else 'no filter'})")
            # The same order in one page: how the database sorts these rows.
            single = await fetch(server, f"/api/{table}?order={order}&limit=1000{extra}")
            assert single["next"] is None
            assert Counter(map(identity, single["items"])) == Counter(map(identity, expected))

            case = {"first": f"/api/{table}?order={order}&limit={size}{extra}",
                    "written": written, "single": single["items"], "requested": [], "pages": []}
            await crawl(server, case, size, len(expected) + 2)
            crawled = [record for page in case["pages"] for record in page]
            event(f"pages: {min(len(case['pages']), 5)}{'+' if len(case['pages']) > 5 else ''}")
            event("paged by " + ("cursor" if "after=" in "".join(case["requested"]) else
                                 "offset" if "offset=" in "".join(case["requested"]) else
                                 "nothing (one page)"))

            got, want = Counter(map(identity, crawled)), Counter(map(identity, expected))
            assert got == want, describe(
                f"{backend} {table}: following next did not visit every matching row exactly once",
                case,
                repeated=[r for r, k in got.items() if 0 < want[r] < k],
                skipped=[r for r, k in want.items() if got[r] < k],
                unexpected=[r for r in got if not want[r]])
            if table in KEYED:
                assert crawled == single["items"], describe(
                    f"{backend} {table}: the pages, concatenated, are not the single page of "
                    "the same order", case)
            else:
                assert seen_through_collation(crawled) == seen_through_collation(
                    single["items"]), describe(
                    f"{backend} {table}: the pages, concatenated, are not in the order of the "
                    "single page (compared as the database's collation sees the values)", case)

    return run


TABLES = ["p_int", "p_comp", "p_nokey", "p_view"]


def _rows(table: str, *changes: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of ``table`` (of the table under a view): NULL or the first value of each
    column's domain, but for ``changes``; ids 0, 1, ..."""
    columns = COLUMNS[SOURCE.get(table, table)]
    base = {name: None if nullable else DOMAIN[kind][0] for name, (kind, nullable) in columns.items()}
    return [{**base, **({"id": i} if "id" in base else {}), **change}
            for i, change in enumerate(changes)]


# Minimal failures found by this test (data, cases), run before the generated examples.
EXAMPLES: dict[str, list[tuple[list[dict[str, Any]], list[tuple[str, int, str]]]]] = {
    # Offset pages ordered by a nullable column without the key to break ties: the
    # database returns the tied rows in another order for another OFFSET/LIMIT (PostgreSQL,
    # MariaDB), so a row is repeated and another skipped.
    "p_int": [(_rows("p_int", *[{}] * 5), [("d", 1, "")]),
              # Ties under MariaDB's collation ('a' = 'A' = 'a '), descending, filtered.
              (_rows("p_int", {"s": "a"}, {"s": "A"}, {"s": "a "}, {"s": "b"}, {"s": None}),
               [("s.desc,g", 1, "s=gte.a"), ("s.nullsfirst", 2, "")])],
    "p_view": [(_rows("p_view", *[{}] * 5), [("d", 1, "")])],
    # A cursor that holds a NULL (`n < NULL` is never true): the next link pointed at
    # the page it came from. And ties on (a, n) left in the database's order.
    "p_comp": [(_rows("p_comp", {"b": "a"}, {"b": "b"}), [("n.desc", 1, ""), ("a,n", 1, "")])],
    # Without a key, ties on the order must be broken by every other column; on MariaDB
    # even rows equal under the collation ('a', 'A') must keep one order across pages.
    "p_nokey": [(_rows("p_nokey", {}, {"ts": STAMPS[0]}, {}, {}, {}), [("d", 1, "")]),
                (_rows("p_nokey", *[{}] * 8, {"d": DATES[0]}, {"d": DATES[0]}, {"s": "a"},
                       {"s": "A"}), [("d", 1, "")])],
}


@pytest.fixture
def paging_server(database: Any, make_server: Callable[..., Any]) -> Any:
    database.execute(*ddl(database.backend))
    return make_server()


@pytest.mark.parametrize("table", TABLES)
def test_next_links_visit_every_row_once(table: str, database: Any, paging_server: Any,
                                         io_loop: Any) -> None:
    backend = database.backend

    @budget(50)
    @given(data=table_rows(table, backend),
           cases=st.lists(queries(table), min_size=1, max_size=3))
    def check(data: list[dict[str, Any]], cases: list[tuple[str, int, str]]) -> None:
        # (Hypothesis does not print the arguments of a test defined inside a test.)
        note(f"{backend} {table}: data={data!r}")
        note(f"cases={cases!r}")
        fill(database, table, data)
        io_loop.run_sync(check_pages(paging_server, backend, table, data, cases), timeout=120)

    for data, cases in EXAMPLES[table]:
        check = example(data=data, cases=cases)(check)
    check()


@pytest.mark.gen_test(timeout=30)
async def test_select_without_the_order_columns_on_a_table_without_a_key(
        database: Any, paging_server: Any) -> None:
    """The order's columns are read, then left out of the rows; a table without a key is
    ordered by a column twice (as asked, then to break ties): it was dropped twice, a 500."""
    statements = [f"INSERT INTO p_nokey (g, n, s) VALUES ({g}, {g % 2}, 'x{g}')" for g in (3, 1, 2)]
    database.execute(*statements)
    response = await paging_server.get("/api/p_nokey?order=g.desc&select=n&limit=2")
    assert response.status == 200, response.body
    assert response.body["items"] == [{"n": 1}, {"n": 0}]
    assert response.body["next"] is not None
    page = await paging_server.get(response.body["next"])
    assert page.status == 200 and page.body["items"] == [{"n": 1}]
    response = await paging_server.get("/api/p_nokey?order=g&select=g")
    assert response.status == 200 and response.body["items"] == [{"g": 1}, {"g": 2}, {"g": 3}]
