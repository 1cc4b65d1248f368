"""The default mask engine: lmnb's patterns run by llguidance, behind lmnb's cursor contract.

lmnb turns a JSON schema into a Lark grammar of small lexemes and, for the same language,
one regex (`json_schema.py`: the schema semantics, sound string escaping and every error
message are lmnb's); a `regex=` stays a regex. llguidance (Rust, MIT, used by vLLM, SGLang
and llama.cpp) compiles either lazily into a lexer over the token trie and computes each
step's allowed-token bitmask in microseconds. Why this engine
and not lmnb's own byte FSM (`guide.py`, still the reference the tests compare against):
docs/constrained.md.

Masks are bitsets (`int32[ceil(vocab/32)]`, bit `i % 32` of word `i // 32` set when
token `i` is allowed): 6 KiB per cursor on a 49k vocabulary, never a per-state cache,
so mask memory is bounded by the number of live requests.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from lmnb.errors import LmnbError
from lmnb.runtime.constrained.json_schema import (
    Whitespace,
    build_lark_from_schema,
    build_regex_from_schema,
)
from lmnb.runtime.constrained.string_masks import GuideProbe, PlainTable, ProbeLarkOut, StringProbe
from lmnb.runtime.constrained.vocab import vocabulary_ids

GUIDE_CACHE = 256   # compiled patterns kept per tokenizer (LRU)


def _llguidance():
    try:
        import llguidance
    except ImportError as e:   # a hard dependency: only a broken install gets here
        raise LmnbError("constrained decoding needs the llguidance package; "
                        "pip install llguidance") from e
    return llguidance


# token slices for short string contents: a string with room for fewer than 10 more
# characters (a maxLength near its end) is otherwise a walk over the whole token trie
SHORT_STRING_SLICES = (2, 4, 6)


def slices(llg) -> list[str]:
    """llguidance's precomputed token sets: its defaults and `SHORT_STRING_SLICES`."""
    out = llg.LLTokenizer.general_slices()
    plain = '[^"\\\\\\x00-\\x1F\\x7F]'
    return out + [f"{plain}{{1,{k}}}" for k in SHORT_STRING_SLICES if f"{plain}{{1,{k}}}" not in out]


class _Bytes:
    """The tokenizer as llguidance's TokenizerWrapper wants it: token bytes plus encode
    (None: a special token; b"": an id that is never allowed)."""

    def __init__(self, tokenizer, tokens: list[bytes | None], eos_id: int):
        self.eos_token_id = eos_id
        self.bos_token_id = None
        self.tokens = [t or b"" for t in tokens]
        self.special_token_ids = [i for i, t in enumerate(tokens) if t is None]
        # llguidance tokenizes forced text inside mask computations (where the grammar
        # forces bytes, the mask is their first canonical token): a Hugging Face fast
        # tokenizer's Rust backend does it without the Python wrapper's ~30 us per call
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._encode = ((lambda text: backend.encode(text, add_special_tokens=False).ids)
                        if backend is not None and hasattr(backend, "encode") else
                        (lambda text: tokenizer.encode(text, add_special_tokens=False)))

    def __call__(self, data: bytes | str) -> list[int]:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        return list(self._encode(text))


