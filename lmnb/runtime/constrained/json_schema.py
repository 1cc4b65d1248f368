"""JSON schema → regex or Lark grammar whose matches are JSON documents valid under it.

Supported: string / integer / number / boolean / null; objects with required and optional
properties (in declared order), `additionalProperties` and `patternProperties` (schemas
for the other keys, after the declared ones) and min/maxProperties; arrays with
minItems/maxItems and prefixItems; enum, const, anyOf / oneOf, allOf (merged into one
schema), local `$ref` including recursive ones (unrolled `RECURSION_DEPTH` levels deep);
string minLength/maxLength, `pattern` (a search unless anchored, escaped for JSON: see
`regex_emit.py`) and the formats in `json_terminals.FORMATS`; number and integer bounds of
any sign, exclusive or inclusive, fractional; integer `multipleOf`. Any other keyword, or
a combination the regex cannot express, raises an `LmnbError` naming it and its path: a
constraint is never silently dropped.
"""
from __future__ import annotations

import json
import re
from typing import Any

from lmnb.errors import LmnbError
from lmnb.runtime.constrained import json_terminals as T
from lmnb.runtime.constrained.grammar_out import EMPTY, LarkOut, RegexOut
from lmnb.runtime.constrained.json_numbers import integer_multiple, number_range
from lmnb.runtime.constrained.json_schema_check import bounds, check_node, number_bounds
from lmnb.runtime.constrained.regex_emit import json_string_pattern, regex_literal

Whitespace = str  # "compact", "flexible" or a regex used between JSON tokens
FLEXIBLE_WS = r"[ \t\n]{0,16}"
ANY_DEPTH = 2  # nesting depth of values a schema leaves unconstrained
# a larger regex takes seconds to compile into an automaton (43k characters: ~4 s)
MAX_REGEX_CHARS = 200_000
# a recursive $ref is unrolled this many levels; past it the recursive branch is left out
# (an optional property, an array's items, an anyOf option), or the schema is refused
RECURSION_DEPTH = 4

_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment",
                "readOnly", "writeOnly", "deprecated", "$defs", "definitions"}
