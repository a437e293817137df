"""REST throughput of Pylight against a hand-written Tornado + psycopg2 ceiling.

One run, and it cleans up after itself:

1. creates a scratch PostgreSQL database, starts Pylight once with
   ``seed_demo = true`` (demo tables) and inserts ``--extra-products`` rows so a
   list of 50 is a real page;
2. for each server variant -- Pylight as shipped (log level info, so every
   request is access-logged), Pylight with ``--log-level warning``, and
   bench/baseline_rest.py -- starts it pinned to core 0 (``taskset -c 0``),
   runs wrk pinned to core 1 on three cases: GET by key (rotating ids), a list
   of 50, and POST (unique sku per request); each case gets a warm-up run that
   is thrown away, then a measured run;
3. prints a table with requests/s, latency percentiles, server CPU use and the
   ratio Pylight / baseline, and writes everything as JSON to bench/results/;
4. optionally (``--profile``) samples Pylight with py-spy during an extra
   GET-by-key run (``--profile get_by_key,list_50,post`` for more cases) and
   writes a collapsed-stack profile plus a "where the time goes" summary;
5. drops the database.

    /work/venv/bin/python bench/rest_bench.py            # ~2.5 minutes
    /work/venv/bin/python bench/rest_bench.py --profile  # + ~15 s of profiling

Only 127.0.0.1 is used. See bench/README.md for the figures.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg2

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
CASES = ("get_by_key", "list_50", "post", "embed_50")
EMBED_PATH = "/api/orders?select=*,users(name)&limit=50"
CASE_TITLES = {"get_by_key": "GET /api/products/<id>", "list_50": "GET /api/products?limit=50",
               "post": "POST /api/products", "embed_50": "GET " + EMBED_PATH}
# Pylight's goal per case, as a share of the hand-written server's req/s in the same
# run (REST v2 issue); the embedded list is held to a hand-written JOIN's answer.
GOAL = {"get_by_key": 1.0, "list_50": 1.0, "post": 1.0, "embed_50": 0.8}
# More than this much of a core used by other processes during a run: flag it.
NOISY_PCT = 25.0


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- database ---------------------------------------------------------------------

def admin_connect(args: argparse.Namespace, dbname: str = "postgres"):
    conn = psycopg2.connect(host=args.pg_host, port=args.pg_port, user=args.pg_user,
                            dbname=dbname, connect_timeout=5)
    conn.autocommit = True
    return conn


def create_database(args: argparse.Namespace, name: str) -> None:
    conn = admin_connect(args)
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def drop_database(args: argparse.Namespace, name: str) -> None:
    conn = admin_connect(args)
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


def fill(args: argparse.Namespace, dbname: str, table: str, insert: str, count: int,
         summary: str) -> tuple[Any, ...]:
    """Run ``insert`` (its one parameter ``count``), analyse ``table``, answer ``summary``."""
    conn = admin_connect(args, dbname)
    try:
        with conn.cursor() as cur:
            cur.execute(insert, (count,))
            cur.execute(f"VACUUM ANALYZE {table}")
            cur.execute(summary)
            return cur.fetchone()
    finally:
        conn.close()


def add_products(args: argparse.Namespace, dbname: str, count: int) -> tuple[int, int]:
    first, last, total = fill(
        args, dbname, "products",
        "INSERT INTO products (name, description, price, sku) "
        "SELECT 'Product ' || g, 'Filler row ' || g || ' for the REST benchmark', "
        "       ((g %% 997) + 1) / 4.0, 'BENCH-FILL-' || g "
        "FROM generate_series(1, %s) AS g", count,
        "SELECT min(id), max(id), count(*) FROM products")
    log(f"products: {total} rows, ids {first}..{last}")
    return first, last


def add_orders(args: argparse.Namespace, dbname: str, count: int) -> None:
    """``count`` orders spread over the demo's users and the products, so a page of 50
    orders embeds a user each (the embedded-list case)."""
    total, users = fill(
        args, dbname, "orders",
        "INSERT INTO orders (user_id, product_id, quantity, total, status) "
        "SELECT u.ids[1 + g %% array_length(u.ids, 1)], p.ids[1 + g %% array_length(p.ids, 1)], "
        "       1 + g %% 5, ((g %% 997) + 1) / 4.0, 'paid' "
        "FROM generate_series(1, %s) AS g, "
        "     (SELECT array_agg(id ORDER BY id) AS ids FROM users) AS u, "
        "     (SELECT array_agg(id ORDER BY id) AS ids FROM products) AS p", count,
        "SELECT count(*), count(DISTINCT user_id) FROM orders")
    log(f"orders: {total} rows over {users} users")


def pg_version(args: argparse.Namespace) -> str:
    conn = admin_connect(args)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            return cur.fetchone()[0]
    finally:
        conn.close()


# -- servers ----------------------------------------------------------------------

class Server:
    """A server process pinned to a core, its log in a temporary file."""

    def __init__(self, name: str, argv: list[str], port: int, core: str, workdir: Path) -> None:
        self.name = name
        self.port = port
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(["taskset", "-c", core, *argv], cwd=ROOT,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, path: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.base + path, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s:\n{self.tail()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process (all its threads) so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def tail(self, lines: int = 30) -> str:
        self._log.flush()
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def fetch(url: str, data: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, json.loads(response.read())


# -- CPU accounting --------------------------------------------------------------

def pids_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def busy_seconds() -> float:
    """CPU-seconds all cores spent not idle since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    import resource
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pg_backend_pids(args: argparse.Namespace, dbname: str) -> list[int]:
    conn = admin_connect(args)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> "
                        "pg_backend_pid()", (dbname,))
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