class LlgVocabulary:
    """One tokenizer prepared for llguidance (built once per runtime: ~0.5 s on 49k tokens)."""

    def __init__(self, tokenizer, vocab_size: int | None, eos_token_ids: Iterable[int] | None):
        llg = _llguidance()
        self.tokens, self.vocab_size, self.eos_ids = vocabulary_ids(tokenizer, vocab_size, eos_token_ids)
        self.eos_set = frozenset(self.eos_ids.tolist())
        if not len(self.eos_ids):
            raise LmnbError("constrained decoding needs an end-of-sequence token id; "
                            "pass eos_token_ids")
        # llguidance sees the ids up to the last one with bytes (and the EOS ids): ids past
        # them (a model's padded vocabulary, a byte tokenizer's unused ids) are never
        # allowed, so they stay 0 in every mask without entering llguidance's token table,
        # where 128k empty ids made some masks 50x slower
        real = max([i for i, t in enumerate(self.tokens) if t] + [int(self.eos_ids[-1])]) + 1
        wrapper = llg.TokenizerWrapper(_Bytes(tokenizer, self.tokens[:real], int(self.eos_ids[0])))
        # llguidance's default "slices" (token subsets precomputed for common lexeme shapes,
        # e.g. string contents) cost ~0.15 s here and cut the slow tail of first-visit masks
        self.lltok = llg.LLTokenizer(wrapper, n_vocab=real, eos_token=[int(i) for i in self.eos_ids],
                                     slices=slices(llg))
        self.words = (self.vocab_size + 31) // 32
        self.llg_words = (self.lltok.vocab_size + 31) // 32   # the buffer llguidance fills
        if self.llg_words > self.words:
            raise LmnbError(f"the tokenizer has {self.lltok.vocab_size} ids, more than "
                            f"vocab_size {self.vocab_size}; pass the model's vocab_size")
        # plain-text string states: a table of plain tokens plus a probe vocabulary without
        # them (string_masks.py); None when the vocabulary has no one-byte tag tokens
        self.plain = PlainTable.build(self.tokens[:real], self.words)
        self.probe_tok = None
        if self.plain is not None:
            probe = llg.TokenizerWrapper(_Bytes(tokenizer, self.plain.probe_tokens, int(self.eos_ids[0])))
            self.probe_tok = llg.LLTokenizer(probe, n_vocab=real,
                                             eos_token=[int(i) for i in self.eos_ids], slices=[])

    def bytes_of(self, token_id: int) -> bytes | None:
        return self.tokens[token_id] if 0 <= token_id < len(self.tokens) else None

    def encode_bytes(self, data: bytes) -> list[int]:
        """Some tokenization of `data` (used to advance a matcher over forced text)."""
        return list(self.lltok.tokenize_bytes(data))


class LlgGuide:
    """One pattern compiled against one vocabulary; `cursor()` copies a compiled matcher.

    `pattern` is the language as one regex (messages, `fsm`); `lark`, where given, is the
    same language as a grammar of small lexemes (`build_lark_from_schema`), which llguidance
    then runs instead: its masks are computed on small lexer states. `probe_out` holds the
    probe grammar of `string_masks.py` (plain-text string states), or is None."""

    def __init__(self, pattern: str, vocab: LlgVocabulary, lark: str | None = None,
                 probe_out: ProbeLarkOut | None = None):
        llg = _llguidance()
        self.pattern = pattern
        self.vocab = vocab
        grammar = (llg.LLMatcher.grammar_from_regex(pattern) if lark is None
                   else llg.LLMatcher.grammar_from_lark(lark))
        self._proto = llg.LLMatcher(vocab.lltok, grammar, log_level=0)
        if self._proto.is_error():
            raise LmnbError(f"pattern {_short(pattern)} could not be compiled for constrained "
                            f"decoding: {self._proto.get_error().splitlines()[0][:200]}")
        # llguidance compiles lazily: the first mask surfaces what the compile step did
        # not, here at submit time rather than on the engine thread
        probe = self._proto.deep_copy()
        bits = np.zeros(vocab.words, np.int32)
        probe.unsafe_compute_mask_ptr(bits.ctypes.data, vocab.llg_words * 4)
        if probe.is_error():
            raise LmnbError(f"pattern {_short(pattern)} could not be compiled for constrained "
                            f"decoding: {probe.get_error().splitlines()[0][:200]}")
        self._fsm = None
        self.probe: GuideProbe | None = None
        if probe_out is not None and vocab.probe_tok is not None:
            matcher = llg.LLMatcher(vocab.probe_tok, llg.LLMatcher.grammar_from_lark(probe_out.text),
                                    log_level=0)
            if matcher.is_error():   # lmnb wrote both grammars: a failure here is lmnb's bug
                raise LmnbError(f"pattern {_short(pattern)}: the string-mask probe grammar "
                                f"failed: {matcher.get_error().splitlines()[0][:200]}")
            self.probe = GuideProbe(matcher, probe_out.bounds, vocab.plain, vocab.words,
                                    vocab.llg_words)

    @property
    def has_probe(self) -> bool:
        """True when plain-text string states take their masks from the table (string_masks)."""
        return self.probe is not None

    def cursor(self) -> LlgCursor:
        """A fresh cursor at the start."""
        return LlgCursor(self, self._proto.deep_copy(),
                         self.probe.cursor() if self.probe is not None else None)

    @property
    def fsm(self):
        """lmnb's own byte automaton of the same pattern (built on first use; for tests and
        tools that need states, e.g. the distance to acceptance)."""
        if self._fsm is None:
            from lmnb.runtime.constrained.regex_fsm import compile_regex

            self._fsm = compile_regex(self.pattern)
        return self._fsm