_BY_TYPE = {
    "string": {"minLength", "maxLength", "pattern", "format"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "object": {"properties", "required", "additionalProperties", "patternProperties",
               "minProperties", "maxProperties"},
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
    return _build(schema, whitespace, RegexOut())


def build_lark_from_schema(schema: Any, whitespace: Whitespace = "compact",
                           out: LarkOut | None = None) -> str:
    """The same language as `build_regex_from_schema`, as a Lark grammar for llguidance:
    each JSON terminal a lexeme, the structure grammar rules (see `grammar_out.py`).
    `out` may be a `LarkOut` subclass that rewrites terminals (`string_masks.ProbeLarkOut`)."""
    return _build(schema, whitespace, LarkOut() if out is None else out)


def _build(schema: Any, whitespace: Whitespace, out) -> str:
    ws = {"compact": "", "flexible": FLEXIBLE_WS}.get(whitespace, whitespace)
    root = schema_to_dict(schema)
    try:
        return out.finish(_Converter(root, ws, out).convert(root, "#", ()))
    except _Never as e:
        raise LmnbError(f"recursive $ref {e.ref!r} at {e.path} cannot end within "
                        f"{RECURSION_DEPTH} levels (lmnb unrolls recursion that deep); make the "
                        "recursive property optional or its array allow no items") from None
    except RecursionError:
        raise LmnbError("json_schema is nested too deeply for constrained decoding; flatten it") from None


class _Never(Exception):
    """A recursive $ref past RECURSION_DEPTH: the branch holding it must be left out."""

    def __init__(self, ref: str, path: str):
        super().__init__(ref)
        self.ref, self.path = ref, path


_MERGE_MIN = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_MERGE_MAX = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")


class _Converter:
    """Schema -> parts of `out` (a `grammar_out` output: one regex, or a Lark grammar).
    Every decision about the language is made here, once for both outputs."""

    def __init__(self, root: dict, ws: str, out):
        self.root = root
        self.ws = ws
        self.out = out
        self.sep = out.leaf(f"{ws},{ws}")

    def convert(self, s: Any, path: str, refs: tuple[str, ...]) -> str:
        out = self._convert(s, path, refs)
        if self.out.size(out) > MAX_REGEX_CHARS:  # checked per level: nested arrays double it each time
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
        if "allOf" in s:
            return self.convert(self._all_of(s, path), f"{path}/allOf", refs)
        if "const" in s:
            return self.out.leaf(T.literal(s["const"]))
        if "enum" in s:
            return self._alternation([self.out.leaf(T.literal(v)) for v in s["enum"]])
        for key in ("anyOf", "oneOf"):
            if key in s:
                return self._options([(lambda i=i, sub=sub, key=key: self.convert(
                    self._merge(s, key, sub), f"{path}/{key}/{i}", refs))
                    for i, sub in enumerate(s[key])])
        return self._typed(s, path, refs)

    def _options(self, builders) -> str:
        """Alternation of the options that can still end (see `_Never`)."""
        out, never = [], None
        for build in builders:
            try:
                out.append(build())
            except _Never as e:
                never = e
        if not out and never is not None:
            raise never
        return self._alternation(out)

    @staticmethod
    def _merge(s: dict, key: str, sub: Any) -> Any:
        """A branch of anyOf/oneOf, with the parent's sibling keywords folded in."""
        rest = {k: v for k, v in s.items() if k != key and k not in _ANNOTATIONS}
        if not rest or not isinstance(sub, dict):
            return sub
        return _merge_all([rest, sub], key)

    def _all_of(self, s: dict, path: str) -> dict:
        parts = [{k: v for k, v in s.items() if k != "allOf"}]
        for i, sub in enumerate(s["allOf"]):
            if sub is True:
                continue
            if not isinstance(sub, dict):
                raise LmnbError(f"allOf/{i} at {path} must be a schema object; got {sub!r}")
            parts.append(self._resolve(sub, f"{path}/allOf/{i}"))
        return _merge_all(parts, f"{path}/allOf")

    def _resolve(self, s: dict, path: str, seen: tuple = ()) -> dict:
        """`s` with a top-level $ref replaced by its target (for merging)."""
        if "$ref" not in s:
            return s
        ref = s["$ref"]
        if ref in seen:
            raise LmnbError(f"allOf at {path} merges a recursive $ref {ref!r}; not supported")
        target = self._target(ref, path)
        rest = {k: v for k, v in s.items() if k != "$ref"}
        merged = _merge_all([rest, self._resolve(target, ref, seen + (ref,))], path) if rest else target
        return self._resolve(merged, path, seen + (ref,))

    def _target(self, ref: Any, path: str) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise LmnbError(f"$ref {ref!r} at {path} is not local; only '#/...' references work")
        target: Any = self.root
        for part in ref[1:].split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise LmnbError(f"$ref {ref!r} at {path} points to nothing; fix the reference")
            target = target[part]
        return target

    def _ref(self, s: dict, path: str, refs: tuple[str, ...]) -> str:
        ref = s["$ref"]
        extra = set(s) - _ANNOTATIONS - {"$ref"}
        target = self._target(ref, path)
        if refs.count(ref) >= RECURSION_DEPTH:
            raise _Never(ref, path)
        if extra:   # keywords beside $ref apply too (draft 2019+): merge them in
            target = _merge_all([{k: s[k] for k in extra}, self._resolve(target, ref)], path)
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
            return self._options([lambda t=t: self.convert(
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
        lo, hi = int(s.get("minLength", 0)), _opt_int(s.get("maxLength"))
        if "pattern" in s and ("format" in s or has_len):
            other = "format" if "format" in s else "minLength" if "minLength" in s else "maxLength"
            raise LmnbError(f"string at {path} combines pattern with {other}; a regex cannot "
                            "intersect them: fold the constraint into the pattern")
        if "format" in s:
            fmt = s["format"]
            if fmt not in T.FORMATS:
                raise LmnbError(f"string format {fmt!r} at {path} is not supported; "
                                f"use one of {sorted(T.FORMATS)} or a pattern")
            short, long = T.FORMAT_LENGTHS.get(fmt, (1, None))
            if has_len and (lo > short or hi is not None and (long is None or hi < long)):
                raise LmnbError(f"string at {path} combines format {fmt!r} with min/maxLength "
                                "that cut into it; drop the length or use a pattern")
            return self.out.leaf(f'"{T.FORMATS[fmt]}"')
        if "pattern" in s:
            return self.out.leaf('"' + json_string_pattern(s["pattern"], f"string pattern at {path}") + '"')
        if has_len:
            return self.out.leaf(T.string_of_length(lo, hi))
        return self.out.leaf(T.STRING)

    def _integer(self, s: dict, path: str, refs) -> str:
        lo, hi = bounds(s)
        if "multipleOf" in s:
            return self.out.leaf(integer_multiple(s["multipleOf"], lo, hi))
        return self.out.leaf(T.integer_range(lo, hi))

    def _number(self, s: dict, path: str, refs) -> str:
        if "multipleOf" in s:
            k = s["multipleOf"]
            if not float(k).is_integer():
                raise LmnbError(f"multipleOf {k} on a number at {path} is not supported; use a "
                                "whole multipleOf (or an integer with a scaled unit)")
            return self._integer({**s, "type": "integer"}, path, refs)
        lo, lo_ex, hi, hi_ex = number_bounds(s)
        return self.out.leaf(number_range(lo, hi, lo_ex, hi_ex))

    def _boolean(self, s: dict, path: str, refs) -> str:
        return self.out.leaf(T.BOOLEAN)

    def _null(self, s: dict, path: str, refs) -> str:
        return self.out.leaf(T.NULL)

    def _object(self, s: dict, path: str, refs) -> str:
        props: dict = s.get("properties") or {}
        required = list(s.get("required", []))
        missing = [r for r in required if r not in props]
        if missing:
            raise LmnbError(f"required property {missing[0]!r} at {path} is not in properties; "
                            "declare it")
        lo, hi = int(s.get("minProperties", 0)), _opt_int(s.get("maxProperties"))
        if hi is not None and hi < max(lo, len(required)):
            raise LmnbError(f"maxProperties {hi} at {path} is below minProperties or the required "
                            "properties; fix the schema")
        ws = self.ws
        members = []
        for name, sub in props.items():
            try:
                value = self.convert(sub, f"{path}/properties/{name}", refs)
            except _Never:
                if name in required:
                    raise
                continue
            members.append((self.out.seq(self.out.leaf(f"{T.literal(name)}{ws}:{ws}"), value),
                            name in required))
        pair = self._free_pair(s, path, refs, list(props))
        if lo == 0 and hi is None:
            body = self._members(members, pair)
        else:
            body = self._counted(members, pair, lo, hi, path)
        return self._brackets(r"\{", body, r"\}")

    def _free_pair(self, s: dict, path: str, refs, declared: list[str]) -> str | None:
        """Regex of one `"key":value` for keys other than the declared ones, or None."""
        extra = s.get("additionalProperties", None)
        pats = s.get("patternProperties") or {}
        ws = self.ws
        if pats:
            if len(pats) > 1:
                raise LmnbError(f"patternProperties with {len(pats)} patterns at {path} is not "
                                "supported (keys matching two patterns need both schemas); "
                                "merge them into one pattern")
            (pattern, sub), = pats.items()
            where = f"patternProperties pattern at {path}"
            key = json_string_pattern(pattern, where)
            clash = [n for n in declared if re.search(pattern, n)]
            if clash:
                raise LmnbError(f"{where} matches the declared property {clash[0]!r}; not "
                                "supported: make the pattern exclude it")
            try:
                value = self.convert(sub, f"{path}/patternProperties/{pattern}", refs)
            except _Never:
                return None
            # other free keys are not generated
            return self.out.seq(self.out.leaf(f'"{key}"{ws}:{ws}'), value)
        if extra is False or (extra in (None, True) and declared):
            return None   # beside declared properties, unconstrained free keys are not generated
        try:
            value = (self.any_value(ANY_DEPTH - 1) if extra in (None, True)
                     else self.convert(extra, f"{path}/additionalProperties", refs))
        except _Never:
            return None
        return self.out.seq(self.out.leaf(f'"{_string_not_in(declared)}"{ws}:{ws}'), value)

    def _members(self, items: list[tuple[str, bool]], pair: str | None = None) -> str:
        """Comma-joined members where optional ones may be absent, keeping declared order,
        then any number of free pairs."""
        o, sep = self.out, self.sep
        if pair is not None:
            items = items + [(o.seq(pair, o.rep(o.seq(sep, pair), 0, None)), False)]
        if not items:
            return EMPTY
        tails = [EMPTY] * (len(items) + 1)  # tails[i]: members after i, each with a leading comma
        for i in range(len(items) - 1, -1, -1):
            text, req = items[i]
            tails[i] = o.seq(sep, text, tails[i + 1]) if req else \
                o.seq(o.opt(o.seq(sep, text)), tails[i + 1])
        options = []
        for i, (text, req) in enumerate(items):  # i: the first member present
            options.append(o.seq(text, tails[i + 1]))
            if req:
                break
        body = self._alternation(options)
        return body if any(req for _, req in items) else o.opt(body)

    def _counted(self, items: list[tuple[str, bool]], pair: str | None, lo: int,
                 hi: int | None, path: str) -> str:
        """Members with between lo and hi of them present (min/maxProperties)."""
        o, sep = self.out, self.sep
        n = len(items)
        memo: dict = {}

        def rest(i: int, need: int, room: int | None, first: bool) -> str | None:
            """Members i.. (and free pairs) adding between need and room."""
            key = (i, need, room, first)
            if key in memo:
                return memo[key]
            lead = EMPTY if first else sep
            if i == n:
                if pair is None or room == 0:
                    out = EMPTY if need == 0 else None
                else:
                    more = None if room is None else room - 1
                    chain = o.seq(lead, pair, o.rep(o.seq(sep, pair), max(need - 1, 0), more))
                    out = chain if need > 0 else o.opt(chain)
                memo[key] = out
                return out
            text, req = items[i]
            options = []
            if room is None or room > 0:
                tail = rest(i + 1, max(need - 1, 0), None if room is None else room - 1, False)
                if tail is not None:
                    options.append(o.seq(lead, text, tail))
            if not req:
                tail = rest(i + 1, need, room, first)
                if tail is not None:
                    options.append(tail)
            out = o.alt(options) if options else None
            if out is not None and o.size(out) > MAX_REGEX_CHARS:
                raise LmnbError(f"min/maxProperties at {path} over {n} properties expands past "
                                f"{MAX_REGEX_CHARS:,} regex characters; relax them")
            memo[key] = out
            return out

        body = rest(0, lo, hi, True)
        if body is None:
            raise LmnbError(f"minProperties {lo} at {path} cannot be met by the allowed "
                            "properties; fix the schema")
        return body

    def _array(self, s: dict, path: str, refs) -> str:
        if s.get("uniqueItems"):
            raise LmnbError(f"uniqueItems at {path} cannot be enforced by a regex; remove it")
        lo, hi = int(s.get("minItems", 0)), _opt_int(s.get("maxItems"))
        if hi is not None and hi < lo:
            raise LmnbError(f"maxItems {hi} is below minItems {lo} at {path}; fix the schema")
        items = s.get("items")
        prefix = s.get("prefixItems", items if isinstance(items, list) else None)
        if prefix is not None:
            return self._tuple(prefix, s, path, refs, lo, hi)
        try:
            item = self.any_value(ANY_DEPTH - 1) if items in (None, True) else self.convert(
                items, f"{path}/items", refs) if items is not False else None
        except _Never:
            if lo > 0:
                raise
            item = None
        if hi == 0 or item is None:   # items: false allows only the empty array
            if lo > 0:
                raise LmnbError(f"minItems {lo} with items false at {path} matches nothing; fix the schema")
            return self.out.leaf(rf"\[{self.ws}\]")
        o = self.out
        body = o.seq(item, o.rep(o.seq(self.sep, item), max(lo - 1, 0), None if hi is None else hi - 1))
        return self._brackets(r"\[", body if lo else o.opt(body), r"\]")

    def _tuple(self, prefix: list, s: dict, path: str, refs, lo: int, hi: int | None) -> str:
        n = len(prefix)
        if lo > n or (hi is not None and hi < n) or s.get("items") not in (None, False, prefix):
            raise LmnbError(f"prefixItems with extra items or item counts other than {n} at {path} "
                            "are not supported; make the tuple exact")
        parts = []
        for i, sub in enumerate(prefix):
            parts += [self.sep] * bool(parts) + [self.convert(sub, f"{path}/prefixItems/{i}", refs)]
        return self._brackets(r"\[", self.out.seq(*parts), r"\]")

    def _brackets(self, left: str, body: str, right: str) -> str:
        """`left` body `right` (bracket regexes), with the whitespace allowed inside them."""
        o, ws = self.out, self.ws
        return o.seq(o.leaf(left + ws), body, o.leaf(ws + right))

    def any_value(self, depth: int) -> str:
        """Any JSON value nested at most `depth` levels (regexes cannot count brackets)."""
        o = self.out
        scalar = self._alternation([o.leaf(t) for t in (T.STRING, T.NUMBER, T.BOOLEAN, T.NULL)])
        if depth <= 0:
            return scalar
        inner, ws = self.any_value(depth - 1), self.ws
        arr = self._brackets(r"\[", o.opt(o.seq(inner, o.rep(o.seq(self.sep, inner), 0, None))), r"\]")
        pair = o.seq(o.leaf(f"{T.STRING}{ws}:{ws}"), inner)
        obj = self._brackets(r"\{", o.opt(o.seq(pair, o.rep(o.seq(self.sep, pair), 0, None))), r"\}")
        return self._alternation([scalar, arr, obj])

    def _alternation(self, options: list[str]) -> str:
        if not options:
            raise LmnbError("an empty enum/anyOf/oneOf matches nothing; give at least one option")
        return self.out.alt(options)


def _merge_all(parts: list[dict], path: str) -> dict:
    """One schema equivalent to all of `parts` holding at once (allOf), or LmnbError."""
    out: dict = {}
    for part in parts:
        for k, v in part.items():
            if k in _ANNOTATIONS or k not in out:
                out.setdefault(k, v)
                continue
            out[k] = _merge_key(k, out[k], v, path)
    closed = [p for p in parts if p.get("additionalProperties") is False]
    if closed and len(parts) > 1:
        names = set().union(*((p.get("properties") or {}).keys() for p in parts))
        for p in closed:
            if names - set(p.get("properties") or {}):
                raise LmnbError(f"allOf at {path} joins additionalProperties false with properties "
                                "declared in another part; move them into one schema")
    return out


def _merge_key(k: str, a: Any, b: Any, path: str) -> Any:
    if a == b:
        return a
    if k in _MERGE_MIN and not isinstance(a, bool) and not isinstance(b, bool):
        return max(a, b)
    if k in _MERGE_MAX and not isinstance(a, bool) and not isinstance(b, bool):
        return min(a, b)
    if k == "required":
        return list(dict.fromkeys([*a, *b]))
    if k == "type":
        ta, tb = ({a} if isinstance(a, str) else set(a)), ({b} if isinstance(b, str) else set(b))
        if "number" in ta and "integer" in tb or "integer" in ta and "number" in tb:
            ta, tb = ta | {"integer"}, tb | {"integer"}
        both = [t for t in (a if isinstance(a, list) else [a]) if t in tb] or \
               (["integer"] if "integer" in ta & tb else [])
        if not both:
            raise LmnbError(f"allOf at {path} combines types {a!r} and {b!r}, which no value has")
        return both[0] if len(both) == 1 else both
    if k == "enum":
        both = [v for v in a if v in b]
        if not both:
            raise LmnbError(f"allOf at {path} combines enums with no common value")
        return both
    if k == "properties":
        merged = dict(a)
        for name, sub in b.items():
            merged[name] = sub if name not in merged else {"allOf": [merged[name], sub]}
        return merged
    if k in ("items", "additionalProperties") and isinstance(a, dict) and isinstance(b, dict):
        return {"allOf": [a, b]}
    if k == "additionalProperties" and (a is False or b is False):
        return False
    raise LmnbError(f"allOf at {path} combines different {k!r} values ({str(a)[:30]} and "
                    f"{str(b)[:30]}); merge them into one schema")


def _string_not_in(names: list[str]) -> str:
    """JSON string content (raw characters only) that decodes to none of `names`."""
    raw = r'[^"\\\x00-\x1f]'
    if not names:
        return f"{raw}*"
    tree: dict = {}
    for n in names:
        node = tree
        for c in n:
            node = node.setdefault(c, {})
        node[""] = {}

    escape = regex_literal
    def emit(node: dict) -> str:
        kids = [c for c in node if c]
        other = ("[^" + "".join(escape(c) for c in kids) + '"\\\\\\x00-\\x1f]') if kids else raw
        options = [f"{other}{raw}*"] + [escape(c) + emit(node[c]) for c in kids]
        body = "(?:" + "|".join(options) + ")"
        return body if "" in node else f"(?:{body})?"

    return emit(tree)


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)
