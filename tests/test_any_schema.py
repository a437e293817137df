"""API.md section 5 ("Any schema, as it is") over the awkward schemas, on every backend.

The checks are properties over every table, view, column and row of
tests/awkward_schemas.py, compared with what the database's own catalog says:
every row reads back, every record round-trips through a PUT, every value read
finds its row as a filter, pagination is exact under every order, the schema
document describes every column, generated columns are read-only, values a
column cannot hold are a 422 naming it, and nothing is ever a 5xx.

Each test collects every problem it finds (table, column, declared type, value,
status and message) and fails once with the whole list, so a failure reads as a
to-do list of the types that broke rather than the first of them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
from openapi_spec_validator import validate

from tests.awkward_schemas import Column, Relation, catalog, load_awkward
from tests.realtime_support import FeedClient

LIMIT = 1000  # larger than any awkward table: one page is the whole table
PAGE = 3  # page size when walking `next` links
TIMEOUT = 120

# PostgreSQL types without a default ordering operator: ordering by them may be refused
# (400 naming the column); every other column must be orderable.
UNORDERABLE_PG = ("json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle")


# -- the server, watched for 5xx ---------------------------------------------------------------

@dataclass
class Awkward:
    server: Any
    database: Any
    catalog: dict[str, Relation]
    server_errors: list[str] = field(default_factory=list)

    @property
    def backend(self) -> str:
        return self.database.backend

    @property
    def tables(self) -> list[Relation]:
        return [r for r in self.catalog.values() if not r.view]

    @property
    def keyed(self) -> list[Relation]:
        return [r for r in self.tables if r.primary_key]


@pytest.fixture
def awkward(database: Any, make_server: Any) -> Iterator[Awkward]:
    """A server on the awkward schema; every response of 500 or more fails the test."""
    load_awkward(database)
    reference = catalog(database)
    server = make_server()
    state = Awkward(server, database, reference)
    record_server_errors(server, state.server_errors)
    yield state
    assert not state.server_errors, (
        f"{len(state.server_errors)} response(s) of 500 or more:\n"
        + "\n".join(state.server_errors[:100]))


def record_server_errors(server: Any, errors: list[str]) -> None:
    """Make ``server``'s client append every response of 500 or more to ``errors``."""
    plain = server.request

    async def request(method: str, path: str, body: Any = None, **kw: Any) -> Any:
        response = await plain(method, path, body, **kw)
        if response.status >= 500:
            sent = "" if body is None else " " + json.dumps(body, ensure_ascii=False)[:200]
            errors.append(f"{method} {path}{sent} -> {response.status} {response.raw[:300]!r}")
        return response

    server.request = request


# -- helpers -----------------------------------------------------------------------------------

class Problems(list):
    """Everything a test found wrong, reported at once."""

    def report(self, what: str) -> None:
        counted = Counter(self)  # identical lines once, with how often they came up
        lines = [p if n == 1 else f"{p} (x{n})" for p, n in counted.items()]
        shown = "\n".join(f"  - {line}" for line in lines[:300])
        more = f"\n  ... and {len(lines) - 300} more" if len(lines) > 300 else ""
        assert not self, f"{what}: {len(self)} problem(s)\n{shown}{more}"


def said(response: Any) -> str:
    """Status and error message of a response, short."""
    body = response.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return f"{response.status} {body['error'].get('message')!r}"
    return f"{response.status} {response.raw[:200]!r}"


def col_name(relation: Relation, column: Column | str) -> str:
    """``table.column [declared type]``, the way every problem names a column."""
    if isinstance(column, str):
        found = [c for c in relation.columns if c.name == column]
        if not found:
            return f"{relation.name}.{column} [not in the database]"
        column = found[0]
    return f"{relation.name}.{column.name} [{column.declared or 'no type'}]"


def short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def url(relation: Relation) -> str:
    return "/api/" + quote(relation.name, safe="")


def key_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def item_url(relation: Relation, record: dict[str, Any]) -> str:
    return url(relation) + "/" + ",".join(
        quote(key_text(record[name]), safe="") for name in relation.primary_key)


def render(value: Any) -> str:
    """A value as read, as filter text: strings as they are, everything else as JSON text."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _same_number(value: Any) -> Any:
    """JSON has one number type: 0 and 0.0 are the same value."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_same_number(v) for v in value]
    if isinstance(value, dict):
        return {k: _same_number(v) for k, v in value.items()}
    return value