class LlgCursor:
    """A request's position in an `LlgGuide` (see `interface.GuideCursor`)."""

    __slots__ = ("_bits", "_forced", "_mask", "eos_seen", "guide", "matcher", "probe",
                 "text_bytes")

    def __init__(self, guide: LlgGuide, matcher, probe: StringProbe | None = None):
        self.guide = guide
        self.matcher = matcher
        self.probe = probe   # string_masks: masks inside plain-text strings
        self.eos_seen = False
        self.text_bytes = bytearray()   # what the cursor has accepted so far
        self._bits: np.ndarray | None = None
        self._mask: torch.Tensor | None = None
        self._forced: bytes | None = None   # the matcher's forced bytes here, once asked

    def __copy__(self) -> LlgCursor:
        """An independent cursor at the same position (the matcher is copied, not shared:
        speculative drafts walk a copy ahead without moving the request's cursor)."""
        c = LlgCursor(self.guide, self.matcher.deep_copy(),
                      self.probe.copy() if self.probe is not None else None)
        c.eos_seen, c.text_bytes = self.eos_seen, bytearray(self.text_bytes)
        c._bits, c._mask, c._forced = self._bits, self._mask, self._forced   # read-only once computed
        return c

    @staticmethod
    def batch_bitmasks(cursors: list[LlgCursor]) -> np.ndarray:
        """Several cursors' `bitmask()` rows at once, computed in parallel."""
        return fill_bitmasks(cursors)

    def bitmask(self) -> np.ndarray:
        """int32 [ceil(vocab_size / 32)] of allowed tokens (bit i%32 of word i//32); the
        cursor's own buffer: read it before the next accept."""
        if self._bits is None:
            bits = self.string_bits()
            if bits is None:
                bits = np.zeros(self.guide.vocab.words, np.int32)
                if not self.eos_seen:
                    self.matcher.unsafe_compute_mask_ptr(bits.ctypes.data,
                                                         self.guide.vocab.llg_words * 4)
            self._raise_if_error()
            self._bits = bits
        return self._bits

    def string_bits(self) -> np.ndarray | None:
        """The mask from the inner-token table and the probe where the text is inside a
        plain-text string with little room left (string_masks.py); None anywhere else."""
        if self.probe is None or self.eos_seen:
            return None
        return self.probe.bits(self.text_bytes, self.matcher)

    def allowed_mask(self) -> torch.Tensor:
        """Bool tensor [vocab_size] (CPU; do not modify) of tokens allowed next."""
        if self._mask is None:
            bits = np.unpackbits(self.bitmask().view(np.uint8), bitorder="little")
            self._mask = torch.from_numpy(bits[: self.guide.vocab.vocab_size].view(np.bool_))
        return self._mask

    def accept_token(self, token_id: int) -> None:
        """Advance over one sampled token; raises LmnbError if it was not allowed."""
        token_id = int(token_id)
        vocab = self.guide.vocab
        if token_id in vocab.eos_set and not self.eos_seen:
            if not self.matcher.is_accepting():
                raise LmnbError(f"end of sequence before the output matches {_short(self.guide.pattern)}")
            self.eos_seen = True
            self._changed()
            return
        data = vocab.bytes_of(token_id)
        if self.eos_seen or not data or not self._allows(token_id):
            raise LmnbError(f"token id {token_id} is not allowed here by {_short(self.guide.pattern)}; "
                            "apply allowed_mask() before sampling")
        if not self.matcher.consume_token(token_id):
            self._raise_if_error()
        if self.probe is not None:
            self._advance_probe([token_id], data)
        self.text_bytes += data
        self._changed()

    def accept_text(self, text: str) -> None:
        """Advance over forced text (the string `jump_forward` returned)."""
        data = text.encode("utf-8")
        if self.eos_seen or not data:
            raise LmnbError(f"text {text[:40]!r} does not continue {_short(self.guide.pattern)} here")
        if not self.forced_bytes().startswith(data):
            raise LmnbError(f"text {text[:40]!r} does not continue {_short(self.guide.pattern)} here")
        vocab = self.guide.vocab
        tokens = vocab.encode_bytes(data)
        if not self.matcher.consume_tokens(tokens):
            self._raise_if_error()
        if self.probe is not None:
            self._advance_probe(tokens, data)
        self.text_bytes += data
        self._changed()

    def is_terminated(self) -> bool:
        """True after EOS, or when nothing but the end can follow."""
        return self.eos_seen or self.matcher.is_stopped()

    def is_accepting(self) -> bool:
        """True when the text so far fully matches the pattern."""
        return self.eos_seen or self.matcher.is_accepting()

    def jump_forward(self) -> str | None:
        """The text forced from here (whole characters only), or None."""
        if self.eos_seen:
            return None
        forced = self.forced_bytes()
        if not forced or _mid_character(self.text_bytes):
            return None
        try:
            text = forced.decode("utf-8")
        except UnicodeDecodeError as e:
            text = forced[: e.start].decode("utf-8")
        return text or None

    def forced_bytes(self) -> bytes:
        """The bytes the grammar forces from here (computed once per position: a jump's
        `jump_forward` and `accept_text` ask for the same)."""
        if self._forced is None:
            self._forced = self.matcher.compute_ff_bytes()
        return self._forced

    def _advance_probe(self, tokens: list[int], data: bytes) -> None:
        if not self.probe.advance(tokens, self.guide.vocab.tokens, data):
            raise LmnbError(f"constrained decoding of {_short(self.guide.pattern)}: the "
                            f"string-mask probe lost the text: {self.probe.matcher.get_error()[:200]}")

    def _allows(self, token_id: int) -> bool:
        bits = self.bitmask()
        return bool((int(bits[token_id >> 5]) >> (token_id & 31)) & 1)

    def _changed(self) -> None:
        self._bits = None
        self._mask = None
        self._forced = None

    def _raise_if_error(self) -> None:
        if self.matcher.is_error():
            raise LmnbError(f"constrained decoding of {_short(self.guide.pattern)} failed: "
                            f"{self.matcher.get_error().splitlines()[0][:200]}")


