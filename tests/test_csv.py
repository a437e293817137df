"""CSV lists (API.md section 7.3), on every backend: what a client reading CSV gets.

- ``?format=csv`` (or ``Accept: text/csv``) answers the same page as the JSON list, as
  ``text/csv; charset=utf-8``: a header of the columns, each value as the JSON gives it
  (null an empty field, an empty string ``""``, booleans ``true``/``false``, objects and
  arrays as JSON text, decimals exact), ``next`` in a ``Link`` header;
- ``?format=csv&all=true`` is every matching row: the pages a client would get by
  following every ``Link``, in one answer;
- errors stay JSON, and columns named ``format`` or ``all`` are still filtered.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from tornado.simple_httpclient import HTTPStreamClosedError

from pylight.errors import unavailable
from pylight.rows import Rows
from tests.awkward_schemas import load_awkward

CSV_TYPE = "text/csv; charset=utf-8"


def as_text(value: Any) -> str | None:
    """A JSON value as the contract writes it in CSV; None for null (an empty field)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, float)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def parse_csv(text: str) -> list[list[str | None]]:
    """RFC 4180 rows, with None for an unquoted empty field: the csv module reads ``""``
    and an empty field alike, and the contract tells null from "" by exactly that."""
    rows: list[list[str | None]] = []
    row: list[str | None] = []
    i = 0
    while i < len(text):
        if text[i] == '"':
            parts, j = [], i + 1
            while True:
                k = text.index('"', j)
                parts.append(text[j:k])
                if text.startswith('""', k):
                    parts.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            field: str | None = "".join(parts)
        else:
            end = re.compile(r"[,\r\n]").search(text, i)
            j = end.start() if end else len(text)
            field, i = text[i:j] or None, j
        row.append(field)
        if text.startswith(",", i):
            i += 1
            continue
        assert text.startswith("\r\n", i), f"a field does not end at a comma or CRLF: {text[i:i + 20]!r}"
        rows.append(row)
        row, i = [], i + 2
    return rows


def expected_rows(page: dict[str, Any], names: list[str]) -> list[list[str | None]]:
    return [list(names)] + [[as_text(item[name]) for name in names] for item in page["items"]]


def assert_csv(response: Any) -> str:
    assert response.status == 200, (response.status, response.raw[:300])
    assert response.headers["Content-Type"] == CSV_TYPE
    return response.raw.decode("utf-8")


def assert_json_error(response: Any, status: int, parameter: str | None = None) -> None:
    assert response.status == status, (response.status, response.raw[:300])
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.body["error"]
    assert error["status"] == status
    if parameter is not None:
        assert error["details"]["parameter"] == parameter, error


def same_url(one: str, other: str) -> bool:
    """The same path and parameters, in whatever order."""
    return urlsplit(one).path == urlsplit(other).path and sorted(
        parse_qsl(urlsplit(one).query)) == sorted(parse_qsl(urlsplit(other).query))


def next_link(response: Any) -> str | None:
    link = response.headers.get("Link")
    if link is None:
        return None
    match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert match, link
    return match.group(1)


# -- every table of an awkward schema -----------------------------------------------------

@pytest.fixture
def awkward(database: Any, make_server: Any) -> Any:
    load_awkward(database)
    return make_server(seed=False)


@pytest.mark.gen_test(timeout=60)
async def test_every_table_reads_as_its_json(awkward: Any) -> None:
    """Reserved and mixed-case names, views, tables without a key, NULLs and empty
    strings, commas, quotes and newlines in values, every column type."""
    server = awkward
    tables = (await server.get("/api/")).body["tables"]
    for table in tables:
        path = f"/api/{quote(table['name'])}?limit=1000"
        page = (await server.get(path)).body
        names = [column["name"] for column in table["columns"]]
        assert page["next"] is None and page["items"], table["name"]
        text = assert_csv(await server.get(path + "&format=csv"))
        assert parse_csv(text) == expected_rows(page, names), table["name"]
        # The csv module reads the same text (null and "" alike as "").
        read = list(csv.reader(io.StringIO(text, newline="")))
        assert read == [[value or "" for value in row] for row in expected_rows(page, names)]
        by_accept = await server.get(path, headers={"Accept": "text/csv"})
        assert assert_csv(by_accept) == text

    # Only the selected columns, named as awkwardly as they are, in the order asked.
    query = "/api/Customer?select=count,order,FirstName,limit&order=FirstName"
    customers = (await server.get(query)).body
    text = assert_csv(await server.get(query + "&format=csv"))
    assert parse_csv(text) == expected_rows(customers, ["count", "order", "FirstName", "limit"])


