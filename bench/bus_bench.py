"""REST write throughput and WebSocket fan-out: one Pylight process against two behind the Redis bus.

Short and bounded (about a minute), 127.0.0.1 only, cleans up after itself:

1. creates a PostgreSQL database of its own (``--pg``, default
   postgresql://postgres@127.0.0.1:5432) and uses a key prefix of its own on
   Redis (``--redis``, default redis://127.0.0.1:6379/0); both are removed at
   the end;
2. for each set-up -- one process without a bus, one process with the bus,
   two processes with the bus -- starts the processes afresh on the demo
   tables and measures
   * writes/s: ``--writers`` keep-alive connections (spread round robin over
     the processes) POST /api/products as fast as they are answered, for
     ``--seconds`` after a one-second warm-up, with no subscriber;
   * deliveries/s: the same with ``--clients`` WebSocket subscribers of
     /ws/products spread evenly over the processes; deliveries = change
     messages received, summed over clients; afterwards every change written
     in the window must reach every client (``lost`` says otherwise);
3. prints a Markdown table and writes JSON to bench/results/.

The clients are bench/fanout.py's (one asyncio process speaking WebSocket on
a bare protocol). On a two-core machine the processes, Redis, PostgreSQL and
the clients share the cores: read the figures as what the bus costs and how
far a second process helps here, not as a scaling curve.

    /work/venv/bin/python bench/bus_bench.py
    /work/venv/bin/python bench/bus_bench.py --seconds 3 --clients 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fanout import Http, Stats, close_all, connect_many, free_port, raise_nofile  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RUN = uuid.uuid4().hex[:8]


def log(message: str) -> None:
    print(f"[bus_bench] {message}", file=sys.stderr, flush=True)


class Process:
    def __init__(self, workdir: Path, db_url: str, bus: str, prefix: str) -> None:
        self.port = free_port()
        self.conf = workdir / f"pylight-{self.port}.ini"
        bus_lines = f"[bus]\nurl = {bus}\nprefix = {prefix}\n" if bus else ""
        self.conf.write_text(
            f"[database]\nurl = {db_url}\nseed_demo = true\npool_size = 8\n\n"
            "[realtime]\nmax_connections_per_client = 0\n\n" + bus_lines)
        self.log = open(workdir / f"server-{self.port}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pylight", "--conf", str(self.conf), "--port", str(self.port),
             "--log-level", "warning"], cwd=workdir, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pylight exited; see {self.log.name}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("pylight did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


async def write_window(ports: list[int], writers: int, warmup: float, seconds: float,
                       stats: Stats | None) -> dict[str, Any]:
    """Writers POST as fast as answered; counts the writes completed in the window."""
    conns = [await Http(ports[i % len(ports)]).open() for i in range(writers)]
    state = {"measuring": False, "stop": False, "writes": 0, "all": 0, "errors": 0}

    async def writer(http: Http) -> None:
        while not state["stop"]:
            status = await http.post()
            state["all"] += 1
            if status != 201:
                state["errors"] += 1
            elif state["measuring"]:
                state["writes"] += 1

    tasks = [asyncio.ensure_future(writer(c)) for c in conns]
    await asyncio.sleep(warmup)
    count0 = stats.count if stats else 0
    state["measuring"] = True
    start = time.perf_counter()
    await asyncio.sleep(seconds)
    state["measuring"] = False
    elapsed = time.perf_counter() - start
    count1 = stats.count if stats else 0
    state["stop"] = True
    await asyncio.gather(*tasks)
    for c in conns:
        c.close()
    return {"writes_per_s": state["writes"] / elapsed, "writes": state["all"],
            "errors": state["errors"], "deliveries_per_s": (count1 - count0) / elapsed}


async def setup_run(name: str, count: int, bus: str, args: argparse.Namespace, db_url: str,
                    workdir: Path, prefix: str) -> dict[str, Any]:
    processes = []
    try:
        for _ in range(count):
            processes.append(await asyncio.get_running_loop().run_in_executor(
                None, Process, workdir, db_url, bus, prefix))
        ports = [p.port for p in processes]
        log(f"{name}: ports {ports}")
        plain = await write_window(ports, args.writers, 1.0, args.seconds, None)
        stats = Stats()
        clients: list[Any] = []
        for i, port in enumerate(ports):
            share = args.clients // count + (1 if i < args.clients % count else 0)
            failed = await connect_many(stats, port, share, clients)
            if failed:
                raise RuntimeError(f"{failed} clients could not subscribe")
        before = stats.count
        fan = await write_window(ports, args.writers, 1.0, args.seconds, stats)
        expected = before + fan["writes"] * len(clients)
        deadline = time.monotonic() + 30
        while stats.count < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        lost = max(expected - stats.count, 0)
        close_all(stats, clients)
        result = {"setup": name, "processes": count, "bus": bool(bus),
                  "writes_per_s": plain["writes_per_s"], "write_errors": plain["errors"] + fan["errors"],
                  "fanout_writes_per_s": fan["writes_per_s"],
                  "deliveries_per_s": fan["deliveries_per_s"], "clients": args.clients,
                  "lost": lost, "closed": dict(stats.closes)}
        log(f"{name}: {result}")
        return result
    finally:
        for p in processes:
            p.stop()


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = ["| set-up | writes/s (no subscribers) | writes/s with subscribers | "
             f"deliveries/s ({args.clients} clients) | lost |",
             "|---|--:|--:|--:|--:|"]
    for r in results:
        lines.append(f"| {r['setup']} | {r['writes_per_s']:,.0f} | {r['fanout_writes_per_s']:,.0f} | "
                     f"{r['deliveries_per_s']:,.0f} | {r['lost']} |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    import psycopg2
    import redis

    name = f"pylight_bench_{RUN}"
    admin = psycopg2.connect(f"{args.pg}/postgres", connect_timeout=3)
    admin.autocommit = True
    prefix = f"pylight-bench-{RUN}"
    workdir = Path(tempfile.mkdtemp(prefix="bus-bench-"))
    results = []
    try:
        setups = [("1 process, no bus", 1, ""), ("1 process, Redis bus", 1, args.redis),
                  ("2 processes, Redis bus", 2, args.redis)]
        for label, count, bus in setups:
            with admin.cursor() as cur:  # a fresh database per set-up: same table sizes
                cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
                cur.execute(f'CREATE DATABASE "{name}"')
            results.append(await setup_run(label, count, bus, args, f"{args.pg}/{name}",
                                           workdir, f"{prefix}-{count}"))
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()
        client = redis.Redis.from_url(args.redis)
        keys = list(client.scan_iter(match=f"{prefix}-*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    table = report(results, args)
    print(table)
    out = ROOT / "bench" / "results" / f"bus-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "cpus": os.cpu_count(), "results": results},
                              indent=2))
    log(f"wrote {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    raise_nofile()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
