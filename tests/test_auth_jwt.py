"""The bundled JWT plugin (``[plugin:jwt]``) on every backend: token checks, algorithm
pinning, permissions from claims, row filters over REST and WebSocket, refresh and expiry."""

from __future__ import annotations

import time
from typing import Any

import pylight_jwt
import pytest

from pylight import StartupError
from tests.auth_support import (
    AUDIENCE,
    HS_SECRET,
    ISSUER,
    UPGRADE,
    LogCapture,
    assert_denied,
    assert_error,
    bearer,
    claims,
    hmac_token,
    jwt_section,
    open_feed,
    private_key,
    public_pem,
    send_auth,
    token,
    unsigned_token,
    write_public_key,
)
from tests.realtime_support import wait_for

ALL = {"products": ["*"], "orders": ["*"], "users": ["*"]}
SOME = {"products": ["read", "create"], "orders": "read"}
ADMIN_KEY = "admin-key-5d2e8c1f0a9b7364"


def user_token(user_id: Any, permissions: Any = None, **extra: Any) -> str:
    perms = permissions if permissions is not None else {"orders": ["*"], "products": ["read"]}
    return token(claims(sub=f"user{user_id}", user_id=user_id, permissions=perms, **extra))


@pytest.fixture
def hs_server(make_server):
    return make_server({**jwt_section(), "table:users": {"hidden": "password_hash"}})


@pytest.fixture
def rs_server(make_server, tmp_path):
    return make_server(jwt_section(algorithm="RS256", secret=None,
                                   public_key_file=write_public_key(tmp_path, "rsa")))


@pytest.fixture
def es_server(make_server, tmp_path):
    return make_server(jwt_section(algorithm="ES256", secret=None, audience=None, issuer=None,
                                   leeway="30", permissions_claim=None,
                                   default_permissions="*: read",
                                   public_key_file=write_public_key(tmp_path, "ec")))


@pytest.fixture
def filtered(make_server):
    """Users with JWTs see their own orders; an API key (no row filter) administers."""
    section = jwt_section(**{"filter.orders": "user_id=eq.{user_id}"})
    return make_server({**section, "plugin:apikeys": {"admin.key": ADMIN_KEY,
                                                       "admin.permissions": "*: *"}})


# -- tokens that are not accepted ------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_bad_tokens_are_401_with_the_json_error(hs_server):
    server = hs_server
    good = token(claims(permissions=ALL))
    assert (await server.get("/api/products", headers=bearer(good))).status == 200
    now = int(time.time())
    cases = {
        "missing": (None, "authentication required"),
        "bad signature": (token(claims(permissions=ALL), key=HS_SECRET + "x"), "signature"),
        "tampered": (good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"), "signature"),
        "expired": (token(claims(exp_in=-5, permissions=ALL)), "expired"),
        "not yet valid": (token(claims(nbf=now + 600, permissions=ALL)), "not yet valid"),
        "wrong audience": (token(claims(aud="https://other.test", permissions=ALL)), "audience"),
        "no audience": (token(claims(aud=None, permissions=ALL)), "'aud'"),
        "wrong issuer": (token(claims(iss="https://evil.test", permissions=ALL)), "issuer"),
        "no exp": (token(claims(exp_in=None, permissions=ALL)), "'exp'"),
        "alg none": (unsigned_token(claims(permissions=ALL)), "'none' is not accepted"),
        "alg none, signed": (unsigned_token(claims(permissions=ALL)) + "c2ln", "not accepted"),
        "garbage": ("abc.def.ghi", "malformed"),
        "HS512": (token(claims(permissions=ALL), key=HS_SECRET * 2, alg="HS512"),
                  "'HS512' is not accepted"),
        # PyJWT reads a numeric string as a time, but a socket's expiry could not be
        # read from it: refused everywhere (the socket never expired).
        "exp as text": (token(claims(exp_in=None, exp=str(now + 600), permissions=ALL)),
                        "'exp' must be a number"),
        "iat as a boolean": (token(claims(iat=True, permissions=ALL)), "'iat' must be a number"),
    }
    for name, (credential, words) in cases.items():
        headers = bearer(credential) if credential else {}
        for method, path in (("GET", "/api/products"), ("GET", "/api/products/1"),
                             ("DELETE", "/api/products/1")):
            response = await server.request(method, path, headers=headers)
            try:
                assert_error(response, 401, words)
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}") from None
        response = await server.get("/ws/products", headers={**UPGRADE, **headers})
        assert_error(response, 401, words)
    # a bad bearer token is not rescued by a good ?token=, nor the other way round
    assert (await server.get(f"/api/products?token={good}")).status == 200
    assert (await server.get(f"/api/products?token={good}", headers=bearer("x.y.z"))).status == 401
    assert (await server.get("/api/products/1")).status == 401
    assert server.changes == []
    assert server.app.connections.count() == 0


