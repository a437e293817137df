"""The data explorer at `/` and the API docs at `/api/docs`, driven in the system Chromium.

The walk goes as a newcomer's first minutes do, on the awkward schema of each backend
(a table named "Order Items" with a composite key, a composite foreign key, views):
the table list with its row counts, a table, sort, filter, the next page, a
foreign key followed, and REST writes showing up live. Screenshots at desktop and
phone width are saved under tests/artifacts/explorer/ (gitignored) for a person
to look at.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.awkward_schemas import load_awkward
from tests.browser_support import chromium
from tests.conftest import write_config
from tests.live_server import LiveServer, free_port, rest

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "explorer"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
WAIT = 10000  # ms
ITEMS = "Order Items"
XSS = "<img src=x onerror=window.pwned=1>"
READER = "explorer-reader-key-5d1f0c3a9b"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the module (the system's: Playwright never downloads one here)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium() as instance:
        yield instance
    print(f"\nexplorer screenshots: {ARTIFACTS}")


def serve(database: Any, tmp_path: Path, settings: dict[str, dict[str, Any]] | None = None,
          ) -> LiveServer:
    conf = write_config(tmp_path, database.url, settings, seed=False)
    return LiveServer(conf, free_port(), tmp_path).start()


@pytest.fixture
def awkward_server(database: Any, tmp_path: Path) -> Iterator[LiveServer]:
    """`python -m pylight` on the awkward schema, four rows a page."""
    load_awkward(database)
    server = serve(database, tmp_path, {"api": {"default_limit": 4}})
    yield server
    server.kill()



def fetch(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


class Explorer:
    """A page of the explorer, with the few moves the walk makes."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.errors: list[str] = []
        self.sockets: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("websocket", lambda socket: self.sockets.append(socket.url))

    def loads(self) -> int:
        return int(self.page.evaluate("Number(document.body.dataset.loaded || 0)"))

    def after(self, action: Any) -> None:
        """Do ``action`` and wait until the table view read its rows again."""
        before = self.loads()
        action()
        self.page.wait_for_function(f"Number(document.body.dataset.loaded || 0) > {before}",
                                    timeout=WAIT)

    def rows(self) -> list[dict[str, str]]:
        """The rows on screen: {column: text}, as a person reads them."""
        return self.page.evaluate("""() => {
            const heads = [...document.querySelectorAll('#grid thead th')].map(th => th.dataset.column);
            return [...document.querySelectorAll('#grid tbody tr[data-key]:not(.leaving)')].map(tr =>
                Object.fromEntries([...tr.cells].map((td, i) => [heads[i], td.textContent])));
        }""")

    def column(self, name: str) -> list[str]:
        return [row[name] for row in self.rows()]

    def shot(self, name: str) -> None:
        self.page.set_viewport_size(DESKTOP)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}-desktop.png"), full_page=True)
        self.page.set_viewport_size(PHONE)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}-phone.png"), full_page=True)
        # At phone width the rows scroll sideways inside their box: the page itself
        # never gets wider than the screen, so no column is cut off.
        assert self.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        self.page.set_viewport_size(DESKTOP)


def test_explorer_walk(awkward_server, browser, database):
    base = awkward_server.base_url
    page = browser.new_page(viewport=DESKTOP)
    ui = Explorer(page, base)
    try:
        _table_list(ui, database.backend)
        _sort_filter_and_page(ui)
        _follow_foreign_keys(ui)
        _reserved_names_and_exact_values(ui)
        _live_rows(ui, database.backend)
        _errors_in_place(ui)
        assert ui.errors == []
        # every table's live rows came through one socket
        assert ui.sockets == [base.replace("http", "ws") + "/ws"]
    finally:
        page.close()


