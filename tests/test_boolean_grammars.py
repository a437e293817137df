"""The three grammars of a boolean given as text, pinned: the query language's keywords,
a boolean column's value in a filter or key, and a setting's on/off (see pylight/values.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pylight import query, values
from pylight.config import load_config
from pylight.errors import ApiError, StartupError
from tests.conftest import make_config, open_app


@pytest.mark.parametrize(("text", "expected"), [
    ("true", True), ("TRUE", True), ("True", True), ("false", False), ("FaLsE", False),
    ("t", None), ("1", None), ("yes", None), ("on", None), ("0", None), ("", None),
    (" true", None), ("truee", None), ("null", None),
])
def test_query_keywords_are_true_and_false_only(text: str, expected: bool | None) -> None:
    assert values.query_boolean(text) is expected


@pytest.mark.parametrize(("text", "expected"), [
    ("true", True), ("T", True), ("1", True), ("false", False), ("f", False), ("0", False),
    ("2", 2), ("-1", -1), ("+1", 1), ("1" * 18, int("1" * 18)),
])
def test_a_boolean_columns_value_takes_short_forms_and_integers(text: str, expected: Any) -> None:
    value = values.from_text("boolean", text)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("text", ["yes", "on", "", " true", "1" * 19, "1.0", "tru"])
def test_a_boolean_columns_value_refuses_other_text(text: str) -> None:
    with pytest.raises(values.BadValue) as caught:
        values.from_text("boolean", text)
    assert str(caught.value) == f"expected true or false, got {text[:40]!r}"


@pytest.mark.parametrize(("text", "expected"), [
    ("1", True), ("true", True), ("yes", True), ("on", True), (" On ", True), ("YES", True),
    ("0", False), ("false", False), ("no", False), ("off", False), ("OFF", False),
])
def test_a_setting_takes_ini_words(text: str, expected: bool) -> None:
    config = load_config(None, environ={"PYLIGHT_REALTIME_COMPRESSION": text})
    assert config.realtime.compression is expected


@pytest.mark.parametrize("text", ["t", "f", "y", "n", "", "2", "maybe"])
def test_a_setting_refuses_other_words(text: str) -> None:
    with pytest.raises(StartupError) as caught:
        load_config(None, environ={"PYLIGHT_REALTIME_COMPRESSION": text})
    assert str(caught.value) == (f"environment variable PYLIGHT_REALTIME_COMPRESSION: "
                                 f"expected true or false, got {text!r}")


@pytest.fixture
def products(tmp_path: Any) -> Iterator[Any]:
    """The demo's products table, reflected from SQLite (no server)."""
    app = open_app(make_config(tmp_path, f"sqlite:///{tmp_path / 'demo.db'}"))
    yield app.tables["products"]
    app.db.close()


@pytest.mark.parametrize(("spec", "expected"), [
    ("is.true", True), ("is.TRUE", True), ("not.is.False", False), ("is.null", None),
])
def test_is_takes_the_keywords(products: Any, spec: str, expected: bool | None) -> None:
    where = query.parse_filters(products, {"in_stock": [spec.encode()]})
    assert where.members[0].op == "is" and where.members[0].value is expected


@pytest.mark.parametrize(("column", "spec"), [
    ("in_stock", "is.t"), ("in_stock", "is.1"), ("in_stock", "is.yes"), ("name", "is.true"),
])
def test_is_refuses_other_words_and_columns(products: Any, column: str, spec: str) -> None:
    with pytest.raises(ApiError) as caught:
        query.parse_filters(products, {column: [spec.encode()]})
    assert caught.value.status == 400
    assert caught.value.message == (f"{column}: is takes null (or true/false on a "
                                    "boolean column)")


@pytest.mark.parametrize(("given", "expected"), [("true", True), ("False", False)])
def test_count_takes_the_keywords(products: Any, given: str, expected: bool) -> None:
    assert query.parse_list_query(products, {"count": [given.encode()]}, 5, 10).count is expected


@pytest.mark.parametrize("given", ["1", "t", "yes", ""])
def test_count_refuses_other_words(products: Any, given: str) -> None:
    with pytest.raises(ApiError) as caught:
        query.parse_list_query(products, {"count": [given.encode()]}, 5, 10)
    assert caught.value.status == 400
    assert caught.value.message == "count: expected true or false"