@pytest.mark.gen_test(timeout=60)
async def test_algorithm_switching_is_refused(rs_server):
    server = rs_server
    payload = claims(permissions=ALL)
    assert (await server.get("/api/products",
                             headers=bearer(token(payload, private_key("rsa"), "RS256")))).status == 200
    # HS256 "signed" with the server's public key as the HMAC secret: the classic switch
    switched = hmac_token(payload, public_pem("rsa"))
    assert_error(await server.get("/api/products", headers=bearer(switched)), 401,
                 "'HS256' is not accepted")
    assert_error(await server.get("/ws/products", headers={**UPGRADE, **bearer(switched)}), 401)
    assert_error(await server.get("/api/products", headers=bearer(unsigned_token(payload))), 401)
    # another RSA key, and an RSA-PSS token from the right key, are refused as well
    other = token(payload, private_key("other-rsa"), "RS256")
    assert_error(await server.get("/api/products", headers=bearer(other)), 401, "signature")
    pss = token(payload, private_key("rsa"), "PS256")
    assert_error(await server.get("/api/products", headers=bearer(pss)), 401, "'PS256'")
    assert server.changes == []


@pytest.mark.gen_test(timeout=60)
async def test_es256_with_default_permissions(es_server):
    server = es_server
    # no permissions claim needed: every valid token may read everything, and only read
    valid = token({"sub": "svc", "exp": int(time.time()) + 60}, private_key("ec"), "ES256")
    assert (await server.get("/api/orders", headers=bearer(valid))).status == 200
    assert_denied(await server.post("/api/products", {"name": "E", "price": "1.00", "sku": "E-1"},
                                    headers=bearer(valid)), "create", "products")
    # leeway: expired 10 s ago is still accepted with leeway = 30, 60 s ago is not
    late = token({"sub": "svc", "exp": int(time.time()) - 10}, private_key("ec"), "ES256")
    assert (await server.get("/api/orders", headers=bearer(late))).status == 200
    expired = token({"sub": "svc", "exp": int(time.time()) - 60}, private_key("ec"), "ES256")
    assert_error(await server.get("/api/orders", headers=bearer(expired)), 401, "expired")
    forged = token({"sub": "svc", "exp": int(time.time()) + 60},
                   private_key("other-rsa"), "RS256")
    assert_error(await server.get("/api/orders", headers=bearer(forged)), 401)


# -- permissions -----------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_permission_denials_per_action_name_the_permission(hs_server):
    server = hs_server
    some = bearer(token(claims(sub="carol", permissions=SOME)))
    assert (await server.get("/api/products", headers=some)).status == 200
    created = await server.post("/api/products", {"name": "J", "price": "2.00", "sku": "J-1"},
                                headers=some)
    assert created.status == 201
    assert_denied(await server.put("/api/products/1", {"name": "x"}, headers=some),
                  "update", "products")
    assert_denied(await server.delete("/api/products/1", headers=some), "delete", "products")
    assert_denied(await server.post("/api/orders", {"user_id": 1, "product_id": 2,
                                                    "total": "1.00"}, headers=some),
                  "create", "orders")
    assert_denied(await server.get("/api/users", headers=some), "read", "users")
    assert_denied(await server.get("/api/users/1", headers=some), "read", "users")
    denied = await server.delete("/api/products/1", headers=some)
    assert "'carol'" in denied.body["error"]["message"]
    assert_denied(await server.get("/ws/users", headers={**UPGRADE, **some}), "read", "users")
    # nothing but the one allowed create was written
    assert [c.event for c in server.changes] == ["created"]
    # a token with no permissions claim at all may do nothing, but is not anonymous
    bare = bearer(token(claims()))
    assert_denied(await server.get("/api/products", headers=bare), "read", "products")
    malformed = bearer(token(claims(permissions=["products"])))
    assert_error(await server.get("/api/products", headers=malformed), 401, "'permissions'")
    # hidden columns stay hidden for a token that may read everything
    full = bearer(token(claims(permissions=ALL)))
    users = await server.get("/api/users", headers=full)
    assert users.status == 200 and all("password_hash" not in u for u in users.body["items"])


