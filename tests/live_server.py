"""`python -m pylight` in its own process: the one way tests run the command line.

``LiveServer`` is a serving process, for clients outside the test's event loop
(websocat, a browser), kill/restart scenarios and start-up as an operator does it;
``run_cli`` runs a command that exits (a bad start, install-triggers) and returns
its output. Both start the process through ``spawn``. In-process servers come
from tests/conftest.py (``make_server``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
READY = "Pylight serving"  # logged once the server listens (app.log_ready)
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the caller's PYLIGHT_* settings; tests.plugins importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYLIGHT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def spawn(args: Sequence[str], cwd: Path | str, env: dict[str, str] | None = None,
          **popen: Any) -> subprocess.Popen[Any]:
    """Start `python -m pylight ARGS` in ``cwd`` (environment: ``clean_env()`` unless given)."""
    return subprocess.Popen([sys.executable, "-m", "pylight", *args], cwd=cwd,
                            env=clean_env() if env is None else env, **popen)


def run_cli(args: Sequence[str], cwd: Path | str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m pylight ARGS` until it exits; its stdout and stderr as text."""
    with spawn(args, cwd, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
               text=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """A bad start: non-zero exit, no traceback, exactly one `pylight: error:` line and
    otherwise only ordinary log lines; returns the error line."""
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("pylight: error: ")]
    assert len(errors) == 1, result.stderr
    # Nothing else but ordinary log lines (e.g. "created and seeded the demo tables").
    assert all(LOG_LINE.match(line) or line in errors for line in lines), result.stderr
    return errors[0]


class LiveServer:
    """`python -m pylight --conf CONF --port PORT` (or ``args``: any command line that
    makes it listen on ``port``) in ``workdir``, its output in a log file of its own.

    ``start()`` returns once the server logs that it serves (a server killed and started
    again appends to the same log); as a context manager it is started on entry and
    killed on exit if still running.
    """

    def __init__(self, conf: str | None, port: int, workdir: Path, *,
                 args: Sequence[str] | None = None, env: dict[str, str] | None = None) -> None:
        if args is None:
            if conf is None:
                raise TypeError("give conf or args")
            args = ["--conf", conf, "--port", str(port)]
        self.args = list(args)
        self.port = port
        self.workdir = Path(workdir)
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = self.workdir / f"server-{port}-{uuid.uuid4().hex[:6]}.log"

    @classmethod
    def cli(cls, args: Sequence[str], workdir: Path, port: int,
            env: dict[str, str] | None = None) -> LiveServer:
        """`python -m pylight ARGS` in ``workdir``, expected to listen on ``port``."""
        return cls(None, port, workdir, args=args, env=env)

    def start(self, timeout: float = 20) -> LiveServer:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:  # the child writes to its own copy
            self.process = spawn(self.args, self.workdir, self.env, stdout=log,
                                 stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            exited = self.process.poll() is not None
            if READY.encode() in self.log_path.read_bytes()[offset:]:
                return self
            if exited:
                raise RuntimeError(f"pylight exited with {self.process.returncode} before "
                                   f"serving:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"pylight did not serve within {timeout} s:\n"
                                   f"{self.log()[-3000:]}")
            time.sleep(0.05)

    def __enter__(self) -> LiveServer:
        return self if self.process is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        """Send ``sig`` (SIGTERM) and wait for the exit (killed after ``timeout``); the exit code."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode if self.process else None

    def log(self) -> str:
        """Everything the process wrote (stdout and stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def lines(self) -> list[str]:
        return self.log().splitlines()

    def get(self, path: str) -> tuple[int, Any]:
        """GET ``path``: the status and the JSON body."""
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        """POST ``body`` as JSON: the status and the JSON body."""
        request = urllib.request.Request(self.base_url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())


def rest(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """A blocking JSON request to ``base + path``: (status, decoded body or None)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
