"""dtype shortcuts and parse_value."""
from __future__ import annotations

import pytest
from pydantic import BaseModel

from lmnb.errors import LmnbError
from lmnb.runtime.constrained import parse_value, regex_for_dtype

from .regex_strategies import fullmatch
from .walk import random_walk


class Point(BaseModel):
    x: int
    y: int


@pytest.mark.parametrize("dtype, py", [(int, int), (float, float), (bool, bool), (str, str),
                                       ("int", int)])
def test_dtype_walks_parse(backend, dtype, py):
    regex = regex_for_dtype(dtype)
    guide = backend.compile(regex=regex)
    for seed in range(5):
        text = random_walk(guide, seed, budget=8)
        assert fullmatch(regex, text)
        assert type(parse_value(dtype, text)) is py


def test_parse_values():
    assert parse_value(int, "-42") == -42
    assert parse_value(float, "1.5e3") == 1500.0
    assert parse_value(bool, "True") is True and parse_value(bool, "false") is False
    assert parse_value(str, '"a\\"b"') == 'a"b'
    assert parse_value({"type": "object"}, '{"a": [1]}') == {"a": [1]}
    assert parse_value('{"type": "array"}', "[1, 2]") == [1, 2]
    assert parse_value(Point, '{"x":1,"y":2}') == Point(x=1, y=2)


def test_parse_errors_and_unknown_dtypes():
    with pytest.raises(LmnbError, match="does not parse"):
        parse_value(int, "4x")
    with pytest.raises(LmnbError, match="does not parse"):
        parse_value(Point, '{"x":1}')
    with pytest.raises(LmnbError, match="dtype"):
        regex_for_dtype(list)