# -- row filters -----------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_row_filter_rest(filtered, database):
    server = filtered
    one, two = bearer(user_token(1)), bearer(user_token(2))
    listed = await server.get("/api/orders", headers=one)
    assert listed.status == 200
    assert [o["user_id"] for o in listed.body["items"]] == [1]
    assert [o["id"] for o in (await server.get("/api/orders", headers=two)).body["items"]] == [2]
    # a filter of the user's own cannot widen it
    widened = await server.get("/api/orders?or=(user_id.eq.2,user_id.eq.1)", headers=one)
    assert [o["user_id"] for o in widened.body["items"]] == [1]
    counted = await server.get("/api/orders?count=true", headers=one)
    assert counted.body["total"] == 1
    assert (await server.get("/api/orders/1", headers=one)).status == 200
    assert_error(await server.get("/api/orders/2", headers=one), 404)
    assert_error(await server.put("/api/orders/2", {"status": "stolen"}, headers=one), 404)
    assert_error(await server.delete("/api/orders/2", headers=one), 404)
    before = database.execute("SELECT id, user_id, status FROM orders ORDER BY id")
    # creating a row for another user: 403 and nothing written (bulk too, all or nothing)
    theirs = {"user_id": 2, "product_id": 2, "total": "1.00"}
    mine = {"user_id": 1, "product_id": 2, "total": "1.00"}
    assert_error(await server.post("/api/orders", theirs, headers=one), 403)
    assert_error(await server.post("/api/orders", [mine, theirs], headers=one), 403)
    # moving one's own row to another user: 403, unchanged
    assert_error(await server.put("/api/orders/1", {"user_id": 2}, headers=one), 403)
    assert database.execute("SELECT id, user_id, status FROM orders ORDER BY id") == before
    assert server.changes == []
    created = await server.post("/api/orders", mine, headers=one)
    assert created.status == 201 and created.body["user_id"] == 1
    assert (await server.put("/api/orders/1", {"status": "shipped"}, headers=one)).status == 200
    # the API key has no row filter: it sees every order
    admin = await server.get("/api/orders", headers={"X-API-Key": ADMIN_KEY})
    assert {o["user_id"] for o in admin.body["items"]} == {1, 2}
    # products have no filter
    assert len((await server.get("/api/products", headers=one)).body["items"]) == 3


