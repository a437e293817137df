"""The hand-written ceiling for bench/rest_bench.py: Tornado + one psycopg2 connection.

Serves just what the benchmark calls, for the demo ``products`` table, with the
same SQL Pylight's peewee builds and the same JSON shape Pylight answers:

    GET  /api/products/<id>        -> 200 record | 404
    GET  /api/products?limit=N     -> 200 {"items": [...], "next": "/api/products?after=...&limit=N"}
    POST /api/products             -> 201 record + Location
    GET  /api/orders?select=*,users(name)&limit=N
                                   -> 200 {"items": [{...order, "users": {"name": ...}}], "next": ...}
                                      (one JOIN: the embedded-list case)

Handlers are synchronous: the query blocks the event loop, which is fine with a
single connection and is the simplest thing that could possibly work.

    python bench/baseline_rest.py --dsn postgresql://postgres@127.0.0.1:5432/db --port 8001
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
from decimal import Decimal

import psycopg2
import tornado.ioloop
import tornado.web

COLUMNS = ("id", "name", "description", "price", "sku", "in_stock", "created_at")
WRITABLE = frozenset(("name", "description", "price", "sku", "in_stock"))
SELECT = ('SELECT "t1"."id", "t1"."name", "t1"."description", "t1"."price", "t1"."sku", '
          '"t1"."in_stock", "t1"."created_at" FROM "products" AS "t1"')
GET_SQL = SELECT + ' WHERE ("t1"."id" = %s) LIMIT %s'
LIST_SQL = SELECT + ' ORDER BY "t1"."id" ASC LIMIT %s'
RETURNING = (' RETURNING "products"."id", "products"."name", "products"."description", '
             '"products"."price", "products"."sku", "products"."in_stock", '
             '"products"."created_at"')
ORDERS_SQL = ('SELECT "t1"."id", "t1"."user_id", "t1"."product_id", "t1"."quantity", '
              '"t1"."total", "t1"."status", "t1"."created_at", "t2"."name" '
              'FROM "orders" AS "t1" LEFT JOIN "users" AS "t2" ON "t2"."id" = "t1"."user_id" '
              'ORDER BY "t1"."id" ASC LIMIT %s')
CENT = Decimal("0.01")


def _default(value):
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(type(value).__name__)


_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_default)


def record(row):
    rid, name, description, price, sku, in_stock, created_at = row
    return {
        "id": rid,
        "name": name,
        "description": description,
        "price": None if price is None else format(price.quantize(CENT), "f"),
        "sku": sku,
        "in_stock": in_stock,
        "created_at": None if created_at is None else created_at.isoformat(),
    }


class Base(tornado.web.RequestHandler):
    def initialize(self, conn):
        self.conn = conn

    def set_default_headers(self):
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")

    def send(self, payload, status=200):
        self.set_status(status)
        self.finish(_encoder.encode(payload))

    def send_page(self, sql, to_record, path):
        """A keyset page of ``sql`` (its one parameter the limit), its ``next`` link
        under ``path`` (``path`` + ``after=…&limit=…``)."""
        limit = min(int(self.get_argument("limit", "50")), 1000)
        with self.conn.cursor() as cur:
            cur.execute(sql, (limit + 1,))
            rows = cur.fetchall()
        items = [to_record(row) for row in rows[:limit]]
        link = None
        if len(rows) > limit and items:
            cursor = base64.urlsafe_b64encode(
                _encoder.encode([items[-1]["id"]]).encode()).decode().rstrip("=")
            link = f"{path}after={cursor}&limit={limit}"
        self.send({"items": items, "next": link})

    def write_error(self, status_code, **kwargs):
        self.finish(_encoder.encode({"error": {"status": status_code, "code": "error",
                                               "message": self._reason}}))


class ItemHandler(Base):
    def get(self, key):
        with self.conn.cursor() as cur:
            cur.execute(GET_SQL, (int(key), 1))
            row = cur.fetchone()
        if row is None:
            self.send({"error": {"status": 404, "code": "not_found",
                                 "message": f"no row in 'products' with key {key!r}"}}, 404)
            return
        self.send(record(row))


class CollectionHandler(Base):
    def get(self):
        self.send_page(LIST_SQL, record, "/api/products?")

    def post(self):
        body = json.loads(self.request.body, parse_float=Decimal)
        names = [name for name in body if name in WRITABLE]
        params = [Decimal(str(body[n])) if n == "price" else body[n] for n in names]
        sql = (f'INSERT INTO "products" ({", ".join(chr(34) + n + chr(34) for n in names)}) '
               f'VALUES ({", ".join(["%s"] * len(names))})' + RETURNING)
        try:
            with self.conn.cursor() as cur:
                cur.execute(sql, params)  # autocommit: the statement is its own transaction
                row = cur.fetchone()
        except psycopg2.IntegrityError as exc:
            self.send({"error": {"status": 409, "code": "conflict", "message": str(exc)}}, 409)
            return
        self.set_header("Location", f"/api/products/{row[0]}")
        self.send(record(row), 201)


class OrdersHandler(Base):
    """Only ``select=*,users(name)``: each order with its user's name, by a JOIN."""

    def get(self):
        self.send_page(ORDERS_SQL, order_with_user, "/api/orders?select=%2A%2Cusers%28name%29&")


def order_with_user(row):
    rid, user_id, product_id, quantity, total, status, created_at, name = row
    return {
        "id": rid, "user_id": user_id, "product_id": product_id, "quantity": quantity,
        "total": None if total is None else format(total.quantize(CENT), "f"),
        "status": status,
        "created_at": None if created_at is None else created_at.isoformat(),
        "users": None if user_id is None else {"name": name},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()

    conn = psycopg2.connect(args.dsn)
    conn.autocommit = True
    app = tornado.web.Application([
        (r"/api/products/?", CollectionHandler, {"conn": conn}),
        (r"/api/products/([^/]+)", ItemHandler, {"conn": conn}),
        (r"/api/orders/?", OrdersHandler, {"conn": conn}),
    ])
    app.listen(args.port, args.host)
    loop = tornado.ioloop.IOLoop.current()

    def stop(*_):
        loop.add_callback_from_signal(loop.stop)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"baseline serving on http://{args.host}:{args.port}/api/products", flush=True)
    loop.start()
    conn.close()


if __name__ == "__main__":
    main()
