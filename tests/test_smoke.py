"""The seed's curl walk-through, on every backend."""

import pytest


@pytest.mark.gen_test
async def test_seed_walkthrough(server):
    created = await server.post("/api/products", {"name": "New Product", "price": "99.99",
                                                  "sku": "NEW-001"})
    assert created.status == 201
    assert created.body["name"] == "New Product"
    assert created.body["price"] == "99.99"
    assert created.headers["Location"] == f"/api/products/{created.body['id']}"

    before = (await server.get("/api/products/1")).body
    updated = await server.put("/api/products/1", {"name": "Updated Product"})
    assert updated.status == 200
    assert updated.body == {**before, "name": "Updated Product"}

    deleted = await server.delete("/api/products/1")
    assert deleted.status == 204
    assert (await server.get("/api/products/1")).status == 404
    assert [(c.table, c.event) for c in server.changes] == [
        ("products", "created"), ("products", "updated"), ("products", "deleted")]
