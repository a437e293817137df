"""The hand-written ceiling for bench/fanout.py: a minimal Tornado broadcast server.

Serves just what the fan-out benchmark calls, with Pylight's message shape so
the bytes on the wire are comparable (~200-250 bytes per change):

    GET  /ws/<table>      WebSocket; sends {"type": "hello", ...}, then every change
    POST /api/<table>     201 record; broadcasts {"type": "change", ...} to every
                          connected client with write_message

No database, no filters, no queue, no heartbeats: a set of handlers and a loop
over it. That is the simplest thing that could possibly broadcast.

    python bench/baseline_broadcast.py --port 8002
    python bench/baseline_broadcast.py --port 8002 --preframed   # upper bound, see --help
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import signal

import tornado.web
import tornado.websocket
from tornado.httpserver import HTTPServer

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

clients: set[Feed] = set()
PREFRAMED = False  # --preframed: an upper bound, not the baseline
state = {"seq": 0}


class Feed(tornado.websocket.WebSocketHandler):
    def check_origin(self, origin: str) -> bool:
        return True

    def open(self, table: str) -> None:
        self.set_nodelay(True)
        clients.add(self)
        self.write_message(_dumps({"type": "hello", "table": table, "seq": state["seq"]}))

    def on_message(self, message: str | bytes) -> None:
        pass

    def on_close(self) -> None:
        clients.discard(self)


class Post(tornado.web.RequestHandler):
    def post(self, table: str) -> None:
        body = json.loads(self.request.body)
        state["seq"] += 1
        seq = state["seq"]
        record = {"id": seq, **body}
        at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")
        message = _dumps({"type": "change", "event": "created", "table": table, "seq": seq,
                          "pk": seq, "record": record, "old": None, "at": at})
        if PREFRAMED:
            # The frame built once, written straight to each stream: no per-client
            # encode, frame header or asyncio Task (what write_message costs).
            data = message.encode()
            frame = bytes((0x81, len(data))) if len(data) < 126 else (
                bytes((0x81, 126)) + len(data).to_bytes(2, "big"))
            frame += data
            for client in list(clients):
                connection = client.ws_connection
                if connection is None or connection.stream.closed():
                    clients.discard(client)
                    continue
                connection.stream.write(frame)
        else:
            for client in list(clients):
                try:
                    client.write_message(message)
                except tornado.websocket.WebSocketClosedError:
                    clients.discard(client)
        self.set_status(201)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(_dumps(record))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--preframed", action="store_true",
                        help="write one pre-built frame to each stream instead of write_message "
                             "(an upper bound for Tornado, not the baseline)")
    args = parser.parse_args()
    global PREFRAMED
    PREFRAMED = args.preframed
    app = tornado.web.Application([(r"/ws/([^/]+)", Feed), (r"/api/([^/]+)", Post)])
    server = HTTPServer(app)
    server.listen(args.port, args.host)
    print(f"baseline_broadcast listening on {args.host}:{args.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()
    for client in list(clients):
        client.close(1001)


if __name__ == "__main__":
    asyncio.run(main())