def _table_list(ui: Explorer, backend: str) -> None:
    ui.page.goto(ui.base + "/")
    # Row counts come in after the list: exact here (small tables), views not counted.
    ui.page.wait_for_function(
        "document.querySelector('[data-rows-of=\"Order Items\"]')?.textContent === '10'",
        timeout=WAIT)
    names = ui.page.eval_on_selector_all("#tables a", "links => links.map(a => a.textContent)")
    assert {ITEMS, "Orders", "shipments", "Order Totals"} <= set(names)
    assert ui.page.text_content('[data-rows-of="shipments"]') == "6"
    assert ui.page.text_content('[data-rows-of="Order Totals"]') == "—"  # a view
    ui.shot(f"{backend}-tables")
    ui.after(lambda: ui.page.click(f"#tables a:text-is('{ITEMS}')"))
    assert ui.page.evaluate("location.hash") == "#/table/" + quote(ITEMS)
    assert len(ui.rows()) == 4
    assert ui.page.text_content("#summary") == "10 rows"
    ui.page.wait_for_function("document.getElementById('live').textContent === 'live'",
                              timeout=WAIT)


def _sort_filter_and_page(ui: Explorer) -> None:
    page = ui.page
    ui.after(lambda: page.click('th[data-column="quantity"] button'))
    assert "order=quantity.asc" in page.evaluate("location.hash")
    assert ui.column("quantity")[0] == "-1"
    ui.after(lambda: page.click('th[data-column="quantity"] button'))
    assert ui.column("quantity")[:2] == ["1000", "3"]
    assert page.get_attribute('th[data-column="quantity"]', "aria-sort") == "descending"

    page.select_option("#filter-column", "product")
    page.select_option("#filter-operator", "eq")
    page.fill("#filter-value", "Widget")
    ui.after(lambda: page.click("form.builder button"))
    assert page.text_content("#chips").startswith("product=eq.Widget")
    assert page.input_value("#query") == "order=quantity.desc&product=eq.Widget"
    assert page.text_content("#summary") == "5 rows match"
    # Ties on quantity are broken by the key, as the API orders them.
    assert [(r["order_id"], r["line_no"], r["quantity"]) for r in ui.rows()] == [
        ("5", "1", "3"), ("1", "1", "2"), ("2", "1", "2"), ("6", "2", "2")]
    # The JSON link is exactly this view.
    href = page.get_attribute("#json-link", "href")
    assert href == "/api/Order%20Items?order=quantity.desc&product=eq.Widget"
    assert page.get_attribute("#csv-link", "href") == href + "&format=csv"
    status, listed = rest(ui.base, "GET", href)
    assert status == 200 and [i["quantity"] for i in listed["items"]] == [3, 2, 2, 2]

    ui.after(lambda: page.click("#next-page"))
    assert "after=" in page.evaluate("location.hash")
    assert [(r["order_id"], r["line_no"], r["product"]) for r in ui.rows()] == [("3", "2", "Widget")]
    assert page.is_visible("#first-page") and not page.is_visible("#next-page")


def _follow_foreign_keys(ui: Explorer) -> None:
    page = ui.page
    # order_id of "Order Items" refers to "Orders"."OrderID"
    ui.after(lambda: page.click('#grid tbody tr[data-pk="3,2"] td:nth-child(1) a.fk'))
    assert page.evaluate("location.hash") == "#/table/Orders?OrderID=eq.3"
    assert [(r["OrderID"], r["note"]) for r in ui.rows()] == [("3", "gift, wrapped")]
    # A composite foreign key: shipments (order_id, line_no) -> "Order Items"
    ui.after(lambda: page.goto(ui.base + "/#/table/shipments?carrier=eq.UPS"))
    link = page.locator("#grid tbody tr").first.locator("a.fk").first  # its order_id
    ui.after(lambda: link.click())
    assert page.evaluate("location.hash") == "#/table/" + quote(ITEMS) + "?order_id=eq.6&line_no=eq.1"
    assert [(r["order_id"], r["line_no"], r["product"]) for r in ui.rows()] == [("6", "1", "Gadget")]


def _reserved_names_and_exact_values(ui: Explorer) -> None:
    """Columns named like the query's parameters (`count`, `order`), and an integer past
    2^53 shown as stored, not rounded by JavaScript."""
    page = ui.page
    ui.after(lambda: page.goto(ui.base + "/#/table/Customer"))
    page.select_option("#filter-column", "count")
    page.fill("#filter-value", "9223372036854775807")
    ui.after(lambda: page.click("form.builder button"))
    assert page.evaluate("location.hash") == "#/table/Customer?count=eq.9223372036854775807"
    assert [(r["FirstName"], r["count"]) for r in ui.rows()] == [("Bob", "9223372036854775807")]
    assert page.text_content("#summary") == "1 row matches"
    ui.after(lambda: page.click('th[data-column="order"] button'))
    assert page.input_value("#query") == "count=eq.9223372036854775807&order=order.asc"
    assert len(ui.rows()) == 1


