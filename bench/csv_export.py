"""CSV export of a large table: the server's peak memory and rows per second.

For each backend (SQLite always; PostgreSQL when 127.0.0.1:5432 answers):

1. creates a scratch database with one table ``export_rows`` of ``--rows`` rows
   (integer key, text, decimal, integer, boolean, a nullable text, timestamp, JSON);
2. starts ``python -m pylight`` on it (``--log-level warning``, ``[api] max_limit``
   = ``--page``, the rows per page the export reads);
3. reads ``GET /api/export_rows?format=csv&all=true`` to the end (urllib, 64 KiB
   reads, or ``--client curl``), counting the lines;
4. reports the rows and bytes received, the time, rows/s, and the server's memory
   from ``/proc/<pid>/status``: VmRSS before the export, and VmHWM (the peak) after;
5. stops the server and drops the database.

    /work/main/.venv/bin/python bench/csv_export.py                  # 1,000,000 rows
    /work/main/.venv/bin/python bench/csv_export.py --rows 100000 --backends sqlite

Memory should not grow with ``--rows``: the export holds one page at a time.
Run it on a quiet machine; figures from a busy one say little. Only 127.0.0.1
is used.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE = "export_rows"


def log(message: str) -> None:
    print(f"[csv_export {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- databases --------------------------------------------------------------------------

def fill_sqlite(path: Path, rows: int) -> str:
    conn = sqlite3.connect(path)
    conn.executescript(f"""
        CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price DECIMAL(10,2),
            qty INTEGER, active BOOLEAN, note TEXT, created TIMESTAMP, doc JSON);
    """)
    conn.execute(f"""
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
        INSERT INTO {TABLE} (id, name, price, qty, active, note, created, doc)
        SELECT i, 'product ' || i, (i % 100000) / 100.0, i % 1000, i % 2,
               CASE WHEN i % 3 = 0 THEN NULL WHEN i % 3 = 1 THEN '' ELSE 'a, "quoted" note' END,
               datetime(1700000000 + i, 'unixepoch'), json_object('n', i, 'tags', json_array('x', 'y'))
        FROM n""", (rows,))
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


def pg_reachable(args: argparse.Namespace) -> bool:
    try:
        import psycopg2
    except ImportError:
        return False
    try:
        psycopg2.connect(host=args.pg_host, port=args.pg_port, user=args.pg_user,
                         dbname="postgres", connect_timeout=3).close()
        return True
    except psycopg2.Error:
        return False


def pg_admin(args: argparse.Namespace, dbname: str = "postgres"):
    import psycopg2

    conn = psycopg2.connect(host=args.pg_host, port=args.pg_port, user=args.pg_user,
                            dbname=dbname, connect_timeout=5)
    conn.autocommit = True
    return conn


def fill_postgres(args: argparse.Namespace, dbname: str, rows: int) -> str:
    conn = pg_admin(args)
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{dbname}"')
    conn.close()
    conn = pg_admin(args, dbname)
    with conn.cursor() as cur:
        cur.execute(f"""
            CREATE TABLE {TABLE} (id integer PRIMARY KEY, name text NOT NULL, price numeric(10,2),
                qty integer, active boolean, note text, created timestamp, doc jsonb)""")
        cur.execute(f"""
            INSERT INTO {TABLE}
            SELECT i, 'product ' || i, (i %% 100000) / 100.0, i %% 1000, i %% 2 = 0,
                   CASE WHEN i %% 3 = 0 THEN NULL WHEN i %% 3 = 1 THEN ''
                        ELSE 'a, "quoted" note' END,
                   to_timestamp(1700000000 + i) AT TIME ZONE 'UTC',
                   jsonb_build_object('n', i, 'tags', jsonb_build_array('x', 'y'))
            FROM generate_series(1, %s) AS i""", (rows,))
        cur.execute(f"ANALYZE {TABLE}")
    conn.close()
    return f"postgresql://{args.pg_user}@{args.pg_host}:{args.pg_port}/{dbname}"


def drop_postgres(args: argparse.Namespace, dbname: str) -> None:
    conn = pg_admin(args)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,))
        cur.execute(f'DROP DATABASE IF EXISTS "{dbname}"')
    conn.close()


# -- the server ---------------------------------------------------------------------------

def status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


def start_server(url: str, page: int, workdir: Path) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    conf = workdir / "pylight.ini"
    conf.write_text(f"[database]\nurl = {url}\nseed_demo = false\npool_size = 4\n\n"
                    f"[api]\nmax_limit = {page}\n")
    log_path = workdir / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "pylight", "--conf", str(conf),
                             "--port", str(port), "--log-level", "warning"],
                            cwd=ROOT, stdout=open(log_path, "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pylight exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/{TABLE}?limit=1",
                                        timeout=2) as response:
                if response.status == 200:
                    return proc, port, log_path
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"pylight not ready after 60 s:\n{log_path.read_text()}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def export(url: str, client: str) -> tuple[int, int, float]:
    """(bytes, lines, seconds) of reading ``url`` to the end."""
    started = time.perf_counter()
    if client == "curl":
        with subprocess.Popen(["curl", "-sSf", "--no-buffer", url],
                              stdout=subprocess.PIPE) as proc:
            total = lines = 0
            assert proc.stdout is not None
            while chunk := proc.stdout.read(65536):
                total += len(chunk)
                lines += chunk.count(b"\n")
        if proc.returncode != 0:
            raise RuntimeError(f"curl failed with {proc.returncode}")
    else:
        total = lines = 0
        with urllib.request.urlopen(url, timeout=600) as response:
            while chunk := response.read(65536):
                total += len(chunk)
                lines += chunk.count(b"\n")
    return total, lines, time.perf_counter() - started


def run_backend(name: str, url: str, args: argparse.Namespace, workdir: Path) -> dict:
    proc, port, log_path = start_server(url, args.page, workdir)
    try:
        before = status(proc.pid)
        log(f"{name}: pylight pid {proc.pid} ready; RSS {before['VmRSS'] / 1024:.1f} MiB")
        size, lines, seconds = export(
            f"http://127.0.0.1:{port}/api/{TABLE}?format=csv&all=true", args.client)
        after = status(proc.pid)
    finally:
        stop_server(proc)
    rows = lines - 1  # the header line; no value here holds a line break
    if rows != args.rows:
        raise RuntimeError(f"{name}: received {rows} rows, expected {args.rows}; "
                           f"server log:\n{log_path.read_text()[-3000:]}")
    return {"backend": name, "rows": rows, "bytes": size, "seconds": round(seconds, 3),
            "rows_per_s": round(rows / seconds), "mib_per_s": round(size / seconds / 2**20, 1),
            "rss_before_mib": round(before["VmRSS"] / 1024, 1),
            "peak_rss_mib": round(after["VmHWM"] / 1024, 1), "page": args.page,
            "client": args.client}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--page", type=int, default=1000,
                        help="[api] max_limit: the rows the export reads per query")
    parser.add_argument("--backends", default="sqlite,postgresql",
                        help="comma list of sqlite, postgresql (skipped if unreachable)")
    parser.add_argument("--client", choices=("urllib", "curl"), default="urllib")
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.client == "curl" and shutil.which("curl") is None:
        parser.error("curl is not installed")

    results = []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        workdir = Path(tempfile.mkdtemp(prefix="pylight-csv-"))
        try:
            if backend == "sqlite":
                started = time.monotonic()
                url = fill_sqlite(workdir / "export.db", args.rows)
                log(f"sqlite: {args.rows:,} rows written in {time.monotonic() - started:.1f} s")
                results.append(run_backend("sqlite", url, args, workdir))
            elif backend == "postgresql":
                if not pg_reachable(args):
                    log("postgresql: not reachable, skipped")
                    continue
                dbname = f"pylight_csv_{os.getpid()}"
                try:
                    started = time.monotonic()
                    url = fill_postgres(args, dbname, args.rows)
                    log(f"postgresql: {args.rows:,} rows written in "
                        f"{time.monotonic() - started:.1f} s")
                    results.append(run_backend("postgresql", url, args, workdir))
                finally:
                    drop_postgres(args, dbname)
            else:
                parser.error(f"unknown backend {backend!r}")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"{'backend':<12}{'rows':>11}{'MiB':>9}{'seconds':>9}{'rows/s':>10}{'MiB/s':>8}"
          f"{'RSS before':>12}{'peak RSS':>10}")
    for r in results:
        print(f"{r['backend']:<12}{r['rows']:>11,}{r['bytes'] / 2**20:>9.1f}{r['seconds']:>9.2f}"
              f"{r['rows_per_s']:>10,}{r['mib_per_s']:>8.1f}{r['rss_before_mib']:>10.1f}Mi"
              f"{r['peak_rss_mib']:>8.1f}Mi")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
