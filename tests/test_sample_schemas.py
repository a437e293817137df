"""Shapes taken from public sample and application databases (WordPress, world,
Pagila, AdventureWorks) that Pylight once answered with a 500 or served wrongly.

Each test builds the shape as those schemas declare it, with the values their
rows really hold, and checks what a REST client sees.
"""

from __future__ import annotations

from typing import Any

import pytest


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
