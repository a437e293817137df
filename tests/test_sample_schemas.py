"""Shapes taken from public sample and application databases (WordPress, world,
Pagila, AdventureWorks) that Pylight once answered with a 500 or served wrongly.

Each test builds the shape as those schemas declare it, with the values their
rows really hold, and checks what a REST client sees.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from pylight import query as ql
from tests.test_embedding import walk
from tests.test_startup_messages import start


@pytest.fixture
def term_server(database: Any, make_server: Any) -> Any:
    # wp_term_relationships: a composite key whose columns default to 0; world's
    # CountryLanguage the same with ''.
    database.ddl(
        "CREATE TABLE wp_term_relationships (object_id integer NOT NULL DEFAULT 0, "
        "term_taxonomy_id integer NOT NULL DEFAULT 0, term_order integer NOT NULL DEFAULT 0, "
        "PRIMARY KEY (object_id, term_taxonomy_id));\n"
        "CREATE TABLE countrylanguage (countrycode char(3) NOT NULL DEFAULT '', "
        "language char(30) NOT NULL DEFAULT '', percentage decimal(4,1) NOT NULL DEFAULT 0.0, "
        "PRIMARY KEY (countrycode, language))",
        mysql="CREATE TABLE wp_term_relationships (object_id bigint unsigned NOT NULL DEFAULT 0, "
        "term_taxonomy_id bigint unsigned NOT NULL DEFAULT 0, term_order int NOT NULL DEFAULT 0, "
        "PRIMARY KEY (object_id, term_taxonomy_id));\n"
        "CREATE TABLE countrylanguage (countrycode char(3) NOT NULL DEFAULT '', "
        "language char(30) NOT NULL DEFAULT '', percentage decimal(4,1) NOT NULL DEFAULT 0.0, "
        "PRIMARY KEY (countrycode, language));\n"
        # A counter inside a composite key (MySQL lets it be the key's first column).
        "CREATE TABLE revisions (id int NOT NULL AUTO_INCREMENT, post int NOT NULL DEFAULT 7, "
        "body text, PRIMARY KEY (id, post))")
    return make_server(seed=False)


@pytest.mark.gen_test(timeout=60)
async def test_a_composite_key_left_to_its_defaults_is_read_back(term_server, database):
    server = term_server
    first = await server.post("/api/wp_term_relationships", {"term_order": 0})
    assert first.status == 201, first.body
    assert first.body == {"object_id": 0, "term_taxonomy_id": 0, "term_order": 0}
    second = await server.post("/api/wp_term_relationships", {"object_id": 5, "term_order": 2})
    assert second.body == {"object_id": 5, "term_taxonomy_id": 0, "term_order": 2}
    # The answer is the row stored, not a neighbour with the same values given.
    third = await server.post("/api/wp_term_relationships",
                              {"term_taxonomy_id": 9, "term_order": 2})
    assert third.body == {"object_id": 0, "term_taxonomy_id": 9, "term_order": 2}
    assert (await server.get("/api/wp_term_relationships/5,0")).body == second.body
    language = await server.post("/api/countrylanguage", {"percentage": "12.5"})
    assert language.status == 201, language.body
    # char(n): PostgreSQL pads the default '' with spaces, the others do not.
    assert {name: value.strip() for name, value in language.body.items()} == {
        "countrycode": "", "language": "", "percentage": "12.5"}
    assert [(c.event, c.record) for c in server.changes][-1] == ("created", language.body)
    if database.backend == "mysql":
        for body in ("one", "two"):
            revision = await server.post("/api/revisions", {"body": body})
            assert revision.status == 201, revision.body
            assert revision.body["post"] == 7 and revision.body["body"] == body
        rows = database.execute("SELECT id, post, body FROM revisions ORDER BY id")
        assert [(row[1], row[2]) for row in rows] == [(7, "one"), (7, "two")]
        assert revision.body["id"] == rows[-1][0]


# -- dates Python cannot hold ---------------------------------------------------------

PG_PERIODS = """CREATE TABLE price_period (id int PRIMARY KEY,
    valid_from timestamptz NOT NULL, valid_to timestamptz NOT NULL DEFAULT 'infinity',
    local_at timestamp, d date, history date[]);
