"""A newcomer's first minutes: `pylight DATABASE` with no file, `/favicon.ico`, an
`[api] tables` or a `PYLIGHT_*` variable that names nothing, the LICENSE and the docs
the README points at (API.md section 8; issue 14, items 1 and 6)."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from pylight import StartupError
from pylight.config import load_config
from tests.live_server import LiveServer, clean_env, free_port, one_error_line, run_cli
from tests.test_startup import write_ini

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = (ROOT / "pyproject.toml").read_text()  # (tomllib is not in Python 3.10)

# A small schema of its own, with a mixed-case name and a NULL: nothing of the demo's.
GADGETS = ("CREATE TABLE gadgets (id INTEGER PRIMARY KEY, label VARCHAR(40) NOT NULL, "
           "note VARCHAR(40));\n"
           "CREATE TABLE \"Parts\" (id INTEGER PRIMARY KEY, gadget_id INTEGER REFERENCES gadgets(id));\n"
           "INSERT INTO gadgets (id, label, note) VALUES (1, 'sprocket', NULL)")
GADGETS_MYSQL = GADGETS.replace('"Parts"', "`Parts`")


def database_argument(database: Any, tmp_path: Path) -> str:
    """What a user types: a SQLite file's path (relative to where they are), else the URL."""
    if database.backend == "sqlite":
        return str(Path(database.name).relative_to(tmp_path))
    return database.url


def fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


# -- pylight DATABASE --------------------------------------------------------------------

def test_a_database_argument_is_served_with_the_defaults(tmp_path: Path, database: Any) -> None:
    database.ddl(GADGETS, mysql=GADGETS_MYSQL)
    port = free_port()
    args = [database_argument(database, tmp_path), "--port", str(port)]
    with LiveServer.cli(args, tmp_path, port) as server:
        status, page = server.get("/api/gadgets")
        assert status == 200
        assert page["items"] == [{"id": 1, "label": "sprocket", "note": None}]
        status, schema = server.get("/api/")
        assert sorted(table["name"] for table in schema["tables"]) == ["Parts", "gadgets"]
        # The defaults of API.md section 1: feeds on, nothing seeded into the user's database.
        assert all(table["ws"] for table in schema["tables"])
        status, headers, body = fetch(server.base_url + "/favicon.ico")
        assert (status, body) == (204, b"")
        assert server.stop() == 0
    assert f"exposing table gadgets at http://127.0.0.1:{port}/api/gadgets" in server.log()
    assert "seeded" not in server.log() and "WARNING" not in server.log()
    assert "Traceback" not in server.log()


def test_the_argument_overrides_the_files_database(tmp_path: Path) -> None:
    """`--conf` still works; the argument replaces only its `[database] url`."""
    write_ini(tmp_path, "[database]\nurl = sqlite:///other.db\nseed_demo = true\n"
                        "[api]\nprefix = /v1\n")
    (tmp_path / "mine").mkdir()
    with closing(sqlite3.connect(tmp_path / "mine" / "shop.db")) as db, db:
        db.execute("CREATE TABLE items (sku TEXT PRIMARY KEY, qty INTEGER)")
        db.execute("INSERT INTO items VALUES ('A-1', NULL)")
    port = free_port()
    args = ["mine/shop.db", "--conf", "pylight.ini", "--port", str(port)]
    with LiveServer.cli(args, tmp_path, port) as server:
        assert server.get("/v1/items") == (200, {"items": [{"sku": "A-1", "qty": None}],
                                                 "next": None})
        status, schema = server.get("/v1/")
        assert [table["name"] for table in schema["tables"]] == ["items"]  # nothing seeded
        assert server.stop() == 0
    assert not (tmp_path / "other.db").exists()
    assert f"(database: sqlite:///{tmp_path.resolve()}/mine/shop.db)" in server.log()


USAGE_ERRORS = [
    # (id, arguments, files to create, fragments of the one error line)
    ("missing-file", ["shop.db"], {}, ["shop.db: no such file", "postgresql://"]),
    ("a-directory", ["var"], {"var/keep": ""}, ["var is a directory"]),
    ("a-config-file", ["pylight.ini"], {"pylight.ini": "[server]\nport = 1\n"},
     ["pylight.ini is not a SQLite database file", "--conf pylight.ini"]),
    ("two-databases", ["a.db", "b.db"], {}, ["one database at a time", "a.db b.db"]),
    ("misspelt-command", ["serv", "a.db"], {}, ["unknown command 'serv'", "serve"]),
    ("argument-and-option", ["sqlite:///a.db", "--database-url", "sqlite:///b.db"], {},
     ["either as an argument or with --database-url"]),
]


