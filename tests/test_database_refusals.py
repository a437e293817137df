"""What the database itself refuses, on databases Pylight did not design.

Real databases are served by a database user with only some privileges, have
triggers and functions that raise errors on purpose, and keep views whose tables
were dropped since. None of that is a malformed request or a passing hiccup:

- a privilege the database user lacks is a 403 (not a 500, not a 503 "retry"), and
  the client is not told the database user's name;
- an error raised on purpose (PL/pgSQL ``RAISE EXCEPTION``, MySQL ``SIGNAL``,
  SQLite ``RAISE(ABORT, ...)``) is a 422 carrying its message, on reads and writes
  alike, and writes nothing;
- a view the database can no longer describe is left out at start-up with one
  warning, and everything else is served;
- change-capture triggers the user may not install are one start-up line saying
  how to install them.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import pytest

from plugins.pylight_sqlite import SqliteBackend
from tests.conftest import MYSQL_HOST, PG_HOST, RUN_ID
from tests.live_server import clean_env, one_error_line, run_cli
from tests.test_embedding import walk

ROLE = f"pylight_limited_{RUN_ID}"
PASSWORD = "limited-pw"

# A trigger that refuses negative quantities, and a view over a function that
# raises for any row: the database's own rules, written its own way.
PG_SCHEMA = [
    "CREATE TABLE stock (id serial PRIMARY KEY, qty integer NOT NULL)",
    "CREATE TABLE ledger (id serial PRIMARY KEY, note text)",
    "CREATE TABLE payroll (id serial PRIMARY KEY, salary integer)",
    """CREATE FUNCTION refuse_negative() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN IF NEW.qty < 0 THEN RAISE EXCEPTION 'qty may not be negative: %', NEW.qty;
       END IF; RETURN NEW; END $$""",
    "CREATE TRIGGER stock_check BEFORE INSERT OR UPDATE ON stock "
    "FOR EACH ROW EXECUTE FUNCTION refuse_negative()",
    """CREATE FUNCTION audit_only(integer) RETURNS integer LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'stock levels are for auditors only'; END $$""",
    "CREATE VIEW stock_audit AS SELECT id, audit_only(qty) AS qty FROM stock",
    # An application's own SQLSTATE (PostgREST's convention: class PT).
    """CREATE FUNCTION refuse_big() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN IF NEW.qty > 1000 THEN RAISE EXCEPTION USING ERRCODE = 'PT422',
       MESSAGE = 'qty over the warehouse limit'; END IF; RETURN NEW; END $$""",
    "CREATE TRIGGER stock_limit BEFORE INSERT OR UPDATE ON stock "
    "FOR EACH ROW EXECUTE FUNCTION refuse_big()",
    "INSERT INTO stock (qty) VALUES (5)",
    "INSERT INTO ledger (note) VALUES ('opening')",
    "INSERT INTO payroll (salary) VALUES (1000)",
    # Column privileges: the user may read two columns, not the key.
    "CREATE TABLE contacts (id serial PRIMARY KEY, name text, phone text)",
    "INSERT INTO contacts (name, phone) VALUES ('ann', '1'), ('bob', NULL), ('cy', '3'), "
    "('dee', '3'), ('ed', NULL)",
]
MYSQL_SCHEMA = [
    "DROP FUNCTION IF EXISTS audit_only",  # routines outlive the tables of the last test
    "CREATE TABLE stock (id int AUTO_INCREMENT PRIMARY KEY, qty int NOT NULL)",
    "CREATE TABLE ledger (id int AUTO_INCREMENT PRIMARY KEY, note text)",
    "CREATE TABLE payroll (id int AUTO_INCREMENT PRIMARY KEY, salary int)",
    "CREATE TRIGGER stock_check BEFORE INSERT ON stock FOR EACH ROW BEGIN "
    "IF NEW.qty < 0 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'qty may not be negative'; "
    "END IF; END",
    "CREATE TRIGGER stock_check_update BEFORE UPDATE ON stock FOR EACH ROW BEGIN "
    "IF NEW.qty < 0 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'qty may not be negative'; "
    "END IF; END",
    "CREATE FUNCTION audit_only(q int) RETURNS int DETERMINISTIC BEGIN "
    "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'stock levels are for auditors only'; "
    "RETURN q; END",
    "CREATE VIEW stock_audit AS SELECT id, audit_only(qty) AS qty FROM stock",
    "INSERT INTO stock (qty) VALUES (5)",
    "INSERT INTO ledger (note) VALUES ('opening')",
    "INSERT INTO payroll (salary) VALUES (1000)",
    "CREATE DEFINER = 'nobody_here'@'%' SQL SECURITY DEFINER VIEW orphan_view AS "
    "SELECT id, note FROM ledger",
]
SQLITE_SCHEMA = [
    "CREATE TABLE stock (id integer PRIMARY KEY, qty integer NOT NULL)",
    "CREATE TABLE ledger (id integer PRIMARY KEY, note text)",
    "CREATE TRIGGER stock_check BEFORE INSERT ON stock WHEN NEW.qty < 0 "
    "BEGIN SELECT RAISE(ABORT, 'qty may not be negative'); END",
    "CREATE TRIGGER stock_check_update BEFORE UPDATE ON stock WHEN NEW.qty < 0 "
    "BEGIN SELECT RAISE(ABORT, 'qty may not be negative'); END",
    "INSERT INTO stock (qty) VALUES (5)",
    "INSERT INTO ledger (note) VALUES ('opening')",
]


@pytest.fixture
def limited(database: Any) -> Any:
    """The schema above, and the URL of a database user who may use ``stock`` and the
    view, only read ``ledger`` and not touch ``payroll`` (SQLite has no users: its URL
    is the file's)."""
    if database.backend == "sqlite":
        database.execute(*SQLITE_SCHEMA)
        yield database.url
        return
    if database.backend == "postgresql":
        database.execute(
            *PG_SCHEMA,
            f"DROP ROLE IF EXISTS {ROLE}",
            f"CREATE ROLE {ROLE} LOGIN",
            f"GRANT USAGE ON SCHEMA public TO {ROLE}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON stock TO {ROLE}",
            f"GRANT USAGE ON SEQUENCE stock_id_seq TO {ROLE}",
            f"GRANT SELECT ON ledger, stock_audit TO {ROLE}",
            f"GRANT SELECT (name, phone) ON contacts TO {ROLE}",
        )
        yield f"postgresql://{ROLE}@{PG_HOST.rsplit('@', 1)[1]}/{database.name}"
        database.execute(f"DROP OWNED BY {ROLE}", f"DROP ROLE {ROLE}")
        return
    user = f"'{ROLE}'@'%'"
    database.execute(
        *MYSQL_SCHEMA,
        f"DROP USER IF EXISTS {user}",
        f"CREATE USER {user} IDENTIFIED BY '{PASSWORD}'",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{database.name}`.stock TO {user}",
        f"GRANT SELECT ON `{database.name}`.ledger TO {user}",
        f"GRANT SELECT ON `{database.name}`.stock_audit TO {user}",
        f"GRANT SELECT ON `{database.name}`.orphan_view TO {user}",
        # MariaDB describes a view only to a user who may run the routines it calls.
        f"GRANT EXECUTE ON FUNCTION `{database.name}`.audit_only TO {user}",
    )
    yield f"mysql://{ROLE}:{PASSWORD}@{MYSQL_HOST.rsplit('@', 1)[1]}/{database.name}"
    database.execute(f"DROP USER IF EXISTS {user}")


@pytest.fixture
def limited_server(limited: str, make_server: Any) -> Any:
    return make_server(url=limited, seed=False)


def _refused(response: Any) -> None:
    assert response.status == 403, response.body
    error = response.body["error"]
    assert error["code"] == "forbidden" and error["details"] == {"reason": "database_refused"}
    assert ROLE.encode() not in response.raw  # the database user's name stays in the server log


def _raised(response: Any, words: str) -> None:
    assert response.status == 422, response.body
    error = response.body["error"]
    assert words in error["message"] and error["details"] == {"reason": "raised"}


@pytest.mark.gen_test(timeout=60)
async def test_a_privilege_the_database_user_lacks_is_a_403(database, limited_server, caplog):
    if database.backend == "sqlite":
        pytest.skip("SQLite has no users or privileges (read-only files: see below)")
    caplog.set_level(logging.DEBUG, logger="pylight")
    server = limited_server
    # Writes to a table the user may only read, by key, by filter and as a batch.
    _refused(await server.post("/api/ledger", {"note": "x"}))
    _refused(await server.patch("/api/ledger/1", {"note": "x"}))
    _refused(await server.patch("/api/ledger?id=eq.1", {"note": "x"}))
    _refused(await server.delete("/api/ledger?id=gte.1"))
    _refused(await server.post("/api/ledger", [{"note": "a"}, {"note": "b"}]))
    assert database.execute("SELECT note FROM ledger") == [("opening",)]
    assert server.changes == []
    # A table the user has no privilege on is not served (PostgreSQL shows it but
    # none of its columns, MySQL hides it).
    assert (await server.get("/api/payroll")).status == 404
    served = [t["name"] for t in (await server.get("/api/")).body["tables"]]
    assert served == ["ledger", "orphan_view", "stock", "stock_audit"] if (
        database.backend == "mysql") else ["contacts", "ledger", "stock", "stock_audit"]
    # The primary key of a table the user may only read is known all the same.
    assert (await server.get("/api/ledger/1")).body == {"id": 1, "note": "opening"}
    # The operator learns why, with the database's own words: each refused request is
    # logged, each distinct reason at WARNING once (per process), its repeats at DEBUG.
    refusals = [r for r in caplog.records if "the database refused a request" in r.getMessage()]
    assert len(refusals) == 5, [r.getMessage() for r in refusals]
    warned = [r.getMessage() for r in refusals if r.levelno == logging.WARNING]
    assert len(warned) == len(set(warned)) < len(refusals), warned
    if database.backend == "mysql":
        # A view whose DEFINER is not a user of this server (a dump restored here).
        _refused(await server.get("/api/orphan_view"))
    # What the user may do still works, on the same pooled connections.
    created = await server.post("/api/stock", {"qty": 7})
    assert created.status == 201, created.body
    assert (await server.get("/api/ledger")).body["items"] == [{"id": 1, "note": "opening"}]


@pytest.mark.gen_test(timeout=60)
async def test_an_error_the_database_raises_on_purpose_is_a_422_with_its_message(
        database, limited_server):
    server = limited_server
    words = "qty may not be negative"
    _raised(await server.post("/api/stock", {"qty": -1}), words)
    _raised(await server.post("/api/stock", [{"qty": 1}, {"qty": -2}]), words)
    _raised(await server.patch("/api/stock/1", {"qty": -3}), words)
    _raised(await server.patch("/api/stock?qty=gte.0", {"qty": -4}), words)
    _raised(await server.put("/api/stock/1", {"qty": -5}), words)
    assert database.execute("SELECT id, qty FROM stock") == [(1, 5)]
    assert server.changes == []
    if database.backend != "sqlite":
        # A view over a function that raises: every read of it, filtered or not, is
        # the function's refusal, not a filter value "that does not fit".
        for path in ("/api/stock_audit", "/api/stock_audit?id=eq.1",
                     "/api/stock_audit?qty=gt.1&order=qty.desc"):
            _raised(await server.get(path), "stock levels are for auditors only")
    if database.backend == "postgresql":
        _raised(await server.post("/api/stock", {"qty": 5000}), "over the warehouse limit")
    accepted = await server.patch("/api/stock/1", {"qty": 6})
    assert accepted.status == 200 and accepted.body == {"id": 1, "qty": 6}


@pytest.mark.gen_test(timeout=60)
async def test_a_key_column_the_user_may_not_see_leaves_a_table_served_without_a_key(
        database, limited_server):
    if database.backend != "postgresql":
        pytest.skip("column privileges that hide a key column: PostgreSQL's")
    server = limited_server
    described = {t["name"]: t for t in (await server.get("/api/")).body["tables"]}
    contacts = described["contacts"]
    assert contacts["primary_key"] == []
    assert [c["name"] for c in contacts["columns"]] == ["name", "phone"]
    # Every row once, page after page, in any order the user may ask for.
    for order in ("", "&order=phone.desc", "&order=phone.asc.nullsfirst,name.desc"):
        seen = [row["name"] for row in await walk(server, f"/api/contacts?limit=2{order}")]
        assert sorted(seen) == ["ann", "bob", "cy", "dee", "ed"], (order, seen)
    assert (await server.get("/api/contacts?phone=eq.3&order=name")).body["items"] == [
        {"name": "cy", "phone": "3"}, {"name": "dee", "phone": "3"}]
    _refused(await server.delete("/api/contacts?name=eq.ann"))


@pytest.fixture
def read_only_server(database: Any, make_server: Any) -> Any:
    if database.backend != "postgresql":
        pytest.skip("default_transaction_read_only is PostgreSQL's (a standby answers alike)")
    database.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)",
                     "INSERT INTO notes (body) VALUES ('kept')")
    read_only = "?options=-c%20default_transaction_read_only%3Don"
    return make_server(url=database.url + read_only, seed=False)


@pytest.mark.gen_test(timeout=60)
async def test_a_write_to_a_read_only_database_is_a_403(read_only_server, database):
    server = read_only_server
    _refused(await server.post("/api/notes", {"body": "new"}))
    _refused(await server.post("/api/notes", [{"body": "a"}, {"body": "b"}]))
    _refused(await server.patch("/api/notes/1", {"body": "changed"}))
    _refused(await server.delete("/api/notes?id=eq.1"))
    assert (await server.get("/api/notes")).body["items"] == [{"id": 1, "body": "kept"}]
    assert database.execute("SELECT body FROM notes") == [("kept",)]
    assert server.changes == []


def test_a_read_only_sqlite_database_is_a_403_not_a_retry():
    """SQLite refuses a write to a read-only file, a read-only open or under
    ``PRAGMA query_only`` with SQLITE_READONLY: no retry will change that."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a)")
    conn.execute("PRAGMA query_only = 1")
    with pytest.raises(sqlite3.OperationalError) as refused:
        conn.execute("INSERT INTO t VALUES (1)")
    mapped = SqliteBackend().map_error(refused.value)
    assert mapped is not None and mapped.status == 403
    assert mapped.details == {"reason": "database_refused"}


@pytest.fixture
def stale_view_server(database: Any, make_server: Any, caplog: Any) -> Any:
    if database.backend == "postgresql":
        pytest.skip("PostgreSQL does not let a view outlive the tables it reads")
    caplog.set_level(logging.WARNING, logger="pylight")
    database.execute(
        "CREATE TABLE kept (id integer PRIMARY KEY, name varchar(20))",
        "CREATE TABLE dropped_later (id integer PRIMARY KEY)",
        "CREATE VIEW stale_view AS SELECT id FROM dropped_later",
        "CREATE VIEW good_view AS SELECT id, name FROM kept",
        "DROP TABLE dropped_later",
        "INSERT INTO kept (id, name) VALUES (1, 'one')",
    )
    return make_server(seed=False)


@pytest.mark.gen_test(timeout=60)
async def test_a_view_the_database_cannot_describe_is_left_out_at_start_up(
        stale_view_server, caplog):
    server = stale_view_server
    names = [table["name"] for table in (await server.get("/api/")).body["tables"]]
    assert names == ["good_view", "kept"]
    assert (await server.get("/api/stale_view")).status == 404
    assert (await server.get("/api/good_view")).body["items"] == [{"id": 1, "name": "one"}]
    warnings = [r.getMessage() for r in caplog.get_records("setup")
                if "stale_view" in r.getMessage()]
    assert len(warnings) == 1 and "not serving stale_view" in warnings[0], warnings


def test_triggers_the_database_user_may_not_install_are_one_start_up_line(
        database, limited, tmp_path):
    if database.backend == "sqlite":
        pytest.skip("SQLite has no users or privileges")
    (tmp_path / "pylight.ini").write_text(
        f"[database]\nurl = {limited}\n[realtime]\ncapture = database\n"
        "install_triggers = true\n")
    line = one_error_line(run_cli(["--conf", "pylight.ini"], tmp_path, env=clean_env()))
    assert "install_triggers: the database refused to install the change-capture " in line
    assert "install-triggers" in line and "as a user that owns the tables" in line
    assert "(1142," not in line  # the database's words, not the driver's tuple
