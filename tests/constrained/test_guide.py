"""Token-level guides over the real SmolLM2 vocabulary."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmnb.errors import LmnbError
from lmnb.runtime.constrained import GrammarBackend

from .regex_strategies import fullmatch, regexes
from .walk import random_walk

FIXTURE_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(pattern=regexes, seed=st.integers(0, 2**32 - 1))
def test_random_token_walks_fully_match(backend, pattern, seed):
    guide = backend.compile(regex=pattern)
    text = random_walk(guide, seed, budget=12)
    assert fullmatch(pattern, text), (pattern, text)


@pytest.mark.parametrize("pattern", [
    r"[0-9]{3}-[0-9]{4}", r"(?:yes|no|maybe)", r"\w+@\w+\.com", r"[^\n]{0,30}\n",
    r"(?:é|😀|中文){1,5}", r'"[^"\\]*"', r"(?i)select \d+ from [a-z_]+;",
])
@pytest.mark.parametrize("seed", range(4))
def test_walks_on_named_patterns(backend, pattern, seed):
    text = random_walk(backend.compile(regex=pattern), seed)
    assert fullmatch(pattern, text), (pattern, text)


def test_masks_cached_and_shared(backend):
    guide = backend.compile(regex=r"abc[0-9]+")
    a, b = guide.cursor(), guide.cursor()
    m1 = a.allowed_mask()
    assert m1 is a.allowed_mask() is b.allowed_mask()
    assert backend.compile(regex=r"abc[0-9]+") is guide
    a.accept_text("abc")
    assert a.allowed_mask() is not m1
    assert a.allowed_mask() is a.allowed_mask()


def test_mask_shape_dtype_and_extra_ids(backend, smol_tokenizer):
    guide = backend.compile(regex=r".{1,20}")
    cursor = guide.cursor()
    mask = cursor.allowed_mask()
    assert mask.dtype == torch.bool and mask.shape == (len(smol_tokenizer) + 64,)
    assert not mask[len(smol_tokenizer):].any()
    cursor.accept_text("x")
    assert not cursor.allowed_mask()[len(smol_tokenizer):].any()
    with pytest.raises(LmnbError):
        cursor.accept_token(len(smol_tokenizer) + 3)


def test_special_tokens_never_allowed(backend, smol_tokenizer):
    guide = backend.compile(regex=r"(?s:.)*")
    specials = [i for i, t in smol_tokenizer.added_tokens_decoder.items() if t.special]
    eos = smol_tokenizer.eos_token_id
    mask = guide.cursor().allowed_mask()
    assert mask[eos]  # the empty string matches: EOS allowed
    assert not mask[[i for i in specials if i != eos]].any()
    assert mask.sum() > 40000


def test_eos_only_in_accepting_states(backend, smol_tokenizer):
    eos = smol_tokenizer.eos_token_id
    cursor = backend.compile(regex=r"ab(?:cd)?").cursor()
    assert not cursor.allowed_mask()[eos]
    with pytest.raises(LmnbError):
        cursor.accept_token(eos)
    cursor.accept_text("ab")
    assert cursor.allowed_mask()[eos] and not cursor.is_terminated()
    cursor.accept_text("c")
    assert not cursor.allowed_mask()[eos]
    cursor.accept_text("d")
    assert cursor.allowed_mask()[eos] and cursor.is_terminated()
    assert cursor.allowed_mask().sum() == 1
    cursor.accept_token(eos)
    assert cursor.is_terminated() and cursor.jump_forward() is None


def test_disallowed_token_and_text_raise(backend, smol_tokenizer):
    cursor = backend.compile(regex=r"[0-9]+").cursor()
    bad = smol_tokenizer.convert_tokens_to_ids("a")
    assert not cursor.allowed_mask()[bad]
    with pytest.raises(LmnbError, match="not allowed"):
        cursor.accept_token(bad)
    with pytest.raises(LmnbError):
        cursor.accept_text("x")


def test_tokens_splitting_multibyte_characters(backend, smol_tokenizer):
    """A token holding half of a character is allowed when the character can complete."""
    vocab = backend.vocab
    partial = [i for i, b in enumerate(vocab.tokens) if b and _ends_mid_char(b)]
    assert partial, "SmolLM2 has byte tokens that split characters"
    guide = backend.compile(regex=r"[😀-🙏]{2}")
    mask = guide.cursor().allowed_mask()
    lead = next(i for i, b in enumerate(vocab.tokens) if b == b"\xf0")
    assert mask[lead]
    text = random_walk(guide, seed=3)
    assert fullmatch(r"[😀-🙏]{2}", text)


def _ends_mid_char(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_compile_arguments_checked(backend):
    with pytest.raises(LmnbError, match="exactly one"):
        backend.compile()
    with pytest.raises(LmnbError, match="exactly one"):
        backend.compile(regex="a", json_schema={"type": "string"})


def test_sentencepiece_style_vocabulary():
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>", "▁hello", "▁world", "hel", "lo", "▁", "h", "e", "l", "o",
              "w", "r", "d", "é"] + [f"<0x{b:02X}>" for b in range(256)]
    vocab = {p: i for i, p in enumerate(pieces)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                    decoders.Fuse()])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>")
    be = GrammarBackend(tok, vocab_size=len(tok) + 10)
    assert be.vocab.tokens[vocab["▁hello"]] == b" hello"
    assert be.vocab.tokens[vocab["<0x0A>"]] == b"\n"
    assert be.vocab.tokens[vocab["<s>"]] is None
    guide = be.compile(regex=r" hello(?: world)?\n")
    mask = guide.cursor().allowed_mask()
    assert mask[vocab["▁hello"]] and mask[vocab["▁"]] and mask[vocab["<0x20>"]]
    assert not mask[vocab["▁world"]] and not mask[vocab["<s>"]] and not mask[2]
    for seed in range(5):
        text = random_walk(guide, seed)
        assert fullmatch(r" hello(?: world)?\n", text)
    cursor = be.compile(regex="é").cursor()
    assert cursor.allowed_mask()[vocab["<0xC3>"]] and cursor.allowed_mask()[vocab["é"]]
    assert np.flatnonzero(cursor.allowed_mask().numpy()).tolist() == [vocab["é"], vocab["<0xC3>"]]