# -- wrk ----------------------------------------------------------------------------

def wrk_argv(args: argparse.Namespace, case: str, base: str, duration: float, ids: tuple[int, int],
             tag: str) -> list[str]:
    common = ["taskset", "-c", args.client_core, args.wrk, f"-t{args.threads}",
              f"-c{args.connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s"]
    if case == "get_by_key":
        return [*common, "-s", str(BENCH / "get_by_key.lua"), base, "--", str(ids[0]), str(ids[1])]
    if case == "list_50":
        return [*common, "-s", str(BENCH / "list.lua"), f"{base}/api/products?limit=50"]
    if case == "post":
        return [*common, "-s", str(BENCH / "post.lua"), base, "--", tag]
    if case == "embed_50":
        return [*common, "-s", str(BENCH / "list.lua"), f"{base}{EMBED_PATH}"]
    raise ValueError(case)


def run_wrk(argv: list[str], duration: float) -> dict:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            result = json.loads(line[len("BENCH_JSON "):])
            seconds = result["duration_us"] / 1e6
            result["rps"] = result["requests"] / seconds if seconds else 0.0
            result["non_2xx_or_3xx"] = result["errors"]["status"]
            return result
    raise RuntimeError(f"wrk gave no result (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")


def measure(args: argparse.Namespace, server: Server, case: str, ids: tuple[int, int],
            run_id: str, dbname: str) -> dict:
    tag = f"{run_id}-{server.name}-{case}"
    if args.warmup > 0:
        run_wrk(wrk_argv(args, case, server.base, args.warmup, ids, tag + "-warm"), args.warmup)
    backends = pg_backend_pids(args, dbname)
    cpu0, pg0, sys0, t0 = server.cpu_seconds(), pids_cpu(backends), busy_seconds(), time.monotonic()
    wrk0 = children_cpu()
    result = run_wrk(wrk_argv(args, case, server.base, args.duration, ids, tag), args.duration)
    cpu1, pg1, sys1, t1 = server.cpu_seconds(), pids_cpu(backends), busy_seconds(), time.monotonic()
    wrk1 = children_cpu()
    wall = t1 - t0
    result["server_cpu_pct"] = 100.0 * (cpu1 - cpu0) / wall
    result["postgres_cpu_pct"] = 100.0 * (pg1 - pg0) / wall
    result["wrk_cpu_pct"] = 100.0 * (wrk1 - wrk0) / wall
    result["machine_busy_pct"] = 100.0 * (sys1 - sys0) / wall
    # Whatever else ran on the machine meanwhile (other jobs, postgres background
    # workers, the kernel's softirqs); a large figure means a noisy measurement.
    result["other_cpu_pct"] = max(0.0, result["machine_busy_pct"] - result["server_cpu_pct"]
                                  - result["postgres_cpu_pct"] - result["wrk_cpu_pct"])
    result["server_cpu_us_per_request"] = (
        1e6 * (cpu1 - cpu0) / result["requests"] if result["requests"] else None)
    errors = sum(result["errors"].values())
    lat = result["latency_us"]
    log(f"  {server.name:<14} {case:<11} {result['rps']:8.0f} req/s  p50 {lat['p50'] / 1000:6.2f} ms"
        f"  p99 {lat['p99'] / 1000:6.2f} ms  cpu {result['server_cpu_pct']:5.1f}%"
        f" (postgres {result['postgres_cpu_pct']:.0f}%, wrk {result['wrk_cpu_pct']:.0f}%,"
        f" other {result['other_cpu_pct']:.0f}%)"
        + (f"  ERRORS {result['errors']}" if errors else ""))
    return result


