"""Command line: `pylight DATABASE` or `pylight --conf FILE`; start-up errors become one line.

A start-up error exits with status 1; a command line that names nothing usable
(no such SQLite file, two databases) with status 2, as argparse's own errors do.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from pylight import __version__, announce
from pylight.config import Config, load_config, reference
from pylight.errors import StartupError

log = logging.getLogger("pylight")

COMMANDS = ("serve", "install-triggers", "remove-triggers")
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


class UsageError(Exception):
    """The command line names nothing Pylight can use; one line and exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pylight",
        usage="pylight [serve | install-triggers | remove-triggers] [DATABASE] [options]",
        description="Serve a live REST and WebSocket API for an existing database: "
                    "pylight shop.db, pylight postgresql://localhost/shop, "
                    "pylight mysql://root@127.0.0.1/shop.",
    )
    parser.add_argument("words", nargs="*", metavar="COMMAND DATABASE",
                        help="COMMAND: serve (the default); install-triggers / remove-triggers: "
                             "add or drop the change-capture triggers and change log "
                             "([realtime] capture = database), then exit. DATABASE: a database "
                             "URL or an existing SQLite file, served with the default settings "
                             "(overrides [database] url of --conf)")
    parser.add_argument("--conf", metavar="FILE", help="the ini file (e.g. etc/pylight.ini)")
    parser.add_argument("--host", help="address to listen on (overrides [server] host)")
    parser.add_argument("--port", help="port to listen on (overrides [server] port)")
    parser.add_argument("--database-url", help="database URL (overrides [database] url)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--help-config", action="store_true",
                        help="print every setting with its default and exit")
    parser.add_argument("--version", action="version", version=f"pylight {__version__}")
    return parser


def command_and_database(words: list[str]) -> tuple[str, str | None]:
    """The command (``serve`` unless named) and the DATABASE argument, if any."""
    command = "serve"
    if words and words[0] in COMMANDS:
        command, words = words[0], words[1:]
    if len(words) > 1:
        if len(words) == 2 and words[0].replace("-", "").isalpha():  # e.g. "serv shop.db"
            raise UsageError(f"unknown command {words[0]!r} (commands: {', '.join(COMMANDS)})")
        raise UsageError(f"one database at a time, got {len(words)}: {' '.join(words)}")
    return command, words[0] if words else None


def database_url(database: str) -> str:
    """The URL of the DATABASE argument: a URL as it is, a file as ``sqlite:////its/path``.

    A file must exist and be a SQLite database: a mistyped name would otherwise
    become a new, empty database, and a configuration file given without
    ``--conf`` would be overwritten as one.
    """
    if "://" in database:
        return database
    if not os.path.exists(database):
        raise UsageError(
            f"{database}: no such file; give an existing SQLite database file, or a URL "
            "(postgresql://host/db, mysql://user@host/db, sqlite:///new.db to create one)")
    if os.path.isdir(database):
        raise UsageError(f"{database} is a directory; give a SQLite database file or a URL")
    try:
        with open(database, "rb") as fh:
            head = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise UsageError(f"{database} cannot be read: {exc.strerror or exc}") from None
    if head and head != SQLITE_HEADER:  # an empty file is an empty SQLite database
        hint = f"; to start from a configuration file, pass --conf {database}" if (
            database.endswith((".ini", ".conf", ".cfg"))) else ""
        raise UsageError(f"{database} is not a SQLite database file{hint}")
    return "sqlite:///" + os.path.abspath(database)


def config_from_args(args: argparse.Namespace, database: str | None = None) -> Config:
    """The configuration: the file (if any), the environment, then the command line."""
    overrides = {}
    if args.host is not None:
        overrides[("server", "host")] = args.host
    if args.port is not None:
        overrides[("server", "port")] = args.port
    if database is not None and args.database_url is not None:
        raise UsageError("give the database either as an argument or with --database-url, "
                         "not both")
    if database is not None:
        overrides[("database", "url")] = database_url(database)
    if args.database_url is not None:
        overrides[("database", "url")] = args.database_url
    return load_config(args.conf, overrides)


async def serve(config: Config) -> None:
    from pylight.app import Pylight
    from pylight.plugins import make_plugin_manager

    pm = make_plugin_manager(config.plugins.load)
    # The command line serves the demo with its password hashes hidden (see app.py).
    app = Pylight(config, pm, demo_settings=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, app.open)
    await app.start()
    port = config.server.port
    if app.server is not None and port == 0:
        port = next(iter(app.server._sockets.values())).getsockname()[1]
    announce.ready(app, port)

    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("shutting down")
    await app.stop()


def manage_triggers(config: Config, command: str) -> None:
    """Install or remove the change-capture triggers; prints one line per table."""
    from pylight import capture
    from pylight.backend import choose_backend
    from pylight.db import Database
    from pylight.plugins import make_plugin_manager
    from pylight.schema import reflect

    pm = make_plugin_manager(config.plugins.load)
    backend = choose_backend(pm, config.database.url)
    settings = config.database
    raw = backend.open(settings.url, 1, settings.connect_timeout)
    db = Database(raw, backend, settings.url, 1)
    db.check_connection()
    try:
        with raw.connection_context():
            if command == "install-triggers":
                lines = capture.install(raw, backend, reflect(raw, backend, config))
            else:
                lines = capture.remove(raw, backend)
    except NotImplementedError as exc:
        raise StartupError(str(exc)) from None
    except Exception as exc:
        raise StartupError(f"{command} failed: {backend.error_text(exc)}") from None
    finally:
        db.close()
    for line in lines:
        print(line)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.help_config:
        print(reference())
        return 0
    try:
        command, database = command_and_database(args.words)
        config = config_from_args(args, database)
        if command != "serve":
            manage_triggers(config, command)
            return 0
        asyncio.run(serve(config))
    except UsageError as exc:
        print(f"pylight: error: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"pylight: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # a bug, but the operator still gets one line
        log.debug("start-up failed", exc_info=True)
        print(f"pylight: error: unexpected {type(exc).__name__}: {exc} "
              "(run with --log-level debug for the traceback)", file=sys.stderr)
        return 1
    return 0