_EXECUTOR = None
_EXECUTOR_LOCK = threading.Lock()


def _executor():
    """llguidance's thread pool for batch masks (one per process, like torch's own pool)."""
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = _llguidance().LLExecutor()
        return _EXECUTOR


def fill_bitmasks(cursors: list[LlgCursor]) -> np.ndarray:
    """int32 [len(cursors), words] of every cursor's allowed tokens, the masks not yet known
    computed in parallel on llguidance's threads (the GIL released). Each cursor keeps its
    row as its own `bitmask()` until it moves, so `accept_token` checks against it."""
    words = cursors[0].guide.vocab.words
    if any(c.guide.vocab.words != words for c in cursors):
        raise LmnbError("one batch of masks needs one vocabulary")
    out = np.zeros((len(cursors), words), np.int32)
    todo = []
    for j, c in enumerate(cursors):
        if c._bits is None and (bits := c.string_bits()) is not None:
            c._bits = bits
        if c._bits is not None:
            out[j] = c._bits
        elif not c.eos_seen:
            todo.append(j)
    if len(todo) == 1:
        j = todo[0]
        out[j] = cursors[j].bitmask()
    elif todo:
        llg_words = cursors[todo[0]].guide.vocab.llg_words   # the words llguidance fills
        rows = out if llg_words == words else np.zeros((len(cursors), llg_words), np.int32)
        _executor().unsafe_compute_mask_ptr([(cursors[j].matcher, j) for j in todo],
                                            rows.ctypes.data, llg_words * 4, len(cursors))
        if rows is not out:
            out[todo, :llg_words] = rows[todo]
    for j, c in enumerate(cursors):
        if c._bits is None:
            c._raise_if_error()
            c._bits = out[j]
    return out


