"""Bounded sqlmap scan of Pylight's REST API on SQLite, PostgreSQL and MariaDB/MySQL.

A manual security check, not part of the test suite or CI. sqlmap is not a
dependency of the project and this script installs nothing; install it first:

    .venv/bin/pip install sqlmap
    .venv/bin/python bench/sqlmap_scan.py                     # ~10 minutes for all three
    .venv/bin/python bench/sqlmap_scan.py --backends sqlite --level 2 --risk 1

For each database it can reach (SQLite always; PostgreSQL on 127.0.0.1:5432 as
``postgres`` and MariaDB/MySQL on 127.0.0.1:3306 as ``root`` when they answer)
it:

1. creates a scratch database (a temporary SQLite file; ``pylight_sqlmap_<random>``
   on the servers) and starts ``python -m pylight`` on a free 127.0.0.1 port with
   ``[database] seed_demo = true`` (the demo tables products, users, orders);
2. runs sqlmap in batch mode, one process at a time, against the fixed list of
   injection points in ``POINTS``: every filter operator family, ``or=``,
   ``order``, ``select``, ``limit``, ``offset``, ``count``, ``after`` (a real
   cursor taken from a ``next`` link, both as sent and inside its base64), the
   table segment and the item key of the path (sqlmap's ``*`` marker), a POST
   (one object and a bulk array) and a PUT JSON body (``--data`` with ``*``
   markers). Each sqlmap run logs its HTTP traffic to a file, has a wall-clock
   limit (``--point-timeout``) and uses a fresh session directory;
3. reads sqlmap's output for findings (``... is vulnerable``, ``appears to be /
   is '<technique>' injectable``, a positive heuristic, an identified injection
   point, a DBMS error recognised in a response), the traffic file for 5xx
   answers (with the exact request) and the server's log for 5xx lines and
   tracebacks;
4. stops the server and drops the scratch database, also on failure or Ctrl-C.

It prints a table per database and a summary, writes everything (the exact
request behind every finding and 5xx, two sample requests and answers per
status code) to ``bench/results/sqlmap-<time>.json``, and exits 1 on any
finding, 5xx, error text of the database or of Python in an answer, line in
the server's error log, or point sqlmap could not test; 2 when sqlmap is missing
or a database could not be set up; 130 when interrupted (Ctrl-C, SIGTERM). A
candidate that sqlmap's own false-positive check then disproves is listed as
"rejected" and does not fail the run. Only loopback addresses are used; every
loop and every subprocess is bounded.

The defaults (``--level 3 --risk 3 --technique BEUST --time-sec 2 --threads 2
--timeout 10 --retries 0 --union-cols 1-10``) keep each database under about
five minutes on a two-core machine (``--level 2 --risk 1``: about a minute).
Risk 3 adds OR-based payloads, which may rewrite every row an UPDATE touches:
harmless here, since each run owns its database.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
HOST = "127.0.0.1"  # the only address this script talks to
PG_PORT = 5432
MYSQL_PORT = 3306
BACKENDS = ("sqlite", "postgresql", "mysql")
LABELS = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mysql": "MariaDB/MySQL"}


@dataclass(frozen=True)
class Point:
    """One sqlmap run: a request and the place(s) sqlmap injects into.

    ``url`` is a path on the server; ``{next}`` is replaced by a real ``next``
    link (ordered by price), ``{next_marked}`` by a link ordered by name with a
    ``*`` inside the cursor's first value (the name). With ``param`` sqlmap
    tests only that query parameter; without it the ``*`` markers in the URL
    or in ``data`` are the injection places.
    """

    name: str
    url: str
    param: str | None = None
    method: str | None = None
    data: str | None = None
    extra: tuple[str, ...] = ()


ORDER = ('{"user_id": 1, "product_id": 2, "quantity": 1*, "total": "5.00*", "status": "paid*"}')
POINTS: tuple[Point, ...] = (
    # filters (the like pattern's wildcards are sent as %2A: a bare * is sqlmap's marker)
    Point("filter, plain value", "/api/products?name=Widget", param="name"),
    Point("filter gt (decimal)", "/api/products?price=gt.1", param="price"),
    Point("filter like", "/api/products?name=like.%2AW%2A", param="name"),
    Point("filter in", "/api/products?id=in.(1,2)", param="id"),
    Point("filter in, inside the list", "/api/products?id=in.(1,2*)"),
    Point("filter not.is (boolean)", "/api/products?in_stock=not.is.false", param="in_stock"),
    Point("filter lt (datetime)", "/api/products?created_at=lt.2100-01-01T00:00:00",
          param="created_at"),
    Point("or group", "/api/products?or=(price.lt.5,name.eq.x)", param="or"),
    Point("or group, inside a value", "/api/products?or=(price.lt.5,name.eq.x*)"),
    # the other list parameters
    Point("order", "/api/products?order=price.desc", param="order"),
    Point("select", "/api/products?select=id,name", param="select"),
    Point("limit", "/api/products?limit=2", param="limit"),
    Point("offset", "/api/products?offset=1", param="offset"),
    Point("count", "/api/products?count=true", param="count"),
    Point("after (cursor as sent)", "{next}", param="after"),
    # sqlmap decodes the cursor, puts its payloads at the * inside the JSON
    # (["Widget*",1]) and encodes it again
    Point("after (inside the base64 cursor)", "{next_marked}", param="after",
          extra=("--base64=after", "--base64-safe")),
    # the path
    Point("table segment", "/api/products*?limit=1"),
    Point("item key", "/api/products/1*"),
    # bodies (orders has no unique column, so repeated inserts are not 409s)
    Point("POST body", "/api/orders", method="POST", data=ORDER),
    Point("POST bulk array", "/api/orders", method="POST",
          data='[{"user_id": 1, "product_id": 2, "quantity": 1, "total": "5.00", "status": "paid"}, '
               '{"user_id": 2*, "product_id": 3, "quantity": 1, "total": "5.00", "status": "paid*"}]'),
    Point("PUT body", "/api/products/1", method="PUT",
          data='{"name": "Widget*", "description": "A small widget*", "price": "9.99*", '
               '"in_stock": true*}'),
)

# sqlmap's own words (lib/controller/checks.py, controller.py). A candidate
# ("appears to be / is '<technique>' injectable") is a finding unless sqlmap
# itself rejects it afterwards: its false-positive check fails and the place
# ends "does not seem to be injectable" (then it is listed as rejected).
CANDIDATE = re.compile(r"parameter '([^']*)' (?:appears to be|is) '.*' injectable")
VULNERABLE = re.compile(r"parameter '([^']*)' is vulnerable")
NOT_INJECTABLE = re.compile(r"parameter '([^']*)' does not seem to be injectable")
REJECTED = re.compile(r"false positive or unexploitable injection point detected")
# Always a finding: a confirmed injection point, a positive heuristic, or a
# DBMS error message recognised in a response ("possible DBMS").
FINDING = re.compile(
    r"identified the following injection point"
    r"|\[INFO\] the back-end DBMS is"
    r"|heuristic \(basic\) test shows that .* might be SQL injectable"
    r"|possible DBMS:")
# Not SQL injection, reported but not failing: the JSON error messages echo
# the rejected value, which sqlmap's XSS/FI heuristics and its ORDER BY column
# count notice.
NOTE = re.compile(r"heuristic \((?:XSS|FI)\) test shows that .*|'ORDER BY' technique appears to be usable")
TESTED = re.compile(r"testing for SQL injection on (.*?)parameter '([^']*)'")
TIMED_OUT = re.compile(r"connection timed out|connection reset|unable to connect", re.I)
# Database or Python error text in a response body: none may ever reach a client.
LEAK = re.compile(r"Traceback \(most recent call last\)|OperationalError|ProgrammingError|"
                  r"InternalError|DataError|IntegrityError|SQLSTATE|syntax error at or near|"
                  r"error in your SQL syntax|unrecognized token|psycopg2\.|pymysql\.err|sqlite3\.")
RESPONSE = re.compile(r"^HTTP response \[#\d+\] \((\d{3})")
STOP = False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def find_sqlmap(given: str | None) -> str | None:
    if given:  # absolute: sqlmap runs in a working folder of its own
        found = shutil.which(given)
        return str(Path(found).resolve()) if found else None
    beside = Path(sys.executable).parent / "sqlmap"  # the venv this script runs in
    return str(beside) if beside.exists() else shutil.which("sqlmap")


# --------------------------------------------------------------------- databases


class Scratch:
    """A database of this run's own: created, handed to Pylight, dropped."""

    def __init__(self, backend: str, workdir: Path) -> None:
        self.backend = backend
        self.name = f"pylight_sqlmap_{secrets.token_hex(4)}"
        self.created = False
        if backend == "sqlite":
            self.url = f"sqlite:///{workdir / (self.name + '.db')}"
        elif backend == "postgresql":
            self.url = f"postgresql://postgres@{HOST}:{PG_PORT}/{self.name}"
        else:
            self.url = f"mysql://root@{HOST}:{MYSQL_PORT}/{self.name}"

    def _admin(self) -> Any:
        if self.backend == "postgresql":
            import psycopg2
            conn = psycopg2.connect(host=HOST, port=PG_PORT, user="postgres", dbname="postgres",
                                    connect_timeout=5)
            conn.autocommit = True
            return conn
        import pymysql
        return pymysql.connect(host=HOST, port=MYSQL_PORT, user="root", password="",
                               connect_timeout=5, autocommit=True)

    def reachable(self) -> str | None:
        """None when the server answers, else why not."""
        if self.backend == "sqlite":
            return None
        try:
            self._admin().close()
        except Exception as exc:  # ImportError, OperationalError, ...
            return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
        return None

    def create(self) -> None:
        if self.backend == "sqlite":
            return
        conn = self._admin()
        try:
            with conn.cursor() as cur:
                if self.backend == "postgresql":
                    cur.execute(f'CREATE DATABASE "{self.name}"')
                else:
                    cur.execute(f"CREATE DATABASE `{self.name}` CHARACTER SET utf8mb4")
            self.created = True
        finally:
            conn.close()

    def drop(self) -> None:
        if not self.created:
            return
        conn = self._admin()
        try:
            with conn.cursor() as cur:
                if self.backend == "postgresql":
                    cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = %s AND pid <> pg_backend_pid()", (self.name,))
                    cur.execute(f'DROP DATABASE IF EXISTS "{self.name}"')
                else:
                    cur.execute(f"DROP DATABASE IF EXISTS `{self.name}`")
            self.created = False
        finally:
            conn.close()


