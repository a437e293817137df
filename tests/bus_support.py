"""Helpers for the bus tests: Pylight processes sharing a Redis bus, a private
redis-server that can be killed, and nginx run from the sample configuration."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REQUIRE, TestDatabase, write_config
from tests.live_server import LiveServer, free_port

SHARED_REDIS = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parent.parent
NGINX_SAMPLE = ROOT / "etc" / "nginx-pylight.conf"


def missing(what: str) -> None:
    if REQUIRE:
        pytest.fail(f"{what}; PYLIGHT_REQUIRE_SERVICES=1 requires it")
    pytest.skip(what)


def require_postgresql(database: TestDatabase) -> None:
    if database.backend != "postgresql":
        pytest.skip("two processes share one server database; PostgreSQL covers it")


def redis_ping(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except Exception:
        return False


def delete_prefix(url: str, prefix: str) -> None:
    """Remove a test's keys from a (shared) Redis."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class RedisProcess:
    """A private redis-server on a free port, without persistence: killing it loses its data."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10) -> RedisProcess:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server is not installed (apt-get install redis-server)")
        log = open(self.workdir / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if redis_ping(self.url):
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def bus_config(tmp_path: Path, database: TestDatabase, url: str, prefix: str,
               settings: dict[str, dict[str, Any]] | None = None) -> str:
    merged: dict[str, dict[str, Any]] = {"bus": {"url": url, "prefix": prefix},
                                         "table:users": {"hidden": "password_hash"}}
    for section, values in (settings or {}).items():
        merged.setdefault(section, {}).update(values)
    return write_config(tmp_path, database.url, merged)


def start_processes(count: int, tmp_path: Path, database: TestDatabase, url: str, prefix: str,
                    settings: dict[str, dict[str, Any]] | None = None) -> list[LiveServer]:
    """``count`` Pylight processes on one database and bus, each with its own ini file."""
    servers: list[LiveServer] = []
    try:
        for _ in range(count):
            conf = bus_config(tmp_path, database, url, prefix, settings)
            servers.append(LiveServer(conf, free_port(), tmp_path).start())
    except Exception:
        for server in servers:
            server.stop()
        raise
    return servers


def wait_for_log(server: LiveServer, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in server.log():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log of port {server.port}:\n{server.log()[-3000:]}")


def unique_prefix() -> str:
    return f"pylight-test-{uuid.uuid4().hex[:10]}"


# -- nginx ----------------------------------------------------------------------------

def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(path, os.X_OK)),
        None)


class Nginx:
    """nginx in the foreground, running the sample config with the given ports."""

    def __init__(self, workdir: Path, upstream_ports: list[int]) -> None:
        self.workdir = workdir / "nginx"
        self.workdir.mkdir(exist_ok=True)
        self.port = free_port()
        self.upstream_ports = upstream_ports
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = f"http://127.0.0.1:{self.port}"

    def render(self) -> Path:
        sample = NGINX_SAMPLE.read_text()
        assert sample.count("127.0.0.1:8001") == 1 and sample.count("127.0.0.1:8002") == 1
        site = (sample.replace("127.0.0.1:8001", f"127.0.0.1:{self.upstream_ports[0]}")
                .replace("127.0.0.1:8002", f"127.0.0.1:{self.upstream_ports[1]}")
                .replace("listen 8080;", f"listen 127.0.0.1:{self.port};"))
        (self.workdir / "pylight-site.conf").write_text(site)
        work = self.workdir
        user = "user root;\n" if os.geteuid() == 0 else ""
        main = (f"{user}daemon off;\nworker_processes 1;\npid {work}/nginx.pid;\n"
                f"error_log {work}/error.log info;\n"
                "events { worker_connections 256; }\n"
                "http {\n"
                f"    access_log {work}/access.log;\n"
                f"    client_body_temp_path {work}/body;\n"
                f"    proxy_temp_path {work}/proxy;\n"
                f"    fastcgi_temp_path {work}/fastcgi;\n"
                f"    uwsgi_temp_path {work}/uwsgi;\n"
                f"    scgi_temp_path {work}/scgi;\n"
                f"    include {work}/pylight-site.conf;\n"
                "}\n")
        path = self.workdir / "nginx.conf"
        path.write_text(main)
        return path

    def start(self, timeout: float = 10) -> Nginx:
        binary = nginx_binary()
        if binary is None:
            missing("nginx is not installed (.ci/system-packages installs it)")
        assert binary is not None
        conf = self.render()
        check = subprocess.run([binary, "-t", "-p", str(self.workdir), "-c", str(conf)],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        log = open(self.workdir / "stdout.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen([binary, "-p", str(self.workdir), "-c", str(conf)],
                                        stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen: {self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def log(self) -> str:
        path = self.workdir / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""
