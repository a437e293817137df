"""The example third-party plugin, examples/pylight-audit-log: installed as its own
distribution, loaded through its entry point, and writing the audit log on every backend.

Also keeps docs/plugins.md honest: every hook implementation in its Python
examples names a real hook and only that hook's arguments.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import inspect
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pylight import StartupError, hookspecs
from pylight.plugins import make_plugin_manager
from tests.conftest import Server, Servers, write_config
from tests.live_server import run_cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "pylight-audit-log"
GUIDE = ROOT / "docs" / "plugins.md"

pylight_audit_log = pytest.importorskip(
    "pylight_audit_log",
    reason="install it: pip install -e ./examples/pylight-audit-log (the README's test command does)",
)


# -- packaging: its own distribution, found through its entry point ---------------------

def test_installed_as_its_own_distribution() -> None:
    dist = importlib.metadata.distribution("pylight-audit-log")
    assert dist.metadata["Name"] == "pylight-audit-log"
    (entry_point,) = [ep for ep in dist.entry_points if ep.group == "pylight"]
    assert (entry_point.name, entry_point.value) == ("audit_log", "pylight_audit_log")
    # The module comes from the example's folder, not from Pylight's own distribution.
    assert Path(pylight_audit_log.__file__).resolve().parent == EXAMPLE.resolve()
    pylight_points = {ep.name for ep in importlib.metadata.distribution("pylight").entry_points
                      if ep.group == "pylight"}
    assert "audit_log" not in pylight_points


def test_registered_by_make_plugin_manager_through_its_entry_point() -> None:
    pm = make_plugin_manager()  # no [plugins] load
    assert pm.get_plugin("audit_log") is pylight_audit_log
    hooks = {hook.name for hook in pm.get_hookcallers(pylight_audit_log) or []}
    assert hooks == {"pylight_startup", "pylight_shutdown"}
    # Without the entry points it is not there: nothing else registers it.
    bare = make_plugin_manager(entry_points=False)
    assert not bare.is_registered(pylight_audit_log)


# -- on a running server, on each database ---------------------------------------------

def read_lines(io_loop: Any, path: Path, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The log's lines once there are ``count`` of them (changes publish on the event loop)."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        lines = text.splitlines()
        if len(lines) >= count or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        io_loop.run_sync(lambda: asyncio.sleep(0.02))  # let pending publishes run


def test_rest_writes_are_appended_as_json_lines(make_server: Callable[..., Server], io_loop: Any,
                                                tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    server = make_server({"plugin:audit_log": {"path": str(log_path)},
                          "table:users": {"hidden": "password_hash"}})
    assert pylight_audit_log.audit_log_of(server.app) is not None

    async def writes() -> dict[str, Any]:
        created = await server.post("/api/products", {"name": "Lamp", "price": "12.00",
                                                      "sku": "LAMP-1"})
        assert created.status == 201, created.body
        pk = created.body["id"]
        updated = await server.patch(f"/api/products/{pk}", {"price": "9.50", "name": "Lamp"})
        assert updated.status == 200, updated.body
        assert (await server.delete(f"/api/products/{pk}")).status == 204
        # A refused write commits nothing and logs nothing.
        assert (await server.post("/api/products", {"name": "Dup", "price": "1.00",
                                                    "sku": "LAMP-1"})).status == 201
        assert (await server.post("/api/products", {"name": "Dup", "price": "1.00",
                                                    "sku": "LAMP-1"})).status == 409
        return created.body

    row = io_loop.run_sync(writes)
    pk = row["id"]
    lines = read_lines(io_loop, log_path, 4)
    assert [(line["table"], line["event"]) for line in lines] == [
        ("products", "created"), ("products", "updated"), ("products", "deleted"),
        ("products", "created")]
    created, updated, deleted, _ = lines
    assert all(line["pk"] == pk for line in (created, updated, deleted))
    assert set(created) == {"time", "table", "event", "pk", "changes"}
    # created: every column with its new value, exactly as the API answered.
    assert created["changes"] == {name: {"new": value} for name, value in row.items()}
    assert created["changes"]["price"] == {"new": "12.00"}
    # updated: only the column whose value changed (the name was sent unchanged).
    assert updated["changes"] == {"price": {"old": "12.00", "new": "9.50"}}
    # deleted: every column with the value it had.
    assert deleted["changes"] == {name: {"old": value}
                                  for name, value in {**row, "price": "9.50"}.items()}
    times = [line["time"] for line in lines]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", t) for t in times)
    assert times == sorted(times)

    # Hidden columns never reach a plugin, so they are never logged.
    async def add_user() -> None:
        made = await server.post("/api/users", {"email": "audit@example.com", "name": "Audit"})
        assert made.status == 201, made.body

    io_loop.run_sync(add_user)
    user_line = read_lines(io_loop, log_path, 5)[4]
    assert user_line["table"] == "users" and "password_hash" not in user_line["changes"]

    # Shut-down closes the file and removes the listener.
    log = pylight_audit_log.audit_log_of(server.app)
    io_loop.run_sync(server.app.stop)
    assert log.stream.closed
    assert pylight_audit_log.audit_log_of(server.app) is None


def test_inert_without_its_section(make_server: Callable[..., Server], io_loop: Any,
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    server = make_server()
    assert server.app.pm.get_plugin("audit_log") is pylight_audit_log  # loaded, yet idle
    assert pylight_audit_log.audit_log_of(server.app) is None
    quiet = {"name": "Quiet", "sku": "Q-1", "price": "1.00"}
    created = io_loop.run_sync(lambda: server.post("/api/products", quiet))
    assert created.status == 201
    assert [c.event for c in server.changes] == ["created"]
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".jsonl", ".log")]


# -- a bad path stops start-up -------------------------------------------------------------

@pytest.mark.parametrize("section, message", [
    ({"path": "{tmp}/no/such/dir/audit.jsonl"}, r"\[plugin:audit_log\] path: the directory .*/no/such/dir "
                                               r"of .* does not exist"),
    ({"path": "{tmp}"}, r"\[plugin:audit_log\] path: cannot append to .*: Is a directory"),
    ({"path": ""}, r"\[plugin:audit_log\] path: give the file"),
    ({"path": "{tmp}/a.jsonl", "rotate": "daily"},
     r"\[plugin:audit_log\]: unknown key 'rotate' \(known keys: path\)"),
])
def test_bad_settings_are_a_startup_error(tmp_path: Path, servers: Servers,
                                          section: dict[str, str], message: str) -> None:
    section = {key: value.replace("{tmp}", str(tmp_path)) for key, value in section.items()}
    with pytest.raises(StartupError, match=message) as caught:
        servers({"plugin:audit_log": section}, url=f"sqlite:///{tmp_path}/bad.db")
    assert "\n" not in str(caught.value)


def test_bad_path_is_one_line_from_the_command_line(tmp_path: Path) -> None:
    bad = tmp_path / "missing" / "audit.jsonl"
    conf = write_config(tmp_path, f"sqlite:///{tmp_path}/cli.db",
                        {"plugin:audit_log": {"path": str(bad)}, "server": {"port": 0}})
    run = run_cli(["--conf", conf], tmp_path)
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"pylight: error: [plugin:audit_log] path: the directory "
                      f"{bad.parent} of {str(bad)!r} does not exist"], run.stderr
    assert "Traceback" not in run.stderr


# -- the guide's examples match the hooks ---------------------------------------------------

def guide_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.DOTALL)


def test_the_guide_covers_every_hook() -> None:
    headings = [line for line in GUIDE.read_text(encoding="utf-8").splitlines()
                if line.startswith(("## ", "### "))]
    for name in (n for n, fn in inspect.getmembers(hookspecs, inspect.isfunction)
                 if hasattr(fn, "pylight_spec")):
        assert any(f"`{name}`" in line for line in headings), f"docs/plugins.md has no {name} section"


def test_the_guides_hook_implementations_match_the_hookspecs() -> None:
    specs = {name: inspect.signature(fn) for name, fn in inspect.getmembers(hookspecs)
             if hasattr(fn, "pylight_spec")}
    blocks = guide_blocks()
    assert blocks
    seen = set()
    for block in blocks:
        tree = ast.parse(block)  # every example is valid Python
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            decorators = [ast.unparse(d) for d in node.decorator_list]
            if not any(d.startswith("hookimpl") for d in decorators):
                continue
            assert node.name in specs, f"the guide implements unknown hook {node.name}"
            arguments = [a.arg for a in node.args.args if a.arg != "self"]
            assert set(arguments) <= set(specs[node.name].parameters), (node.name, arguments)
            seen.add(node.name)
    assert seen == set(specs), f"hooks without an example: {set(specs) - seen}"