INSERT INTO price_period VALUES
    (1, '2022-01-01', 'infinity', 'infinity', 'infinity', '{2020-01-01,infinity}'),
    (2, '-infinity', '2023-01-01', '-infinity', '-infinity', NULL),
    (3, '2021-06-01', '2024-01-01', '0044-03-15 12:00 BC', '0044-03-15 BC', '{0001-01-01 BC}'),
    (4, '2020-01-01', 'infinity', '12000-01-01 00:00', '12000-01-01', NULL),
    (5, '2020-01-01', '2022-01-01', NULL, '2020-02-29', NULL)"""
# WordPress keeps zero dates for drafts; MySQL's own sample data has partial ones.
MYSQL_POSTS = """CREATE TABLE wp_posts (ID bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY,
    post_title text NOT NULL,
    post_date_gmt datetime NOT NULL DEFAULT '0000-00-00 00:00:00',
    post_day date, touched timestamp NULL DEFAULT NULL);
INSERT INTO wp_posts (post_title, post_date_gmt, post_day, touched) VALUES
    ('draft 1', '0000-00-00 00:00:00', '0000-00-00', '0000-00-00 00:00:00'),
    ('draft 2', '0000-00-00 00:00:00', '2010-05-00', NULL),
    ('published', '2023-05-01 15:00:00', '2023-05-01', '2023-05-01 15:00:00'),
    ('later', '2024-01-01 00:00:00.5', '2010-00-00', NULL)"""


@pytest.fixture
def dated(database: Any, make_server: Any) -> Any:
    if database.backend == "sqlite":
        pytest.skip("SQLite keeps any text in a date column: served as stored already")
    if database.backend == "postgresql":
        database.ddl(PG_PERIODS, postgresql=PG_PERIODS)
        return "price_period", "id", ["valid_from", "valid_to", "local_at", "d"]
    database.ddl(MYSQL_POSTS, mysql=MYSQL_POSTS)
    return "wp_posts", "ID", ["post_date_gmt", "post_day", "touched"]


@pytest.fixture
def dated_server(dated: Any, make_server: Any) -> Any:
    return make_server(seed=False)


@pytest.mark.gen_test(timeout=120)
async def test_dates_python_cannot_hold_round_trip_as_the_database_writes_them(
        database, dated, dated_server):
    server = dated_server
    table, key, columns = dated
    rows = (await server.get(f"/api/{table}?order={key}")).body["items"]
    # Each row as the database writes it (the test's driver cannot read a BC date).
    as_stored = (f"SELECT {table}::text FROM {table} ORDER BY {key}"
                 if database.backend == "postgresql" else f"SELECT * FROM {table} ORDER BY {key}")
    stored_before = database.execute(as_stored)
    if database.backend == "postgresql":
        assert rows[0]["valid_to"] == "infinity" and rows[1]["valid_from"] == "-infinity"
        assert rows[0]["history"] == ["2020-01-01", "infinity"]
        assert rows[2]["d"] == "0044-03-15 BC" and rows[2]["history"] == ["0001-01-01 BC"]
        assert rows[3]["d"] == "12000-01-01"
        assert rows[4]["d"] == "2020-02-29"  # the ordinary values stay ISO 8601
    else:
        assert rows[0]["post_date_gmt"] == "0000-00-00 00:00:00"
        assert [row["post_day"] for row in rows] == [
            "0000-00-00", "2010-05-00", "2023-05-01", "2010-00-00"]
        assert rows[2]["post_date_gmt"] == "2023-05-01T15:00:00"
    # Each row PUT back as read is stored unchanged, and each value as read finds it.
    for row in rows:
        put = await server.put(f"/api/{table}/{row[key]}", row)
        assert put.status == 200 and put.body == row, (row, put.body)
        for column in columns:
            if row[column] is None:
                continue
            found = await server.get(f"/api/{table}?{column}=eq.{quote(row[column])}")
            assert found.status == 200, found.body
            assert row in found.body["items"], (column, row[column])
    assert database.execute(as_stored) == stored_before
    # Pages ordered by each column, either way, visit every row once.
    for column in columns:
        for direction in ("asc", "desc"):
            paged = await walk(server, f"/api/{table}?order={column}.{direction}&limit=2")
            seen = [row[key] for row in paged]
            assert sorted(seen) == sorted(row[key] for row in rows), (column, direction)
    # A write of such a value, and its change event, carry the same text.
    if database.backend == "postgresql":
        created = await server.post(f"/api/{table}", {"id": 9, "valid_from": "-infinity"})
        assert created.status == 201, created.body
        assert created.body["valid_to"] == "infinity"  # the column's default
    else:
        created = await server.post(f"/api/{table}", {"post_title": "new"})
        assert created.status == 201, created.body
        assert created.body["post_date_gmt"] == "0000-00-00 00:00:00"
    assert server.changes[-1].record == created.body
    # Other text is still refused as the type's value.
    column = columns[1]
    refused = await server.patch(f"/api/{table}/{rows[0][key]}", {column: "soon"})
    assert refused.status == 422, refused.body
    schema = (await server.get("/api/openapi.json")).body["components"]["schemas"][table]
    assert "anyOf" in json.dumps(schema["properties"][columns[0]])


@pytest.mark.gen_test(timeout=120)
async def test_feed_filters_on_such_dates_select_what_rest_selects(database, dated, dated_server):
    """A WebSocket filter is evaluated in Python on each change's record: on a column
    holding infinity, BC or zero dates it must select the rows REST selects."""
    server = dated_server
    table_name, key, columns = dated
    table = server.app.tables[table_name]
    rows = (await server.get(f"/api/{table_name}?order={key}")).body["items"]
    for column in columns:
        for value in sorted({row[column] for row in rows if row[column] is not None}):
            for op in ("eq", "neq", "gt", "gte", "lt", "lte"):
                text = f"{op}.{value}"
                listed = await server.get(f"/api/{table_name}?{column}={quote(text)}")
                assert listed.status == 200, (column, text, listed.body)
                matcher = ql.Matcher(table, ql.parse_filters(table, {column: [text]}),
                                     server.app.backend)
                assert [row[key] for row in rows if matcher(row)] == sorted(
                    row[key] for row in listed.body["items"]), (column, text)


# -- materialized views (Pagila's rental_by_category) ----------------------------------

@pytest.fixture
def materialized_server(database: Any, make_server: Any) -> Any:
    if database.backend != "postgresql":
        pytest.skip("materialized views are PostgreSQL's")
    database.execute(
        "CREATE TABLE payment (payment_id serial PRIMARY KEY, category text NOT NULL, "
        "amount numeric(5,2) NOT NULL)",
        "INSERT INTO payment (category, amount) VALUES ('Action', 4.99), ('Comedy', 0.99), "
        "('Action', 2.99), ('Drama', 0.99)",
        "CREATE MATERIALIZED VIEW rental_by_category AS SELECT category, "
        "sum(amount) AS total_sales FROM payment GROUP BY category ORDER BY 2 DESC",
        "CREATE UNIQUE INDEX rental_category ON rental_by_category (category)",
        "CREATE MATERIALIZED VIEW not_refreshed AS SELECT category FROM payment WITH NO DATA")
    return make_server(seed=False)


@pytest.mark.gen_test(timeout=60)
async def test_a_materialized_view_is_served_read_only(materialized_server):
    server = materialized_server
    described = {t["name"]: t for t in (await server.get("/api/")).body["tables"]}
    view = described["rental_by_category"]
    assert view["view"] is True and view["ws"] is None
    assert [(c["name"], c["type"]) for c in view["columns"]] == [
        ("category", "string"), ("total_sales", "decimal")]
    seen = await walk(server, "/api/rental_by_category?order=total_sales.desc&limit=1")
    assert seen == [{"category": "Action", "total_sales": "7.98"},
                    {"category": "Comedy", "total_sales": "0.99"},
                    {"category": "Drama", "total_sales": "0.99"}]
    assert (await server.get("/api/rental_by_category?category=eq.Drama")).body["items"] == [
        {"category": "Drama", "total_sales": "0.99"}]
    refused = await server.post("/api/rental_by_category", {"category": "x"})
    assert refused.status == 405, refused.body
    # Not populated until its first REFRESH: the database cannot answer yet (not a 500).
    waiting = await server.get("/api/not_refreshed")
    message = waiting.body["error"]["message"]
    assert waiting.status == 503 and "has not been populated" in message
    assert "REFRESH MATERIALIZED VIEW" in message
    assert waiting.headers["Retry-After"]


# -- tables in other schemas (AdventureWorks keeps them in person, sales, ...) ---------

@pytest.fixture
def schemas_elsewhere(database: Any) -> Any:
    if database.backend != "postgresql":
        pytest.skip("schemas within a database are PostgreSQL's")
    database.execute(
        "CREATE SCHEMA person", "CREATE SCHEMA sales",
        "CREATE TABLE person.countryregion (countryregioncode varchar(3) PRIMARY KEY, "
        "name varchar(50) NOT NULL)",
        "CREATE TABLE sales.currency (currencycode char(3) PRIMARY KEY, name text)",
        "INSERT INTO person.countryregion VALUES ('AD', 'Andorra')")
    yield database
    database.execute("DROP SCHEMA person CASCADE", "DROP SCHEMA sales CASCADE")


def test_tables_in_other_schemas_are_named_at_start_up_with_how_to_serve_them(
        schemas_elsewhere, tmp_path):
    _, schema, warnings = start(tmp_path, schemas_elsewhere, "")
    assert schema == {"tables": []}
    (line,) = warnings
    assert "no tables or views in the schema Pylight serves" in line
    assert "in schemas person, sales" in line
    assert "options=-csearch_path%3Dperson" in line


def test_the_hinted_url_serves_that_schema(schemas_elsewhere, make_server, io_loop):
    server = make_server(url=schemas_elsewhere.url + "?options=-csearch_path%3Dperson",
                         seed=False)
    listing = io_loop.run_sync(lambda: server.get("/api/countryregion"))
    assert listing.body["items"] == [{"countryregioncode": "AD", "name": "Andorra"}]


# -- a composite key with a comma in a value (Pagila's film_price_history) ------------

@pytest.fixture
def price_history_server(database: Any, make_server: Any) -> Any:
    # Pagila keys it by (film_id, valid_at daterange): '[2023-01-01,)' has a comma.
    database.ddl("CREATE TABLE price_history (film_id integer NOT NULL, "
                 "valid_at varchar(40) NOT NULL, price decimal(5,2), "
                 "PRIMARY KEY (film_id, valid_at))")
    return make_server(seed=False)


@pytest.mark.gen_test(timeout=60)
async def test_a_row_whose_key_has_a_comma_gets_no_location_it_could_not_follow(
        price_history_server):
    server = price_history_server
    plain = await server.post("/api/price_history", {"film_id": 1, "valid_at": "2023",
                                                    "price": "4.99"})
    assert plain.status == 201
    assert (await server.get(plain.headers["Location"])).body == plain.body
    ranged = await server.post("/api/price_history", {"film_id": 2, "valid_at": "[2023-01-01,)",
                                                     "price": "0.99"})
    assert ranged.status == 201 and "Location" not in ranged.headers
    # Reachable through filters, as the contract says.
    found = await server.get("/api/price_history?film_id=eq.2&valid_at=eq." +
                             quote("[2023-01-01,)"))
    assert found.body["items"] == [ranged.body]


# -- MySQL's ENUM error value (rows stored by a server not in strict mode) -------------

@pytest.fixture
def rated_server(database: Any, make_server: Any) -> Any:
    if database.backend != "mysql":
        pytest.skip("the ENUM error value '' is MySQL's")
    database.execute(
        "CREATE TABLE film (film_id int PRIMARY KEY, "
        "rating enum('G','PG','PG-13','R','NC-17') DEFAULT 'G')",
        "SET SESSION sql_mode = ''",
        "INSERT INTO film VALUES (1, 'G'), (2, 'X'), (3, 'R'), (4, 'Y'), (5, NULL)")
    return make_server(seed=False)


@pytest.mark.gen_test(timeout=60)
async def test_the_enum_error_value_is_served_filtered_and_paged(rated_server, database):
    server = rated_server
    rows = (await server.get("/api/film?order=film_id")).body["items"]
    assert [row["rating"] for row in rows] == ["G", "", "R", "", None]
    found = await server.get("/api/film?rating=eq.&order=film_id")
    assert [row["film_id"] for row in found.body["items"]] == [2, 4]
    seen = [row["film_id"] for row in await walk(server, "/api/film?order=rating.asc&limit=2")]
    assert sorted(seen) == [1, 2, 3, 4, 5]
    # Strict mode refuses to store it again: the database's 422, nothing written.
    refused = await server.put("/api/film/2", rows[1])
    assert refused.status == 422, refused.body
    assert database.execute("SELECT rating FROM film WHERE film_id = 2") == [("",)]


# -- triggers that keep a row out: old-style partitioning, RAISE(IGNORE) ---------------

PG_ROUTED = [
    # The PostgreSQL manual's partitioning by inheritance: the parent's BEFORE INSERT
    # trigger puts the row into a child table and returns NULL.
    "CREATE TABLE measurement (id serial PRIMARY KEY, logdate date NOT NULL, peak int)",
    "CREATE TABLE measurement_2024 (CHECK (logdate >= '2024-01-01' "
    "AND logdate < '2025-01-01')) INHERITS (measurement)",
    """CREATE FUNCTION measurement_insert() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN INSERT INTO measurement_2024 VALUES (NEW.*); RETURN NULL; END $$""",
    "CREATE TRIGGER insert_measurement BEFORE INSERT ON measurement "
    "FOR EACH ROW EXECUTE FUNCTION measurement_insert()",
    # An archive whose first row may never be deleted.
    "CREATE TABLE archive (id serial PRIMARY KEY, v int)",
    "INSERT INTO archive (v) VALUES (1), (2)",
    """CREATE FUNCTION keep_first() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN IF OLD.v = 1 THEN RETURN NULL; END IF; RETURN OLD; END $$""",
    "CREATE TRIGGER keep_first BEFORE DELETE ON archive FOR EACH ROW EXECUTE FUNCTION keep_first()",
]
SQLITE_SKIPPING = [
    "CREATE TABLE measurement (id integer PRIMARY KEY, logdate date NOT NULL, peak int)",
    "CREATE TRIGGER insert_measurement BEFORE INSERT ON measurement WHEN NEW.peak < 0 "
    "BEGIN SELECT RAISE(IGNORE); END",
    "CREATE TABLE archive (id integer PRIMARY KEY, v int)",
    "INSERT INTO archive (v) VALUES (1), (2)",
    "CREATE TRIGGER keep_first BEFORE DELETE ON archive WHEN OLD.v = 1 "
    "BEGIN SELECT RAISE(IGNORE); END",
]


@pytest.fixture
def skipping_server(database: Any, make_server: Any) -> Any:
    if database.backend == "mysql":
        pytest.skip("a MySQL trigger cannot keep a row out without an error")
    database.execute(*(PG_ROUTED if database.backend == "postgresql" else SQLITE_SKIPPING))
    return make_server(seed=False)


@pytest.mark.gen_test(timeout=60)
async def test_a_row_a_trigger_keeps_out_is_not_reported_as_written(database, skipping_server):
    server = skipping_server
    kept_out = {"logdate": "2024-03-01", "peak": -1}
    routed = await server.post("/api/measurement", kept_out)
    assert routed.status == 204, routed.body  # nothing of this table to show
    stored = await server.post("/api/measurement", [kept_out, {"logdate": "2024-03-02",
                                                               "peak": 7}])
    assert stored.status == 201, stored.body
    if database.backend == "postgresql":
        # Every row went to the child table, which the parent's reads include.
        assert stored.body == {"items": []}
        rows = (await server.get("/api/measurement_2024?order=logdate")).body["items"]
        assert [row["peak"] for row in rows] == [-1, -1, 7]
        assert (await server.get("/api/measurement")).body["items"] == rows
    else:
        assert [row["peak"] for row in stored.body["items"]] == [7]
        assert database.execute("SELECT peak FROM measurement") == [(7,)]
    assert [c.record for c in server.changes] == stored.body["items"]
    events = len(server.changes)
    # A delete the trigger skips: refused, rolled back, not published.
    for refused in (await server.delete("/api/archive/1"),
                    await server.delete("/api/archive?v=gte.1")):
        assert refused.status == 422, refused.body
        assert refused.body["error"]["details"] == {"reason": "kept_by_trigger"}
    assert database.execute("SELECT v FROM archive ORDER BY v") == [(1,), (2,)]
    assert len(server.changes) == events
    assert (await server.delete("/api/archive/2")).status == 204
