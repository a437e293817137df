"""Change-capture latency: a row written outside Pylight -> a WebSocket subscriber has it.

For each database (SQLite, PostgreSQL, MariaDB/MySQL) this:

1. creates a scratch database (a temporary SQLite file; ``pylight_capbench_<pid>``
   on PostgreSQL 127.0.0.1:5432 user postgres and MariaDB 127.0.0.1:3306 user
   root), starts ``python -m pylight`` on it with the demo tables and
   ``[realtime] capture = database``, ``install_triggers = true``,
   ``poll_interval = --poll-interval``;
2. subscribes one WebSocket client to ``/ws/products``;
3. ``--writes`` times: waits a random 0..poll_interval (so writes land at every
   phase of the poll cycle), INSERTs one product on a plain connection of its
   own (autocommit) and measures from just before the statement is sent until
   the client has the ``created`` message;
4. the same for ``--writes`` POSTs to ``/api/products`` (a REST write, which
   with capture = database is delivered by the reader too, once);
5. prints p50/p99/max per database and kind, writes JSON to bench/results/,
   stops the servers and drops the scratch databases (also on failure).

    /work/venv/bin/python bench/capture_latency.py                 # ~1 minute
    /work/venv/bin/python bench/capture_latency.py --backends postgresql --writes 200

Targets (issue 5): within 200 ms on PostgreSQL, within the poll interval
(default 250 ms, plus a small margin) on SQLite and MySQL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from tornado.websocket import websocket_connect

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
NAME = f"pylight_capbench_{os.getpid()}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Target:
    """One scratch database and a way to write to it from outside."""

    def __init__(self, backend: str, workdir: Path) -> None:
        self.backend = backend
        self.path = workdir / "capture.db"
        if backend == "sqlite":
            self.url = f"sqlite:///{self.path}"
        elif backend == "postgresql":
            self.url = f"postgresql://postgres@127.0.0.1:5432/{NAME}"
        else:
            self.url = f"mysql://root@127.0.0.1:3306/{NAME}"

    def _server(self) -> Any:
        if self.backend == "postgresql":
            import psycopg2
            conn = psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres")
            conn.autocommit = True
            return conn
        import pymysql
        return pymysql.connect(host="127.0.0.1", user="root", autocommit=True)

    def create(self) -> None:
        if self.backend == "sqlite":
            return
        conn = self._server()
        with conn.cursor() as cur:
            q = '"' if self.backend == "postgresql" else "`"
            cur.execute(f"CREATE DATABASE {q}{NAME}{q}")
        conn.close()

    def drop(self) -> None:
        if self.backend == "sqlite":
            return
        conn = self._server()
        with conn.cursor() as cur:
            if self.backend == "postgresql":
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = %s AND pid <> pg_backend_pid()", (NAME,))
                cur.execute(f'DROP DATABASE IF EXISTS "{NAME}"')
            else:
                cur.execute(f"DROP DATABASE IF EXISTS `{NAME}`")
        conn.close()

    def connect(self) -> Any:
        if self.backend == "sqlite":
            return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if self.backend == "postgresql":
            import psycopg2
            conn = psycopg2.connect(f"postgresql://postgres@127.0.0.1:5432/{NAME}")
            conn.autocommit = True
            return conn
        import pymysql
        return pymysql.connect(host="127.0.0.1", user="root", database=NAME, autocommit=True)


def start_server(target: Target, workdir: Path, poll_interval: float) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = workdir / f"{target.backend}.ini"
    conf.write_text(f"[database]\nurl = {target.url}\nseed_demo = true\npool_size = 4\n\n"
                    f"[realtime]\ncapture = database\ninstall_triggers = true\n"
                    f"poll_interval = {poll_interval}\n")
    log = open(workdir / f"{target.backend}.log", "wb")  # noqa: SIM115 (the child writes to it)
    proc = subprocess.Popen([sys.executable, "-m", "pylight", "--conf", str(conf), "--port",
                             str(port), "--log-level", "warning"], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((workdir / f"{target.backend}.log").read_text()[-2000:])
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/", timeout=1).read()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not start")


def post(port: int, sku: str) -> None:
    body = json.dumps({"name": "Bench", "price": "1.00", "sku": sku}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/products", data=body,
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()


async def measure(target: Target, port: int, writes: int, poll_interval: float) -> dict[str, list[float]]:
    loop = asyncio.get_running_loop()
    ws = await websocket_connect(f"ws://127.0.0.1:{port}/ws/products")
    hello = json.loads(await ws.read_message())
    assert hello["type"] == "hello"
    conn = target.connect()
    cursor = conn.cursor()
    sql = "INSERT INTO products (name, price, sku) VALUES ('Bench', 1, '{}')"
    out: dict[str, list[float]] = {"outside": [], "rest": []}
    try:
        for kind in ("outside", "rest"):
            for i in range(writes):
                await asyncio.sleep(random.uniform(0, poll_interval))
                sku = f"{kind}-{i}"
                started = time.perf_counter()
                if kind == "outside":
                    await loop.run_in_executor(None, cursor.execute, sql.format(sku))
                else:
                    await loop.run_in_executor(None, post, port, sku)
                while True:
                    message = json.loads(await asyncio.wait_for(ws.read_message(), 10))
                    if message.get("type") == "change" and message["record"]["sku"] == sku:
                        break
                out[kind].append((time.perf_counter() - started) * 1000)
    finally:
        conn.close()
        ws.close()
    return out


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql,mysql")
    parser.add_argument("--writes", type=int, default=50)
    parser.add_argument("--poll-interval", type=float, default=0.25)
    args = parser.parse_args()
    results: dict[str, Any] = {"writes": args.writes, "poll_interval": args.poll_interval,
                               "backends": {}}
    rows = []
    with tempfile.TemporaryDirectory(prefix="pylight-capbench-") as tmp:
        workdir = Path(tmp)
        for backend in args.backends.split(","):
            target = Target(backend, workdir)
            target.create()
            proc = None
            try:
                proc, port = start_server(target, workdir, args.poll_interval)
                samples = asyncio.run(measure(target, port, args.writes, args.poll_interval))
            finally:
                if proc is not None:
                    proc.terminate()
                    proc.wait(15)
                target.drop()
            results["backends"][backend] = samples
            for kind, values in samples.items():
                rows.append((backend, kind, statistics.median(values), percentile(values, 99),
                             max(values)))
    print(f"{args.writes} writes per database and kind, poll_interval = {args.poll_interval} s")
    print("| database | write | p50 ms | p99 ms | max ms |")
    print("|---|---|--:|--:|--:|")
    for backend, kind, p50, p99, worst in rows:
        print(f"| {backend} | {kind} | {p50:.1f} | {p99:.1f} | {worst:.1f} |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"capture-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
