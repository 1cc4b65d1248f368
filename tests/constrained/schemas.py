"""A corpus of JSON schemas of varied shape, shared by tests and the benchmark."""
from __future__ import annotations

STR, INT, NUM, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}

SCHEMAS: dict[str, dict] = {
    "string": STR,
    "integer": INT,
    "number": NUM,
    "boolean": BOOL,
    "null": {"type": "null"},
    "flat_required": {"type": "object", "properties": {"name": STR, "age": INT},
                      "required": ["name", "age"]},
    "all_optional": {"type": "object", "properties": {"a": INT, "b": STR, "c": BOOL}},
    "optional_middle": {"type": "object", "properties": {"a": INT, "b": STR, "c": BOOL},
                        "required": ["a", "c"]},
    "optional_first": {"type": "object", "properties": {"x": NUM, "y": NUM, "z": NUM},
                       "required": ["z"]},
    "nested": {"type": "object", "required": ["user"], "properties": {
        "user": {"type": "object", "required": ["id", "profile"], "properties": {
            "id": INT, "profile": {"type": "object", "required": ["bio"],
                                   "properties": {"bio": STR, "age": INT}}}}}},
    "array_strings": {"type": "array", "items": STR},
    "array_bounded": {"type": "array", "items": INT, "minItems": 2, "maxItems": 4},
    "array_exact": {"type": "array", "items": BOOL, "minItems": 3, "maxItems": 3},
    "array_empty_only": {"type": "array", "items": INT, "maxItems": 0},
    "array_min_only": {"type": "array", "items": NUM, "minItems": 1},
    "array_of_objects": {"type": "array", "maxItems": 3, "items": {
        "type": "object", "properties": {"k": STR, "v": INT}, "required": ["k", "v"]}},
    "tuple": {"type": "array", "prefixItems": [STR, INT, BOOL]},
    "enum_strings": {"enum": ["red", "green", "blue"]},
    "enum_mixed": {"enum": ["a", 1, 2.5, True, None, {"x": [1, 2]}]},
    "const": {"const": {"version": 2, "tag": "stable"}},
    "any_of": {"anyOf": [INT, {"type": "string", "maxLength": 3}, {"type": "null"}]},
    "one_of_objects": {"oneOf": [
        {"type": "object", "properties": {"kind": {"const": "circle"}, "r": NUM},
         "required": ["kind", "r"]},
        {"type": "object", "properties": {"kind": {"const": "rect"}, "w": NUM, "h": NUM},
         "required": ["kind", "w", "h"]}]},
    "type_list": {"type": ["string", "integer", "null"], "maxLength": 4},
    "ref_defs": {"$defs": {"Point": {"type": "object", "properties": {"x": INT, "y": INT},
                                     "required": ["x", "y"]}},
                 "type": "object", "properties": {"a": {"$ref": "#/$defs/Point"},
                                                  "b": {"$ref": "#/$defs/Point"}},
                 "required": ["a", "b"]},
    "ref_definitions": {"definitions": {"Tag": {"type": "string", "enum": ["x", "y"]}},
                        "type": "array", "items": {"$ref": "#/definitions/Tag"}, "maxItems": 5},
    "string_lengths": {"type": "string", "minLength": 2, "maxLength": 5},
    "string_pattern": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
    "formats": {"type": "object", "required": ["d", "t", "u", "ip"], "properties": {
        "d": {"type": "string", "format": "date"}, "t": {"type": "string", "format": "date-time"},
        "u": {"type": "string", "format": "uuid"}, "ip": {"type": "string", "format": "ipv4"}}},
    "integer_bounds": {"type": "integer", "minimum": -15, "maximum": 120},
    "integer_exclusive": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 1000},
    "number_bounds": {"type": "number", "minimum": 0, "maximum": 1},
    "free_object": {"type": "object"},
    "map_of_ints": {"type": "object", "additionalProperties": INT},
    "closed_empty": {"type": "object", "additionalProperties": False},
    "any_value": {},
    "unicode_keys": {"type": "object", "properties": {"名前": STR, "émoji 😀": BOOL},
                     "required": ["名前", "émoji 😀"]},
    "escaped_keys": {"type": "object", "properties": {'quo"te': INT, "back\\slash": INT,
                                                      "dot.key": INT}, "required": ['quo"te']},
    "deep_arrays": {"type": "array", "maxItems": 2, "items": {
        "type": "array", "maxItems": 2, "items": {"type": "array", "maxItems": 2, "items": INT}}},
    "order_form": {"title": "Order", "type": "object", "required": ["id", "items", "status"],
                   "properties": {
                       "id": {"type": "string", "format": "uuid"},
                       "items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
                           "type": "object", "required": ["sku", "qty"], "properties": {
                               "sku": {"type": "string", "pattern": "[A-Z]{3}[0-9]{2}"},
                               "qty": {"type": "integer", "minimum": 1, "maximum": 99}}}},
                       "status": {"enum": ["new", "paid", "shipped"]},
                       "note": {"anyOf": [STR, {"type": "null"}], "default": None}}},
}
