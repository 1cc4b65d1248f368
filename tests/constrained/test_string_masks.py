"""Masks inside plain-text strings (string_masks.py): the table-and-probe mask is exactly
llguidance's own mask of the same state, along random walks that go through escapes,
partial UTF-8 characters, unions of string terminals and strings near their bounds."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from lmnb.runtime.constrained.json_schema import build_lark_from_schema
from lmnb.runtime.constrained.llg import LlgBackend
from lmnb.runtime.constrained.string_masks import (
    BOUND_TAG,
    OTHER_TAG,
    UNBOUNDED,
    PlainTable,
    ProbeLarkOut,
    chars_since_quote,
)

S = {"type": "string"}
SCHEMAS = {
    "bounded": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                                 "note": {"type": "string", "minLength": 2,
                                                          "maxLength": 9}},
                "required": ["name", "note"]},
    "array": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 4},
              "maxItems": 5},
    # unions: two bounds at once, a bound beside an enum, a format or a pattern
    "two_bounds": {"type": "object", "properties": {"v": {"anyOf": [
        {"type": "string", "maxLength": 3}, {"type": "string", "minLength": 5, "maxLength": 8}]}},
        "required": ["v"]},
    "bound_or_enum": {"type": "object", "properties": {"v": {"anyOf": [
        {"type": "string", "maxLength": 5}, {"enum": ["alphabetical", "beta"]}]}},
        "required": ["v"]},
    "bound_or_format": {"type": "object", "properties": {"v": {"anyOf": [
        {"type": "string", "maxLength": 7}, {"type": "string", "format": "date"}]}},
        "required": ["v"]},
    "bound_or_pattern": {"type": "object", "properties": {"v": {"anyOf": [
        {"type": "string", "maxLength": 4}, {"type": "string", "pattern": "^a+$"}]}},
        "required": ["v"]},
    "free_keys": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 5},
                  "maxProperties": 3},
    "unbounded": {"type": "object", "properties": {"a": S, "b": {"type": "string", "maxLength": 2}},
                  "required": ["a", "b"]},
}


@pytest.fixture(scope="module")
def llg(smol_tokenizer):
    return LlgBackend(smol_tokenizer, vocab_size=len(smol_tokenizer) + 64)


def _ids(bits: np.ndarray, width: int) -> np.ndarray:
    return np.flatnonzero(np.unpackbits(bits.view(np.uint8), bitorder="little")[:width])


def _llguidance_bits(cursor) -> np.ndarray:
    vocab = cursor.guide.vocab
    bits = np.zeros(vocab.words, np.int32)
    cursor.matcher.deep_copy().unsafe_compute_mask_ptr(bits.ctypes.data, vocab.llg_words * 4)
    return bits


def _feed(cursor, text: str) -> None:
    for t in cursor.guide.vocab.encode_bytes(text.encode()):
        cursor.accept_token(t)


def _interesting(vocab) -> np.ndarray:
    """Tokens a walk should try often: escapes, quotes, non-ASCII and partial characters."""
    flags = np.zeros(vocab.vocab_size, bool)
    for i, t in enumerate(vocab.tokens):
        flags[i] = bool(t) and (b"\\" in t or b'"' in t or max(t) >= 0x80)
    return flags


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_string_masks_equal_llguidance_masks(llg, name):
    guide = llg.compile(json_schema=json.dumps(SCHEMAS[name]))
    assert guide.has_probe
    vocab = guide.vocab
    special = _interesting(vocab)
    rng = random.Random(name)
    fast = 0
    for _ in range(12):
        cursor = guide.cursor()
        for _ in range(40):
            if cursor.is_terminated():
                break
            bits = cursor.string_bits()
            if bits is not None:
                fast += 1
                assert (bits == _llguidance_bits(cursor)).all(), bytes(cursor.text_bytes)
            allowed = _ids(cursor.bitmask(), vocab.vocab_size)
            allowed = allowed[~np.isin(allowed, vocab.eos_ids)]
            if not len(allowed):
                break
            odd = allowed[special[allowed]]
            pick = odd if len(odd) and rng.random() < 0.5 else allowed
            cursor.accept_token(int(rng.choice(list(pick))))
        assert cursor.probe is not None
    # beside an enum, a format or a pattern the other terminal's way out stays open for the
    # whole string, so those strings keep llguidance's own masks
    assert fast >= 5 if name in TABLE_PATH else fast == 0


TABLE_PATH = {"bounded", "array", "two_bounds", "free_keys", "unbounded"}


def test_batch_masks_take_the_table_path(llg):
    from lmnb.runtime.constrained.llg import LlgCursor

    guide = llg.compile(json_schema=json.dumps(SCHEMAS["bounded"]))
    cursors = [guide.cursor() for _ in range(3)]
    for c, text in zip(cursors, ['{"name":"ab', '{"name":"', '{"name":"abcdef","note":"x']):
        _feed(c, text)
    expect = np.stack([_llguidance_bits(c) for c in cursors])
    assert all(c.string_bits() is not None for c in cursors)
    assert (LlgCursor.batch_bitmasks(cursors) == expect).all()


def test_no_probe_where_tags_cannot_tell_strings_apart(llg):
    # a const object holds strings that do not start its terminal: no probe, llguidance's masks
    const = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 3},
                                              "b": {"const": {"k": "v"}}}, "required": ["a", "b"]}
    out = ProbeLarkOut()
    build_lark_from_schema(const, out=out)
    assert not out.usable
    assert not llg.compile(json_schema=json.dumps(const)).has_probe
    # no plain-text string with a maxLength: nothing to gain
    assert not llg.compile(json_schema=json.dumps({"enum": ["a", "b"]})).has_probe
    assert not llg.compile(json_schema=json.dumps({"type": "array", "items": S})).has_probe
    cursor = llg.compile(json_schema=json.dumps(const)).cursor()
    _feed(cursor, '{"a":"x')
    assert cursor.string_bits() is None


def test_probe_grammar_records_bounds():
    out = ProbeLarkOut()
    build_lark_from_schema(SCHEMAS["unbounded"], out=out)
    assert out.usable and out.bounds == {None, 2}
    assert f"\\x{BOUND_TAG:02x}" in out.text and f"\\x{OTHER_TAG:02x}" in out.text


def _toy_table() -> tuple[PlainTable, list[bytes]]:
    tokens = [bytes([b]) for b in range(256)] + [
        b"ab", b"caf\xc3\xa9", b"\\n", b"a\\u00e9", b"x\\u00", b"\\ud8", b"\xe2\x82", b'a"', b"\n\n",
        b'\\"q', b"\xff\xfe"]
    return PlainTable.build(tokens, (len(tokens) + 31) // 32), tokens


def test_plain_table_counts_characters_of_inner_tokens():
    table, tokens = _toy_table()
    width = len(tokens)
    where = {t: i for i, t in enumerate(tokens)}

    def count(t: bytes) -> int | None:
        rows = [k for k in range(1, len(table.upto)) if where[t] in _ids(table.upto[k], width)]
        return rows[0] if rows else None

    assert count(b"ab") == 2 and count(b"caf\xc3\xa9") == 4 and count(b"\\n") == 1
    assert count(b"a\\u00e9") == 2 and count(b"x\\u00") == 2   # a partial escape counts
    assert count(b"\xe2\x82") == 1 and count(b'\\"q') == 2
    for t in (b"\\ud8", b'a"', b"\n\n", b"\xff\xfe", b'"', b"\x02"):   # never inner
        assert count(t) is None
    kept = set(_ids(table.keep, width).tolist())
    assert where[b'a"'] in kept and where[b"\n\n"] in kept
    assert where[b"ab"] not in kept and where[bytes([OTHER_TAG])] not in kept
    # blanked: no quote and every byte readable one by one
    assert table.blank[where[b"ab"]] and not table.blank[where[b'a"']]
    assert table.probe_ids(where[b"ab"], b"ab") == [ord("a"), ord("b")]


def test_plain_table_needs_one_byte_tag_tokens():
    assert PlainTable.build([b"a", b"bc"], 1) is None


@pytest.mark.parametrize("text, n", [('{"a":"xy', 2), ('{"a":"', 0), ('["p","q\\"r', 3),
                                     ('{"k":"a\\\\', 2), ('"\\u00e9x', 2), ('"\u00e9', 1),
                                     ('{"a":"b\\\\\\"', 3)])
def test_chars_since_quote(text, n):
    assert chars_since_quote(text.encode()) == n


def test_unbounded_room(llg):
    guide = llg.compile(json_schema=json.dumps(SCHEMAS["unbounded"]))
    cursor = guide.cursor()
    _feed(cursor, '{"a":"free text')
    from lmnb.runtime.constrained.string_masks import string_room

    probes = guide.probe.probes
    assert string_room(cursor.probe.matcher, probes, cursor.text_bytes) == UNBOUNDED
    assert cursor.string_bits() is None   # llguidance's own slice covers unbounded strings
    _feed(cursor, '","b":"x')
    assert string_room(cursor.probe.matcher, probes, cursor.text_bytes) == 1
    assert cursor.string_bits() is not None
