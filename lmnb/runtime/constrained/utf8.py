"""Code-point sets as UTF-8 byte-range sequences.

A character class of a regex becomes an alternation of byte sequences, each a
tuple of inclusive `(lo, hi)` byte ranges, so the automaton can run on bytes and
tokens that split a multi-byte character are handled like any other token.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

MAX_CODEPOINT = 0x10FFFF
_SURROGATES = (0xD800, 0xDFFF)
# Last code point of each UTF-8 encoding length (1, 2, 3, 4 bytes).
_LENGTH_ENDS = (0x7F, 0x7FF, 0xFFFF, MAX_CODEPOINT)

ByteSeq = tuple[tuple[int, int], ...]


def char_ranges(chars: frozenset[str], negated: bool) -> list[tuple[int, int]]:
    """Sorted disjoint inclusive code-point ranges of `chars` (or of its complement)."""
    ranges: list[tuple[int, int]] = []
    for cp in sorted(ord(c) for c in chars):
        if ranges and ranges[-1][1] + 1 >= cp:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], cp))
        else:
            ranges.append((cp, cp))
    if negated:
        ranges = _complement(ranges)
    return _without_surrogates(ranges)


def _complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, start = [], 0
    for lo, hi in ranges:
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= MAX_CODEPOINT:
        out.append((start, MAX_CODEPOINT))
    return out


def _without_surrogates(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Surrogates have no UTF-8 encoding; cut them out of every range."""
    s_lo, s_hi = _SURROGATES
    out = []
    for lo, hi in ranges:
        if hi < s_lo or lo > s_hi:
            out.append((lo, hi))
            continue
        if lo < s_lo:
            out.append((lo, s_lo - 1))
        if hi > s_hi:
            out.append((s_hi + 1, hi))
    return out


def utf8_sequences(ranges: list[tuple[int, int]]) -> list[ByteSeq]:
    """Byte-range sequences whose union is exactly the UTF-8 encodings of `ranges`."""
    out: list[ByteSeq] = []
    for lo, hi in ranges:
        start = lo
        for end in _LENGTH_ENDS:  # split so both ends encode to the same length
            if start > hi:
                break
            if start <= end:
                _split_same_length(start, min(hi, end), out)
                start = end + 1
    return out


def _split_same_length(a: int, b: int, out: list[ByteSeq]) -> None:
    """Split [a, b] until every continuation byte position spans a full sub-range."""
    n = len(chr(a).encode("utf-8"))
    for i in range(1, n):
        m = (1 << (6 * i)) - 1
        if a & ~m != b & ~m:  # the range crosses a boundary of the i-th last byte
            if a & m:
                _split_same_length(a, a | m, out)
                _split_same_length((a | m) + 1, b, out)
                return
            if b & m != m:
                _split_same_length(a, (b & ~m) - 1, out)
                _split_same_length(b & ~m, b, out)
                return
    ea, eb = chr(a).encode("utf-8"), chr(b).encode("utf-8")
    out.append(tuple(zip(ea, eb)))


@dataclass(frozen=True)
class ClassTemplate:
    """The positions of one character class, ready to be copied into an automaton.

    Sequences with the same tail share one first position (their lead bytes
    OR-ed together) and equal suffixes share positions, so `[^"]` costs 15
    positions, not 30 — and the determinized automaton is that much smaller.
    """

    masks: tuple[int, ...]
    is_end: tuple[bool, ...]  # position completes a character
    first: tuple[int, ...]
    edges: tuple[tuple[int, int], ...]  # internal follow edges (from, to)


@lru_cache(maxsize=4096)
def class_template(chars: frozenset[str], negated: bool) -> ClassTemplate:
    """A regex character class as automaton positions over bytes (cached)."""
    seqs = utf8_sequences(char_ranges(chars, negated))
    heads: dict[tuple[int, ...], int] = {}
    for seq in seqs:
        masks = tuple((1 << (hi + 1)) - (1 << lo) for lo, hi in seq)
        heads[masks[1:]] = heads.get(masks[1:], 0) | masks[0]
    pos_masks: list[int] = []
    edges: list[tuple[int, int]] = []
    shared: dict[tuple[int, ...], int] = {}

    def position(masks: tuple[int, ...]) -> int:
        pos = len(pos_masks)
        pos_masks.append(masks[0])
        if len(masks) > 1:
            tail = masks[1:]
            if tail not in shared:
                shared[tail] = position(tail)
            edges.append((pos, shared[tail]))
        return pos

    first = tuple(position((head, *tail)) for tail, head in heads.items())
    has_next = {a for a, _ in edges}
    is_end = tuple(p not in has_next for p in range(len(pos_masks)))
    return ClassTemplate(tuple(pos_masks), is_end, first, tuple(edges))