@pytest.mark.parametrize("args,files,fragments", [case[1:] for case in USAGE_ERRORS],
                         ids=[case[0] for case in USAGE_ERRORS])
def test_a_database_argument_naming_nothing_usable_is_one_line_and_exit_2(
        tmp_path: Path, args: list[str], files: dict[str, str], fragments: list[str]) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = run_cli(args, tmp_path)
    line = one_error_line(result)
    assert result.returncode == 2
    for fragment in fragments:
        assert fragment in line
    # Nothing was created: no empty database in place of a mistyped name.
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_the_console_script_is_installed(tmp_path: Path) -> None:
    assert '\n[project.scripts]\npylight = "pylight.cli:main"\n' in PYPROJECT
    script = shutil.which("pylight", path=str(Path(sys.executable).parent))
    assert script is not None, "pip install . puts a `pylight` command next to python"
    missing = subprocess.run([script, "missing.db"], cwd=tmp_path, env=clean_env(),
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert missing.stderr.startswith("pylight: error: missing.db: no such file")


# -- what start-up refuses ------------------------------------------------------------------

def test_tables_matching_nothing_stops_start_up_naming_the_tables(tmp_path: Path) -> None:
    # On SQLite only: tests/test_startup_messages.py lists the tables of every backend.
    with closing(sqlite3.connect(tmp_path / "shop.db")) as db, db:
        db.executescript(GADGETS)
    env = clean_env(PYLIGHT_API_TABLES="gadget, part*")
    result = run_cli(["shop.db"], tmp_path, env=env)
    line = one_error_line(result)
    assert result.returncode == 1
    assert ("[api] tables = gadget, part* matches nothing, and the database has 2 tables and "
            "views: Parts, gadgets; change [api] tables (or PYLIGHT_API_TABLES)") in line


def test_unknown_pylight_variables_are_refused_naming_the_closest(tmp_path: Path) -> None:
    result = run_cli(["sqlite:///x.db"], tmp_path, env=clean_env(PYLIGHT_DATABASE_ULR="y"))
    line = one_error_line(result)
    assert "environment variable PYLIGHT_DATABASE_ULR names no Pylight setting" in line
    assert "did you mean PYLIGHT_DATABASE_URL?" in line
    assert not (tmp_path / "x.db").exists()
    for name, closest in [("PYLIGHT_SERVR_PORT", "PYLIGHT_SERVER_PORT"),
                          ("PYLIGHT_PORT", "PYLIGHT_SERVER_PORT"),
                          ("PYLIGHT_REALTIME_ALLOWED_ORIGIN", "PYLIGHT_REALTIME_ALLOWED_ORIGINS")]:
        with pytest.raises(StartupError, match=rf"{name} .*did you mean {closest}\?"):
            load_config(None, environ={name: "1"})
    with pytest.raises(StartupError, match=r"\[plugin:NAME\] sections are read from the file"):
        load_config(None, environ={"PYLIGHT_PLUGIN_JWT_SECRET": "s"})
    # Settings, other programs' variables and the test suite's own are no mistake.
    config = load_config(None, environ={"PYLIGHT_SERVER_PORT": "9001", "PYLIGHTS": "on",
                                        "PYLIGHT_REQUIRE_SERVICES": "1", "HOME": "/root"})
    assert config.server.port == 9001


# -- the repository a newcomer finds -------------------------------------------------------

def test_the_licence_is_mit_and_declared() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) 2026 Pylight contributors\n")
    assert re.search(r'^license = "MIT"\nlicense-files = \["LICENSE"\]$', PYPROJECT, re.MULTILINE)


def test_the_readme_starts_with_pylight_database_and_its_links_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^ {4}(\S.*)$", readme, re.MULTILINE)
    assert commands[0].startswith("pylight "), "the first command shown is `pylight <database>`"
    # Every document the README points at is in the repository; the contract is docs/api.md.
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme)
    assert "docs/api.md" in links
    for link in links:
        assert (ROOT / link).exists(), f"README links {link}, which is not in the repository"
    assert "shared documents" not in readme
    contract = (ROOT / "docs" / "api.md").read_text()
    for heading in ("Running it", "REST", "WebSockets", "Plugins", "Starting without a file"):
        assert re.search(rf"^## \d+\. {heading}", contract, re.MULTILINE), heading
    assert "pylight shop.db" in contract and "allowed_origins" in contract
