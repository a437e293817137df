"""Command line: `python -m pylight --conf FILE`; start-up errors become one line and exit 1."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from pylight import __version__, announce
from pylight.config import Config, load_config, reference
from pylight.errors import StartupError

log = logging.getLogger("pylight")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pylight",
        description="Serve a live REST and WebSocket API for an existing database.",
    )
    parser.add_argument("command", nargs="?", default="serve",
                        choices=["serve", "install-triggers", "remove-triggers"],
                        help="serve (the default); install-triggers / remove-triggers: add or "
                             "drop the change-capture triggers and change log "
                             "([realtime] capture = database), then exit")
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


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {}
    if args.host is not None:
        overrides[("server", "host")] = args.host
    if args.port is not None:
        overrides[("server", "port")] = args.port
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
        reason = " ".join(str(backend.driver_error(exc)).split())[:300] or type(exc).__name__
        raise StartupError(f"{command} failed: {reason}") from None
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
        config = config_from_args(args)
        if args.command != "serve":
            manage_triggers(config, args.command)
            return 0
        asyncio.run(serve(config))
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
