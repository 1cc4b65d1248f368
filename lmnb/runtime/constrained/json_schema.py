"""JSON schema → regex whose matches are JSON documents valid under the schema.

Supported: string / integer / number / boolean / null, nested objects with
required and optional properties (in declared order), arrays with
minItems/maxItems and prefixItems, enum, const, anyOf / oneOf, single-element
allOf, local `$ref` (`#/$defs/...`, `#/definitions/...`), string
minLength/maxLength, pattern and common formats, integer bounds and integral
non-negative number bounds. Any other keyword raises an `LmnbError` naming it:
a constraint is never silently dropped.
"""
from __future__ import annotations

import json
from typing import Any

from lmnb.errors import LmnbError
from lmnb.runtime.constrained import json_terminals as T
from lmnb.runtime.constrained.json_schema_check import bounds, check_node
from lmnb.runtime.constrained.regex_check import normalize_regex

Whitespace = str  # "compact", "flexible" or a regex used between JSON tokens
FLEXIBLE_WS = r"[ \t\n]{0,16}"
ANY_DEPTH = 2  # nesting depth of values a schema leaves unconstrained
# a larger regex takes seconds to compile into an automaton (43k characters: ~4 s)
MAX_REGEX_CHARS = 50_000

_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment",
                "readOnly", "writeOnly", "deprecated", "$defs", "definitions"}
_BY_TYPE = {
    "string": {"minLength", "maxLength", "pattern", "format"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "prefixItems", "minItems", "maxItems", "uniqueItems"},
    "boolean": set(), "null": set(),
}
_GENERIC = {"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"}
_ALL_KNOWN = _ANNOTATIONS | _GENERIC | set().union(*_BY_TYPE.values())


def schema_to_dict(schema: Any) -> dict:
    """Accept a dict, a JSON string or a pydantic model class."""
    if isinstance(schema, dict):
        return schema
    if isinstance(schema, (str, bytes)):
        try:
            out = json.loads(schema)
        except json.JSONDecodeError as e:
            raise LmnbError(f"json_schema is not valid JSON ({e.msg} at {e.pos}); fix it") from None
        except (ValueError, RecursionError):   # undecodable bytes, absurd nesting
            raise LmnbError("json_schema is not valid UTF-8 JSON of sane depth; fix it") from None
        if not isinstance(out, (dict, bool)):
            raise LmnbError("json_schema must be a JSON object")
        return out if isinstance(out, dict) else {} if out else {"not": {}}
    if hasattr(schema, "model_json_schema"):
        return schema.model_json_schema()
    raise LmnbError(f"json_schema must be a dict, JSON string or pydantic model, "
                    f"not {type(schema).__name__}")


def build_regex_from_schema(schema: Any, whitespace: Whitespace = "compact") -> str:
    """Regex (full-match) for compact JSON valid under `schema`.

    `whitespace`: "compact" (none), "flexible" (up to 16 of space/tab/newline
    between tokens) or a regex of your own used between tokens.
    """
    ws = {"compact": "", "flexible": FLEXIBLE_WS}.get(whitespace, whitespace)
    root = schema_to_dict(schema)
    try:
        return _Converter(root, ws).convert(root, "#", ())
    except RecursionError:
        raise LmnbError("json_schema is nested too deeply for constrained decoding; flatten it") from None