def _live_rows(ui: Explorer, backend: str) -> None:
    page, base = ui.page, ui.base
    items = "/api/" + quote(ITEMS)
    ui.after(lambda: page.goto(base + "/#/table/Orders?OrderID=eq.3"))
    page.wait_for_function("document.getElementById('live').textContent === 'live'", timeout=WAIT)
    # An update flashes in place; its value is text, never markup.
    assert rest(base, "PATCH", "/api/Orders/3", {"note": XSS})[0] == 200
    page.wait_for_function(
        f"document.querySelector('#grid tbody tr[data-pk=\"3\"]')?.textContent.includes({json.dumps(XSS)})",
        timeout=WAIT)
    assert page.evaluate("window.pwned === undefined && !document.querySelector('#grid img')")

    ui.after(lambda: page.goto(base + "/#/table/" + quote(ITEMS) + "?product=eq.Widget&order=quantity.desc"))
    page.wait_for_function("document.getElementById('live').textContent === 'live'", timeout=WAIT)
    status, created = rest(base, "POST", items, {"order_id": 7, "line_no": 1, "product": "Widget",
                                                 "quantity": 5, "unit_price": "1.00"})
    assert status == 201
    row = page.locator('#grid tbody tr[data-pk="7,1"]')
    row.wait_for(timeout=WAIT)
    assert "created" in row.get_attribute("class")
    assert ui.rows()[0]["quantity"] == "5"
    assert page.text_content("#summary") == "6 rows match"
    ui.shot(f"{backend}-live")

    # Deleted: the row fades out; moved out of the filter (matches:false): it leaves.
    assert rest(base, "DELETE", items + "/5,1")[0] == 204
    assert rest(base, "PATCH", items + "/7,1", {"product": "Gizmo"})[0] == 200
    for key in ("5,1", "7,1"):
        page.locator(f'#grid tbody tr[data-pk="{key}"].leaving').wait_for(state="attached",
                                                                           timeout=WAIT)
    for key in ("5,1", "7,1"):
        page.locator(f'#grid tbody tr[data-pk="{key}"]').wait_for(state="detached", timeout=WAIT)
    assert [(r["order_id"], r["line_no"]) for r in ui.rows()] == [("1", "1"), ("2", "1"), ("6", "2")]
    assert page.text_content("#summary") == "4 rows match"


def _errors_in_place(ui: Explorer) -> None:
    page = ui.page
    ui.page.fill("#query", "quantity=gt.many")
    page.click("form.raw button")
    error = page.locator("#place .error")
    error.wait_for(timeout=WAIT)
    assert "Cannot read Order Items" in error.text_content()
    assert "quantity" in error.text_content() and "(400)" in error.text_content()
    # The rest of the page stays usable: the filters are there to be mended.
    assert page.is_visible("#query") and page.is_visible("form.builder")


sqlite_only = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


@sqlite_only
def test_explorer_asks_for_a_token_when_auth_is_on(browser, database, tmp_path):
    server = serve(database, tmp_path, {
        "database": {"seed_demo": "true"},
        "plugin:apikeys": {"reader.key": READER, "reader.permissions": "*: read"}})
    page = browser.new_page(viewport=DESKTOP)
    try:
        page.goto(server.base_url + "/")
        # Anonymous callers see no tables: the token field is right there.
        page.locator("#token").wait_for(timeout=WAIT)
        page.fill("#token", "not-the-key")
        page.click(".token button")
        page.wait_for_function("document.querySelector('.token .note') &&"
                               " document.querySelector('.token .note').textContent"
                               ".startsWith('The token was refused: unknown API key')",
                               timeout=WAIT)
        page.screenshot(path=str(ARTIFACTS / "sqlite-token-desktop.png"))
        page.fill("#token", READER)
        page.click(".token button")
        page.locator('#tables a:text-is("products")').wait_for(timeout=WAIT)
        assert page.evaluate("sessionStorage.getItem('pylight.token')") == READER
        page.click('#tables a:text-is("products")')
        page.wait_for_function("document.body.dataset.loaded >= 1 &&"
                               " document.getElementById('live').textContent === 'live'",
                               timeout=WAIT)
        assert len(page.locator("#grid tbody tr[data-pk]").all()) == 3
        assert f"token={READER}" in page.get_attribute("#json-link", "href")
    finally:
        page.close()
        server.kill()