def sqlite_off_type(database: Any, column: Column, stored: Any) -> str | None:
    """Why a SQLite value cannot round-trip, where the project documents it cannot.

    SQLite keeps any value in any column of a table that is not STRICT. Such a
    value is read, paged and filtered by other values as stored, but writes and
    filter values must fit the declared type (API.md section 2: a value that does
    not fit the column is a 400 in a query, a 422 in a body), so 'N/A' in an INT
    column is refused when written back. A blob in a column of no type is served
    as base64 text, which cannot say it was a blob. README: "SQLite, values of
    another type".
    """
    if database.backend != "sqlite" or stored is None:
        return None
    declared = column.declared.upper()
    if isinstance(stored, bytes):
        return "a blob in an untyped column" if "BLOB" not in declared else None
    if isinstance(stored, str):
        if "INT" in declared or any(word in declared for word in ("REAL", "FLOA", "DOUB")):
            return "text in a numeric column"
        if "BOOL" in declared:
            return "text in a BOOLEAN column"
    if isinstance(stored, (int, float)) and any(
            word in declared for word in ("DATE", "TIME")):
        return "a number in a date/time column"
    return None


def canonical(record: dict[str, Any]) -> str:
    return json.dumps(_same_number(record), sort_keys=True, ensure_ascii=False)


def ident(database: Any, name: str) -> str:
    if database.backend == "mysql":
        return "`" + name.replace("`", "``") + "`"
    return '"' + name.replace('"', '""') + '"'


def count_rows(database: Any, name: str) -> int:
    return database.execute(f"SELECT count(*) FROM {ident(database, name)}")[0][0]


def stored_rows(database: Any, relation: Relation) -> dict[tuple[str, ...], dict[str, Any]]:
    """The rows as the database driver gives them, by primary key (as text)."""
    names = [c.name for c in relation.columns]
    rows = database.execute(f"SELECT {', '.join(ident(database, n) for n in names)} "
                            f"FROM {ident(database, relation.name)}")
    out = {}
    for row in rows:
        record = dict(zip(names, row, strict=True))
        out[tuple(str(record[k]) for k in relation.primary_key)] = record
    return out