class _Converter:
    def __init__(self, root: dict, ws: str):
        self.root = root
        self.ws = ws

    def convert(self, s: Any, path: str, refs: tuple[str, ...]) -> str:
        out = self._convert(s, path, refs)
        if len(out) > MAX_REGEX_CHARS:  # checked per level: nested arrays double it each time
            raise LmnbError(f"json_schema at {path} expands to a regex of {len(out):,} characters "
                            f"(limit {MAX_REGEX_CHARS:,}); flatten nested arrays or optional "
                            "properties, or constrain with a regex")
        return out

    def _convert(self, s: Any, path: str, refs: tuple[str, ...]) -> str:
        if s is True or s == {}:
            return self.any_value(ANY_DEPTH)
        if not isinstance(s, dict):
            raise LmnbError(f"schema at {path} must be an object or true; got {s!r}")
        unknown = sorted(set(s) - _ALL_KNOWN)
        if unknown:
            raise LmnbError(f"JSON schema keyword {unknown[0]!r} at {path} is not supported in "
                            "constrained decoding; remove it or use a regex")
        check_node(s, path)
        if "$ref" in s:
            return self._ref(s, path, refs)
        if "const" in s:
            return T.literal(s["const"])
        if "enum" in s:
            return self._alternation([T.literal(v) for v in s["enum"]])
        for key in ("anyOf", "oneOf"):
            if key in s:
                return self._alternation([self.convert(self._merge(s, key, sub), f"{path}/{key}/{i}",
                                                       refs) for i, sub in enumerate(s[key])])
        if "allOf" in s:
            if len(s["allOf"]) != 1:
                raise LmnbError(f"allOf with {len(s['allOf'])} schemas at {path} is not supported; "
                                "merge them into one schema")
            return self.convert(self._merge(s, "allOf", s["allOf"][0]), f"{path}/allOf/0", refs)
        return self._typed(s, path, refs)

    @staticmethod
    def _merge(s: dict, key: str, sub: Any) -> Any:
        """A branch of anyOf/oneOf/allOf, with the parent's sibling keywords folded in."""
        rest = {k: v for k, v in s.items() if k != key and k not in _ANNOTATIONS}
        if not rest or not isinstance(sub, dict):
            return sub
        return {**rest, **sub}

    def _ref(self, s: dict, path: str, refs: tuple[str, ...]) -> str:
        ref = s["$ref"]
        extra = set(s) - _ANNOTATIONS - {"$ref"}
        if extra:
            raise LmnbError(f"keywords {sorted(extra)} next to $ref at {path} are not supported; "
                            "move them into the referenced schema")
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise LmnbError(f"$ref {ref!r} at {path} is not local; only '#/...' references work")
        if ref in refs:
            raise LmnbError(f"recursive $ref {ref!r} at {path} cannot be expressed as a regex; "
                            "unroll the recursion to a fixed depth")
        target: Any = self.root
        for part in ref[1:].split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise LmnbError(f"$ref {ref!r} at {path} points to nothing; fix the reference")
            target = target[part]
        return self.convert(target, ref, refs + (ref,))

    def _typed(self, s: dict, path: str, refs: tuple[str, ...]) -> str:
        kind = s.get("type")
        if kind is None:
            kind = next((t for t in ("object", "array") if set(s) & _BY_TYPE[t]), None)
            if kind is None:
                kind = next((t for t in ("string", "number") if set(s) & _BY_TYPE[t]), None)
            if kind is None:
                return self.any_value(ANY_DEPTH)
        if isinstance(kind, list):
            specific = set().union(*_BY_TYPE.values())
            return self._alternation([self.convert(
                {k: v for k, v in s.items() if k not in specific or k in _BY_TYPE.get(t, ())}
                | {"type": t}, path, refs) for t in kind])
        if kind not in _BY_TYPE:
            raise LmnbError(f"unknown JSON schema type {kind!r} at {path}; use one of "
                            f"{sorted(_BY_TYPE)}")
        foreign = sorted(set(s) & (_ALL_KNOWN - _ANNOTATIONS - _GENERIC - _BY_TYPE[kind]))
        if foreign:
            raise LmnbError(f"keyword {foreign[0]!r} does not apply to type {kind!r} at {path}; "
                            "remove it")
        return getattr(self, "_" + kind)(s, path, refs)

    def _string(self, s: dict, path: str, refs) -> str:
        has_len = "minLength" in s or "maxLength" in s
        if "pattern" in s or "format" in s:
            if has_len or ("pattern" in s and "format" in s):
                raise LmnbError(f"string at {path} combines pattern/format with other string "
                                "constraints; keep only one")
            if "format" in s:
                if s["format"] not in T.FORMATS:
                    raise LmnbError(f"string format {s['format']!r} at {path} is not supported; "
                                    f"use one of {sorted(T.FORMATS)} or a pattern")
                return f'"{T.FORMATS[s["format"]]}"'
            try:
                normalize_regex(s["pattern"])
            except LmnbError as e:
                raise LmnbError(f"string pattern at {path}: {e}") from None
            return f'"(?:{_unanchor(s["pattern"])})"'
        if has_len:
            return T.string_of_length(int(s.get("minLength", 0)), _opt_int(s.get("maxLength")))
        return T.STRING

    def _integer(self, s: dict, path: str, refs) -> str:
        lo, hi = bounds(s)
        to_int = lambda v, up: None if v is None else int(-(-v // 1) if up else v // 1)
        return T.integer_range(to_int(lo, True), to_int(hi, False))

    def _number(self, s: dict, path: str, refs) -> str:
        if "exclusiveMinimum" in s or "exclusiveMaximum" in s:
            raise LmnbError(f"exclusive bounds on a number at {path} are not supported; "
                            "use minimum/maximum")
        return T.number_range(*bounds(s))

    def _boolean(self, s: dict, path: str, refs) -> str:
        return T.BOOLEAN

    def _null(self, s: dict, path: str, refs) -> str:
        return T.NULL

    def _object(self, s: dict, path: str, refs) -> str:
        props: dict = s.get("properties") or {}
        required = list(s.get("required", []))
        missing = [r for r in required if r not in props]
        if missing:
            raise LmnbError(f"required property {missing[0]!r} at {path} is not in properties; "
                            "declare it")
        extra = s.get("additionalProperties", None)
        ws = self.ws
        if not props:
            if extra is False:
                return rf"\{{{ws}\}}"
            value = self.any_value(ANY_DEPTH - 1) if extra in (None, True) else self.convert(
                extra, f"{path}/additionalProperties", refs)
            pair = f"{T.STRING}{ws}:{ws}{value}"
            return rf"\{{{ws}(?:{pair}(?:{ws},{ws}{pair})*)?{ws}\}}"
        if extra not in (None, True, False):
            raise LmnbError(f"additionalProperties with a schema next to properties at {path} is "
                            "not supported; list the properties or drop additionalProperties")
        items = [(f"{T.literal(name)}{ws}:{ws}"
                  + self.convert(sub, f"{path}/properties/{name}", refs), name in required)
                 for name, sub in props.items()]
        return rf"\{{{ws}{self._members(items)}{ws}\}}"

    def _members(self, items: list[tuple[str, bool]]) -> str:
        """Comma-joined members where optional ones may be absent, keeping declared order."""
        sep = f"{self.ws},{self.ws}"
        tails = [""] * (len(items) + 1)  # tails[i]: members after i, each with a leading comma
        for i in range(len(items) - 1, -1, -1):
            text, req = items[i]
            tails[i] = f"{sep}{text}{tails[i + 1]}" if req else f"(?:{sep}{text})?{tails[i + 1]}"
        options = []
        for i, (text, req) in enumerate(items):  # i: the first member present
            options.append(text + tails[i + 1])
            if req:
                break
        body = self._alternation(options)
        return body if any(req for _, req in items) else f"(?:{body})?"

    def _array(self, s: dict, path: str, refs) -> str:
        if s.get("uniqueItems"):
            raise LmnbError(f"uniqueItems at {path} cannot be enforced by a regex; remove it")
        lo, hi = int(s.get("minItems", 0)), _opt_int(s.get("maxItems"))
        if hi is not None and hi < lo:
            raise LmnbError(f"maxItems {hi} is below minItems {lo} at {path}; fix the schema")
        ws, items = self.ws, s.get("items")
        sep = f"{ws},{ws}"
        prefix = s.get("prefixItems", items if isinstance(items, list) else None)
        if prefix is not None:
            return self._tuple(prefix, s, path, refs, lo, hi)
        item = self.any_value(ANY_DEPTH - 1) if items in (None, True) else self.convert(
            items, f"{path}/items", refs) if items is not False else None
        if hi == 0 or item is None:   # items: false allows only the empty array
            if lo > 0:
                raise LmnbError(f"minItems {lo} with items false at {path} matches nothing; fix the schema")
            return rf"\[{ws}\]"
        more = f"{{{max(lo - 1, 0)},{'' if hi is None else hi - 1}}}"
        body = f"{item}(?:{sep}{item}){more}"
        return rf"\[{ws}{body if lo else f'(?:{body})?'}{ws}\]"

    def _tuple(self, prefix: list, s: dict, path: str, refs, lo: int, hi: int | None) -> str:
        n = len(prefix)
        if lo > n or (hi is not None and hi < n) or s.get("items") not in (None, False, prefix):
            raise LmnbError(f"prefixItems with extra items or item counts other than {n} at {path} "
                            "are not supported; make the tuple exact")
        sep = f"{self.ws},{self.ws}"
        parts = [self.convert(sub, f"{path}/prefixItems/{i}", refs) for i, sub in enumerate(prefix)]
        return rf"\[{self.ws}{sep.join(parts)}{self.ws}\]"

    def any_value(self, depth: int) -> str:
        """Any JSON value nested at most `depth` levels (regexes cannot count brackets)."""
        scalar = self._alternation([T.STRING, T.NUMBER, T.BOOLEAN, T.NULL])
        if depth <= 0:
            return scalar
        inner, ws = self.any_value(depth - 1), self.ws
        sep = f"{ws},{ws}"
        arr = rf"\[{ws}(?:{inner}(?:{sep}{inner})*)?{ws}\]"
        pair = f"{T.STRING}{ws}:{ws}{inner}"
        obj = rf"\{{{ws}(?:{pair}(?:{sep}{pair})*)?{ws}\}}"
        return self._alternation([scalar, arr, obj])

    @staticmethod
    def _alternation(options: list[str]) -> str:
        if not options:
            raise LmnbError("an empty enum/anyOf/oneOf matches nothing; give at least one option")
        return options[0] if len(options) == 1 else "(?:" + "|".join(options) + ")"


def _unanchor(pattern: str) -> str:
    pattern = pattern.removeprefix("^")
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1]
    return pattern


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)
