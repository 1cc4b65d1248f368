"""Tokenizer helpers: EOS ids, a byte-level fallback tokenizer for dummy models, and
incremental detokenization for streaming."""
from __future__ import annotations

from lmnb.errors import LmnbError


class ByteTokenizer:
    """Bytes as token ids 3..258 (0 pad, 1 bos, 2 eos); ids beyond decode to nothing.

    Used by `dummy:` models whose real tokenizer is not installed: speed does not depend
    on the tokenizer, and text in/out still works."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    chat_template = None
    all_special_ids = [0, 1, 2]

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = [b + 3 for b in text.encode("utf-8")]
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        data = bytes(i - 3 for i in ids if 3 <= i < 259)
        return data.decode("utf-8", errors="replace")

    def convert_ids_to_tokens(self, ids):
        return [self.decode([i]) for i in ids]

    def token_bytes(self) -> list[bytes | None]:
        """The exact bytes of every id (None: special, or an id past the bytes, which
        decodes to nothing). Constrained decoding needs these: a lone byte >= 0x80 is not
        text, so reading tokens back through `decode` would turn 128 ids into U+FFFD."""
        n = self.vocab_size
        out: list[bytes | None] = [None] * min(3, n)
        out += [bytes([i - 3]) for i in range(3, min(259, n))]
        return out + [None] * (n - len(out))

    def convert_tokens_to_string(self, tokens) -> str:
        return "".join(tokens)

    def apply_chat_template(self, *a, **kw):
        raise LmnbError("this model has no chat template; use raw text (no roles)")


def eos_token_ids(tokenizer, generation_config: dict | None = None) -> tuple[int, ...]:
    ids: list[int] = []
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(tokenizer.eos_token_id)
    extra = (generation_config or {}).get("eos_token_id")
    for e in extra if isinstance(extra, list) else [extra]:
        if e is not None and e not in ids:
            ids.append(e)
    return tuple(ids)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas without re-decoding the whole
    output each step: only a short window is decoded, and text ending in an incomplete
    UTF-8 character (U+FFFD) is held back until the next token completes it."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True) -> None:
        self.tok, self.skip = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0   # start of the decode window
        self.read_offset = 0     # ids before this are already emitted as text
        self.text = ""

    def add(self, new_ids: list[int]) -> str:
        """Append ids, return the newly completed text (possibly empty)."""
        self.ids.extend(new_ids)
        prefix = self.tok.decode(self.ids[self.prefix_offset:self.read_offset],
                                 skip_special_tokens=self.skip)
        full = self.tok.decode(self.ids[self.prefix_offset:], skip_special_tokens=self.skip)
        if full.endswith("\ufffd") or len(full) < len(prefix):
            return ""
        delta = full[len(prefix):]
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.ids)
        self.text += delta
        return delta

    def reset(self, ids: list[int]) -> None:
        """Restart from `ids` (after a re-tokenization) keeping the text consistent."""
        self.ids = list(ids)
        self.text = self.tok.decode(self.ids, skip_special_tokens=self.skip)
        self.prefix_offset = max(0, len(self.ids) - 6)
        self.read_offset = len(self.ids)