# ------------------------------------------------------------------------ server


class Server:
    """``python -m pylight`` on a free loopback port, logging errors to a file."""

    def __init__(self, scratch: Scratch, workdir: Path) -> None:
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.log_path = workdir / f"{scratch.backend}-server.log"
        conf = workdir / f"{scratch.backend}.ini"
        conf.write_text(f"[server]\nhost = {HOST}\nport = {self.port}\n\n"
                        f"[database]\nurl = {scratch.url}\nseed_demo = true\npool_size = 4\n")
        self.conf = conf
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        # --log-level error: the access log then holds only the 5xx lines, and
        # anything else in the file is an error the server logged.
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pylight", "--conf", str(self.conf), "--log-level", "error"],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited at start-up: "
                                   + self.log_path.read_text(errors="replace")[-1500:])
            try:
                with urllib.request.urlopen(f"{self.base}/api/", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the server did not answer within {timeout:.0f} s")

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(15)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def next_link(self, order: str) -> str:
        """The ``next`` link of a one-row page in this order (a two-column cursor)."""
        with urllib.request.urlopen(f"{self.base}/api/products?order={order}&limit=1",
                                    timeout=10) as answer:
            link = json.load(answer)["next"]
        if not link or "after=" not in link:
            raise RuntimeError(f"no next link with a cursor: {link!r}")
        return link


def mark_cursor(link: str) -> str:
    """The link with sqlmap's ``*`` marker appended to the cursor's first value (a string)."""
    path, _, query = link.partition("?")
    params = urllib.parse.parse_qsl(query, keep_blank_values=True)
    out = []
    for name, value in params:
        if name == "after":
            items = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
            if not items or not isinstance(items[0], str):
                raise RuntimeError(f"the cursor's first value is not a string: {items!r}")
            items[0] += "*"
            raw = json.dumps(items, separators=(",", ":")).encode()
            value = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        out.append(f"{name}={urllib.parse.quote(value, safe='.,()*-_')}")
    return f"{path}?{'&'.join(out)}"


# ------------------------------------------------------------------------ sqlmap


@dataclass
class PointResult:
    point: str
    request: str
    tested: list[str] = field(default_factory=list)
    requests: int = 0
    status: dict[str, int] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # candidates sqlmap itself disproved
    notes: list[str] = field(default_factory=list)
    server_errors: list[dict[str, Any]] = field(default_factory=list)  # 5xx with the request
    leaks: list[dict[str, Any]] = field(default_factory=list)  # error text in a response
    samples: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # 2 per status
    server_log: list[str] = field(default_factory=list)  # lines the server logged meanwhile
    timeouts: int = 0
    problems: list[str] = field(default_factory=list)  # the run itself went wrong
    seconds: float = 0.0
    sqlmap_rc: int | None = None

    @property
    def count_5xx(self) -> int:
        return sum(n for code, n in self.status.items() if code.startswith("5"))

    @property
    def failed(self) -> bool:
        return bool(self.findings or self.count_5xx or self.server_errors or self.leaks
                    or self.server_log or self.problems)


def marker_names(point: Point) -> list[str]:
    """Readable names of the ``*`` markers, in order: the JSON key or URL part before each."""
    text = point.data if point.data is not None else point.url
    names = []
    for match in re.finditer(r"\*", text):
        before = text[:match.start()]
        key = re.findall(r'"([^"]+)"\s*:\s*"?[^"*]*$', before)
        names.append(key[-1] if key else re.split(r"[/?&]", before)[-1] + "*")
    return names


def sqlmap_command(sqlmap: str, url: str, point: Point, args: argparse.Namespace,
                   outdir: Path, traffic: Path) -> list[str]:
    command = [sqlmap, "-u", url, "--batch", "--level", str(args.level), "--risk", str(args.risk),
               f"--technique={args.technique}", "--time-sec", str(args.time_sec),
               "--threads", str(args.threads), "--timeout", str(args.timeout), "--retries", "0",
               # UNION with 1 to 10 columns (the demo tables have 6 and 7). Without
               # a range, sqlmap's ORDER BY probe, misled by 400s that echo the
               # rejected value, sends UNIONs of up to 999 columns on some points.
               "--union-cols", "1-10",
               "--skip-waf", "--disable-coloring", "--flush-session", "--output-dir", str(outdir),
               "-t", str(traffic),
               # a positive result must not stop the other markers of the same run
               "--answers", "keep testing=Y"]
    if args.smart:
        command.append("--smart")
    if point.param:
        command += ["-p", point.param]
    if point.method:
        command += ["--method", point.method]
    if point.data is not None:
        command += ["--data", point.data, "-H", "Content-Type: application/json"]
    command += list(point.extra)
    return command


def parse_traffic(path: Path, result: PointResult) -> None:
    """Count answers by status; keep the exact request of every 5xx and every leak."""
    if not path.exists():
        return
    text = path.read_text(errors="replace")
    for block in re.split(r"\n#{40,}\n", text):
        if "HTTP request [#" not in block:
            continue
        result.requests += 1
        request_part, _, response_part = block.partition("\nHTTP response [#")
        lines = request_part.strip().splitlines()[1:]  # drop "HTTP request [#n]:"
        request_line = lines[0] if lines else ""
        body = request_part.split("\n\n", 1)[1].strip() if "\n\n" in request_part else ""
        status_match = RESPONSE.match("HTTP response [#" + response_part) if response_part else None
        status = status_match.group(1) if status_match else "none"
        result.status[status] = result.status.get(status, 0) + 1
        response_body = response_part.split("\n\n", 1)[1].strip() if "\n\n" in response_part else ""
        examples = result.samples.setdefault(status, [])
        if len(examples) < 2:
            examples.append({"request": request_line, "body": body[:500], "response": response_body[:500]})
        if status.startswith("5") and len(result.server_errors) < 20:
            result.server_errors.append({"status": int(status), "request": request_line,
                                         "body": body[:2000], "response": response_body[:1000]})
        leak = LEAK.search(response_body) if status != "none" else None
        if leak and len(result.leaks) < 20:
            result.leaks.append({"status": status, "request": request_line, "body": body[:2000],
                                 "match": leak.group(0), "response": response_body[:1000]})


def run_point(sqlmap: str, server: Server, point: Point, url_path: str,
              args: argparse.Namespace, workdir: Path, index: int) -> PointResult:
    url = server.base + url_path
    result = PointResult(point=point.name,
                         request=f"{point.method or 'GET'} {url_path}"
                                 + (f" -p {point.param}" if point.param else "")
                                 + (f" {' '.join(point.extra)}" if point.extra else "")
                                 + (f" --data '{point.data}'" if point.data is not None else ""))
    rundir = workdir / f"point-{index:02d}"
    rundir.mkdir()
    traffic = rundir / "traffic.txt"
    command = sqlmap_command(sqlmap, url, point, args, rundir / "session", traffic)
    offset = server.log_size()
    started = time.monotonic()
    env = dict(os.environ, TERM="dumb", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=rundir, env=env, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=args.point_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate(timeout=30)
        result.problems.append(f"sqlmap still running after {args.point_timeout:.0f} s: killed")
    except BaseException:
        proc.kill()
        proc.wait(30)
        raise
    result.seconds = time.monotonic() - started
    result.sqlmap_rc = proc.returncode
    text = output.decode(errors="replace")
    (rundir / "sqlmap.out").write_text(text)

    names = marker_names(point)
    for place, name in TESTED.findall(text):
        number = re.fullmatch(r"(?:JSON )?#(\d+)\*", name)
        if number and int(number.group(1)) <= len(names):
            name = f"{name} ({names[int(number.group(1)) - 1]})"
        label = f"{place}{name}".strip()
        if label not in result.tested:
            result.tested.append(label)
    candidates: dict[str, list[str]] = {}
    verdicts: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if match := CANDIDATE.search(line):
            candidates.setdefault(match.group(1), []).append(line)
        elif match := VULNERABLE.search(line):
            verdicts[match.group(1)] = "vulnerable"
            result.findings.append(line)
        elif match := NOT_INJECTABLE.search(line):
            verdicts.setdefault(match.group(1), "not injectable")
        elif FINDING.search(line):
            result.findings.append(line)
        elif NOTE.search(line) or REJECTED.search(line):
            result.notes.append(line)
    for place, lines in candidates.items():
        if verdicts.get(place) == "not injectable":
            result.rejected += [f"{line} -> rejected by sqlmap's false-positive check" for line in lines]
        else:
            result.findings += lines
    result.timeouts = len(TIMED_OUT.findall(text))
    expected = 1 if point.param else len(names)
    if len(result.tested) < expected:
        result.problems.append(f"sqlmap tested {len(result.tested)} of {expected} place(s)")
    if proc.returncode not in (0, None) and not result.findings:
        tail = " | ".join(text.strip().splitlines()[-3:])
        result.problems.append(f"sqlmap exited with {proc.returncode}: {tail}")
    if result.timeouts:
        result.problems.append(f"{result.timeouts} connection time-out/reset message(s) from sqlmap")

    parse_traffic(traffic, result)
    if result.requests == 0:
        result.problems.append("no request in sqlmap's traffic log")
    result.server_log = [line for line in server.log_since(offset).splitlines() if line.strip()][:50]
    if not server.alive():
        result.problems.append("the server is no longer running")
    if not args.keep:
        traffic.unlink(missing_ok=True)  # can be tens of MB; the findings are kept in the JSON
    return result


# ------------------------------------------------------------------------ report


def fmt_status(status: dict[str, int]) -> str:
    return ", ".join(f"{code}: {n}" for code, n in sorted(status.items())) or "-"


def print_database(label: str, results: list[PointResult]) -> None:
    print(f"\n### {label}\n")
    print("| injection point | places tested | requests | answers | findings | rejected | 5xx | s |")
    print("|---|---|--:|---|--:|--:|--:|--:|")
    for r in results:
        flag = " **!**" if r.failed else ""
        print(f"| {r.point}{flag} | {', '.join(r.tested) or '-'} | {r.requests} | "
              f"{fmt_status(r.status)} | {len(r.findings)} | {len(r.rejected)} | {r.count_5xx} | "
              f"{r.seconds:.0f} |")
    for r in results:
        for what, items in (("finding", r.findings), ("problem", r.problems),
                            ("server log", r.server_log), ("rejected candidate", r.rejected),
                            ("note", r.notes[:3])):
            for item in items:
                print(f"- {r.point}: {what}: {item}")
        for err in r.server_errors[:5]:
            print(f"- {r.point}: {err['status']} for {err['request']}"
                  + (f" body {err['body']}" if err["body"] else ""))
        if r.count_5xx > 5:
            print(f"- {r.point}: ... {r.count_5xx - 5} more 5xx (the JSON report keeps 20)")
        for leak in r.leaks:
            print(f"- {r.point}: error text {leak['match']!r} in a {leak['status']} answer to "
                  f"{leak['request']}" + (f" body {leak['body']}" if leak["body"] else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated subset of sqlite,postgresql,mysql")
    parser.add_argument("--require-all", action="store_true",
                        help="an unreachable PostgreSQL or MariaDB is a failure, not a skip")
    parser.add_argument("--sqlmap", help="the sqlmap executable (default: beside this Python, then PATH)")
    parser.add_argument("--level", type=int, default=3, choices=range(1, 6))
    parser.add_argument("--risk", type=int, default=3, choices=range(1, 4))
    parser.add_argument("--technique", default="BEUST")
    parser.add_argument("--time-sec", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=10, help="sqlmap's per-request timeout, s")
    parser.add_argument("--smart", action="store_true",
                        help="sqlmap --smart: full tests only where a heuristic is positive")
    parser.add_argument("--point-timeout", type=float, default=240,
                        help="wall-clock limit of one sqlmap run, s")
    parser.add_argument("--only", help="run only the points whose name contains this text")
    parser.add_argument("--keep", action="store_true",
                        help="keep the working folder (sqlmap output and traffic, server logs)")
    args = parser.parse_args()

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    sqlmap = find_sqlmap(args.sqlmap)
    if sqlmap is None:
        print("sqlmap_scan: sqlmap not found; install it with `.venv/bin/pip install sqlmap` "
              "(or pass --sqlmap PATH)", file=sys.stderr)
        return 2
    version = subprocess.run([sqlmap, "--version"], capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL).stdout.strip()
    points = [p for p in POINTS if not args.only or args.only in p.name]

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    report: dict[str, Any] = {
        "run": f"sqlmap-{stamp}", "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cores": os.cpu_count(), "sqlmap": version,
        "settings": {k: getattr(args, k) for k in ("level", "risk", "technique", "time_sec",
                                                     "threads", "timeout", "smart", "point_timeout")},
        "databases": {}}
    print(f"sqlmap {version}; level {args.level}, risk {args.risk}, technique {args.technique}, "
          f"{len(points)} injection points per database; {os.cpu_count()} cores")
    summary: list[tuple[str, str, int, int, int, int, int, int, float]] = []
    exit_code = 0
    workdir = Path(tempfile.mkdtemp(prefix="pylight-sqlmap-"))
    try:
        for backend in backends:
            label = LABELS[backend]
            scratch = Scratch(backend, workdir)
            why = scratch.reachable()
            if why:
                print(f"\n{label}: skipped, not reachable on {HOST} ({why})")
                report["databases"][backend] = {"skipped": why}
                summary.append((label, "skipped", 0, 0, 0, 0, 0, 0, 0.0))
                if args.require_all:
                    exit_code = max(exit_code, 2)
                continue
            started = time.monotonic()
            results: list[PointResult] = []
            pointdir = workdir / backend
            pointdir.mkdir()
            server = Server(scratch, workdir)
            try:
                scratch.create()
                server.start()
                link = server.next_link("price.desc")  # a decimal and the key
                # a text value and the key: text is what every column type accepts
                # in a cursor, so the payloads reach the query on all three databases
                marked = mark_cursor(server.next_link("name.desc"))
                for index, point in enumerate(points):
                    if not server.alive():
                        raise RuntimeError("the server died; the remaining points were not run")
                    path = point.url.replace("{next_marked}", marked).replace("{next}", link)
                    print(f"  {label}: {point.name} ...", end="", flush=True)
                    result = run_point(sqlmap, server, point, path, args, pointdir, index)
                    print(f" {result.requests} requests, {result.seconds:.0f} s"
                          + (" — CHECK" if result.failed else ""))
                    results.append(result)
            except Exception as exc:
                print(f"\n{label}: run aborted: {exc}")
                report["databases"][backend] = {"aborted": str(exc)}
                exit_code = max(exit_code, 2)
            finally:
                server_rc = server.stop()
                try:
                    scratch.drop()
                except Exception as exc:  # keep going: report it, try the other databases
                    print(f"{label}: could not drop {scratch.name}: {exc}")
                    exit_code = max(exit_code, 2)
            seconds = time.monotonic() - started
            print_database(label, results)
            failed = [r for r in results if r.failed]
            if failed:
                exit_code = max(exit_code, 1)
            db_report = report["databases"].setdefault(backend, {})
            db_report.update({"seconds": round(seconds, 1), "server_exit": server_rc,
                              "points": [r.__dict__ | {"count_5xx": r.count_5xx} for r in results]})
            summary.append((label, "done" if len(results) == len(points) else "incomplete",
                            len(results), sum(len(r.tested) for r in results),
                            sum(r.requests for r in results), sum(len(r.findings) for r in results),
                            sum(len(r.rejected) for r in results), sum(r.count_5xx for r in results),
                            seconds))
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, scratch databases dropped")
        exit_code = 130
    finally:
        if args.keep:
            print(f"working folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print("\n## Summary\n")
    print("| database | run | injection points | places tested | requests | findings "
          "| rejected candidates | 5xx | runtime |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for label, state, npoints, places, requests, findings, rejected, errors, seconds in summary:
        print(f"| {label} | {state} | {npoints} | {places} | {requests} | {findings} | {rejected} | "
              f"{errors} | {seconds / 60:.1f} min |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"sqlmap-{stamp}.json"
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"\nwrote {out.relative_to(ROOT)}; exit status {exit_code}")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
