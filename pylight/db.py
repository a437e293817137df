"""Runs blocking peewee work off the event loop: one executor, pooled connections, mapped errors.

Work runs in autocommit on the worker thread's pooled connection; a dead
connection is retried once, unless COMMIT was already sent. Transactions and
what happens after a commit are the business of :mod:`pylight.writes`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import peewee
from tornado.ioloop import IOLoop

from pylight.backend import Backend, redact_url
from pylight.errors import ApiError, StartupError, unavailable

log = logging.getLogger("pylight")
T = TypeVar("T")


class Attempt:
    """One try of a piece of work on a pooled connection.

    Work that commits sets ``committing`` just before it sends COMMIT: from
    then on a lost connection is not retried, as the commit may have succeeded.
    """

    __slots__ = ("committing",)

    def __init__(self) -> None:
        self.committing = False


class Database:
    """The pooled peewee database and the worker threads that use it."""

    def __init__(self, db: peewee.Database, backend: Backend, url: str, pool_size: int) -> None:
        self.db = db
        self.backend = backend
        self.url = url
        self.executor = ThreadPoolExecutor(pool_size, thread_name_prefix="pylight-db")

    # -- start-up ------------------------------------------------------------
    def check_connection(self) -> None:
        """Open one connection now, so an unreachable database is a start-up error."""
        try:
            with self.db.connection_context():
                self.db.execute_sql("SELECT 1")
        except Exception as exc:
            reason = str(self.backend.driver_error(exc)).strip().splitlines()
            raise StartupError(
                f"cannot connect to the {self.backend.describe(self.db)} "
                f"({redact_url(self.url)}): {reason[0] if reason else type(exc).__name__}; "
                "check that the server is running and the URL is right"
            ) from None

    # -- running work ----------------------------------------------------------
    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on a pooled connection in a worker thread."""
        loop = IOLoop.current()
        return await loop.run_in_executor(self.executor, self._run, fn, args, False)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(attempt, *args)`` like :meth:`read`; ``fn`` sets ``attempt.committing``
        before it sends COMMIT, after which a lost connection is not retried."""
        loop = IOLoop.current()
        return await loop.run_in_executor(self.executor, self._run, fn, args, True)

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], with_attempt: bool) -> Any:
        for tries in (1, 2):
            attempt = Attempt()
            try:
                return self._on_connection(fn, (attempt, *args) if with_attempt else args)
            except ApiError:
                raise
            except Exception as exc:
                # A dead pooled connection fails the first statement; one retry
                # on a fresh connection hides a database restart from clients.
                # Never retry once COMMIT was sent: it may have succeeded.
                if tries == 1 and not attempt.committing and self.backend.is_disconnect(exc):
                    log.warning("database connection lost (%s); retrying once",
                                str(self.backend.driver_error(exc)).strip()[:200])
                    continue
                mapped = self.backend.map_error(exc)
                if mapped is not None:
                    raise mapped from None
                if self.backend.is_disconnect(exc) or isinstance(exc, peewee.InterfaceError):
                    raise self.backend.down() from None
                raise
        raise AssertionError("unreachable")

    def _on_connection(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """Run on this worker's pooled connection; one that died is discarded.

        Not ``connection_context()``: ``manual_close()`` resets the thread's
        connection state, after which that context's exit fails with an
        IndexError that hides the disconnect (a 500 instead of a retry).
        """
        db = self.db
        try:
            db.connect(reuse_if_open=True)
        except Exception as exc:
            # No connection to be had: refused, too many connections, or the
            # login itself refused (a locked or revoked account). Whatever the
            # driver's code, clients get 503 and the server stays up; it
            # reconnects by itself once the database lets it in again.
            log.warning("cannot open a database connection: %s",
                        self.backend.error_text(exc, 200))
            raise self.backend.down() from None
        try:
            return fn(*args)
        except Exception as exc:
            if self.backend.is_disconnect(exc):
                # Drop this connection and the idle ones: after a server
                # restart they are all dead.
                try:
                    db.manual_close()
                    db.close_idle()
                except Exception:
                    log.debug("discarding a dead connection failed", exc_info=True)
            raise
        # The connection stays with this worker thread (it is the pool's, checked
        # out once): checking it in and out around every call costs as much as
        # a small query. A dead one is discarded above and replaced next call.

    # -- operations (readiness and metrics) ---------------------------------------
    async def ping(self, timeout: float) -> None:
        """Run ``SELECT 1`` through the executor; ApiError 503 if it fails or takes over ``timeout``."""
        try:
            await asyncio.wait_for(self.read(self._select_one), timeout)
        except asyncio.TimeoutError:
            raise unavailable(f"the database did not answer within {timeout:g} s; "
                              "retry shortly") from None

    def _select_one(self) -> Any:
        return self.db.execute_sql("SELECT 1").fetchone()

    def stats(self) -> dict[str, int]:
        """Pool and executor figures, read at scrape time (nothing is counted per query)."""
        db, executor = self.db, self.executor
        in_use = len(getattr(db, "_in_use", ()))
        idle = len(getattr(db, "_connections", ()))
        threads = len(getattr(executor, "_threads", ()))
        idle_threads = getattr(getattr(executor, "_idle_semaphore", None), "_value", 0)
        queue = getattr(executor, "_work_queue", None)
        return {
            "connections_in_use": in_use,
            "connections_idle": idle,
            "connections_max": int(getattr(db, "_max_connections", 0) or 0),
            "executor_threads": threads,
            "executor_busy": max(threads - idle_threads, 0),
            "executor_queue": queue.qsize() if queue is not None else 0,
        }

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        try:
            self.db.close_all()
        except Exception:
            log.debug("closing the pool failed", exc_info=True)
