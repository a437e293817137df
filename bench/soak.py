"""Soak: a bounded run of Pylight under a steady load, watching for leaks and lost changes.

    /work/venv/bin/python bench/soak.py                 # 5 minutes (the default)
    /work/venv/bin/python bench/soak.py --minutes 1 --rate 20

What it does (only 127.0.0.1; it stops by itself and cleans up after itself):

1. starts ``python -m pylight`` on a fresh SQLite demo database in a temporary
   folder (short heartbeats, so pings and pongs are part of the load, and a
   replay ring that fills within the warm-up, so a filling ring is not
   mistaken for a leak);
2. subscribes ``--subscribers`` (1,000) WebSocket clients to /ws/products:
   one asyncio process speaking the protocol on bare asyncio.Protocol,
   answering the server's pings, recording the ``seq`` of every change;
3. writes ``--rate`` (50) times a second over one keep-alive connection, in
   cycles of POST -> PATCH -> DELETE (the table stays small, so the database
   does not grow either);
4. every ``--sample`` (5) seconds reads the server's RSS (/proc/<pid>/status)
   and open file descriptors (/proc/<pid>/fd);
5. at the end waits for every subscriber to have every change, then checks:
   each subscriber's seqs are exactly hello.seq+1 .. hello.seq+N (N = the
   acknowledged writes: contiguous, in order, no duplicates, none missing);
   after the warm-up (``--warmup``, default 20% of the run, at least 30 s)
   the least-squares slope of RSS (MB/min) and the spread of open fds are small.

Prints a summary, writes bench/results/soak-<time>.json and exits 1 when a
check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PY = sys.executable
SEQ = re.compile(rb'"seq":\s*(\d+)')
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
# Pass limits: after the warm-up RSS may drift by less than this (MB per minute)
# and the open file descriptors by at most this many.
MAX_RSS_SLOPE_MB_PER_MIN = 1.0
MAX_FD_SPREAD = 4


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, workdir: Path, subscribers: int, replay: int) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.conf = workdir / "pylight.ini"
        self.conf.write_text(
            "[database]\nurl = sqlite:///" + str(workdir / "soak.db") + "\nseed_demo = true\n"
            "pool_size = 4\n\n[realtime]\nheartbeat_interval = 5\nheartbeat_timeout = 5\n"
            f"replay_buffer = {replay}\nmax_connections_per_client = {subscribers + 100}\n"
            f"max_connections = {subscribers + 100}\n")
        self.logfile = workdir / "pylight.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = open(self.logfile, "ab")  # noqa: SIM115 - closed right after Popen
        # The server inherits our (raised) open-file limit.
        self.proc = subprocess.Popen(
            [PY, "-m", "pylight", "--conf", str(self.conf), "--port", str(self.port),
             "--log-level", "warning"], cwd=self.workdir, stdout=out, stderr=out,
            stdin=subprocess.DEVNULL)
        out.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pylight exited: {self.logfile.read_text()[-2000:]}")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("pylight did not listen within 60 s")

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def fds(self) -> int:
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


class Subscriber(asyncio.Protocol):
    """One feed client: handshake, then record each change's seq; pings answered."""

    def __init__(self, request: bytes, ready: asyncio.Future[None]) -> None:
        self.request = request
        self.ready: asyncio.Future[None] | None = ready
        self.transport: Any = None
        self.buf = b""
        self.upgraded = False
        self.hello_seq: int | None = None
        self.seqs: list[int] = []
        self.closed_with: int | None = None
        self.lost = False
        self.closing = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                if self.ready is not None and not self.ready.done():
                    self.ready.set_exception(RuntimeError(data[:end].decode("latin-1")))
                self.transport.close()
                return
            self.upgraded = True
            data = data[end + 4:]
        n = len(data)
        i = 0
        while n - i >= 2:
            length = data[i + 1] & 0x7F
            head = 2
            if length == 126:
                if n - i < 4:
                    break
                length = (data[i + 2] << 8) | data[i + 3]
                head = 4
            elif length == 127:
                if n - i < 10:
                    break
                length = int.from_bytes(data[i + 2:i + 10], "big")
                head = 10
            end = i + head + length
            if end > n:
                break
            opcode = data[i] & 0x0F
            if opcode == 1:
                match = SEQ.search(data, i + head, end)
                seq = int(match.group(1)) if match else -1
                if self.ready is not None:  # the hello
                    self.hello_seq = seq
                    if not self.ready.done():
                        self.ready.set_result(None)
                    self.ready = None
                else:
                    self.seqs.append(seq)
            elif opcode == 9:  # ping: pong with the same payload, masked with a zero key
                self.transport.write(bytes((0x8A, 0x80 | length)) + b"\0\0\0\0"
                                     + data[i + head:end])
            elif opcode == 8:
                self.closed_with = (int.from_bytes(data[i + head:i + head + 2], "big")
                                    if length >= 2 else 1005)
                self.transport.close()
            i = end
        if i < n:
            self.buf = data[i:]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before hello: {exc}"))
        if not self.closing:
            self.lost = True