def quoted(backend: str, name: str) -> str:
    return f"`{name}`" if backend == "mysql" else f'"{name}"'


@pytest.fixture
def spreadsheet(database: Any, make_server: Any) -> Any:
    def q(name: str) -> str:
        return quoted(database.backend, name)
    doc = "jsonb" if database.backend == "postgresql" else "JSON"
    database.execute(f"CREATE TABLE {q('select')} ({q('Order')} INTEGER NOT NULL PRIMARY KEY, "
                     f"{q('from')} TEXT, {q('Mixed Case')} TEXT, flag BOOLEAN, "
                     f"price DECIMAL(10,2), doc {doc})")
    return make_server(seed=False)


@pytest.mark.gen_test(timeout=30)
async def test_the_text_as_a_spreadsheet_reads_it(spreadsheet: Any) -> None:
    server = spreadsheet
    rows = [
        {"Order": 1, "from": None, "Mixed Case": "", "flag": True, "price": 5,
         "doc": {"a": [1, "x, y"]}},
        {"Order": 2, "from": "line1\nline2", "Mixed Case": 'say "hi", ok', "flag": False,
         "price": None, "doc": None},
        {"Order": 3, "from": "Ünïcode ✓", "Mixed Case": "😀", "flag": None, "price": "-0.5",
         "doc": []},
    ]
    assert (await server.post("/api/select", rows)).status == 201
    text = assert_csv(await server.get("/api/select?format=csv"))
    assert text == (
        'Order,from,Mixed Case,flag,price,doc\r\n'
        '1,,"",true,5.00,"{""a"":[1,""x, y""]}"\r\n'
        '2,"line1\nline2","say ""hi"", ok",false,,\r\n'
        '3,Ünïcode ✓,😀,,-0.50,[]\r\n')
    # One column: a null is an empty line, an empty string "".
    text = assert_csv(await server.get("/api/select?format=csv&select=from&order=Order"))
    assert text == 'from\r\n\r\n"line1\nline2"\r\nÜnïcode ✓\r\n'
    text = assert_csv(await server.get("/api/select?format=csv&select=Mixed%20Case&Order=eq.1"))
    assert text == 'Mixed Case\r\n""\r\n'
    # Nothing matches: the header alone.
    text = assert_csv(await server.get("/api/select?format=csv&Order=gt.9"))
    assert text == "Order,from,Mixed Case,flag,price,doc\r\n"


# -- a page of CSV is the page of JSON ------------------------------------------------------

PROP_DDL = {
    "sqlite": "CREATE TABLE prop (id INTEGER NOT NULL PRIMARY KEY, t TEXT, n BIGINT, "
              "d DECIMAL(12,3), f DOUBLE, b BOOLEAN, j JSON)",
    "postgresql": "CREATE TABLE prop (id integer PRIMARY KEY, t text, n bigint, "
                  "d numeric(12,3), f double precision, b boolean, j jsonb)",
    "mysql": "CREATE TABLE prop (id INT NOT NULL PRIMARY KEY, t TEXT, n BIGINT, "
             "d DECIMAL(12,3), f DOUBLE, b BOOLEAN, j JSON)",
}
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=8)
# Separators, quotes, line ends and spaces, often: what CSV quoting is about.
AWKWARD_TEXT = st.one_of(TEXT, st.text(st.sampled_from(',"\r\n ;\'ü'), max_size=6))
JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), AWKWARD_TEXT),
                    lambda inner: st.one_of(st.lists(inner, max_size=3),
                                            st.dictionaries(AWKWARD_TEXT, inner, max_size=3)),
                    max_leaves=6)
ROW = st.fixed_dictionaries({
    "t": st.none() | AWKWARD_TEXT,
    "n": st.none() | st.integers(-2**63, 2**63 - 1),
    "d": st.none() | st.decimals(-10**8, 10**8, places=3).map(str),
    "f": st.none() | st.floats(-1e300, 1e300, allow_nan=False).filter(lambda x: abs(x) > 1e-300
                                                                        or x == 0),
    "b": st.none() | st.booleans(),
    "j": JSON.filter(lambda value: value is not None),
})
COLUMNS = ["id", "t", "n", "d", "f", "b", "j"]


