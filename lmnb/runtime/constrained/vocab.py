"""A tokenizer's vocabulary as bytes, and a trie that walks all tokens at once.

Every token id maps to the exact bytes it contributes to the output:
byte-level BPE tokens (GPT-2 / SmolLM2 / Llama-3 style) are undone through the
GPT-2 byte-to-unicode table, sentencepiece tokens turn `▁` into a space and
`<0xNN>` into byte NN. Special tokens map to None and are never allowed by a
mask (EOS is handled separately by the guide).

`TokenTrie.walk` runs one automaton state over the whole vocabulary with a few
numpy gathers per trie depth — no Python loop over tokens.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from lmnb.errors import LmnbError

_SP_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 table mapping each byte to a printable character."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _decoder_types(tokenizer) -> set[str]:
    """Types named in the fast tokenizer's decoder (empty when unknown).

    The decoder's repr names its parts (`Sequence(decoders=[Replace(...), ByteFallback()])`)
    and costs microseconds; serialising the whole tokenizer to JSON took 0.1 s.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None) if backend is not None else None
    if decoder is None:
        return set()
    try:
        text = repr(decoder)
    except Exception:  # noqa: BLE001  (custom decoders: fall back to heuristics)
        return set()
    return set(re.findall(r"(\w+)\(", text)) | ({"Metaspace"} if "\u2581" in text else set())


def detect_style(tokenizer, pieces: list[str]) -> str:
    """'byte_level', 'sentencepiece' or 'plain'."""
    types = _decoder_types(tokenizer)
    if "ByteLevel" in types:
        return "byte_level"
    if types & {"Metaspace", "ByteFallback"}:
        return "sentencepiece"
    sample = pieces[: 5000]
    if sum("\u2581" in p for p in sample) > 10:
        return "sentencepiece"
    if sum("\u0120" in p for p in sample) > 10:
        return "byte_level"
    return "plain"


def special_token_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for tid, tok in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(tid))
    return ids


def token_bytes(tokenizer) -> list[bytes | None]:
    """Bytes of every id below `len(tokenizer)`; None for special tokens.

    A tokenizer with its own `token_bytes()` (lmnb's ByteTokenizer) says them exactly."""
    own = getattr(tokenizer, "token_bytes", None)
    if callable(own):
        return list(own())
    n = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    specials = special_token_ids(tokenizer)
    added = {int(i): t for i, t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items()}
    style = detect_style(tokenizer, pieces)
    inverse = str.maketrans({c: chr(b) for b, c in gpt2_bytes_to_unicode().items()})
    out: list[bytes | None] = []
    for tid, piece in enumerate(pieces):
        if tid in specials or piece is None:
            out.append(None)
        elif tid in added:  # added tokens hold raw text, not encoded pieces
            out.append(str(added[tid]).encode("utf-8"))
        elif style == "byte_level":
            try:   # each character stands for one byte: map it back, then take it as Latin-1
                out.append(piece.translate(inverse).encode("latin-1"))
            except UnicodeEncodeError:
                out.append(piece.encode("utf-8"))
        elif style == "sentencepiece":
            m = _SP_BYTE.fullmatch(piece)
            out.append(bytes([int(m.group(1), 16)]) if m else piece.replace("\u2581", " ").encode())
        else:
            out.append(tokenizer.convert_tokens_to_string([piece]).encode("utf-8"))
    return out


@dataclass(frozen=True, eq=False)
class TokenTrie:
    """Tokens as a trie stored level by level.

    Level d holds the distinct d-byte prefixes: `parents[d]` indexes level d-1
    (level 0 is the root) and `bytes_[d]` is the last byte. `end_tokens[d]` are
    the ids of tokens of length d+1 and `end_nodes[d]` their nodes at level d.
    """

    parents: list[np.ndarray]
    bytes_: list[np.ndarray]
    end_tokens: list[np.ndarray]
    end_nodes: list[np.ndarray]
    vocab_size: int

    @classmethod
    def build(cls, tokens: list[bytes | None], vocab_size: int) -> TokenTrie:
        index: list[dict[bytes, int]] = []
        ends: list[list[tuple[int, int]]] = []
        for tid, data in enumerate(tokens):
            if not data:
                continue
            for d in range(len(data)):
                if d == len(index):
                    index.append({})
                    ends.append([])
                level = index[d]
                node = level.setdefault(data[: d + 1], len(level))
            ends[len(data) - 1].append((tid, node))
        parents, bytes_, end_tokens, end_nodes = [], [], [], []
        for d, level in enumerate(index):
            keys = list(level)  # dict order == node numbering
            up = index[d - 1] if d else None
            parents.append(np.array([up[k[:-1]] if up else 0 for k in keys], np.int64))
            bytes_.append(np.array([k[-1] for k in keys], np.int64))
            pairs = np.array(ends[d], np.int64).reshape(-1, 2)
            end_tokens.append(pairs[:, 0])
            end_nodes.append(pairs[:, 1])
        return cls(parents, bytes_, end_tokens, end_nodes, vocab_size)

    def walk(self, trans: np.ndarray, state: int) -> np.ndarray:
        """End state of every token id read from `state`; `dead` for ids with no bytes."""
        dead = trans.shape[0] - 1
        flat = trans.ravel()
        out = np.full(self.vocab_size, dead, np.int32)
        cur = np.array([state], np.int64)
        for parents, bytes_, toks, nodes in zip(self.parents, self.bytes_, self.end_tokens,
                                                self.end_nodes):
            cur = flat[cur[parents] * 256 + bytes_].astype(np.int64)
            out[toks] = cur[nodes]
            if len(cur) < 64 and (cur == dead).all():
                break
        return out


def vocabulary_ids(tokenizer, vocab_size: int | None,
                   eos_token_ids: Iterable[int] | None) -> tuple[list[bytes | None], int, np.ndarray]:
    """What both mask engines start from: every id's bytes, the model's vocab size (at
    least the tokenizer's) and the sorted EOS ids (default: the tokenizer's EOS)."""
    tokens = token_bytes(tokenizer)
    size = int(vocab_size) if vocab_size is not None else len(tokens)
    if size < len(tokens):
        raise LmnbError(f"vocab_size {size} is smaller than the tokenizer's {len(tokens)} "
                        "tokens; pass the model's vocab_size")
    if eos_token_ids is None:
        eos_token_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return tokens, size, np.array(sorted({int(i) for i in eos_token_ids}), np.int64)