@pytest.mark.gen_test(timeout=60)
async def test_row_filter_websocket_subscribers_get_their_own_rows(filtered):
    server = filtered
    one_token, two_token = user_token(1), user_token(2)
    one = await open_feed(server, "/ws/orders", bearer(one_token))
    two = await open_feed(server, f"/ws/orders?token={two_token}")
    nosy = await open_feed(server, "/ws/orders?user_id=eq.2", bearer(one_token))
    admin = {"X-API-Key": ADMIN_KEY}
    everyone = await open_feed(server, "/ws/orders", admin)
    new1 = await server.post("/api/orders", {"user_id": 1, "product_id": 3, "total": "5.00"},
                             headers=bearer(one_token))
    new2 = await server.post("/api/orders", {"user_id": 2, "product_id": 3, "total": "5.00"},
                             headers=admin)
    assert (await server.put("/api/orders/2", {"status": "paid"}, headers=admin)).status == 200
    # an admin moves order 1 from user 1 to user 2: user 1 is told it left, user 2 gets it
    assert (await server.put("/api/orders/1", {"user_id": 2}, headers=admin)).status == 200
    got1, got2 = await one.drain(), await two.drain()
    assert [(m["event"], m["pk"]) for m in got1] == [("created", new1.body["id"]),
                                                     ("updated", 1)]
    assert got1[1]["matches"] is False and got1[1]["record"] is None  # no peek at the new row
    assert [(m["event"], m["pk"]) for m in got2] == [("created", new2.body["id"]), ("updated", 2),
                                                     ("updated", 1)]
    assert all(m.get("matches", True) for m in got2)
    assert all(m["record"]["user_id"] == 2 for m in got2)
    # Every row a message shows is one its subscriber may read: order 1 as it was
    # belonged to user 1, so user 2 gets the move without `old`; its own update keeps it.
    assert got2[1]["old"]["user_id"] == 2
    assert got2[2]["old"] is None
    assert await nosy.drain() == []
    seen_by_admin = await everyone.drain()
    assert len(seen_by_admin) == 4 and seen_by_admin[-1]["old"]["user_id"] == 1
    # ... and the same on a replay
    replay = await open_feed(server, "/ws/orders?since=0", bearer(two_token))
    assert [m.get("old") for m in await replay.drain()] == [None, got2[1]["old"], None]
    replay.close()
    # a user's own filter cannot widen the row filter of a WebSocket either
    for client in (one, two, nosy, everyone):
        client.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_token_without_the_filter_claim_sees_nothing(filtered):
    server = filtered
    no_claim = bearer(token(claims(permissions={"orders": ["*"], "products": ["read"]})))
    assert_error(await server.get("/api/orders", headers=no_claim), 403, "'user_id'")
    assert_error(await server.get("/api/orders/1", headers=no_claim), 403, "'user_id'")
    assert_error(await server.post("/api/orders", {"user_id": 1, "product_id": 2,
                                                   "total": "1.00"}, headers=no_claim), 403)
    assert_error(await server.get("/ws/orders", headers={**UPGRADE, **no_claim}), 403, "'user_id'")
    # a claim that cannot be the column's value is refused, not dropped or a 400
    odd = bearer(user_token("1 OR 1=1"))
    assert_error(await server.get("/api/orders", headers=odd), 403)
    nested = bearer(user_token({"id": 1}))
    assert_error(await server.get("/api/orders", headers=nested), 403)
    # tables without a filter are unaffected
    assert (await server.get("/api/products", headers=no_claim)).status == 200
    assert server.changes == []


# -- WebSocket tokens: ?token=, refresh and expiry --------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_websocket_refresh_extends_and_expiry_closes_4401(hs_server):
    server = hs_server
    first = claims(sub="short", exp_in=2, permissions=ALL)
    short, exp = token(first), first["exp"]
    with LogCapture("tornado", "pylight") as logs:
        lapsing = await open_feed(server, f"/ws/products?token={short}")
        refreshed = await open_feed(server, "/ws/products", bearer(short))
        # a bad or under-privileged refresh is answered with an error and changes nothing
        bad = await send_auth(refreshed, token(claims(permissions=ALL), key=HS_SECRET + "x"))
        assert bad["type"] == "error" and bad["code"] == "unauthorized"
        weak = await send_auth(refreshed, token(claims(permissions={"orders": ["read"]})))
        assert weak["type"] == "error" and weak["code"] == "forbidden"
        fresh = token(claims(sub="short", exp_in=60, permissions=ALL))
        answer = await send_auth(refreshed, fresh)
        assert answer["type"] == "auth" and answer["ok"] is True and answer["subject"] == "short"
        assert answer["expires_at"] > time.time() + 30
        assert await lapsing.closed() == 4401
        assert lapsing.conn.close_reason and "expired" in lapsing.conn.close_reason
        assert time.time() >= exp - 0.1  # closed at expiry, not before
        await wait_for(lambda: time.time() > exp + 0.3, what="the short token's expiry")
        # the refreshed socket outlived its first token and still receives changes
        assert (await server.put("/api/products/1", {"name": "Later"},
                                 headers=bearer(fresh))).status == 200
        (change,) = await refreshed.drain()
        assert change["record"]["name"] == "Later"
        refreshed.close()
    assert short not in logs.text and fresh not in logs.text
    assert any("/ws/products?token=***" in line for line in logs.lines)


# -- start-up validation ---------------------------------------------------------------------

