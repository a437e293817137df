"""The demo tables (products, users, orders) created and seeded in an empty database."""

from __future__ import annotations

import dataclasses
import logging
from decimal import Decimal

import peewee

from pylight.config import Config, TableSettings

log = logging.getLogger("pylight")
NOW = [peewee.SQL("DEFAULT CURRENT_TIMESTAMP")]


class _Boolean(peewee.BooleanField):
    # Declared as BOOLEAN everywhere, so reflection finds a boolean on SQLite
    # too (peewee would declare INTEGER there).
    field_type = "BOOLEAN"


def _models(db: peewee.Database) -> list[type[peewee.Model]]:
    class Base(peewee.Model):
        class Meta:
            database = db

    class Product(Base):
        name = peewee.CharField(max_length=200)
        description = peewee.TextField(null=True)
        price = peewee.DecimalField(max_digits=10, decimal_places=2)
        sku = peewee.CharField(max_length=64, unique=True)
        in_stock = _Boolean(constraints=[peewee.SQL("DEFAULT TRUE")])
        created_at = peewee.DateTimeField(null=True, constraints=NOW)

        class Meta:
            table_name = "products"

    class User(Base):
        name = peewee.CharField(max_length=100)
        email = peewee.CharField(max_length=200, unique=True)
        password_hash = peewee.CharField(max_length=200, null=True)
        active = _Boolean(constraints=[peewee.SQL("DEFAULT TRUE")])
        created_at = peewee.DateTimeField(null=True, constraints=NOW)

        class Meta:
            table_name = "users"

    class Order(Base):
        user_id = peewee.ForeignKeyField(User, column_name="user_id", field="id")
        product_id = peewee.ForeignKeyField(Product, column_name="product_id", field="id")
        quantity = peewee.IntegerField(constraints=[peewee.SQL("DEFAULT 1")])
        total = peewee.DecimalField(max_digits=10, decimal_places=2)
        status = peewee.CharField(max_length=20, constraints=[peewee.SQL("DEFAULT 'pending'")])
        created_at = peewee.DateTimeField(null=True, constraints=NOW)

        class Meta:
            table_name = "orders"

    return [Product, User, Order]


def seed(db: peewee.Database) -> bool:
    """Create and fill the demo tables if the database has no tables; True if it did."""
    with db.connection_context():
        if db.get_tables():
            return False
        product, user, order = _models(db)
        with db.atomic():
            db.create_tables([product, user, order])
            product.insert_many([
                {"name": "Widget", "description": "A small widget", "price": Decimal("9.99"),
                 "sku": "WID-001"},
                {"name": "Gadget", "description": "A useful gadget", "price": Decimal("24.50"),
                 "sku": "GAD-001"},
                {"name": "Gift Card", "description": "Store credit", "price": Decimal("5.00"),
                 "sku": "GIFT-005"},
            ]).execute()
            user.insert_many([
                {"name": "Alice", "email": "alice@example.com", "password_hash": "x" * 20},
                {"name": "Bob", "email": "bob@example.com", "password_hash": "y" * 20},
            ]).execute()
            # Orders reference products 2 and 3, so product 1 can be deleted
            # as the walk-through in the README does.
            order.insert_many([
                {"user_id": 1, "product_id": 2, "quantity": 2, "total": Decimal("49.00"),
                 "status": "paid"},
                {"user_id": 2, "product_id": 3, "quantity": 1, "total": Decimal("5.00"),
                 "status": "pending"},
            ]).execute()
    log.info("created and seeded the demo tables products, users and orders")
    return True


# The demo's own table settings. `python -m pylight` applies them (Pylight's
# ``demo_settings``) with seed_demo = true when the database holds the demo
# tables, unless the configuration has a section of its own for the table: the
# shipped etc/pylight.ini serves any database, so it cannot carry a live
# [table:users] (a section naming a missing table stops start-up).
DEMO_TABLES = ("products", "users", "orders")


def with_demo_settings(config: Config, db: peewee.Database, names: list[str]) -> Config:
    """``config`` with the demo's table settings added when the database (holding
    the tables ``names``) has the demo tables and the file has no section of its
    own for them."""
    demo_settings = {"users": TableSettings(hidden=["password_hash"])}
    if not set(DEMO_TABLES) <= set(names):
        return config
    added = {}
    for name, settings in demo_settings.items():
        if name in config.tables:
            continue  # the file's own section wins
        columns = {column.name for column in db.get_columns(name)}
        if set(settings.hidden) <= columns:
            added[name] = settings
    for name, settings in added.items():
        log.info("the demo: hiding %s of %s (a [table:%s] section of your own "
                 "replaces this)", ", ".join(settings.hidden), name, name)
    return dataclasses.replace(config, tables={**config.tables, **added}) if added else config