async def subscribe(port: int, count: int) -> list[Subscriber]:
    loop = asyncio.get_running_loop()
    request = (f"GET /ws/products HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode()
    gate = asyncio.Semaphore(100)
    clients: list[Subscriber] = []

    async def one() -> None:
        async with gate:
            ready: asyncio.Future[None] = loop.create_future()
            _, proto = await loop.create_connection(lambda: Subscriber(request, ready), HOST, port)
            await asyncio.wait_for(ready, 30)
            clients.append(proto)

    await asyncio.gather(*(one() for _ in range(count)))
    return clients


class Writer:
    """POST -> PATCH -> DELETE cycles over one keep-alive connection."""

    def __init__(self, port: int, run: str) -> None:
        self.port = port
        self.run = run
        self.acked = 0
        self.failed: dict[int, int] = {}
        self.k = 0
        self.pk: int | None = None
        self.phase = 0
        self.latencies: list[float] = []

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)

    async def request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        response = await self.reader.readuntil(b"\r\n\r\n")
        match = re.search(rb"(?i)content-length:\s*(\d+)", response)
        payload = await self.reader.readexactly(int(match.group(1))) if match else b""
        return int(response[9:12]), payload

    async def step(self) -> None:
        started = time.perf_counter()
        if self.pk is None:
            self.k += 1
            body = json.dumps({"name": f"Soak {self.k}", "description": "soak", "price": "9.99",
                               "sku": f"soak-{self.run}-{self.k}", "in_stock": True}).encode()
            status, payload = await self.request("POST", "/api/products", body)
            if status == 201:
                self.pk = json.loads(payload)["id"]
                self.phase = 1
        elif self.phase == 1:
            status, _ = await self.request("PATCH", f"/api/products/{self.pk}",
                                           b'{"price": "10.50"}')
            self.phase = 2
        else:
            status, _ = await self.request("DELETE", f"/api/products/{self.pk}", None)
            self.pk = None
        self.latencies.append(time.perf_counter() - started)
        if status in (200, 201, 204):
            self.acked += 1
        else:
            self.failed[status] = self.failed.get(status, 0) + 1


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points (y per unit of x)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


def check_order(clients: list[Subscriber], acked: int) -> dict[str, int]:
    bad = {"gaps_or_missing": 0, "duplicates": 0, "out_of_order": 0, "lost_connections": 0,
           "closed_by_server": 0}
    for client in clients:
        start = client.hello_seq or 0
        seqs = client.seqs
        if seqs != list(range(start + 1, start + 1 + acked)):
            if len(set(seqs)) != len(seqs):
                bad["duplicates"] += 1
            if any(b <= a for a, b in zip(seqs, seqs[1:], strict=False)):
                bad["out_of_order"] += 1
            if set(range(start + 1, start + 1 + acked)) - set(seqs):
                bad["gaps_or_missing"] += 1
        if client.lost:
            bad["lost_connections"] += 1
        if client.closed_with is not None:
            bad["closed_by_server"] += 1
    return bad