async def read_all(state: Awkward, problems: Problems) -> dict[str, list[dict[str, Any]]]:
    """Every relation's rows as the list endpoint gives them (relations that fail are left out)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for relation in state.catalog.values():
        response = await state.server.get(f"{url(relation)}?limit={LIMIT}")
        if response.status != 200 or not isinstance(response.body, dict):
            problems.append(f"{relation.name}: GET {url(relation)} -> {said(response)}")
            continue
        rows[relation.name] = response.body["items"]
    return rows


async def schema_document(state: Awkward) -> dict[str, dict[str, Any]]:
    response = await state.server.get("/api/")
    assert response.status == 200, f"GET /api/ -> {said(response)}"
    return {t["name"]: t for t in response.body["tables"]}


async def read_only_columns(state: Awkward) -> dict[str, set[str]]:
    """Per table, the columns a write must leave out: generated ones and those GET /api/ marks."""
    described = await schema_document(state)
    out = {}
    for relation in state.catalog.values():
        marked = {c["name"] for c in described.get(relation.name, {}).get("columns", [])
                  if c.get("read_only")}
        out[relation.name] = marked | {c.name for c in relation.columns if c.generated}
    return out


def writable_part(record: dict[str, Any], read_only: set[str]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in read_only}


def differences(relation: Relation, before: dict[str, Any], after: Any) -> str:
    if not isinstance(after, dict):
        return f"got {short(after)}"
    changed = [f"{col_name(relation, k)}: {short(before.get(k))} became {short(after.get(k))}"
               for k in sorted(set(before) | set(after), key=str)
               if before.get(k) != after.get(k) or (k in before) != (k in after)]
    return "; ".join(changed)


# -- (1) every row reads back ------------------------------------------------------------------

@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_every_row_reads_back(awkward):
    problems = Problems()
    rows = await read_all(awkward, problems)
    for relation in awkward.catalog.values():
        if relation.name not in rows:
            continue
        expected = count_rows(awkward.database, relation.name)
        if len(rows[relation.name]) != expected:
            problems.append(f"{relation.name}: the list has {len(rows[relation.name])} rows, "
                            f"the database {expected}")
        for record in rows[relation.name]:
            missing = {c.name for c in relation.columns} - set(record)
            if missing:
                problems.append(f"{relation.name}: record lacks columns {sorted(missing)}")
            extra = set(record) - {c.name for c in relation.columns}
            if extra:
                problems.append(f"{relation.name}: record has unknown columns {sorted(extra)}")
        if relation.view or not relation.primary_key:
            continue
        for record in rows[relation.name]:
            path = item_url(relation, record)
            response = await awkward.server.get(path)
            if response.status != 200:
                problems.append(f"{relation.name}: GET {path} -> {said(response)}")
            elif response.body != record:
                problems.append(f"{relation.name}: GET {path} differs from the list's record: "
                                f"{differences(relation, record, response.body)}")
    problems.report("reading every row")


# -- (2) every record round-trips through PUT -----------------------------------------------------

@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_every_record_round_trips_through_put(awkward):
    problems = Problems()
    rows = await read_all(awkward, problems)
    read_only = await read_only_columns(awkward)
    server = awkward.server
    for relation in awkward.keyed:
        stored = stored_rows(awkward.database, relation)
        columns = {c.name: c for c in relation.columns}
        for record in rows.get(relation.name, []):
            path = item_url(relation, record)
            body = writable_part(record, read_only[relation.name])
            raw = stored.get(tuple(str(record[k]) for k in relation.primary_key), {})
            odd = {name: why for name in body
                   if (why := sqlite_off_type(awkward.database, columns[name], raw.get(name)))}
            for name, why in odd.items():
                # Documented: refused with a 422 naming the column (blobs are left out).
                if why.startswith("a blob"):
                    continue
                single = await server.put(path, {name: body[name]})
                if single.status != 422 or single.body["error"]["details"].get("column") != name:
                    problems.append(f"{col_name(relation, name)} holds {why}: writing it back "
                                    f"-> {said(single)}, expected a 422 naming the column")
            body = {name: value for name, value in body.items() if name not in odd}
            response = await server.put(path, body)
            after = await server.get(path)
            if response.status == 200:
                # "stores unchanged": the database holds what it held before
                key = tuple(str(record[k]) for k in relation.primary_key)
                now = stored_rows(awkward.database, relation).get(key)
                before = stored.get(key)
                if before is not None and now != before:
                    changed = [f"{col_name(relation, k)}: stored {before[k]!r} became "
                               f"{(now or {}).get(k)!r}" for k in before
                               if (now or {}).get(k) != before[k] and k not in odd]
                    if changed:
                        problems.append(f"{relation.name} {path}: the PUT of the record as "
                                        f"read changed what is stored: {'; '.join(changed)}")
            if response.status == 200 and response.body == record and after.body == record:
                continue
            if response.status != 200:
                # which columns does it refuse? one at a time
                refused = []
                for name, value in body.items():
                    single = await server.put(path, {name: value})
                    if single.status != 200:
                        refused.append(f"{col_name(relation, name)} = {short(value)} -> "
                                       f"{said(single)}")
                problems.append(f"{relation.name} {path}: PUT of the record as read -> "
                                f"{said(response)}; refused one at a time: "
                                + ("; ".join(refused) or "none"))
                continue
            if response.body != record:
                problems.append(f"{relation.name} {path}: PUT answered a different record: "
                                f"{differences(relation, record, response.body)}")
            if after.body != record:
                problems.append(f"{relation.name} {path}: after the PUT the record changed: "
                                f"{differences(relation, record, after.body)}")
    problems.report("PUT of every record as read")


# -- (3) every value read finds its row ---------------------------------------------------------

@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_every_value_read_finds_its_row(awkward):
    problems = Problems()
    rows = await read_all(awkward, problems)
    for relation in awkward.catalog.values():
        stored = stored_rows(awkward.database, relation) if relation.primary_key else {}
        for record in rows.get(relation.name, []):
            raw = stored.get(tuple(str(record[k]) for k in relation.primary_key), {})
            for column in relation.columns:
                if column.name not in record:
                    continue
                value = record[column.name]
                text = "is.null" if value is None else "eq." + render(value)
                path = (f"{url(relation)}?{quote(column.name, safe='')}="
                        f"{quote(text, safe='')}&limit={LIMIT}")
                response = await awkward.server.get(path)
                why = sqlite_off_type(awkward.database, column, raw.get(column.name))
                if why is not None:
                    # Documented: a filter value must fit the declared type (400), or,
                    # for a blob read as base64, is compared as the text it is.
                    if response.status not in (200, 400):
                        problems.append(f"{col_name(relation, column)} holds {why}: filter "
                                        f"{text!r} -> {said(response)}")
                    continue
                if response.status != 200:
                    problems.append(f"{col_name(relation, column)}: filter {text!r} -> "
                                    f"{said(response)}")
                elif record not in response.body["items"]:
                    problems.append(f"{col_name(relation, column)}: filter {text!r} does not "
                                    f"find its row ({len(response.body['items'])} found)")
    problems.report("filtering by every value as read")


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_feed_filters_agree_with_rest_on_every_value(awkward):
    """A WebSocket filter is evaluated in Python on each change's record; it must select
    the rows the same filter selects over REST, for every type (eq, neq and, where the
    type is ordered, gt on every value as read)."""
    from pylight import query as ql

    problems = Problems()
    rows = await read_all(awkward, problems)
    app = awkward.server.app
    for relation in awkward.catalog.values():
        table = app.tables.get(relation.name)
        if table is None or not relation.primary_key:
            continue
        records = rows.get(relation.name, [])
        stored = stored_rows(awkward.database, relation)
        by_relation = {c.name: c for c in relation.columns}
        for column in table.columns.values():
            ops = ["eq", "neq"] + (["gt"] if column.range_filters else [])
            # Documented: a blob in a column of no type is served as base64 text, so a
            # feed compares that text; those rows are left out of the comparison.
            blob_rows = [r for r in records if (sqlite_off_type(
                awkward.database, by_relation[column.name],
                stored.get(tuple(str(r[k]) for k in relation.primary_key), {}).get(column.name))
                or "").startswith("a blob")]
            compared = [r for r in records if r not in blob_rows]
            skipped = {json.dumps(table.key_of(r)) for r in blob_rows}
            for value in {render(r[column.name]) for r in compared if r[column.name] is not None}:
                for op in ops:
                    text = f"{op}.{value}"
                    path = (f"{url(relation)}?{quote(column.name, safe='')}="
                            f"{quote(text, safe='')}&limit={LIMIT}")
                    response = await awkward.server.get(path)
                    if response.status != 200:
                        continue  # the filter itself is refused: covered above
                    matcher = ql.Matcher(table, ql.parse_filters(table, {column.name: [text]}),
                                         app.backend)
                    keys = [table.key_of(r) for r in response.body["items"]
                            if json.dumps(table.key_of(r)) not in skipped]
                    matched = [table.key_of(r) for r in compared if matcher(r)]
                    if sorted(map(json.dumps, keys)) != sorted(map(json.dumps, matched)):
                        problems.append(f"{col_name(relation, column.name)} {text!r}: REST "
                                        f"finds {short(keys)}, the feed filter {short(matched)}")
    problems.report("feed filters against REST")


# -- (4) pagination is exact under every order ----------------------------------------------------

async def walk(server: Any, path: str, problems: Problems, what: str) -> list[dict] | None:
    """Follow `next` links from ``path``; None (and a problem) if a page fails or loops."""
    items: list[dict] = []
    seen: list[str] = []
    while path is not None:
        if path in seen:
            problems.append(f"{what}: the next link {path} points at a page already visited")
            return None
        seen.append(path)
        if len(seen) > 60:
            problems.append(f"{what}: more than 60 pages of {PAGE}")
            return None
        response = await server.get(path)
        if response.status != 200:
            problems.append(f"{what}: page {path} -> {said(response)}")
            return None
        items.extend(response.body["items"])
        path = response.body.get("next")
        if path is not None and urlsplit(path).path != urlsplit(seen[0]).path:
            problems.append(f"{what}: next link {path} leaves {seen[0]}")
            return None
    return items


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_pagination_is_exact_under_every_order(awkward):
    problems = Problems()
    rows = await read_all(awkward, problems)
    server = awkward.server
    for relation in awkward.catalog.values():
        if relation.name not in rows:
            continue
        everything = Counter(canonical(r) for r in rows[relation.name])
        for column in relation.columns:
            for direction in ("asc", "desc"):
                what = f"{col_name(relation, column)} order {direction}"
                order = quote(f"{column.name}.{direction}", safe="")
                whole = await server.get(f"{url(relation)}?order={order}&limit={LIMIT}")
                if (whole.status == 400 and awkward.backend == "postgresql"
                        and column.declared in UNORDERABLE_PG):
                    message = whole.body["error"]["message"]
                    if column.name not in message:
                        problems.append(f"{what}: refused without naming the column: "
                                        f"{said(whole)}")
                    continue
                if whole.status != 200:
                    problems.append(f"{what}: one page of all -> {said(whole)}")
                    continue
                listed = whole.body["items"]
                if Counter(canonical(r) for r in listed) != everything:
                    problems.append(f"{what}: ordering changes which rows are listed")
                paged = await walk(server, f"{url(relation)}?order={order}&limit={PAGE}",
                                   problems, what)
                if paged is None:
                    continue
                counted = Counter(canonical(r) for r in paged)
                if counted != everything:
                    twice = sorted(short(json.loads(r)) for r, n in counted.items()
                                   if n > everything[r])
                    never = sorted(short(json.loads(r)) for r, n in everything.items()
                                   if counted[r] < n)
                    problems.append(f"{what}: pages of {PAGE} do not visit every row once "
                                    f"({len(paged)} visited for {len(rows[relation.name])}); "
                                    f"repeated {twice[:3]}, missed {never[:3]}")
                elif paged != listed:
                    problems.append(f"{what}: pages of {PAGE} come in another order than "
                                    f"one page of all")
    problems.report("walking next links under every order")


# -- columns named like query parameters -------------------------------------------------------

@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_columns_named_like_query_parameters(awkward):
    """`order`, `limit`, `select` and `count` columns: filters when the value is op.value,
    the parameter otherwise (section 5)."""
    problems = Problems()
    server = awkward.server
    response = await server.get(f"/api/Customer?limit={LIMIT}")
    assert response.status == 200, f"GET /api/Customer -> {said(response)}"
    rows = response.body["items"]

    async def expect(query: str, wanted: list[dict[str, Any]]) -> None:
        got = await server.get(f"/api/Customer?{query}")
        if got.status != 200:
            problems.append(f"Customer?{query} -> {said(got)}")
        elif got.body["items"] != wanted:
            problems.append(f"Customer?{query}: got ids "
                            f"{[r.get('CustomerID') for r in got.body['items']]}, expected "
                            f"{[r.get('CustomerID') for r in wanted]}")

    await expect("order=eq.3", [r for r in rows if r["order"] == 3])
    await expect("order=gt.0&limit=eq.10", [r for r in rows if (r["order"] or 0) > 0
                                            and r["limit"] == 10])
    await expect("limit=is.null", [r for r in rows if r["limit"] is None])
    await expect("count=eq.7&order=CustomerID.desc",
                 sorted([r for r in rows if r["count"] == 7], key=lambda r: -r["CustomerID"]))
    await expect("select=eq.select", [r for r in rows if r["select"] == "select"])
    await expect("select=eq.eq.x", [r for r in rows if r["select"] == "eq.x"])
    await expect("or=(order.eq.-1,limit.eq.0)",
                 [r for r in rows if r["order"] == -1 or r["limit"] == 0])
    # descending: PostgreSQL sorts NULL first, SQLite and MariaDB last
    nulls_first = awkward.backend == "postgresql"
    await expect("order=order.desc,CustomerID&limit=100", sorted(rows, key=lambda r: (
        (r["order"] is None) != nulls_first, -(r["order"] or 0), r["CustomerID"])))
    selected = await server.get("/api/Customer?select=select,count,order,limit&limit=2")
    if selected.status != 200 or [sorted(r) for r in selected.body["items"]] != [
            ["count", "limit", "order", "select"]] * 2:
        problems.append(f"Customer?select=select,count,order,limit&limit=2 -> {said(selected)}")
    counted = await server.get("/api/Customer?count=true&limit=1")
    if counted.status != 200 or counted.body.get("total") != len(rows):
        problems.append(f"Customer?count=true&limit=1 -> {said(counted)}")
    problems.report("columns named like query parameters")


# -- (5) GET /api/ describes every table, view and column ------------------------------------------

def expected_types(backend: str, column: Column) -> set[str] | None:
    """The `type` names section 5 implies for a declared type (None: not pinned down)."""
    if column.json:
        return {"json"}
    if column.array:
        return {"array"}
    if column.enum:
        return None
    declared = column.declared.lower().replace('"', "")
    base = declared.split("(")[0].strip()
    if backend == "postgresql":
        table = {
            "smallint": "integer", "integer": "integer", "bigint": "integer",
            "numeric": "decimal", "real": "number", "double precision": "number",
            "boolean": "boolean", "character": "string", "character varying": "string",
            "text": "string", "short_text": "string", "bytea": "binary", "date": "date",
            "time without time zone": "time", "time with time zone": "time",
            "timestamp without time zone": "datetime", "timestamp with time zone": "datetime",
            "interval": "duration", "uuid": "uuid",
        }
        return {table[base]} if base in table else None
    if backend == "mysql":
        word = base.split()[0]
        if declared.startswith("tinyint(1)"):
            return {"boolean", "integer"}
        if word in ("tinyint", "smallint", "mediumint", "int", "bigint", "bit"):
            return {"integer"}
        table = {
            "float": "number", "double": "number", "decimal": "decimal", "date": "date",
            "datetime": "datetime", "timestamp": "datetime", "char": "string",
            "varchar": "string", "tinytext": "string", "text": "string", "mediumtext": "string",
            "longtext": "string", "binary": "binary", "varbinary": "binary", "blob": "binary",
            "uuid": "uuid",
        }
        if word == "time":
            return {"time", "duration"}
        return {table[word]} if word in table else None
    upper = declared.upper()
    word = upper.split("(")[0].strip()
    if word in ("INT", "INTEGER", "BIGINT", "TINYINT", "SMALLINT"):
        return {"integer"}
    table = {"REAL": {"number"}, "DOUBLE": {"number"}, "FLOAT": {"number"},
             "NUMERIC": {"decimal", "number"}, "DECIMAL": {"decimal"}, "BOOLEAN": {"boolean"},
             "TEXT": {"string"}, "VARCHAR": {"string"}, "CHAR": {"string"}, "CLOB": {"string"},
             "BLOB": {"binary"}, "DATE": {"date"}, "DATETIME": {"datetime"},
             "TIMESTAMP": {"datetime"}}
    return table.get(word)


def fk_set(fks: Any) -> set[tuple[Any, ...]]:
    return {(tuple(fk["columns"]), fk["references"]["table"], tuple(fk["references"]["columns"]))
            for fk in fks}


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_schema_document_describes_everything(awkward):
    problems = Problems()
    described = await schema_document(awkward)
    missing = sorted(set(awkward.catalog) - set(described))
    if missing:
        problems.append(f"GET /api/ lacks tables/views {missing}")
    for relation in awkward.catalog.values():
        entry = described.get(relation.name)
        if entry is None:
            continue
        names = [c["name"] for c in entry.get("columns", [])]
        if names != [c.name for c in relation.columns]:
            problems.append(f"{relation.name}: columns {names}, the database has "
                            f"{[c.name for c in relation.columns]}")
        if entry.get("primary_key") != relation.primary_key:
            problems.append(f"{relation.name}: primary_key {entry.get('primary_key')}, "
                            f"the database has {relation.primary_key}")
        if relation.view:
            if entry.get("ws", "absent") is not None:
                problems.append(f"{relation.name} (view): ws is {entry.get('ws', 'absent')!r}, "
                                "not null")
            if entry.get("foreign_keys", []) != []:
                problems.append(f"{relation.name} (view): foreign_keys "
                                f"{entry.get('foreign_keys')}")
        else:
            if not isinstance(entry.get("ws"), str):
                problems.append(f"{relation.name}: ws is {entry.get('ws', 'absent')!r}")
            if "foreign_keys" not in entry:
                problems.append(f"{relation.name}: no foreign_keys")
            elif fk_set(entry["foreign_keys"]) != fk_set(relation.foreign_keys):
                problems.append(f"{relation.name}: foreign_keys {entry['foreign_keys']}, "
                                f"the database has {relation.foreign_keys}")
        columns = {c["name"]: c for c in entry.get("columns", [])}
        for column in relation.columns:
            described_column = columns.get(column.name)
            if described_column is None:
                continue
            kind = described_column.get("type")
            wanted = expected_types(awkward.backend, column)
            if not isinstance(kind, str) or not kind:
                problems.append(f"{col_name(relation, column)}: type {kind!r}")
            elif wanted is not None and kind not in wanted:
                problems.append(f"{col_name(relation, column)}: type {kind!r}, expected "
                                f"{' or '.join(sorted(wanted))}")
            if column.enum:
                members = described_column.get("enum")
                if column.array and members is None:
                    members = (described_column.get("items") or {}).get("enum")
                if members != column.enum:
                    problems.append(f"{col_name(relation, column)}: enum {members!r}, the "
                                    f"database declares {column.enum}")
            if column.generated and described_column.get("read_only") is not True:
                problems.append(f"{col_name(relation, column)} is generated: read_only is "
                                f"{described_column.get('read_only', 'absent')!r}, not true")
    problems.report("GET /api/")


# -- (6) generated columns refuse writes ----------------------------------------------------------

@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_writing_a_generated_column_is_a_422_naming_it(awkward):
    problems = Problems()
    rows = await read_all(awkward, problems)
    generated = [(r, c) for r in awkward.keyed for c in r.columns if c.generated]
    assert generated, "the awkward schema has generated columns in keyed tables"
    for relation, column in generated:
        for record in rows.get(relation.name, [])[:2]:
            path = item_url(relation, record)
            for value in (record.get(column.name), 1):
                response = await awkward.server.put(path, {column.name: value})
                if response.status != 422 or column.name not in said(response):
                    problems.append(f"{col_name(relation, column)}: PUT {path} "
                                    f"{{{column.name!r}: {short(value)}}} -> {said(response)}, "
                                    "expected a 422 naming the column")
                after = await awkward.server.get(path)
                if after.body != record:
                    problems.append(f"{col_name(relation, column)}: the refused write changed "
                                    f"the row: {differences(relation, record, after.body)}")
    problems.report("writes to generated columns")


# -- (8) OpenAPI -------------------------------------------------------------------------------

def resolve(document: dict[str, Any], schema: Any) -> Any:
    while isinstance(schema, dict) and "$ref" in schema:
        node: Any = document
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        schema = node
    return schema


def find_property(document: dict[str, Any], schema: Any, name: str, depth: int = 0) -> Any:
    """The schema of property ``name`` of the records ``schema`` describes (through lists)."""
    schema = resolve(document, schema)
    if not isinstance(schema, dict) or depth > 8:
        return None
    properties = schema.get("properties") or {}
    if name in properties and "items" not in properties:
        return resolve(document, properties[name])
    for inner in [properties.get("items"), schema.get("items"), *schema.get("allOf", []),
                  *schema.get("oneOf", []), *schema.get("anyOf", [])]:
        if inner is not None:
            found = find_property(document, inner, name, depth + 1)
            if found is not None:
                return found
    if name in properties:
        return resolve(document, properties[name])
    return None


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_openapi_is_valid_and_marks_generated_columns_read_only(awkward):
    problems = Problems()
    response = await awkward.server.get("/api/openapi.json")
    assert response.status == 200, f"GET /api/openapi.json -> {said(response)}"
    document = response.body
    try:
        validate(document)
    except Exception as exc:  # the validator's own error types vary by version
        problems.append(f"the document does not validate: {str(exc).splitlines()[0][:300]}")
    paths = {unquote(p): item for p, item in document.get("paths", {}).items()}
    for relation in awkward.catalog.values():
        path = paths.get(f"/api/{relation.name}")
        if path is None:
            problems.append(f"{relation.name}: no path /api/{relation.name} "
                            f"(paths: {sorted(paths)[:20]})")
            continue
        try:
            schema = path["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        except (KeyError, TypeError):
            problems.append(f"{relation.name}: GET /api/{relation.name} has no 200 JSON schema")
            continue
        for column in relation.columns:
            prop = find_property(document, schema, column.name)
            if prop is None:
                problems.append(f"{col_name(relation, column)}: not in the response schema")
            elif column.generated and prop.get("readOnly") is not True:
                problems.append(f"{col_name(relation, column)} is generated: readOnly is "
                                f"{prop.get('readOnly', 'absent')!r}")
    problems.report("GET /api/openapi.json")


# -- (9) values a column cannot hold -------------------------------------------------------------

BAD_VALUES: dict[str, list[tuple[str, str, Any]]] = {
    "postgresql": [
        ("measurements", "small", 70000),
        ("measurements", "Int", 2**31),
        ("measurements", "big", 2**63),
        ("measurements", "big", -(2**63) - 1),
        ("measurements", "price", "1234567890.00"),
        ("Customer", "mood", "furious"),
        ("Orders", "status", "furious"),
        ("Profiles", "moods", ["sad", "furious"]),
        ("Customer", "limit", 32768),
        ("schedule", "day", "2024-02-30"),
        ("network", "ip", "not an address"),
    ],
    "mysql": [
        ("measurements", "big_u", 2**64),
        ("measurements", "big_u", -1),
        ("measurements", "big", 2**63),
        ("measurements", "small", 70000),
        ("measurements", "tiny_u", 256),
        ("measurements", "int_u", -1),
        ("measurements", "medium", 2**23),
        ("measurements", "bits", 256),
        ("measurements", "price", "1234567890.00"),
        ("measurements", "yr", 1800),
        ("Customer", "mood", "furious"),
        ("Orders", "status", "furious"),
        ("Profiles", "perms", ["read", "root"]),
        ("schedule", "day", "2024-02-30"),
    ],
    "sqlite": [
        ("inventory", "big", 2**63),
        ("inventory", "stock", 2**63),
        ("inventory", "qty", -(2**63) - 1),
        ("ledger", "qty", "abc"),
        ("ledger", "amount", "abc"),
        ("ledger", "amount", None),
    ],
}


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_a_value_the_column_cannot_hold_is_a_422_naming_it(awkward):
    problems = Problems()
    rows = await read_all(awkward, problems)
    for table, name, value in BAD_VALUES[awkward.backend]:
        relation = awkward.catalog[table]
        records = rows.get(table)
        if not records:
            problems.append(f"{table}: no rows to write to")
            continue
        record = records[0]
        path = item_url(relation, record)
        response = await awkward.server.put(path, {name: value})
        if response.status != 422 or name not in said(response):
            problems.append(f"{col_name(relation, name)} = {short(value)}: PUT {path} -> "
                            f"{said(response)}, expected a 422 naming the column")
        after = await awkward.server.get(path)
        if after.status != 200 or after.body != record:
            problems.append(f"{col_name(relation, name)} = {short(value)}: the refused write "
                            f"changed the row: {differences(relation, record, after.body)}")
    problems.report("values the column cannot hold")


# -- WebSocket feeds ---------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_feed_change_records_equal_rest_records(awkward):
    """A PUT of a row as read is sent on /ws/<table> as exactly the record GET gives."""
    problems = Problems()
    rows = await read_all(awkward, problems)
    read_only = await read_only_columns(awkward)
    server = awkward.server
    for relation in awkward.keyed:
        records = rows.get(relation.name)
        if not records:
            continue
        feed_path = "/ws/" + quote(relation.name, safe="")
        try:
            client = await FeedClient.open(server, feed_path)
        except Exception as exc:
            problems.append(f"{relation.name}: cannot open {feed_path}: {exc!r}")
            continue
        try:
            for record in records:
                path = item_url(relation, record)
                body = writable_part(record, read_only[relation.name])
                attempts = [body] + [{k: v} for k, v in body.items()
                                     if k not in relation.primary_key]
                for attempt in attempts:
                    if (await server.put(path, attempt)).status == 200:
                        break
                else:
                    continue  # test_every_record_round_trips_through_put reports it
                stored = (await server.get(path)).body
                messages = [m for m in await client.drain() if m.get("type") == "change"]
                if len(messages) != 1:
                    problems.append(f"{relation.name} {path}: {len(messages)} change messages "
                                    f"for one PUT: {short(messages)}")
                elif messages[0].get("pk") != (record[relation.primary_key[0]] if len(
                        relation.primary_key) == 1 else [record[k] for k in relation.primary_key]):
                    problems.append(f"{relation.name} {path}: change pk is "
                                    f"{short(messages[0].get('pk'))}")
                elif messages[0].get("record") != stored:
                    problems.append(f"{relation.name} {path}: the change record differs from "
                                    f"GET: {differences(relation, stored, messages[0].get('record'))}")
                break  # one row per table
            else:
                problems.append(f"{relation.name}: no row could be written back")
        finally:
            client.close()
    problems.report("change records on /ws/<table>")


UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_view_feeds_are_refused_with_a_json_404(awkward):
    problems = Problems()
    for relation in awkward.catalog.values():
        if not relation.view:
            continue
        path = "/ws/" + quote(relation.name, safe="")
        response = await awkward.server.get(path, headers=UPGRADE)
        body = response.body
        if response.status != 404 or not (isinstance(body, dict) and
                                          body.get("error", {}).get("status") == 404):
            problems.append(f"{relation.name} (view): {path} -> {said(response)}, "
                            "expected a JSON 404 before the upgrade")
    problems.report("feeds on views")