# -- profiling ------------------------------------------------------------------------

# Where a sample's time goes: the innermost frame matching one of these decides.
BUCKETS = [
    ("logging (per-request access log)", ["logging/__init__", "log_request", "Logger."]),
    ("peewee: pooled connect/close around each call",
     ["ConnectionContext.__enter__", "ConnectionContext.__exit__", "PooledDatabase",
      "Database.connect", "Database.close", "is_connection_closed"]),
    ("peewee: SQL generation (query.sql())",
     ["Context.", ".__sql__", "Query.sql", "Database.get_sql_context", "Source.", "NodeList"]),
    ("peewee: query construction (select/where/limit/clone)",
     ["ModelSelect.where", "ModelSelect.clone", "ModelSelect.__init__", "Model.select",
      "_model_query_helper", "Node.copy", "_key_condition", "Field.__eq__", "Expression.__init__",
      "ColumnBase.", "BaseQuery.__init__", "_ModelQueryHelper.__init__", "Model.insert",
      "ModelInsert", "Insert.", "returning"]),
    ("peewee/psycopg2: execute + fetch rows",
     ["execute_sql", "_execute_cursor", "CursorWrapper", "fetch", "iterate",
      "BaseModelSelect.__iter__", "_get_cursor_wrapper", "Database.execute"]),
    ("pylight: encode rows / coerce values", ["encode_row", "_encode_", "coerce", "values.py"]),
    ("JSON encode/decode", ["JSONEncoder", "iterencode", "json/"]),
    ("tornado: write response", ["RequestHandler.finish", "RequestHandler.flush", "write_headers",
                                 "IOStream.write", "_handle_write", "write_to_fd", "compute_etag",
                                 "finish_request", "email/utils", "formatdate"]),
    ("tornado: read/parse request, route", ["_read_message", "_parse_headers", "HTTPHeaders",
                                            "headers_received", "HTTPServerRequest",
                                            "find_handler", "_server_request_loop",
                                            "read_from_fd", "read_until", "_read_to_buffer",
                                            "routing.py", "_find_read_pos"]),
    ("thread-pool hand-off (submit, futures, loop wake-ups)",
     ["ThreadPoolExecutor", "run_in_executor", "_WorkItem", "_worker", "call_soon_threadsafe",
      "_read_from_self", "_copy_future_state", "set_result", "Future.", "_chain_future",
      "_set_state", "_call_set_state", "wrap_future", "_write_to_self", "Condition", "Lock"]),
    ("pylight: handler logic", ["rest.py", "handlers.py", "db.py", "store.py", "query.py"]),
    ("tornado: handler machinery", ["RequestHandler", "web.py"]),
    ("asyncio/tornado event loop, epoll", ["select", "_run_once", "Handle._run", "add_timeout",
                                           "ioloop", "register", "asyncio"]),
]