def test_bad_sections_stop_startup_with_one_line(server, tmp_path):
    tables = server.app.tables
    rsa_file = write_public_key(tmp_path, "rsa")
    ec_file = write_public_key(tmp_path, "ec")
    short = tmp_path / "short.secret"
    short.write_text("too short\n")
    base = {"algorithm": "HS256", "secret": HS_SECRET, "permissions_claim": "permissions"}
    cases = [
        ({"secret": HS_SECRET}, "needs algorithm"),
        ({**base, "secret": ""}, "needs secret or secret_file for HS256"),
        ({**base, "secret": "short"}, "needs at least 32"),
        ({**base, "secret": None, "secret_file": str(short)}, "needs at least 32"),
        ({**base, "secret": None, "secret_file": str(tmp_path / "nope")}, "cannot read it"),
        ({**base, "secret_file": str(short)}, "not both"),
        ({**base, "algorithm": "none"}, "never accepted"),
        ({**base, "algorithm": "HS256, none"}, "never accepted"),
        ({**base, "algorithm": "HS999"}, "unknown algorithm 'HS999'"),
        ({**base, "algorithm": "HS256, RS256"}, "one family"),
        ({**base, "algorithm": "RS256", "secret": None}, "needs public_key_file"),
        ({**base, "algorithm": "RS256", "public_key_file": rsa_file}, "secret and secret_file"),
        ({**base, "algorithm": "RS256", "secret": None, "public_key_file": ec_file},
         "cannot verify RS256"),
        ({**base, "algorithm": "ES384", "secret": None, "public_key_file": ec_file},
         "needs secp384r1"),
        ({**base, "algorithm": "RS256", "secret": None, "public_key_file": str(short)},
         "not a PEM public key"),
        ({**base, "public_key_file": rsa_file}, "public_key_file is for"),
        ({**base, "leeway": "soon"}, "leeway"),
        ({**base, "permissions_claim": None}, "needs permissions_claim"),
        ({**base, "default_permissions": "*: sing"}, "unknown action 'sing'"),
        ({**base, "default_permissions": "nope: read"}, "'nope'"),
        ({**base, "filter.nope": "id=eq.1"}, "'nope' is not an exposed table"),
        ({**base, "filter.orders": "owner=eq.{sub}"}, "'owner' is not a column"),
        ({**base, "filter.orders": "user_id=eq.{user id}"}, "not a claim name"),
        ({**base, "filter.orders": "user_id=eq.{user_id"}, "unbalanced"),
        ({**base, "filter.orders": ""}, "empty filter"),
        ({**base, "audiance": AUDIENCE}, "unknown setting 'audiance'"),
    ]
    for settings, words in cases:
        section = {k: v for k, v in settings.items() if v is not None}
        with pytest.raises(StartupError) as info:
            pylight_jwt.load(section, tables)
        message = str(info.value)
        assert words in message and "\n" not in message and "[plugin:jwt]" in message, \
            (settings, message)
    # and a good one, for contrast: a list of one family, a secret from a file
    good = tmp_path / "good.secret"
    good.write_text(HS_SECRET * 2 + "\n")
    auth = pylight_jwt.load({"algorithm": "HS256, HS512", "secret_file": str(good),
                             "issuer": ISSUER, "default_permissions": "*: read",
                             "filter.orders": "user_id=eq.{user_id}"}, tables)
    assert auth.algorithms == ["HS256", "HS512"] and auth.key == (HS_SECRET * 2).encode()
    assert auth.audience is None and auth.issuer == [ISSUER] and auth.leeway == 30
    assert pylight_jwt.claim({"a": {"b": 7}}, "a.b") == 7


@pytest.mark.gen_test(timeout=60)
async def test_refused_callers_learn_nothing_about_rows(hs_server):
    """Authentication and the table permission come first: no 404 or 422 leaks to them."""
    server = hs_server
    some = bearer(token(claims(permissions=SOME)))
    for headers, status in (({}, 401), (some, 403)):
        assert_error(await server.get("/api/users/999", headers=headers), status)
        assert_error(await server.get("/api/users/1", headers=headers), status)
        assert_error(await server.post("/api/users", {"nope": 1}, headers=headers), status)
        assert_error(await server.put("/api/users/999", {"nope": 1}, headers=headers), status)
        assert_error(await server.delete("/api/users/999", headers=headers), status)
