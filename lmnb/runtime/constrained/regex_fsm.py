"""Regex → deterministic byte-level automaton.

interegular parses the (validated) pattern; from its syntax tree we build a
Glushkov position automaton directly over UTF-8 bytes (each character class is
an alternation of byte-range sequences, see `utf8.py`) and determinize it by
subset construction. Working on bytes means tokens that end in the middle of a
multi-byte character simply leave the automaton in a mid-character state.

The result is a dense transition table `trans[state, byte]` with one extra
absorbing `dead` row, so walks never branch on "no transition".
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import interegular
import numpy as np
from interegular import patterns as ip

from lmnb.errors import LmnbError
from lmnb.runtime.constrained.casefold import case_variants
from lmnb.runtime.constrained.regex_check import normalize_regex
from lmnb.runtime.constrained.utf8 import class_template

# Size limits: past them a pattern raises a clear LmnbError within seconds instead of
# running for minutes (or exhausting memory: each state is a 1 KiB table row).
MAX_POSITIONS = 200_000
MAX_STATES = 100_000
MAX_WORK = 30_000_000   # follow-set elements touched while building (Glushkov is quadratic)
_I = ip.REFlags.CASE_INSENSITIVE
_S = ip.REFlags.SINGLE_LINE


@dataclass(frozen=True, eq=False)
class ByteFSM:
    """A DFA over bytes. Row `dead` (the last one) maps every byte to itself.

    `boundary[s]` is True when state `s` sits between two whole characters.
    """

    pattern: str
    trans: np.ndarray  # int32 [n_states + 1, 256]
    accepting: np.ndarray  # bool [n_states + 1]
    boundary: np.ndarray  # bool [n_states + 1]
    initial: int

    @property
    def dead(self) -> int:
        return self.trans.shape[0] - 1

    def step(self, state: int, data: bytes) -> int:
        """The state after reading `data` (`dead` if it leaves the language)."""
        trans = self.trans
        for b in data:
            state = int(trans[state, b])
        return state

    def matches(self, data: bytes) -> bool:
        return bool(self.accepting[self.step(self.initial, data)])


def compile_regex(pattern: str) -> ByteFSM:
    """Compile `pattern` (Python `re` syntax, full-match semantics) or raise LmnbError."""
    norm = normalize_regex(pattern)
    shown = repr(pattern if len(pattern) <= 60 else pattern[:57] + "...")
    try:
        tree = interegular.parse_pattern(norm)
        g = _Glushkov()
        nullable, first, last = g.build(tree, ip.REFlags(0))
    except (ip.Unsupported, ip.InvalidSyntax, NotImplementedError) as e:
        why = str(e) or f"{type(e).__name__} in the regex parser"
        raise LmnbError(f"regex {shown} is not supported in constrained decoding ({why}); "
                        "rewrite the pattern") from None
    except RecursionError:
        raise LmnbError(f"regex {shown} is nested too deeply for constrained decoding; "
                        "flatten its groups") from None
    fsm = g.determinize(pattern, nullable, first, last)
    if fsm.initial == fsm.dead:
        raise LmnbError(f"regex {pattern!r} matches no string; fix the pattern")
    return fsm


@lru_cache(maxsize=8192)
def _mask_bytes(mask: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(mask.to_bytes(32, "little"), np.uint8), bitorder="little")
    return np.flatnonzero(bits)


Part = tuple[bool, set, set]  # nullable, first positions, last positions


class _Glushkov:
    def __init__(self) -> None:
        self.masks: list[int] = []
        self.follow: list[set[int]] = []
        self.is_end: list[bool] = []
        self.saw_empty_class = False
        self.work = 0

    def spend(self, n: int) -> None:
        self.work += n
        if self.work > MAX_WORK:
            raise LmnbError("regex is too large for constrained decoding; lower its repetition "
                            "bounds or make repeated parts non-optional")

    def link(self, lasts: set, firsts: set) -> None:
        """Every position in `lasts` may be followed by every one in `firsts`."""
        self.spend(len(lasts) * len(firsts))
        for p in lasts:
            self.follow[p] |= firsts

    def build(self, node, flags) -> Part:
        if isinstance(node, ip.Pattern):
            return self._alternation(node, ip._combine_flags(flags, node.added_flags, node.removed_flags))
        if isinstance(node, ip._Concatenation):
            return self._concat([lambda p=p: self.build(p, flags) for p in node.parts])
        if isinstance(node, ip._Repeated):
            return self._repeat(node, flags)
        if isinstance(node, ip._CharGroup):
            return self._chars(node.chars, node.negated, flags)
        if node is ip._DOT:
            return self._chars(frozenset() if flags & _S else frozenset("\n"), True, flags)
        if node is ip._EMPTY:
            return True, set(), set()
        raise LmnbError(f"regex construct {type(node).__name__} is not supported; rewrite the pattern")

    def _alternation(self, node, flags) -> Part:
        nullable, first, last = False, set(), set()
        for option in node.options:
            n, f, l = self.build(option, flags)
            nullable, first, last = nullable or n, first | f, last | l
        return nullable, first, last

    def _concat(self, builders) -> Part:
        nullable, first, last = True, set(), set()
        for build in builders:
            n, f, l = build()
            self.link(last, f)
            if nullable:
                first = first | f
            last = (last | l) if n else l
            nullable = nullable and n
            self.spend(len(first) + len(last))
        return nullable, first, last

    def _repeat(self, node, flags) -> Part:
        lo, hi = node.min, node.max
        if max(lo, hi or 0) > MAX_POSITIONS:
            raise LmnbError(f"regex repetition count {max(lo, hi or 0)} is too large for constrained "
                            "decoding; lower it")
        unit = lambda: self.build(node.base, flags)
        parts = [unit] * max(lo - 1, 0)
        if hi is None:
            parts.append(lambda: self._loop(unit(), optional=lo == 0))
        else:
            if lo >= 1:
                parts.append(unit)
            parts.append(lambda: self._optional_chain(unit, hi - lo))
        return self._concat(parts)

    def _loop(self, part: Part, optional: bool) -> Part:
        n, f, l = part
        self.link(l, f)
        return n or optional, f, l

    def _optional_chain(self, unit, count: int) -> Part:
        """(x(x(x)?)?)? — nested so the determinized states stay small."""
        copies = [unit() for _ in range(count)]
        first: set = set()
        last: set = set()   # grows in place: copying it each step was quadratic
        for n, f, l in reversed(copies):
            self.link(l, first)
            first = (f | first) if n else f
            last |= l
            self.spend(len(first) + len(l))
        return True, first, last

    def _chars(self, chars: frozenset[str], negated: bool, flags) -> Part:
        if flags & _I:
            chars = case_variants(chars)
        tpl = class_template(chars, negated)
        if not tpl.first:
            self.saw_empty_class = True
        base = len(self.masks)
        for mask, end in zip(tpl.masks, tpl.is_end):
            self._new_position(mask, end)
        for a, b in tpl.edges:
            self.follow[base + a].add(base + b)
        last = {base + p for p, end in enumerate(tpl.is_end) if end}
        return False, {base + p for p in tpl.first}, last

    def _new_position(self, mask: int, is_end: bool) -> int:
        if len(self.masks) >= MAX_POSITIONS:
            raise LmnbError("regex is too large for constrained decoding; lower its repetition bounds")
        self.masks.append(mask)
        self.follow.append(set())
        self.is_end.append(is_end)
        return len(self.masks) - 1

    def determinize(self, pattern: str, nullable: bool, first: set, last: set) -> ByteFSM:
        start = self._new_position(0, True)
        self.follow[start] = first
        finals = last | ({start} if nullable else set())
        ids: dict[frozenset, int] = {frozenset((start,)): 0}
        order = [frozenset((start,))]
        rows: list[np.ndarray] = []
        for s in order:  # grows while we iterate
            self.spend(len(s))
            row = np.full(256, -1, np.int32)
            for mask, targets in self._split(s):
                key = frozenset(targets)
                tid = ids.get(key)
                if tid is None:
                    tid = ids[key] = len(order)
                    order.append(key)
                    if tid >= MAX_STATES:
                        raise LmnbError("regex is too large for constrained decoding; simplify it")
                row[_mask_bytes(mask)] = tid
            rows.append(row)
        n = len(order)
        trans = np.vstack(rows + [np.full(256, n, np.int32)])
        trans[trans < 0] = n
        accepting = np.array([not finals.isdisjoint(s) for s in order] + [False])
        boundary = np.array([all(self.is_end[p] for p in s) for s in order] + [True])
        initial = 0
        if self.saw_empty_class and not _prune_dead(trans, accepting)[0]:
            initial = n
        return ByteFSM(pattern, trans, accepting, boundary, initial)

    def _split(self, state: frozenset) -> list[tuple[int, list[int]]]:
        """Partition the bytes by which next positions they reach from `state`."""
        follow, masks = self.follow, self.masks
        if len(state) == 1:
            cands = follow[next(iter(state))]
        else:
            self.spend(sum(len(follow[q]) for q in state))   # before the union: it can be huge
            cands = set().union(*(follow[q] for q in state))
        pieces: list[tuple[int, list[int]]] = []
        for p in cands:
            m = masks[p]
            new = []
            for pm, ps in pieces:
                inter = pm & m
                if inter:
                    new.append((inter, ps + [p]))
                    if pm != inter:
                        new.append((pm & ~m, ps))
                    m &= ~pm
                else:
                    new.append((pm, ps))
            if m:
                new.append((m, [p]))
            pieces = new
        return pieces


def _prune_dead(trans: np.ndarray, accepting: np.ndarray) -> np.ndarray:
    """Send transitions into states that cannot reach acceptance to `dead` (in place).

    Returns which states are live."""
    dead = trans.shape[0] - 1
    src = np.repeat(np.arange(dead + 1), 256)
    edges = np.unique(src * (dead + 1) + trans.ravel())
    preds: dict[int, list[int]] = {}
    for e in edges.tolist():
        preds.setdefault(e % (dead + 1), []).append(e // (dead + 1))
    live = set(np.flatnonzero(accepting).tolist())
    stack = list(live)
    while stack:
        for p in preds.get(stack.pop(), ()):
            if p not in live:
                live.add(p)
                stack.append(p)
    is_live = np.zeros(dead + 1, bool)
    is_live[list(live)] = True
    trans[~is_live[trans]] = dead
    return is_live
