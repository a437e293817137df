"""What start-up says it found, on every backend: `[api] tables` / `exclude` that leave
nothing exposed name the database's real tables and the setting to change (`tables`
matching nothing stops start-up with that line); a database without tables is said to be
empty, with the way to get the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.live_server import LiveServer, free_port, one_error_line, run_cli
from tests.test_startup import write_ini

TABLES = [f"t{number:02d}" for number in range(1, 26)]  # 25 tables, and a view below


def many_tables(database: Any) -> None:
    database.ddl(";\n".join([f"CREATE TABLE {name} (id INTEGER PRIMARY KEY)" for name in TABLES]
                            + ["CREATE VIEW v_first AS SELECT id FROM t01"]))


def start(tmp_path: Path, database: Any, ini: str) -> tuple[Any, Any, list[str]]:
    """Start the CLI on ``database`` with ``ini``: the run, `GET /api/` and the WARNING lines."""
    write_ini(tmp_path, f"[database]\nurl = {database.url}\n{ini}")
    port = free_port()
    with LiveServer.cli(["--conf", "pylight.ini", "--port", str(port)], tmp_path, port) as server:
        status, schema = server.get("/api/")
        assert status == 200
        assert server.stop() == 0
    return server, schema, [line for line in server.lines if " WARNING pylight: " in line]


def test_tables_matching_nothing_names_the_real_tables(tmp_path: Path, database: Any) -> None:
    # Start-up stops (issue 14): a server exposing nothing is a typo's doing, as an
    # unknown [table:NAME] is.
    many_tables(database)
    write_ini(tmp_path, f"[database]\nurl = {database.url}\n[api]\ntables = custmer\n")
    line = one_error_line(run_cli(["--conf", "pylight.ini"], tmp_path))
    assert "has no tables" not in line
    assert "[api] tables = custmer matches nothing" in line
    assert "change [api] tables in pylight.ini (or PYLIGHT_API_TABLES)" in line
    assert "the database has 26 tables and views: " in line
    # The first twenty names in order, then how many more.
    shown = sorted([*TABLES, "v_first"])
    assert ", ".join(shown[:20]) + " and 6 more" in line
    assert shown[20] not in line


def test_exclude_leaving_nothing_says_so(tmp_path: Path, database: Any) -> None:
    database.ddl("CREATE TABLE gadgets (id INTEGER PRIMARY KEY)")
    server, schema, warnings = start(tmp_path, database, "[api]\nexclude = g*\n")
    assert schema == {"tables": []}
    (line,) = warnings
    assert "[api] tables = * with [api] exclude = g* leaves nothing" in line
    assert "the database has 1 table or view: gadgets;" in line
    assert "change [api] tables or [api] exclude in pylight.ini" in line


def test_a_list_entry_matching_nothing_is_named(tmp_path: Path, database: Any) -> None:
    many_tables(database)
    server, schema, warnings = start(tmp_path, database, "[api]\ntables = t0*, custmer, v_first\n")
    assert [t["name"] for t in schema["tables"]] == [*TABLES[:9], "v_first"]
    (line,) = warnings
    assert "[api] tables = t0*, custmer, v_first: custmer matches no table or view" in line


def test_an_empty_database_suggests_the_demo(tmp_path: Path, database: Any) -> None:
    server, schema, warnings = start(tmp_path, database, "")
    assert schema == {"tables": []}
    (line,) = warnings
    assert "the database has no tables or views to expose" in line
    assert "seed_demo = true" in line


def test_exposed_tables_need_no_warning(tmp_path: Path, database: Any) -> None:
    many_tables(database)
    server, schema, warnings = start(tmp_path, database, "[api]\ntables = t01, t02\n")
    assert [t["name"] for t in schema["tables"]] == ["t01", "t02"]
    assert warnings == []
    assert "exposing table t01" in server.log() and "exposing table t02" in server.log()