def _bucket(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, keys in BUCKETS:
            if any(key in frame for key in keys):
                return name
    return "no Python frame (C code / thread start)" if frames == [""] else "other"


def summarise_profile(collapsed: Path, top: int = 30) -> str:
    """Buckets, then self and inclusive shares of functions, in a py-spy collapsed-stack file."""
    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    buckets: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        frames = [re.sub(r"\(/.*?/(site-packages|lib/python3\.\d+|main)/", "(", f) for f in frames]
        buckets[_bucket(frames)] += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "no samples\n"
    out = [f"{total} samples (GIL-holding thread only)\n", "\nWhere the time goes:\n"]
    out += [f"{100 * n / total:6.1f}%  {name}\n" for name, n in buckets.most_common()]
    out.append(f"\nTop {top} by self time:\n")
    out += [f"{100 * n / total:6.1f}%  {frame}\n" for frame, n in own.most_common(top)]
    out.append(f"\nTop {top} by inclusive time:\n")
    out += [f"{100 * n / total:6.1f}%  {frame}\n" for frame, n in inclusive.most_common(top)]
    return "".join(out)


def profile_case(args: argparse.Namespace, server: Server, case: str, ids: tuple[int, int],
                 run_id: str) -> dict:
    py_spy = args.py_spy or shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists() and not shutil.which(py_spy):
        log("py-spy not found (pip install py-spy); skipping the profile")
        return {}
    RESULTS.mkdir(exist_ok=True)
    collapsed = RESULTS / f"rest-profile-{case}-{run_id}.txt"
    spy = subprocess.Popen(
        ["taskset", "-c", args.client_core, py_spy, "record", "--pid", str(server.proc.pid),
         "--gil", "--rate", "500", "--format", "raw", "--duration", f"{args.duration:g}",
         "--output", str(collapsed), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    result = run_wrk(wrk_argv(args, case, server.base, args.duration, ids, f"{run_id}-profile"),
                     args.duration)
    _, err = spy.communicate(timeout=args.duration + 30)
    if not collapsed.exists():
        log(f"py-spy produced no profile: {err.strip()[-500:]}")
        return {}
    summary = summarise_profile(collapsed)
    summary_path = collapsed.with_name(collapsed.stem + "-summary.txt")
    summary_path.write_text(summary)
    log(f"profile ({case} under py-spy: {result['rps']:.0f} req/s) -> {collapsed.name}, "
        f"{summary_path.name}")
    return {"collapsed": str(collapsed), "summary": str(summary_path), "rps_while_profiling":
            result["rps"]}


# -- the run -----------------------------------------------------------------------------

def versions(args: argparse.Namespace) -> dict:
    import peewee
    import tornado

    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    wrk_version = subprocess.run([args.wrk, "-v"], capture_output=True, text=True).stdout
    return {
        "nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
        "python": platform.python_version(), "tornado": tornado.version,
        "peewee": peewee.__version__, "psycopg2": psycopg2.__version__.split()[0],
        "postgresql": pg_version(args), "wrk": wrk_version.split("\n")[0].strip(),
    }


def print_table(results: dict, variants: list[str]) -> None:
    base = results.get("baseline", {})
    head = f"{'case':<28}{'server':<15}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'cpu%':>6}" \
           f"{'us/req':>7}{'pg%':>5}{'other%':>7}{'rps ratio':>10}{'cpu ratio':>10}"
    print()
    print(head)
    print("-" * len(head))
    for case in CASES:
        for name in variants:
            r = results[name].get(case)
            if r is None:
                continue
            ratio = eff = ""
            if name != "baseline" and case in base:
                ratio = f"{r['rps'] / base[case]['rps']:.2f}x"
                eff = (f"{base[case]['server_cpu_us_per_request'] / r['server_cpu_us_per_request']:.2f}x")
            cpu_req = r["server_cpu_us_per_request"]
            print(f"{CASE_TITLES[case]:<28}{name:<15}{r['rps']:8.0f}"
                  f"{r['latency_us']['p50'] / 1000:8.2f}{r['latency_us']['p99'] / 1000:8.2f}"
                  f"{r['server_cpu_pct']:6.0f}{(cpu_req or 0):7.0f}{r['postgres_cpu_pct']:5.0f}"
                  f"{r['other_cpu_pct']:6.0f}{'!' if r['other_cpu_pct'] > NOISY_PCT else ' '}"
                  f"{ratio:>10}{eff:>10}")
        print()
    print("cpu% = server process (all threads) as % of one core, us/req = its CPU microseconds per\n"
          "request, pg% = the database's backends for this run, other% = everything else on the\n"
          "machine (other jobs: if large, the figures are noisy; rerun on a quiet machine);\n"
          "rps ratio = Pylight req/s / baseline req/s; cpu ratio = baseline us/req / Pylight us/req")
    noisy = [r for name in variants for r in results[name].values()
             if r["other_cpu_pct"] > NOISY_PCT]
    if noisy:
        print(f"WARNING: {len(noisy)} run(s) marked ! shared the machine with other work "
              f"(> {NOISY_PCT:.0f}% of a core): their req/s are unreliable, compare cpu ratios")
    print("goal (req/s ratio to the hand-written server): "
          + ", ".join(f"{case} >= {goal:.2f}" for case, goal in GOAL.items()))


def markdown_table(report: dict) -> str:
    """The figures of a saved run as a Markdown table (for bench/README.md)."""
    results = report["results"]
    variants = list(results)
    base = results.get("baseline", {})
    lines = ["| case | server | req/s | p50 ms | p99 ms | server CPU % | CPU us/req | other CPU % "
             "| req/s ratio | CPU ratio |", "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for case in CASES:
        for name in variants:
            r = results[name].get(case)
            if r is None:
                continue
            ratio = eff = ""
            if name != "baseline" and case in base:
                ratio = f"{r['rps'] / base[case]['rps']:.2f}"
                eff = f"{base[case]['server_cpu_us_per_request'] / r['server_cpu_us_per_request']:.2f}"
            lines.append(
                f"| {CASE_TITLES[case]} | {name} | {r['rps']:.0f} | {r['latency_us']['p50'] / 1000:.1f} "
                f"| {r['latency_us']['p99'] / 1000:.1f} | {r['server_cpu_pct']:.0f} "
                f"| {r['server_cpu_us_per_request']:.0f} | {r['other_cpu_pct']:.0f} | {ratio} | {eff} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per case")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per case")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every case this many times; the median run is reported")
    parser.add_argument("--extra-products", type=int, default=1000)
    parser.add_argument("--extra-orders", type=int, default=1000)
    parser.add_argument("--server-core", default="0")
    parser.add_argument("--client-core", default="1")
    parser.add_argument("--variants", default="pylight,pylight-quiet,baseline",
                        help="comma list of pylight, pylight-quiet, baseline")
    parser.add_argument("--pool-size", type=int, default=8, help="Pylight [database] pool_size")
    parser.add_argument("--profile", nargs="?", const="get_by_key", default="", metavar="CASES",
                        help="also py-spy Pylight (as shipped) during one more run of each of "
                        "these cases (default get_by_key)")
    parser.add_argument("--py-spy", default=None, help="path of py-spy")
    parser.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", default="5432")
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the scratch database")
    parser.add_argument("--report", metavar="JSON",
                        help="print a saved run (bench/results/*.json) as a Markdown table and exit")
    args = parser.parse_args(argv)
    if args.report:
        print(markdown_table(json.loads(Path(args.report).read_text())))
        return 0

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    profile_cases = [c.strip() for c in args.profile.split(",") if c.strip()]
    for case in profile_cases:
        if case not in CASES:
            parser.error(f"--profile: unknown case {case!r} (choose from {', '.join(CASES)})")
    for name in variants:
        if name not in ("pylight", "pylight-quiet", "baseline"):
            parser.error(f"--variants: unknown variant {name!r}")
    for tool in (args.wrk, "taskset"):
        if not shutil.which(tool):
            print(f"rest_bench: {tool} not found (apt-get install wrk util-linux)", file=sys.stderr)
            return 2
    run_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    dbname = f"pylight_bench_{os.getpid()}"
    dsn = f"postgresql://{args.pg_user}@{args.pg_host}:{args.pg_port}/{dbname}"
    workdir = Path(tempfile.mkdtemp(prefix="pylight-bench-"))
    started = time.monotonic()
    load_start = Path("/proc/loadavg").read_text().split()[:3]
    results: dict[str, dict] = {name: {} for name in variants}
    rounds: dict[str, dict[str, list]] = {name: {case: [] for case in CASES} for name in variants}
    shapes: dict[str, dict] = {}
    profile: dict = {}
    servers: dict[str, Server] = {}

    create_database(args, dbname)
    log(f"created database {dbname}")
    try:
        conf = workdir / "pylight.ini"
        conf.write_text(
            "[server]\nhost = 127.0.0.1\nport = 8000\n\n"
            f"[database]\nurl = {dsn}\nseed_demo = true\npool_size = {args.pool_size}\n\n"
            "[table:users]\nhidden = password_hash\n")

        def start(name: str) -> Server:
            port = free_port()
            py = sys.executable
            if name == "baseline":
                argv = [py, str(BENCH / "baseline_rest.py"), "--dsn", dsn, "--port", str(port)]
            else:
                argv = [py, "-m", "pylight", "--conf", str(conf), "--port", str(port)]
                if name == "pylight-quiet":
                    argv += ["--log-level", "warning"]
            srv = Server(name, argv, port, args.server_core, workdir)
            servers[name] = srv
            srv.wait_ready("/api/products/1")
            return srv

        # Seed: Pylight creates the demo tables, then the filler rows go in directly.
        start("seed").stop()
        del servers["seed"]
        ids = add_products(args, dbname, args.extra_products)
        add_orders(args, dbname, args.extra_orders)

        # Every server runs (idle) at once, all pinned to the same core; the cases
        # interleave the servers so slow drifts in background load hit them alike.
        for name in variants:
            server = start(name)
            log(f"{name} ready on :{server.port} (pid {server.proc.pid}, core {args.server_core})")
            shapes[name] = {"get": fetch(f"{server.base}/api/products/1")[1],
                            "list": fetch(f"{server.base}/api/products?limit=2")[1],
                            "embed": fetch(f"{server.base}{EMBED_PATH.replace('=50', '=2')}")[1]}
        for round_no in range(1, args.rounds + 1):
            if args.rounds > 1:
                log(f"round {round_no}/{args.rounds}")
            for case in CASES:
                for name in variants:
                    rounds[name][case].append(
                        measure(args, servers[name], case, ids, f"{run_id}-r{round_no}", dbname))
        for name in variants:
            for case in CASES:
                runs = sorted(rounds[name][case], key=lambda r: r["rps"])
                results[name][case] = dict(runs[len(runs) // 2], rounds_rps=[
                    round(r["rps"], 1) for r in rounds[name][case]])
        if args.profile and "pylight" in servers:
            for case in profile_cases:
                profile[case] = profile_case(args, servers["pylight"], case, ids, run_id)
    finally:
        for srv in servers.values():
            srv.stop()
        if args.keep_db:
            log(f"kept database {dbname}")
        else:
            drop_database(args, dbname)
            log(f"dropped database {dbname}")
        shutil.rmtree(workdir, ignore_errors=True)

    # Same answers from every server (created_at aside, the rows are the same rows).
    reference = next(iter(shapes.values()), None)
    same_shape = all(s == reference for s in shapes.values())
    if not same_shape:
        log("WARNING: the servers' JSON differs:\n" + json.dumps(shapes, indent=1)[:3000])

    ratios: dict[str, dict] = {}
    cpu_ratios: dict[str, dict] = {}
    if "baseline" in results:
        for name in variants:
            if name != "baseline":
                ratios[name] = {case: results[name][case]["rps"] / results["baseline"][case]["rps"]
                                for case in CASES}
                cpu_ratios[name] = {
                    case: results["baseline"][case]["server_cpu_us_per_request"]
                    / results[name][case]["server_cpu_us_per_request"] for case in CASES}
    print_table(results, variants)
    # The machine drifts between rounds (this one by up to 40% within minutes), and
    # each round runs the servers back to back: the ratio within each round, then
    # the median of those, is steadier than the ratio of the medians.
    paired: dict[str, dict] = {}
    if "baseline" in rounds and args.rounds > 1:
        for name in variants:
            if name != "baseline":
                paired[name] = {case: statistics.median(
                    mine["rps"] / theirs["rps"] for mine, theirs in
                    zip(rounds[name][case], rounds["baseline"][case], strict=True))
                    for case in CASES}
        print("paired req/s ratios (median over rounds of the same round's ratio): " + "; ".join(
            f"{name} " + ", ".join(f"{case} {ratio:.2f}" for case, ratio in per.items())
            for name, per in paired.items()))
    report = {
        "run_id": run_id,
        "elapsed_s": round(time.monotonic() - started, 1),
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup,
                     "connections": args.connections, "wrk_threads": args.threads,
                     "server_core": args.server_core, "client_core": args.client_core,
                     "extra_products": args.extra_products, "rounds": args.rounds,
                     "extra_orders": args.extra_orders,
                     "pylight_pool_size": args.pool_size,
                     "get_ids": list(ids)},
        "machine": versions(args),
        "loadavg_start": load_start,
        "loadavg_end": Path("/proc/loadavg").read_text().split()[:3],
        "results": results,
        "ratios_vs_baseline": ratios,
        "paired_ratios_vs_baseline": paired,
        # baseline CPU per request / Pylight CPU per request: less sensitive to
        # background load than req/s, since it counts only the server's own CPU.
        "cpu_efficiency_vs_baseline": cpu_ratios,
        "goal_ratio": GOAL,
        "same_json_shape": same_shape,
        "profile": profile,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"rest-{run_id}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "rest-latest.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)} (and rest-latest.json); took {report['elapsed_s']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