# -- the API docs ----------------------------------------------------------------------------------

ASSET = re.compile(r'(?:src|href)="([^"]+)"')


@sqlite_only
def test_without_feeds_the_explorer_reads_without_live_updates(browser, database, tmp_path):
    server = serve(database, tmp_path, {"database": {"seed_demo": "true"},
                                        "realtime": {"enabled": "false"}})
    page = browser.new_page(viewport=DESKTOP)
    try:
        page.goto(server.base_url + "/#/table/orders")
        page.wait_for_function("document.body.dataset.loaded >= 1", timeout=WAIT)
        assert len(page.locator("#grid tbody tr[data-pk]").all()) == 2
        assert page.text_content("#live") == "not live"
        assert rest(server.base_url, "GET", "/ws/orders")[0] == 404  # no feeds at all
    finally:
        page.close()
        server.kill()


@sqlite_only
def test_api_docs_are_swagger_ui_served_from_the_package(browser, database, tmp_path):
    server = serve(database, tmp_path, {"database": {"seed_demo": "true"}})
    try:
        status, kind, body = fetch(server.base_url + "/api/docs")
        assert status == 200 and kind.startswith("text/html")
        html = body.decode()
        assert "SwaggerUIBundle" in html and '"/api/openapi.json"' in html
        assets = ASSET.findall(html)
        assert assets and all(a.startswith("/api/docs/static/") for a in assets), assets
        assert "http://" not in html and "https://" not in html
        for asset in assets:
            status, kind, _ = fetch(server.base_url + asset)
            assert status == 200, asset
        missing = fetch(server.base_url + "/api/docs/static/nope.js")
        assert missing[0] == 404 and json.loads(missing[2])["error"]["status"] == 404

        # Rendered: every table's operations, and no request leaves the server.
        page = browser.new_page(viewport=DESKTOP)
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        try:
            page.goto(server.base_url + "/api/docs")
            page.locator(".opblock").first.wait_for(timeout=WAIT)
            text = page.text_content("#swagger-ui").replace("\u200b", "")  # breaks before '/'
            assert "/api/products" in text and "/api/orders/{pk}" in text
            page.screenshot(path=str(ARTIFACTS / "api-docs-desktop.png"))
        finally:
            page.close()
        assert requested and all(url.startswith(server.base_url) for url in requested), requested
        assert server.base_url + "/api/openapi.json" in requested
    finally:
        server.kill()


@sqlite_only
def test_a_table_named_docs_keeps_its_routes(database, tmp_path):
    """`/api/docs` is the docs page unless a table is named `docs`: then the table keeps
    every route of the contract and the page moves to `/api/openapi.html`."""
    database.ddl("CREATE TABLE docs (id INTEGER PRIMARY KEY, title VARCHAR(40))")
    database.execute("INSERT INTO docs (id, title) VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    server = serve(database, tmp_path, {"api": {"default_limit": 2}})
    try:
        status, listed = rest(server.base_url, "GET", "/api/docs")
        assert status == 200 and [i["title"] for i in listed["items"]] == ["a", "b"]
        status, rest_of = rest(server.base_url, "GET", listed["next"])
        assert status == 200 and [i["title"] for i in rest_of["items"]] == ["c"]
        assert rest(server.base_url, "POST", "/api/docs", {"id": 4, "title": "d"})[0] == 201
        assert rest(server.base_url, "GET", "/api/docs/4") == (200, {"id": 4, "title": "d"})
        status, kind, body = fetch(server.base_url + "/api/openapi.html")
        assert status == 200 and kind.startswith("text/html") and b"SwaggerUIBundle" in body
        status, _, _ = fetch(server.base_url + "/api/docs/static/swagger-ui-bundle.js")
        assert status == 200
        # The explorer links to wherever the docs are.
        status, _, page = fetch(server.base_url + "/")
        assert b'data-docs-url="/api/openapi.html"' in page
    finally:
        server.kill()
