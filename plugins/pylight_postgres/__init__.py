"""The PostgreSQL backend plugin: `postgresql://user:password@host:5432/dbname`."""

from __future__ import annotations

import peewee
import psycopg2
from playhouse.pool import PooledPostgresqlDatabase

from pylight import hookimpl
from pylight.backend import Backend
from pylight.errors import ApiError


class PostgresBackend(Backend):
    name = "PostgreSQL"
    schemes = ("postgresql", "postgres")
    supports_returning = True

    def open(self, url: str, pool_size: int, connect_timeout: float) -> peewee.Database:
        kwargs = self.connect_kwargs(url)
        database = kwargs.pop("database")
        kwargs.setdefault("connect_timeout", max(int(connect_timeout), 1))
        kwargs.setdefault("application_name", "pylight")
        return PooledPostgresqlDatabase(
            database, max_connections=pool_size, stale_timeout=300, **kwargs
        )

    def is_disconnect(self, exc: BaseException) -> bool:
        err = self.driver_error(exc)
        if isinstance(err, psycopg2.InterfaceError):
            return True
        if isinstance(err, psycopg2.OperationalError):
            code = getattr(err, "pgcode", None)
            # No code: the socket broke; 57P*: the server is shutting the
            # backend down; 08*: connection exceptions.
            return code is None or code.startswith(("57P", "08"))
        return False

    def classify_error(self, exc: BaseException) -> ApiError | None:
        err = self.driver_error(exc)
        code = getattr(err, "pgcode", None) or ""
        diag = getattr(err, "diag", None)
        detail = getattr(diag, "message_detail", None) or ""
        if code == "23505":
            return self.unique_conflict(detail)
        if code == "23503":
            return self.foreign_key_conflict(detail)
        if code == "23502":
            return self.not_null(getattr(diag, "column_name", None))
        if code == "23514" or code.startswith("22"):
            return self.bad_value(getattr(diag, "message_primary", None) or str(err))
        if self.is_disconnect(exc):
            return self.down()
        return None


@hookimpl
def pylight_database_backends() -> list[Backend]:
    return [PostgresBackend()]
