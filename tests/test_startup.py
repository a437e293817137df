"""Starting `python -m pylight` as an operator does: the shipped demo, overrides, bad starts, signals."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.live_server import LiveServer, clean_env, free_port, one_error_line, run_cli

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_INI = ROOT / "etc" / "pylight.ini"


def write_ini(directory: Path, text: str, name: str = "pylight.ini") -> Path:
    path = directory / name
    path.write_text(text)
    return path


# -- the shipped configuration ------------------------------------------------------

def test_shipped_config_creates_seeds_and_serves_the_demo(tmp_path: Path) -> None:
    shutil.copy(SHIPPED_INI, tmp_path / "pylight.ini")
    port = free_port()
    with LiveServer.cli(["--conf", "pylight.ini", "--port", str(port)], tmp_path, port) as server:
        # A relative sqlite path resolves against the working directory.
        assert (tmp_path / "var" / "demo.db").is_file()
        status, body = server.get("/api/products")
        assert status == 200
        assert [p["name"] for p in body["items"]] == ["Widget", "Gadget", "Gift Card"]
        assert body["items"][0]["price"] == "9.99"
        status, users = server.get("/api/users")
        assert status == 200 and len(users["items"]) == 2
        assert all("password_hash" not in user for user in users["items"])  # [table:users] hidden
        assert server.get("/api/orders")[0] == 200
        status, created = server.post("/api/products", {"name": "Kept", "price": "1.50",
                                                        "sku": "KEEP-1"})
        assert status == 201
        assert server.stop() == 0

    # One line per exposed table with its URL, and the URL the API serves on.
    for table in ("products", "users", "orders"):
        assert f"exposing table {table} at http://127.0.0.1:{port}/api/{table}" in server.log()
    assert f"on http://127.0.0.1:{port}/api/" in server.log()
    assert "created and seeded the demo tables" in server.log()
    assert "Traceback" not in server.log()

    # A second start finds the data in place and does not seed again.
    port = free_port()
    with LiveServer.cli(["--conf", "pylight.ini", "--port", str(port)], tmp_path, port) as again:
        status, body = again.get("/api/products?sku=KEEP-1")
        assert status == 200 and [p["name"] for p in body["items"]] == ["Kept"]
        assert again.stop() == 0
    assert "created and seeded" not in again.log()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_server_with_exit_code_0(tmp_path: Path, sig: int) -> None:
    shutil.copy(SHIPPED_INI, tmp_path / "pylight.ini")
    port = free_port()
    with LiveServer.cli(["--conf", "pylight.ini", "--port", str(port)], tmp_path, port) as server:
        assert server.get("/api/products")[0] == 200
        assert server.stop(sig) == 0
    assert "Traceback" not in server.log()
    assert "shutting down" in server.log()
    # Nothing listens any more.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# -- overrides ------------------------------------------------------------------------

def test_command_line_overrides_the_file(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        # Everything in the file would fail: a host that is no address, a port
        # in use, and a database URL of an unknown kind.
        write_ini(tmp_path, f"[server]\nhost = not-an-address.invalid\nport = {busy.getsockname()[1]}\n"
                            "[database]\nurl = nosuch://x\nseed_demo = true\n")
        port = free_port()
        args = ["--conf", "pylight.ini", "--host", "127.0.0.1", "--port", str(port),
                "--database-url", "sqlite:///cli.db"]
        with LiveServer.cli(args, tmp_path, port) as server:
            status, body = server.get("/api/products")
            assert status == 200 and len(body["items"]) == 3
            assert server.stop() == 0
    assert (tmp_path / "cli.db").is_file()
    assert f"http://127.0.0.1:{port}/api/" in server.log()


def test_environment_overrides_the_file_and_the_command_line_overrides_both(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        write_ini(tmp_path, f"[server]\nport = {busy_port}\n[database]\nurl = nosuch://x\n"
                            "[api]\nprefix = /api\n")
        port = free_port()
        env = clean_env(PYLIGHT_SERVER_PORT=str(port), PYLIGHT_DATABASE_URL="sqlite:///env.db",
                        PYLIGHT_DATABASE_SEED_DEMO="true", PYLIGHT_API_PREFIX="/v1")
        with LiveServer.cli(["--conf", "pylight.ini"], tmp_path, port, env=env) as server:
            assert server.get("/v1/products")[0] == 200
            assert server.stop() == 0
        assert (tmp_path / "env.db").is_file()

        # The command line wins over the environment.
        env["PYLIGHT_SERVER_PORT"] = str(busy_port)
        port = free_port()
        with LiveServer.cli(["--conf", "pylight.ini", "--port", str(port)], tmp_path, port,
                     env=env) as server:
            assert server.get("/v1/users")[0] == 200
            assert server.stop() == 0


# -- bad starts: one clear line, non-zero exit, never a traceback -----------------------

CLOSED = free_port()

BAD_STARTS: list[tuple[str, str | None, dict[str, str], list[str]]] = [
    # (id, ini text (None: no file), extra environment, fragments of the error line)
    ("missing-file", None, {}, ["pylight.ini", "not found"]),
    ("no-section-header", "port = 8000\n", {}, ["malformed", "line 1"]),
    ("broken-section-header", "[server\nport = 8000\n", {}, ["malformed", "line 1"]),
    ("garbage-line", "[server]\nport = 8000\nthis is not a setting\n", {},
     ["malformed", "line 3", "this is not a setting"]),
    ("duplicate-key", "[server]\nport = 1\nport = 2\n", {}, ["malformed", "line 3", "port"]),
    ("unknown-section", "[servr]\nport = 8000\n", {}, ["[servr]", "[server]"]),
    ("unknown-key", "[server]\nprot = 8000\n", {}, ["[server]", "'prot'", "port"]),
    ("port-not-a-number", "[server]\nport = abc\n", {}, ["[server]", "port", "'abc'"]),
    ("port-out-of-range", "[server]\nport = 70000\n", {}, ["port", "65535"]),
    ("seed-demo-not-a-bool", "[database]\nseed_demo = maybe\n", {}, ["seed_demo", "'maybe'"]),
    ("bad-environment-value", "[server]\nport = 8000\n", {"PYLIGHT_SERVER_PORT": "abc"},
     ["PYLIGHT_SERVER_PORT", "'abc'"]),
    ("postgresql-unreachable",
     f"[database]\nurl = postgresql://postgres:s3cret@127.0.0.1:{CLOSED}/nowhere\n", {},
     [f"127.0.0.1:{CLOSED}", "nowhere", "PostgreSQL"]),
    ("mysql-unreachable", f"[database]\nurl = mysql://root@127.0.0.1:{CLOSED}/nowhere\n", {},
     [f"127.0.0.1:{CLOSED}", "nowhere", "MySQL"]),
    ("unknown-scheme", "[database]\nurl = oracle://scott:tiger@db/orcl\n", {},
     ["'oracle'", "postgresql", "sqlite"]),
    ("sqlite-url-without-path", "[database]\nurl = sqlite://\n", {}, ["sqlite://", "sqlite:///"]),
    ("sqlite-unknown-url-setting", "[database]\nurl = sqlite:///x.db?sync=normal\n", {},
     ["'sync'", "synchronous"]),
    ("sqlite-bad-synchronous", "[database]\nurl = sqlite:///x.db?synchronous=fast\n", {},
     ["synchronous", "'fast'", "normal"]),
    ("unknown-plugin", "[database]\nurl = sqlite:///x.db\n[plugins]\nload = no_such_pylight_plugin\n",
     {}, ["[plugins]", "no_such_pylight_plugin"]),
    ("misspelled-hook", "[database]\nurl = sqlite:///x.db\n[plugins]\nload = tests.plugins.misspelled\n",
     {}, ["tests.plugins.misspelled", "pylight_statrup"]),
    ("startup-hook-refuses",
     "[database]\nurl = sqlite:///x.db\n[plugins]\nload = tests.plugins.refuse_start\n", {},
     ["licence key is missing"]),
    ("missing-table",
     "[database]\nurl = sqlite:///x.db\nseed_demo = true\n[table:prodcts]\nread_only = true\n",
     {}, ["[table:prodcts]"]),
    ("unknown-hidden-column",
     "[database]\nurl = sqlite:///x.db\nseed_demo = true\n[table:users]\nhidden = pasword_hash\n",
     {}, ["[table:users]", "pasword_hash"]),
    ("unknown-table-key", "[database]\nurl = sqlite:///x.db\n[table:users]\nhiden = email\n",
     {}, ["[table:users]", "'hiden'", "hidden"]),
]


@pytest.mark.parametrize("ini,env,fragments", [case[1:] for case in BAD_STARTS],
                         ids=[case[0] for case in BAD_STARTS])
def test_bad_start_prints_one_clear_line(tmp_path: Path, ini: str | None, env: dict[str, str],
                                         fragments: list[str]) -> None:
    if ini is not None:
        write_ini(tmp_path, ini)
    result = run_cli(["--conf", "pylight.ini"], tmp_path, env=clean_env(**env))
    line = one_error_line(result)
    for fragment in fragments:
        assert fragment in line
    assert "s3cret" not in result.stderr  # passwords never reach the log


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    write_ini(tmp_path, "[database]\nurl = sqlite:///x.db\nseed_demo = true\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(["--conf", "pylight.ini", "--port", str(port)], tmp_path)
    line = one_error_line(result)
    assert f"127.0.0.1:{port}" in line
    assert "in use" in line


def test_backend_plugin_from_plugins_load_serves_its_scheme(tmp_path: Path) -> None:
    """End to end through the CLI: `[plugins] load` adds the memsqlite:// scheme."""
    write_ini(tmp_path, "[database]\nurl = memsqlite://scratch\n"
                        "[plugins]\nload = tests.plugins.memsqlite\n")
    port = free_port()
    with LiveServer.cli(["--conf", "pylight.ini", "--port", str(port)], tmp_path, port) as server:
        status, body = server.get("/api/notes")
        assert status == 200
        assert body["items"] == [{"id": 1, "body": "opened memsqlite://scratch"}]
        assert server.stop() == 0
    assert f"exposing table notes at http://127.0.0.1:{port}/api/notes" in server.log()
    assert "Pylight serving memsqlite" in server.log()


