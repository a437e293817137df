"""Property tests (hypothesis) of the query language and the change feeds (issue 6, item 2).

(a) The parser answers any query string with a result or its own 400, never another
    exception (and what it accepts compiles to SQL and evaluates in Python).
(b) On every backend, for random rows and random well-formed filters, the rows REST
    returns are exactly the rows the Python-side filter (``query.Matcher``) accepts,
    and, where the outcome does not depend on the database (integers, decimals,
    booleans, NULL tests, case-sensitive LIKE, exact text on PostgreSQL/SQLite), the
    rows an independent reference evaluation accepts.
(c) A state machine of random REST writes with WebSocket subscribers (one unfiltered,
    one filtered): replaying each subscriber's events reproduces the table's contents.

Deterministic (``derandomize=True``, no example database); budgets keep the file
well under a minute on all three databases. ``PYLIGHT_PROPERTY_SCALE=10`` runs ten
times as many examples.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    multiple,
    rule,
    run_state_machine_as_test,
)

from pylight import query as ql
from pylight.errors import ApiError
from tests.conftest import make_config, open_app
from tests.realtime_support import FeedClient

SCALE = max(int(os.environ.get("PYLIGHT_PROPERTY_SCALE", "1")), 1)


def budget(examples: int, **extra: Any) -> settings:
    return settings(max_examples=examples * SCALE, deadline=None, derandomize=True,
                    database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture,
                                           HealthCheck.filter_too_much],
                    **extra)


# -- (a) the parser never raises anything but its own 400 ------------------------------------

KINDS_DDL = (
    "CREATE TABLE kinds (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, f REAL, "
    "d DECIMAL(10,2), b BOOLEAN, t VARCHAR(50), dt DATE, tm TIME, ts TIMESTAMP, "
    "bl BLOB, j JSON, u UUID)"
)


@pytest.fixture(scope="module")
def kinds_app(tmp_path_factory: Any) -> Any:
    """A reflected SQLite table with a column of every kind (no server needed)."""
    import sqlite3

    path = tmp_path_factory.mktemp("props") / "kinds.db"
    conn = sqlite3.connect(path)
    conn.execute(KINDS_DDL)
    conn.commit()
    conn.close()
    app = open_app(make_config(path.parent, f"sqlite:///{path}", seed=False))
    yield app
    app.db.close()


FRAGMENTS = [
    "not", ".", "eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "in", "is", "(", ")",
    ",", '"', "\\", "null", "NULL", "true", "false", "*", "%", "_", "or(", "and(", "not.",
    "1", "-1", "+-1", "0.5", "1e999", "-0", "9" * 45, "9223372036854775808", "²", "٣", "NaN",
    "Infinity", " ", "\t", "\x00", "\ud800", "é", "ß", "2024-02-30", "2024-01-01T00:00:00+01:00",
    "25:00", "00000000-0000-0000-0000-000000000000", "AAA=", "!!", "desc", "asc", "nullsfirst",
    "[", "]", "{", "}", "'", ";", "--", "/*",
]
fragment_text = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=6), max_size=12).map("".join)
param_value = st.one_of(
    fragment_text.map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.binary(max_size=12),  # percent-decoded query values need not be UTF-8
)
param_name = st.one_of(
    st.sampled_from(["id", "n", "f", "d", "b", "t", "dt", "tm", "ts", "bl", "j", "u", *ql.LIST_PARAMS,
                     "token", "since"]),
    st.text(max_size=8),
)
query_arguments = st.dictionaries(param_name, st.lists(param_value, min_size=1, max_size=3),
                                  max_size=5)

SAMPLE_RECORDS = [
    {"id": 1, "n": 5, "f": 1.5, "d": "2.50", "b": True, "t": "Abc", "dt": "2024-01-01",
     "tm": "10:00:00", "ts": "2024-01-01T10:00:00", "bl": "AAA=", "j": {"a": 1},
     "u": "00000000-0000-0000-0000-000000000000"},
    {name: None for name in ("id", "n", "f", "d", "b", "t", "dt", "tm", "ts", "bl", "j", "u")},
    {"id": "x", "n": [1], "d": {}, "b": "yes", "t": 7},  # garbage must not crash the matcher
]


@budget(1000)
@given(arguments=query_arguments)
# Found by this test (bare ValueError/UnicodeDecodeError, i.e. 500s, before the fix):
@example(arguments={"count": [b"true", b"false"]})
@example(arguments={"after": [b"x", b"y"]})
@example(arguments={"t": [b"\xff"]})
@example(arguments={"or": [b"(t.eq.\xc3)"]})
@example(arguments={"order": [b"\xe9"]})
def test_parser_only_raises_its_own_400(kinds_app: Any, arguments: dict[str, list[bytes]]) -> None:
    table = kinds_app.tables["kinds"]
    backend = kinds_app.backend
    try:
        parsed = ql.parse_list_query(table, arguments, 50, 1000)
    except ApiError as exc:
        assert exc.status == 400, exc
        return
    # What parses compiles to SQL and evaluates in Python without raising.
    ql.to_sql(table, backend, parsed.where)
    matcher = ql.Matcher(table, parsed.where, backend)
    for record in SAMPLE_RECORDS:
        assert matcher(record) in (True, False)
    try:
        ql.parse_filters(table, arguments, ignore=("since",))
    except ApiError as exc:
        assert exc.status == 400, exc


# -- the table of (b) and (c) ---------------------------------------------------------------

PROPS_DDL = {
    "sqlite": "CREATE TABLE props (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER, "
              "d DECIMAL(8,2), t VARCHAR(40), b BOOLEAN)",
    "postgresql": "CREATE TABLE props (id SERIAL PRIMARY KEY, n BIGINT, d NUMERIC(8,2), "
                  "t VARCHAR(40), b BOOLEAN)",
    "mysql": "CREATE TABLE props (id INT AUTO_INCREMENT PRIMARY KEY, n BIGINT, "
             "d DECIMAL(8,2), t VARCHAR(40), b BOOLEAN)",
}

INT64 = 2**63 - 1
ints = st.one_of(st.integers(-3, 3), st.integers(-3, 3), st.integers(-INT64 - 1, INT64))
decimals = st.one_of(
    st.sampled_from(["0", "-1.5", "2.5", "2.50", "0.01", "-0.01", "999999.99"]).map(Decimal),
    st.decimals(min_value=Decimal("-999999.99"), max_value=Decimal("999999.99"), places=2,
                allow_nan=False, allow_infinity=False),
)
# Case, accents, German sharp s, LIKE metacharacters, spaces (MySQL pads), a dot, a
# comma (quoted in lists and groups).
TEXT_ALPHABET = "aAbBeEéÉèüÜßsS%_*. 0z,"
texts = st.text(TEXT_ALPHABET, max_size=6)


def nullable(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


rows = st.fixed_dictionaries({
    "n": nullable(ints),
    "d": nullable(decimals.map(str)),
    "t": nullable(texts),
    "b": nullable(st.booleans()),
})


def start_props(database: Any, make_server: Callable[..., Any]) -> Any:
    database.ddl(PROPS_DDL["sqlite"], PROPS_DDL["postgresql"], PROPS_DDL["mysql"])
    return make_server()


def clear_props(database: Any) -> None:
    database.execute("DELETE FROM props")


# -- (b) SQL and Python agree --------------------------------------------------------------------

COMPARE = ("eq", "neq", "gt", "gte", "lt", "lte")


def render_scalar(column: str, value: Any) -> str:
    if column == "b":
        return "true" if value else "false"
    return str(value)


@st.composite
def conditions(draw: Any, pool: dict[str, list[Any]]) -> dict[str, Any]:
    """One condition: {column, op, value, negate}; values often taken from the rows."""
    column = draw(st.sampled_from(["n", "d", "t", "b"]))
    fresh = {"n": ints, "d": decimals, "t": texts, "b": st.booleans()}[column]
    seen = [v for v in pool[column] if v is not None]
    value_strategy = st.one_of(st.sampled_from(seen), fresh, st.sampled_from(seen)) if seen else fresh
    ops = [*COMPARE, "in", "is"] + (["like", "ilike"] if column == "t" else [])
    op = draw(st.sampled_from(ops))
    if op == "is":
        choices: list[Any] = [None] + ([True, False] if column == "b" else [])
        value: Any = draw(st.sampled_from(choices))
    elif op == "in":
        value = tuple(draw(st.lists(value_strategy, min_size=1, max_size=4)))
    elif op in ("like", "ilike"):
        # A pattern: pieces of the rows' texts (or fresh text) around `*` wildcards.
        pieces = draw(st.lists(value_strategy.map(lambda t: t[:3]) | st.just(""), min_size=1,
                               max_size=3))
        value = "*".join(pieces) if len(pieces) > 1 else pieces[0]
        if draw(st.booleans()):
            value = "*" + value
        if draw(st.booleans()):
            value += "*"
    else:
        value = draw(value_strategy)
        if column == "d":
            value = Decimal(value)
    return {"column": column, "op": op, "value": value, "negate": draw(st.booleans())}


def spec(cond: dict[str, Any], grouped: bool) -> str:
    """``[not.]op.value`` for a condition; inside or=(...) text values are quoted."""
    op, value, column = cond["op"], cond["value"], cond["column"]
    if op == "is":
        text = "null" if value is None else ("true" if value else "false")
    elif op == "in":
        # Items with a comma, and the empty text (`in.()` is the empty list), are quoted.
        text = "(" + ",".join(f'"{v}"' if column == "t" and (not v or "," in v)
                              else render_scalar(column, v) for v in value) + ")"
    elif grouped and column == "t" and ("," in value or value != value.strip()):
        text = '"' + value + '"'  # or=(...) splits on commas and strips its items
    else:
        text = render_scalar(column, value)
    return ("not." if cond["negate"] else "") + f"{op}.{text}"


@st.composite
def filters(draw: Any, pool: dict[str, list[Any]]) -> dict[str, Any]:
    """A filter: top-level conditions (ANDed), maybe with an or=(...) / and=(...) group."""
    top = draw(st.lists(conditions(pool), max_size=2))
    group = None
    if draw(st.booleans()) or not top:
        members = draw(st.lists(conditions(pool), min_size=1, max_size=3))
        group = {"any_of": draw(st.booleans()), "members": members}
    # A column may be given once at the top level (a repeated name is fine too, but
    # keep the query readable).
    seen: set[str] = set()
    top = [c for c in top if not (c["column"] in seen or seen.add(c["column"]))]
    return {"top": top, "group": group}


def query_of(flt: dict[str, Any]) -> str:
    pairs = [(c["column"], spec(c, grouped=False)) for c in flt["top"]]
    if flt["group"] is not None:
        inner = ",".join(f"{c['column']}.{spec(c, grouped=True)}" for c in flt["group"]["members"])
        pairs.append(("or" if flt["group"]["any_of"] else "and", f"({inner})"))
    return "&".join(f"{name}={quote(text, safe='(),.*')}" for name, text in pairs)


# The independent reference: SQL's three-valued logic on the values as inserted, for
# the conditions whose outcome does not depend on the database.

class Unsupported(Exception):
    pass


def _like(pattern: str, text: str) -> bool:
    """Does ``text`` match ``pattern`` (``*`` any run of characters)? Plain dynamic programming."""
    # reach[j]: the first i characters of text can be matched by pattern[:j]
    reach = [True] + [False] * len(pattern)
    for j, p in enumerate(pattern, 1):
        reach[j] = reach[j - 1] and p == "*"
    for ch in text:
        new = [False] * (len(pattern) + 1)
        for j, p in enumerate(pattern, 1):
            new[j] = (new[j - 1] or reach[j]) if p == "*" else (reach[j - 1] and p == ch)
        reach = new
    return reach[-1]


def ref_condition(cond: dict[str, Any], row: dict[str, Any], backend: str) -> bool | None:
    column, op, value = cond["column"], cond["op"], cond["value"]
    raw = row[column]
    if op == "is":
        result: bool | None = (raw is None) if value is None else (
            None if raw is None else raw is value)
        # `is` never yields unknown in SQL: x IS TRUE is false for NULL.
        result = bool(result) if result is not None else False
    elif column == "t" and op == "ilike":
        raise Unsupported  # case folding differs between the databases
    elif column == "t" and op != "like" and backend == "mysql":
        raise Unsupported  # utf8mb4_*_ci collations: case/accent-insensitive, PAD SPACE
    elif raw is None:
        result = None
    else:
        current: Any = Decimal(raw) if column == "d" else raw
        if op == "like":
            result = _like(value, current)
        elif op == "in":
            result = any(current == (Decimal(v) if column == "d" else v) for v in value)
        else:
            result = {"eq": current == value, "neq": current != value, "gt": current > value,
                      "gte": current >= value, "lt": current < value,
                      "lte": current <= value}[op]
    if cond["negate"] and result is not None:
        result = not result
    return result


def ref_filter(flt: dict[str, Any], row: dict[str, Any], backend: str) -> bool:
    def all_of(results: list[bool | None]) -> bool | None:
        return False if False in results else (None if None in results else True)

    def any_of(results: list[bool | None]) -> bool | None:
        return True if True in results else (None if None in results else False)

    results = [ref_condition(c, row, backend) for c in flt["top"]]
    if flt["group"] is not None:
        members = [ref_condition(c, row, backend) for c in flt["group"]["members"]]
        results.append(any_of(members) if flt["group"]["any_of"] else all_of(members))
    return all_of(results) is True


@st.composite
def scenarios(draw: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    data = draw(st.lists(rows, min_size=3, max_size=10))
    pool = {name: [row[name] for row in data] for name in ("n", "d", "t", "b")}
    return data, draw(st.lists(filters(pool), min_size=1, max_size=6))


def check_filters(server: Any, backend: str, data: list[dict[str, Any]],
                  flts: list[dict[str, Any]]) -> Callable[[], Any]:
    async def run() -> None:
        created = await server.post("/api/props", data)
        assert created.status == 201, created.body
        inserted = {item["id"]: row for item, row in zip(created.body["items"], data, strict=True)}
        records = (await server.get("/api/props?limit=1000")).body["items"]
        assert {r["id"] for r in records} == set(inserted)
        table = server.app.tables["props"]
        for flt in flts:
            query = query_of(flt)
            response = await server.get(f"/api/props?{query}&limit=1000")
            assert response.status == 200, (query, response.body)
            rest = sorted(r["id"] for r in response.body["items"])
            where = ql.parse_filters(table, _arguments(query))
            matcher = ql.Matcher(table, where, server.app.backend)
            python = sorted(r["id"] for r in records if matcher(r))
            assert rest == python, (f"REST and Matcher disagree on ?{query}", records)
            event("rows: " + ("none" if not rest else "all" if len(rest) == len(records) else "some"))
            try:
                reference = sorted(i for i, row in inserted.items() if ref_filter(flt, row, backend))
            except Unsupported:
                event("reference: not applicable")
                continue
            event("reference: compared")
            assert rest == reference, (f"REST and the reference disagree on ?{query}", records)
    return run


def _arguments(query: str) -> dict[str, list[bytes]]:
    from tornado.escape import parse_qs_bytes

    return parse_qs_bytes(query, keep_blank_values=True)


def test_rest_filters_agree_with_python(database: Any, make_server: Callable[..., Any],
                                        io_loop: Any) -> None:
    server = start_props(database, make_server)

    @budget(250)
    @given(scenario=scenarios())
    # Found by this test: the Matcher made `b IS TRUE` unknown for NULL, so it
    # disagreed with SQL on `not.is.true` / `not.is.false`.
    @example(scenario=([{"n": None, "d": None, "t": None, "b": None}],
                       [{"top": [{"column": "b", "op": "is", "value": True, "negate": True}],
                         "group": None},
                        {"top": [], "group": {"any_of": True, "members": [
                            {"column": "b", "op": "is", "value": False, "negate": True}]}}]))
    # A quoted LIKE pattern in a group (the quotes stayed in the pattern).
    @example(scenario=([{"n": None, "d": None, "t": "a,b ", "b": None}],
                       [{"top": [], "group": {"any_of": True, "members": [
                           {"column": "t", "op": "like", "value": "a,b *", "negate": False}]}}]))
    # An empty text in a list (quoted: `in.()` is the empty list).
    @example(scenario=([{"n": None, "d": None, "t": "", "b": None}],
                       [{"top": [{"column": "t", "op": "in", "value": ("",), "negate": False}],
                         "group": None}]))
    def check(scenario: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
        data, flts = scenario
        clear_props(database)
        io_loop.run_sync(check_filters(server, database.backend, data, flts), timeout=60)

    check()


# -- (c) random writes, replayed from the feed --------------------------------------------------

partial_rows = st.fixed_dictionaries({}, optional={
    "n": nullable(ints), "d": nullable(decimals.map(str)), "t": nullable(texts),
    "b": nullable(st.booleans())})
FILTERED = "n=gt.0"  # the filtered subscriber's query


def replay(messages: list[dict[str, Any]], filtered: bool) -> dict[Any, dict[str, Any]]:
    """The rows a client holds after applying ``messages`` to an empty table."""
    held: dict[Any, dict[str, Any]] = {}
    last = 0
    for message in messages:
        assert message["type"] == "change", message
        assert message["seq"] > last, messages
        last = message["seq"]
        if message["event"] == "deleted" or (filtered and message.get("matches") is False):
            held.pop(message["pk"], None)
        else:
            held[message["pk"]] = message["record"]
    return held


def writes_machine(server: Any, database: Any, io_loop: Any) -> type[RuleBasedStateMachine]:
    def run(coro_fn: Callable[[], Any]) -> Any:
        return io_loop.run_sync(coro_fn, timeout=30)

    class Writes(RuleBasedStateMachine):
        keys = Bundle("keys")

        def __init__(self) -> None:
            super().__init__()
            clear_props(database)
            self.model: dict[Any, dict[str, Any]] = {}
            self.all = run(lambda: FeedClient.open(server, "/ws/props"))
            self.filtered = run(lambda: FeedClient.open(server, "/ws/props?" + FILTERED))

        @initialize(target=keys, row=rows)
        def first(self, row: dict[str, Any]) -> Any:
            return self._create(row)

        @rule(target=keys, row=rows)
        def create(self, row: dict[str, Any]) -> Any:
            return self._create(row)

        def _create(self, row: dict[str, Any]) -> Any:
            response = run(lambda: server.post("/api/props", row))
            assert response.status == 201, response.body
            self.model[response.body["id"]] = response.body
            return response.body["id"]

        @rule(target=keys, batch=st.lists(rows, min_size=1, max_size=3))
        def create_many(self, batch: list[dict[str, Any]]) -> Any:
            response = run(lambda: server.post("/api/props", batch))
            assert response.status == 201, response.body
            for item in response.body["items"]:
                self.model[item["id"]] = item
            return multiple(*(item["id"] for item in response.body["items"]))

        @rule(key=keys, change=partial_rows, method=st.sampled_from(["PUT", "PATCH"]))
        def update(self, key: Any, change: dict[str, Any], method: str) -> None:
            response = run(lambda: server.request(method, f"/api/props/{key}", change))
            if key in self.model:
                assert response.status == 200, response.body
                self.model[key] = response.body
            else:
                assert response.status in (404, 422), response.body

        @rule(key=consumes(keys))
        def delete(self, key: Any) -> None:
            response = run(lambda: server.delete(f"/api/props/{key}"))
            assert response.status == (204 if self.model.pop(key, None) is not None else 404)

        def teardown(self) -> None:
            try:
                self._check()
            finally:
                self.all.close()
                self.filtered.close()

        def _check(self) -> None:
            async def fetch() -> tuple[Any, ...]:
                everything = (await server.get("/api/props?limit=1000")).body["items"]
                matching = (await server.get(f"/api/props?{FILTERED}&limit=1000")).body["items"]
                return everything, matching, await self.all.drain(), await self.filtered.drain()

            everything, matching, all_messages, filtered_messages = run(fetch)
            assert replay(all_messages, False) == {r["id"]: r for r in everything}
            assert replay(filtered_messages, True) == {r["id"]: r for r in matching}
            assert {r["id"]: r for r in everything} == self.model

    return Writes


def test_feed_replays_to_table_contents(database: Any, make_server: Callable[..., Any],
                                        io_loop: Any) -> None:
    server = start_props(database, make_server)
    machine = writes_machine(server, database, io_loop)
    run_state_machine_as_test(machine, settings=budget(40, stateful_step_count=25))
