"""Regexes for the `dtype=` shortcuts of `gen`, and parsing generated text back to values.

`dtype=int` constrains the output to a canonical integer and `parse_value(int,
text)` returns an `int`; `float`, `bool` (`True`/`False`) and `str` (a JSON
string literal) work the same way. For a JSON schema (dict, JSON string or
pydantic model) `parse_value` returns the parsed object (a model instance for a
pydantic model class).
"""
from __future__ import annotations

import json
from typing import Any

from lmnb.errors import LmnbError
from lmnb.runtime.constrained import json_terminals as T

REGEX_INT = T.INTEGER
REGEX_FLOAT = T.NUMBER
REGEX_BOOL = r"(?:True|False)"
REGEX_STR = T.STRING
_DTYPES: dict[Any, str] = {int: REGEX_INT, float: REGEX_FLOAT, bool: REGEX_BOOL, str: REGEX_STR}
_NAMES = {"int": int, "float": float, "bool": bool, "str": str}


def _dtype(dtype: Any) -> type | None:
    if isinstance(dtype, str):
        return _NAMES.get(dtype)
    return next((t for t in _DTYPES if dtype is t), None)   # `is`: a list is not hashable


def regex_for_dtype(dtype: Any) -> str:
    """The constraint regex for `int`, `float`, `bool` or `str` (or their names)."""
    t = _dtype(dtype)
    if t is None:
        raise LmnbError(f"dtype {dtype!r} is not supported; use int, float, bool or str "
                        "(or json_schema= for structured output)")
    return _DTYPES[t]


def parse_value(dtype_or_schema: Any, text: str) -> Any:
    """Turn generated `text` into a Python value for a dtype or a JSON schema."""
    t = _dtype(dtype_or_schema) if not isinstance(dtype_or_schema, dict) else None
    try:
        if t is int:
            return int(text.strip())
        if t is float:
            return float(text.strip())
        if t is bool:
            word = text.strip().lower()
            if word not in ("true", "false"):
                raise ValueError(f"not a boolean: {text!r}")
            return word == "true"
        if t is str:
            return json.loads(text)
        if hasattr(dtype_or_schema, "model_validate_json"):
            return dtype_or_schema.model_validate_json(text)
        if isinstance(dtype_or_schema, (dict, str, bytes)):
            return json.loads(text)
    except ValueError as e:  # json.JSONDecodeError and pydantic.ValidationError are ValueErrors
        raise LmnbError(f"generated text {text[:60]!r} does not parse as "
                        f"{getattr(dtype_or_schema, '__name__', 'the schema')}: "
                        f"{str(e).splitlines()[0]}") from None
    raise LmnbError(f"cannot parse to {dtype_or_schema!r}; pass int, float, bool, str or a schema")