async def soak(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    run = f"{os.getpid()}-{int(time.time())}"
    log(f"pylight pid {server.proc.pid if server.proc else '?'} on port {server.port}; "
        f"subscribing {args.subscribers} clients")
    clients = await subscribe(server.port, args.subscribers)
    baseline = {"rss_mb": server.rss_mb(), "fds": server.fds()}
    log(f"subscribed: RSS {baseline['rss_mb']:.1f} MB, {baseline['fds']} fds; "
        f"writing {args.rate}/s for {args.minutes} min")
    writer = Writer(server.port, run)
    await writer.open()
    duration = args.minutes * 60
    samples: list[dict[str, float]] = []
    started = time.monotonic()
    next_sample = started
    interval = 1.0 / args.rate
    due = started
    while True:
        now = time.monotonic()
        if now >= next_sample:
            samples.append({"t": round(now - started, 1), "rss_mb": round(server.rss_mb(), 2),
                            "fds": server.fds(), "writes": writer.acked})
            if len(samples) % 6 == 1:
                s = samples[-1]
                log(f"t={s['t']:.0f}s RSS {s['rss_mb']:.1f} MB, {s['fds']} fds, "
                    f"{writer.acked} writes acknowledged")
            next_sample += args.sample
        if now - started >= duration:
            break
        await writer.step()
        due += interval
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -1.0:
            due = time.monotonic()  # fell behind by more than a second: do not burst
    elapsed = time.monotonic() - started
    # Every subscriber must get every acknowledged change.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(len(c.seqs) >= writer.acked or c.lost or c.closed_with for c in clients):
            break
        await asyncio.sleep(0.1)
    samples.append({"t": round(time.monotonic() - started, 1),
                    "rss_mb": round(server.rss_mb(), 2), "fds": server.fds(),
                    "writes": writer.acked})
    order = check_order(clients, writer.acked)
    warmup = args.warmup if args.warmup is not None else max(30.0, 0.2 * duration)
    steady = [s for s in samples if s["t"] >= warmup]
    rss_slope = slope([(s["t"] / 60, s["rss_mb"]) for s in steady])
    fd_values = [s["fds"] for s in steady] or [0]
    rss_values = [s["rss_mb"] for s in steady] or [0.0]
    lat = sorted(writer.latencies)
    result = {
        "subscribers": len(clients), "rate": args.rate, "minutes": args.minutes,
        "elapsed_s": round(elapsed, 1), "warmup_s": warmup,
        "writes_acknowledged": writer.acked, "writes_failed": writer.failed,
        "writes_per_s": round(writer.acked / elapsed, 1),
        "deliveries": sum(len(c.seqs) for c in clients),
        "write_p50_ms": round(1000 * lat[len(lat) // 2], 2) if lat else None,
        "write_p99_ms": round(1000 * lat[int(len(lat) * 0.99)], 2) if lat else None,
        "baseline": baseline,
        "rss_after_warmup_mb": {"first": rss_values[0], "last": rss_values[-1],
                                "min": min(rss_values), "max": max(rss_values)},
        "rss_slope_mb_per_min": round(rss_slope, 3),
        "fds_after_warmup": {"min": min(fd_values), "max": max(fd_values)},
        "order": order, "samples": samples,
    }
    result["ok"] = (not any(order.values()) and not writer.failed
                    and abs(rss_slope) <= MAX_RSS_SLOPE_MB_PER_MIN
                    and max(fd_values) - min(fd_values) <= MAX_FD_SPREAD)
    for client in clients:
        client.closing = True
        if client.transport is not None:
            client.transport.abort()
    writer.writer.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the write load")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0, help="writes per second")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds excluded from the growth check (default: 20%%, >= 30 s)")
    parser.add_argument("--replay-buffer", type=int, default=1000,
                        help="the server's replay ring; it should fill within the warm-up")
    args = parser.parse_args()
    raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="pylight-soak-"))
    server = Server(workdir, args.subscribers, args.replay_buffer)
    try:
        server.start()
        result = asyncio.run(soak(args, server))
    finally:
        code = server.stop()
        log(f"pylight exited with {code}")
        if server.logfile.exists():
            errors = [line for line in server.logfile.read_text(errors="replace").splitlines()
                      if "ERROR" in line or "Traceback" in line]
            if errors:
                log(f"{len(errors)} error lines in the server log, e.g. {errors[0][:200]}")
        shutil.rmtree(workdir, ignore_errors=True)
    result["server_exit"] = code
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=1))
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=1))
    log(f"{'OK' if result['ok'] else 'FAILED'}; written to {out.relative_to(ROOT)}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
