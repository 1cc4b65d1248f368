"""Masks inside JSON strings of plain text: a table built once per tokenizer, exact per state.

llguidance computes a mask by walking the token trie with its lexer. Inside a string with
a length bound, every plain token longer than the room left is walked to the byte where it
fails: 0.5-0.9 ms on the 49k SmolLM2 vocabulary with 3 to 9 characters left, whatever
token slices it has (a slice only helps when the lexer accepts all of it). Here such states
take the tokens that stay inside the string from a per-vocabulary table and leave
llguidance the few hundred that can end it.

How the mask stays exactly llguidance's:
- An *inner* token reads, from a character boundary inside a JSON string, only string
  characters (`STRING_CHAR`: a plain character or an escape; a partial one at its end
  counts): it adds `count` characters, whatever the string, and never ends it.
- The guide also compiles a *probe* grammar (`ProbeLarkOut`): the same Lark grammar, where
  each plain-text string terminal (`"C{lo,hi}"`, `"C*"`, C = `STRING_CHAR`) may also stop,
  anywhere inside its string, at BOUND_TAG + its bound (decimal, or `x` for none) +
  BOUND_TAG, and every other terminal that starts with a quote at OTHER_TAG. Real text
  never holds these bytes, so a probe matcher follows the cursor over the same text.
- Where some bound can be read next (the text is inside a plain-text string, at a
  character boundary) and OTHER_TAG cannot (no other string terminal is live), the room
  left is the largest bound read minus the characters since the opening quote, and an
  inner token is allowed exactly when its count fits in it (`PlainTable.upto`).
  (Counting tags one by one would also give the room, but each count is a lexer state of
  its own, built on a first visit at ~5 us: 80 of them cost ~300 us at a string's start.)
- The other tokens (those that can end the string) come from the probe matcher's own mask
  over `probe_tokens`, where every token without a quote is blanked: a few hundred tokens
  to walk instead of 49k. A token that reads on inside another string after ending this
  one is checked again on the real matcher (the probe grammar is wider inside strings).
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from lmnb.errors import LmnbError
from lmnb.runtime.constrained.grammar_out import LarkOut
from lmnb.runtime.constrained.json_terminals import STRING_CHAR
from lmnb.runtime.constrained.regex_fsm import ByteFSM, compile_regex

OTHER_TAG = 0x02    # in the probe grammar: "inside some other string terminal"
BOUND_TAG = 0x03    # in the probe grammar: brackets the bound of a plain-text string
TAGS = (OTHER_TAG, BOUND_TAG)
UNBOUNDED = 1 << 30   # the room of a string without maxLength
# with this much room or more, llguidance's own slice of plain contents of up to 30
# characters (one of its defaults) covers almost every plain token and its mask costs less
# than the probe's (SmolLM2, first visits: 50 against 115 us with 46 characters of room;
# 407 against 93 us with 23)
TABLE_ROOM = 30

_PLAIN_LEAF = re.compile('^"' + re.escape(STRING_CHAR) + r'(\*|\{\d+,\d*\})"$')
_QUOTE = re.compile(r'"|\\x22', re.IGNORECASE)


@dataclass(frozen=True, eq=False)
class PlainTable:
    """What one vocabulary's inner tokens contribute inside strings.

    `upto[k]` is the bitset (int32 words, bit i % 32 of word i // 32) of inner tokens of
    1..k characters (the last row holds them all); `keep` the bitset of the other tokens,
    less those holding a tag byte. `probe_tokens` is the token list of the probe vocabulary
    (blanked tokens are b""); `byte_ids[b]` the id of the one-byte token `b` (-1 if none):
    the probe matcher reads a blanked token byte by byte.
    """

    upto: np.ndarray          # int32 [most characters of an inner token + 1, words]
    keep: np.ndarray          # int32 [words]
    blank: np.ndarray         # bool [len(tokens)]: blanked in the probe vocabulary
    byte_ids: np.ndarray      # int64 [256]
    recheck: np.ndarray       # int64: ids reading on after a second quote
    probe_tokens: list[bytes | None]

    @classmethod
    def build(cls, tokens: list[bytes | None], words: int) -> PlainTable | None:
        """The table for `tokens` (None when the tags have no one-byte tokens)."""
        byte_ids = np.full(256, -1, np.int64)
        for tid, data in enumerate(tokens):
            if data and len(data) == 1 and byte_ids[data[0]] < 0:
                byte_ids[data[0]] = tid
        if (byte_ids[list(TAGS)] < 0).any() or (byte_ids[list(b"0123456789x")] < 0).any():
            return None
        # per-byte tests summed per token (a loop over 49k tokens in Python took 0.17 s)
        n = len(tokens)
        sizes = np.array([len(t) if t else 0 for t in tokens], np.int64)
        ids = np.flatnonzero(sizes)
        blob = np.frombuffer(b"".join(t for t in tokens if t), np.uint8)
        starts = np.concatenate([[0], np.cumsum(sizes[ids])[:-1]])

        def per_token(flags: np.ndarray) -> np.ndarray:
            return np.add.reduceat(flags.astype(np.int32), starts)

        quotes = per_token(blob == 0x22)
        bad = per_token((blob == 0x22) | (blob == 0x5C) | (blob < 0x20)) > 0
        chars = per_token((blob & 0xC0) != 0x80)              # bytes that start a character
        no_byte = per_token(byte_ids[blob] < 0) > 0
        high = per_token(blob >= 0x80) > 0
        for j in np.flatnonzero(high & ~bad):                 # non-ASCII: must be valid UTF-8
            try:
                tokens[ids[j]].decode("utf-8")
            except UnicodeDecodeError:
                bad[j] = True
        count = np.zeros(n, np.int16)   # characters an inner token adds; 0: not inner
        count[ids[~bad]] = chars[~bad]   # plain text: one per character
        fsm = compile_regex(f"(?:{STRING_CHAR})*")
        for j in np.flatnonzero(bad):    # escapes, partial characters: lmnb's automaton
            count[ids[j]] = _units(fsm, tokens[ids[j]])
        inner = count > 0
        blank = np.zeros(n, bool)
        blank[ids[(sizes[ids] > 1) & (quotes == 0) & ~no_byte]] = True
        # ending a string and opening the next one is allowed alike by both grammars (the same
        # terminals start with a quote); reading on inside the next one is not
        recheck = np.array([t for t in ids[quotes >= 2].tolist()
                            if tokens[t].index(b'"', tokens[t].index(b'"') + 1) < len(tokens[t]) - 1],
                           np.int64)
        tags = ids[per_token(np.isin(blob, TAGS)) > 0]
        longest = int(count.max(initial=0))
        upto = np.zeros((longest + 1, words), np.int32)
        bits = np.zeros(words * 32, bool)
        for k in range(1, longest + 1):
            bits[:n] = inner & (count <= k)
            upto[k] = np.packbits(bits, bitorder="little").view(np.int32)
        bits[:] = False
        bits[:n] = ~inner
        bits[tags] = False
        keep = np.packbits(bits, bitorder="little").view(np.int32)
        probe = [b"" if b else t for t, b in zip(tokens, blank)]
        return cls(upto, keep, blank, byte_ids, recheck, probe)

    def probe_ids(self, token_id: int, data: bytes) -> list[int]:
        """The probe vocabulary's ids for reading one real token."""
        if token_id < len(self.blank) and self.blank[token_id]:
            return self.byte_ids[np.frombuffer(data, np.uint8)].tolist()
        return [token_id]

    def probes(self, bounds: Iterable[int | None]) -> Probes:
        """What a probe matcher of a grammar with these plain-text string bounds is asked."""
        order = sorted(bounds, key=lambda b: -1 if b is None else -b)
        tag = int(self.byte_ids[BOUND_TAG])
        spelled = [(b, [tag, *self.byte_ids[list(_bound_code(b))].tolist(), tag]) for b in order]
        return Probes([tag], [int(self.byte_ids[OTHER_TAG])], spelled)

    def mask(self, probe_bits: np.ndarray, room: int, matcher) -> np.ndarray:
        """The allowed tokens inside a plain-text string with `room` characters left, given
        the probe matcher's mask (modified in place); `matcher` re-checks the tokens that
        read on inside another string."""
        probe_bits &= self.keep
        probe_bits |= self.upto[min(room, len(self.upto) - 1)]
        recheck = self.recheck[(probe_bits[self.recheck >> 5] >> (self.recheck & 31)) & 1 == 1]
        _clear(probe_bits, [t for t in recheck.tolist() if not matcher.validate_tokens([t])])
        return probe_bits


@dataclass(frozen=True)
class Probes:
    """Token ids a probe matcher validates: `gate` (some bound can be read: inside a
    plain-text string), `other` (another string terminal is live) and, largest first,
    each bound (None: unbounded) with the ids that spell it."""

    gate: list[int]
    other: list[int]
    bounds: list[tuple[int | None, list[int]]]


def string_room(probe, probes: Probes, text: bytes) -> int | None:
    """The characters left in the plain-text string `text` ends inside (UNBOUNDED without a
    bound), or None when the probe matcher is anywhere else (see the module docstring).
    The table is worth using for a room of 1 to TABLE_ROOM - 1."""
    if not probe.validate_tokens(probes.gate):   # outside such strings: one call
        return None
    for bound, ids in probes.bounds:
        if probe.validate_tokens(ids) == len(ids):
            break
    else:
        return None
    if probe.validate_tokens(probes.other):
        return None
    return UNBOUNDED if bound is None else bound - chars_since_quote(text)


class GuideProbe:
    """One guide's probe: the probe grammar's matcher at the start (an llguidance
    `LLMatcher` over the probe vocabulary), what to ask it, and the vocabulary's table."""

    def __init__(self, matcher, bounds: Iterable[int | None], table: PlainTable, words: int,
                 llg_words: int):
        self.matcher = matcher
        self.table = table
        self.probes = table.probes(bounds)
        self.words, self.llg_words = words, llg_words
        matcher.validate_tokens(self.probes.gate)   # its lexer's start, built once, at compile

    def cursor(self) -> StringProbe:
        return StringProbe(self, self.matcher.deep_copy())


class StringProbe:
    """A cursor's probe matcher over the cursor's text, and where that JSON text is
    (`quotes`: 1 inside a string, 3 there after a backslash, 0 outside), so that masks
    outside strings ask the probe nothing."""

    __slots__ = ("guide", "matcher", "quotes")

    def __init__(self, guide: GuideProbe, matcher, quotes: int = 0):
        self.guide, self.matcher, self.quotes = guide, matcher, quotes

    def copy(self) -> StringProbe:
        return StringProbe(self.guide, self.matcher.deep_copy(), self.quotes)

    def advance(self, tokens: list[int], vocab_tokens: list[bytes | None], data: bytes) -> bool:
        """Read the real `tokens` (spelling `data`); False if the probe grammar refused
        them (never expected: its language holds the real one's)."""
        ids = [i for t in tokens for i in self.guide.table.probe_ids(t, vocab_tokens[t])]
        if not self.matcher.consume_tokens(ids):
            return False
        q = self.quotes
        for b in data:
            if q == 3:
                q = 1
            elif b == 0x22:
                q ^= 1
            elif b == 0x5C and q:
                q = 3
        self.quotes = q
        return True

    def bits(self, text: bytes, real_matcher) -> np.ndarray | None:
        """The mask where `text` ends inside a plain-text string with 1 to TABLE_ROOM - 1
        characters of room left; None anywhere else. `real_matcher` is the cursor's own
        llguidance matcher (for the tokens the probe grammar cannot judge)."""
        if self.quotes != 1:
            return None
        g = self.guide
        room = string_room(self.matcher, g.probes, text)
        if room is None or not 1 <= room < TABLE_ROOM:
            return None
        bits = np.zeros(g.words, np.int32)
        self.matcher.unsafe_compute_mask_ptr(bits.ctypes.data, g.llg_words * 4)
        if self.matcher.is_error():
            raise LmnbError("constrained decoding failed in its string-mask probe: "
                            f"{self.matcher.get_error().splitlines()[0][:200]}")
        return g.table.mask(bits, room, real_matcher)


def chars_since_quote(text: bytes) -> int:
    """Characters of the JSON string `text` ends inside (complete content, escapes as one)."""
    i = len(text)
    while True:
        i = text.rindex(b'"', 0, i)
        j = i
        while j and text[j - 1] == 0x5C:
            j -= 1
        if (i - j) % 2 == 0:
            return len(json.loads(bytes(text[i:]) + b'"'))


def _units(fsm: ByteFSM, data: bytes) -> int:
    """String characters `data` starts when read from a character boundary (0 when it
    leaves `fsm`, the automaton of STRING_CHAR*, whose accepting states are the
    boundaries: no string character is a prefix of another)."""
    state, units = fsm.initial, 0
    for b in data:
        units += bool(fsm.accepting[state])
        state = int(fsm.trans[state, b])
        if state == fsm.dead:
            return 0
    return units


def _bound_code(bound: int | None) -> bytes:
    return b"x" if bound is None else str(bound).encode()


def _clear(bits: np.ndarray, ids: list[int]) -> None:
    """Clear the bits of token `ids` in an int32 bitset row."""
    words = bits.view(np.uint32)
    for t in ids:
        words[t >> 5] &= np.uint32(~(1 << (t & 31)) & 0xFFFFFFFF)


class ProbeLarkOut(LarkOut):
    """`LarkOut` writing the probe grammar (see the module docstring). `usable` turns False
    when a terminal holds a quote without starting with one (a const object or array):
    the tags could not tell its strings apart, so its guide gets no probe. `text` is the
    grammar once written."""

    def __init__(self):
        super().__init__()
        self.usable = True
        self.bounds: set[int | None] = set()   # of the plain-text string terminals
        self.text = ""

    def finish(self, part: str) -> str:
        self.text = super().finish(part)
        return self.text

    def leaf(self, regex: str) -> str:
        m = _PLAIN_LEAF.match(regex)
        if m:
            count = m.group(1)
            bound = None if count == "*" or count.endswith(",}") else int(count[1:-1].split(",")[1])
            self.bounds.add(bound)
            code = "".join(_esc(b) for b in _bound_code(bound))
            # the way out reads the terminal's characters without counting them (a count
            # would double the lexer's states); the inner tokens it lets through beyond
            # the bound are the table's to decide
            return super().leaf(f'(?:{regex}|"(?:{STRING_CHAR})*'
                                f'{_esc(BOUND_TAG)}{code}{_esc(BOUND_TAG)})')
        if not _QUOTE.search(regex):
            return super().leaf(regex)
        if not _QUOTE.match(regex):
            self.usable = False
            return super().leaf(regex)
        return super().leaf(f"(?:{regex}|{_OPEN}{_esc(OTHER_TAG)})")


# an open string: live as long as another terminal's string is open (escapes are pairs),
# never reading a tag byte, so that a tag is only ever read as a tag
_OPEN = '"(?:[^"\\\\\\x01-\\x03]|\\\\[^\\x00-\\x03])*'


def _esc(byte: int) -> str:
    return f"\\x{byte:02x}"