def test_sigterm_lets_an_in_flight_request_finish(tmp_path: Path) -> None:
    """A request running when SIGTERM arrives still gets its answer; then the exit is 0."""
    from tests.conftest import PG_HOST, pg_connect

    try:
        admin = pg_connect()
    except Exception as exc:
        pytest.skip(f"PostgreSQL is not reachable ({exc})")
    name = f"pylight_sigterm_{os.getpid()}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        db = pg_connect(name)
        with db.cursor() as cur:
            cur.execute("CREATE VIEW slow AS SELECT 1 AS id FROM pg_sleep(1.5)")
        db.close()
        port = free_port()
        args = ["--port", str(port), "--database-url", f"{PG_HOST}/{name}"]
        with LiveServer.cli(args, tmp_path, port) as server:
            result: dict[str, Any] = {}
            request = threading.Thread(target=lambda: result.update(slow=server.get("/api/slow")))
            request.start()
            time.sleep(0.5)
            server.process.send_signal(signal.SIGTERM)
            request.join(10)
            assert result["slow"] == (200, {"items": [{"id": 1}], "next": None})
            assert server.process.wait(10) == 0
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                        (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


# -- the shipped configuration on your own database (README "Pointing it at your database") --

def test_shipped_config_serves_any_database(tmp_path: Path, database: Any) -> None:
    """`--conf etc/pylight.ini --database-url ...` on a database with none of the demo's
    tables, and then with a `users` table of its own: nothing in the shipped file stops it."""
    database.ddl("CREATE TABLE gadgets (id INTEGER PRIMARY KEY, label VARCHAR(40) NOT NULL);\n"
                 "INSERT INTO gadgets (id, label) VALUES (1, 'sprocket')")
    args = ["--conf", str(SHIPPED_INI), "--database-url", database.url]
    port = free_port()
    with LiveServer.cli([*args, "--port", str(port)], tmp_path, port) as server:
        status, body = server.get("/api/gadgets")
        assert status == 200 and body["items"] == [{"id": 1, "label": "sprocket"}]
        status, schema = server.get("/api/")
        assert [table["name"] for table in schema["tables"]] == ["gadgets"]  # nothing seeded
        assert server.stop() == 0
    assert f"exposing table gadgets at http://127.0.0.1:{port}/api/gadgets" in server.log()
    assert "error" not in server.log() and "WARNING" not in server.log()

    # A users table unlike the demo's is served as it is, every column included.
    database.ddl("CREATE TABLE users (id INTEGER PRIMARY KEY, login VARCHAR(40) NOT NULL,"
                 " password_hash VARCHAR(60));\n"
                 "INSERT INTO users (id, login, password_hash) VALUES (7, 'ann', 'h')")
    port = free_port()
    with LiveServer.cli([*args, "--port", str(port)], tmp_path, port) as server:
        status, body = server.get("/api/users")
        assert status == 200 and body["items"] == [{"id": 7, "login": "ann", "password_hash": "h"}]
        assert server.stop() == 0
    assert "the demo" not in server.log()


def test_shipped_demo_hides_password_hash_unless_the_file_says_otherwise(tmp_path: Path) -> None:
    """The demo's users.password_hash is hidden without a [table:users] in the shipped file;
    a [table:users] section of one's own replaces that."""
    text = SHIPPED_INI.read_text()
    assert "\n[table:" not in text  # no live table section: it would only fit the demo
    write_ini(tmp_path, text)
    port = free_port()
    with LiveServer.cli(["--conf", "pylight.ini", "--port", str(port)], tmp_path, port) as server:
        status, users = server.get("/api/users")
        assert status == 200 and len(users["items"]) == 2
        assert all("password_hash" not in user for user in users["items"])
        status, schema = server.get("/api/")
        users_table = next(t for t in schema["tables"] if t["name"] == "users")
        assert "password_hash" not in [column["name"] for column in users_table["columns"]]
        assert server.stop() == 0
    assert "hiding password_hash of users" in server.log()

    write_ini(tmp_path, text + "\n[table:users]\nread_only = true\n")
    port = free_port()
    with LiveServer.cli(["--conf", "pylight.ini", "--port", str(port)], tmp_path, port) as server:
        status, users = server.get("/api/users")
        assert status == 200 and all("password_hash" in user for user in users["items"])
        assert server.stop() == 0
    assert "hiding" not in server.log()