def test_parsing_the_csv_gives_the_json_values_as_text(database: Any, make_server: Any,
                                                        io_loop: Any) -> None:
    database.execute(PROP_DDL[database.backend])
    server = make_server(seed=False)

    @settings(max_examples=12, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(rows=st.lists(ROW, min_size=1, max_size=8),
           select=st.lists(st.sampled_from(COLUMNS), unique=True, max_size=4),
           limit=st.integers(1, 5))
    def check(rows: list[dict[str, Any]], select: list[str], limit: int) -> None:
        database.execute("DELETE FROM prop")

        async def run() -> None:
            created = await server.post("/api/prop", [{"id": i, **row}
                                                      for i, row in enumerate(rows)])
            assert created.status == 201, created.body
            query = f"limit={limit}" + (f"&select={','.join(select)}" if select else "")
            url: str | None = f"/api/prop?{query}"
            while url is not None:
                page = (await server.get(url)).body
                response = await server.get(url + "&format=csv")
                names = select or COLUMNS
                read = list(csv.reader(io.StringIO(assert_csv(response), newline="")))
                # A one-column row holding null is an empty line, which csv reads as [].
                read = [row or [""] for row in read]
                assert read == [[text or "" for text in row]
                                for row in expected_rows(page, names)]
                link = next_link(response)
                assert (link is None) == (page["next"] is None)
                if link is not None:  # the same page as JSON's next, in CSV
                    assert same_url(link, page["next"] + "&format=csv")
                url = page["next"]
        io_loop.run_sync(run, timeout=60)

    check()


# -- all=true -----------------------------------------------------------------------------

@pytest.fixture
def many(database: Any, make_server: Any) -> Any:
    """3,000 rows (ties, NULLs, empty strings, commas, newlines); pages of at most 400."""
    database.execute("CREATE TABLE many (id INTEGER NOT NULL PRIMARY KEY, g INTEGER NOT NULL, "
                     "s VARCHAR(20))",
                     "CREATE VIEW many_view AS SELECT g, s FROM many")
    texts = ["NULL", "''", "'a,b'", "'x'", "'two\nlines'", "'\"q\"'"]
    values = ", ".join(f"({i}, {i % 13}, {texts[i % len(texts)]})" for i in range(3000))
    database.execute(f"INSERT INTO many (id, g, s) VALUES {values}")
    return make_server({"api": {"max_limit": 400}}, seed=False)


async def follow(server: Any, url: str) -> tuple[str, int]:
    """The CSV of every page from ``url`` on, following each Link (one header kept)."""
    text, pages = "", 0
    next_url: str | None = url
    while next_url is not None:
        response = await server.get(next_url)
        body = assert_csv(response)
        text += body if not text else body.split("\r\n", 1)[1]
        pages += 1
        next_url = next_link(response)
    return text, pages


@pytest.mark.gen_test(timeout=60)
async def test_all_is_every_page_a_client_would_follow(many: Any) -> None:
    for table, query in [("many", "order=g.desc,s"), ("many", "g=lt.5&order=s.nullsfirst"),
                         ("many", ""), ("many_view", "order=g,s")]:
        base = f"/api/{table}?format=csv" + (f"&{query}" if query else "")
        pages, count = await follow(many, base + "&limit=400")
        everything = await many.get(base + "&all=true")
        assert assert_csv(everything) == pages, (table, query)
        assert "Link" not in everything.headers
        assert count > 1 and len(parse_csv(pages)) > 400
    # count=true: the total in a header, counted once.
    total = (await many.get("/api/many?g=lt.5&count=true&limit=1")).body["total"]
    response = await many.get("/api/many?g=lt.5&count=true&format=csv&all=true")
    assert response.headers["Pylight-Total"] == str(total)
    assert len(parse_csv(assert_csv(response))) == total + 1
    # A cursor resumes the export where a page left off.
    first = await many.get("/api/many?format=csv&limit=400")
    rest = await many.get(next_link(first).replace("limit=400", "all=true"))
    assert parse_csv(assert_csv(first))[1:] + parse_csv(assert_csv(rest))[1:] == parse_csv(
        assert_csv(await many.get("/api/many?format=csv&all=true")))[1:]


# -- choosing CSV, errors and the names it takes ----------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_errors_stay_json(many: Any) -> None:
    cases = [
        ("/api/many?format=csv&g=gt.abc", 400, "g"),
        ("/api/many?format=csv&order=nope", 400, "order"),
        ("/api/many?format=xml", 400, "format"),
        ("/api/many?format=csv&format=json", 400, "format"),
        ("/api/many?all=true", 400, "all"),
        ("/api/many?format=json&all=true", 400, "all"),
        ("/api/many?format=csv&all=maybe", 400, "all"),
        ("/api/many?format=csv&all=true&limit=5", 400, "limit"),
        ("/api/many?format=csv&all=true&offset=5", 400, "offset"),
        ("/api/many?format=csv&after=garbage", 400, "after"),
        ("/api/nope?format=csv", 404, None),
    ]
    for url, status, parameter in cases:
        assert_json_error(await many.get(url), status, parameter)
    assert_json_error(await many.get("/api/many?g=gt.abc&all=true",
                                     headers={"Accept": "text/csv"}), 400, "g")


@pytest.mark.gen_test(timeout=30)
async def test_accept_chooses_csv_and_format_overrides_it(many: Any) -> None:
    url = "/api/many?limit=2"
    for accept, is_csv in [("text/csv", True), ("text/csv;q=0.9, application/json;q=0.5", True),
                           ("application/json, text/csv", False), ("*/*", False),
                           ("text/csv;q=0", False), ("text/html, text/csv", True)]:
        response = await many.get(url, headers={"Accept": accept})
        assert response.headers["Content-Type"].startswith(
            "text/csv" if is_csv else "application/json"), accept
    response = await many.get(url + "&format=json", headers={"Accept": "text/csv"})
    assert response.status == 200 and response.body["items"]
    response = await many.get(url + "&format=csv", headers={"Accept": "application/json"})
    assert_csv(response)


@pytest.fixture
def files(database: Any, make_server: Any) -> Any:
    database.execute(f"CREATE TABLE files (id INTEGER NOT NULL PRIMARY KEY, "
                     f"{quoted(database.backend, 'format')} VARCHAR(10), "
                     f"{quoted(database.backend, 'all')} BOOLEAN)",
                     "INSERT INTO files VALUES (1, 'csv', TRUE), (2, 'pdf', FALSE), "
                     "(3, 'csv', FALSE)")
    return make_server(seed=False)


@pytest.mark.gen_test(timeout=30)
async def test_columns_named_format_and_all_are_still_filtered(files: Any) -> None:
    server = files
    response = await server.get("/api/files?format=eq.csv")
    assert [item["id"] for item in response.body["items"]] == [1, 3]
    text = assert_csv(await server.get("/api/files?format=csv&format=eq.pdf"))
    assert parse_csv(text) == [["id", "format", "all"], ["2", "pdf", "false"]]
    text = assert_csv(await server.get("/api/files?all=is.false&format=csv&all=true"))
    assert parse_csv(text) == [["id", "format", "all"], ["2", "pdf", "false"],
                               ["3", "csv", "false"]]
    assert_json_error(await server.get("/api/files?format=pdf"), 400, "format")


@pytest.mark.gen_test(timeout=30)
async def test_an_export_cut_off_by_an_error_does_not_look_whole(many: Any,
                                                                  monkeypatch: Any) -> None:
    """Once rows have been sent, an error cannot be answered: the connection is closed
    before the chunked body's end, so the client sees a failed transfer, not a short file."""
    pages = Rows.page
    calls = []

    async def failing_second_page(self: Any, table: Any, q: Any) -> Any:
        calls.append(q)
        if len(calls) == 2:
            raise unavailable("the database went away")
        return await pages(self, table, q)

    monkeypatch.setattr(Rows, "page", failing_second_page)
    with pytest.raises(HTTPStreamClosedError):
        await many.get("/api/many?format=csv&all=true")
    assert len(calls) == 2
    monkeypatch.setattr(Rows, "page", pages)
    assert len(parse_csv(assert_csv(await many.get("/api/many?format=csv&all=true")))) == 3001


@pytest.mark.gen_test(timeout=30)
async def test_the_openapi_document_describes_csv(files: Any) -> None:
    document = (await files.get("/api/openapi.json")).body
    validate(document)
    listing = document["paths"]["/api/files"]["get"]
    parameters = {p["name"]: p for p in listing["parameters"]}
    assert parameters["format"]["schema"]["enum"] == ["json", "csv"]
    assert parameters["all"]["schema"]["type"] == "boolean"
    # The columns named format and all are filtered as format=eq.x: no second parameter.
    assert [p["name"] for p in listing["parameters"]].count("format") == 1
    page = listing["responses"]["200"]
    assert set(page["content"]) == {"application/json", "text/csv"}
    assert "Link" in page["headers"]