def _mid_character(data: bytearray) -> bool:
    """True when `data` ends inside a multi-byte UTF-8 character."""
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b < 0x80:
            return False
        if b >= 0xC0:   # lead byte: complete when the character's length is all there
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return back < need
    return False


def _short(pattern: str) -> str:
    return repr(pattern if len(pattern) <= 60 else pattern[:57] + "...")


class LlgBackend:
    """Compiles regexes and JSON schemas into `LlgGuide`s for one tokenizer (LRU by pattern).

    Same contract as `guide.GrammarBackend`: `vocab_size` is the model's logit width,
    `eos_token_ids` are allowed exactly where the output may end.
    """

    engine = "llguidance"

    def __init__(self, tokenizer, vocab_size: int | None = None,
                 eos_token_ids: Iterable[int] | None = None, whitespace: Whitespace = "compact"):
        self.vocab = LlgVocabulary(tokenizer, vocab_size, eos_token_ids)
        self.whitespace = whitespace
        self._guides: OrderedDict[str, LlgGuide] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, regex: str | None = None, json_schema: Any = None) -> LlgGuide:
        """Compile (cached by pattern) or raise LmnbError naming the unsupported feature."""
        if (regex is None) == (json_schema is None):
            raise LmnbError("pass exactly one of regex= or json_schema= to constrain generation")
        if json_schema is not None:
            regex = build_regex_from_schema(json_schema, whitespace=self.whitespace)
        elif isinstance(regex, str):
            regex = canonical_regex(regex)
        if not isinstance(regex, str):
            raise LmnbError(f"regex must be a string, got {type(regex).__name__}")
        with self._lock:
            guide = self._guides.get(regex)
            if guide is not None:
                self._guides.move_to_end(regex)
                return guide
        lark = probe = None
        if json_schema is not None:
            lark = build_lark_from_schema(json_schema, whitespace=self.whitespace)
            if self.vocab.probe_tok is not None:
                probe = ProbeLarkOut()
                build_lark_from_schema(json_schema, whitespace=self.whitespace, out=probe)
                # only a maxLength makes llguidance slow inside a string (unbounded contents
                # are one of its slices); without one the probe's build (~1.5 ms) buys nothing
                if not (probe.usable and any(b is not None for b in probe.bounds)):
                    probe = None
        guide = LlgGuide(regex, self.vocab, lark, probe)
        with self._lock:
            guide = self._guides.setdefault(regex, guide)
            while len(self._guides) > GUIDE_CACHE:
                self._guides.popitem(last=False)
        return guide


def canonical_regex(pattern: str) -> str:
    """A user regex (Python `re` syntax, full match) rewritten with explicit classes so that
    llguidance reads exactly Python's language (see `regex_emit.py`)."""
    from lmnb.runtime.constrained.regex_emit import emit_regex

    return emit_regex(pattern)
