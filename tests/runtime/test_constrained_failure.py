"""A constraint that fails never takes the runtime down: compile errors surface at submit,
a failure while decoding stops only its request (KV freed, the rest of the batch goes on),
and dummy models' byte tokenizer hands the grammar engine each token's real byte."""
from __future__ import annotations

import json

import pytest

import lmnb as lm
from lmnb.errors import LmnbError
from lmnb.runtime.constrained import llg
from lmnb.runtime.constrained.guide import make_backend
from lmnb.runtime.constrained.vocab import token_bytes
from lmnb.runtime.tokenizer import ByteTokenizer

# the field shapes of the GPU suite's json_decode case (bench/gpu_suite.py JSON_SCHEMA)
BENCH_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "occupation": {"type": "string", "maxLength": 24},
        "city": {"enum": ["Paris", "London", "Tokyo", "New York"]},
        "employed": {"type": "boolean"},
    },
    "required": ["name", "age", "occupation", "city", "employed"],
}


@pytest.fixture(scope="module")
def rt():
    r = lm.Runtime("dummy:tiny", device="cpu", kv_memory_gb=0.05)
    yield r
    r.shutdown()


def test_byte_tokenizer_bytes_are_exact():
    toks = token_bytes(ByteTokenizer(128256))
    assert len(toks) == 128256 and toks[:3] == [None] * 3
    assert [toks[3 + b] for b in (0x41, 0x80, 0xC3, 0xFF)] == [b"A", b"\x80", b"\xc3", b"\xff"]
    assert toks[259] is None and toks[-1] is None   # ids past the bytes are never allowed


def test_llama3_vocab_byte_tokenizer_walks_bench_schema():
    """The json_decode grammar over a 128256-id byte vocabulary, walked greedily on the
    highest allowed id (multi-byte characters from single bytes) and the lowest."""
    tok = ByteTokenizer(128256)
    g = make_backend(tok, 128256, [2]).compile(json_schema=json.dumps(BENCH_SCHEMA))
    for pick in (-1, 0):
        c, data = g.cursor(), bytearray()
        for _ in range(400):
            ids = c.allowed_mask().nonzero()[:, 0]
            ids = ids[ids != 2] if len(ids) > 1 else ids
            t = int(ids[pick])
            assert t == 2 or 3 <= t < 259
            c.accept_token(t)
            data += tok.token_bytes()[t] or b""
            if c.is_terminated():
                break
            forced = c.jump_forward()
            if forced:
                c.accept_text(forced)
                data += forced.encode()
        assert c.is_accepting()
        doc = json.loads(data.decode("utf-8"))
        assert set(doc) == set(BENCH_SCHEMA["required"]) and len(doc["name"]) <= 16


def test_non_ascii_pattern_generates_from_byte_tokens(rt):
    out = rt.submit("x", regex="é{2}ü", max_new_tokens=16, temperature=0).result()
    assert out["text"] == "ééü" and out["meta"]["finish_reason"] == "stop"
    rt.check_integrity()


def test_bench_schema_through_engine(rt):
    outs = rt.generate(["JSON: ", "data: "], json_schema=json.dumps(BENCH_SCHEMA),
                       max_new_tokens=200, temperature=0)
    for o in outs:
        assert set(json.loads(o["text"])) == set(BENCH_SCHEMA["required"])
    rt.check_integrity()


def test_compile_error_surfaces_at_submit(rt):
    with pytest.raises(LmnbError) as e:
        rt.submit("x", regex="(unclosed", max_new_tokens=4)
    assert "\n" not in str(e.value)
    assert rt.alive()
    rt.check_integrity()


def test_lazy_compile_error_surfaces_at_submit(monkeypatch, rt):
    """An error the grammar engine only reports at the first mask is raised by compile
    (the caller's thread), never first seen on the engine thread."""
    class LazyFailing:   # compiles "fine", then fails computing its first mask
        grammar_from_regex = staticmethod(lambda pattern: pattern)

        def __init__(self, *a, **k):
            self.computed = False

        def is_error(self):
            return self.computed

        def get_error(self):
            return "lexer too complex\nsecond line"

        def deep_copy(self):
            return LazyFailing()

        def unsafe_compute_mask_ptr(self, *a):
            self.computed = True

    monkeypatch.setattr(llg._llguidance(), "LLMatcher", LazyFailing)
    with pytest.raises(LmnbError, match="lexer too complex$"):
        llg.LlgGuide("ab", rt.grammars().vocab)


def _fail_on(monkeypatch, method: str, trigger: bytes):
    """Make cursors whose accepted text contains `trigger` raise in `method`."""
    real = getattr(llg.LlgCursor, method)

    def broken(self, *a):
        if trigger in self.text_bytes:
            raise RuntimeError("simulated grammar engine failure")
        return real(self, *a)

    monkeypatch.setattr(llg.LlgCursor, method, broken)


@pytest.mark.parametrize("method", ["accept_token", "bitmask", "jump_forward"])
def test_failure_mid_decoding_stops_only_that_request(monkeypatch, rt, method):
    _fail_on(monkeypatch, method, b"q")
    bad = rt.submit("x", regex="q[a-z]{6}", max_new_tokens=12, temperature=0)
    good = rt.submit("y", regex="z[a-z]{6}", max_new_tokens=12, temperature=0)
    with pytest.raises(LmnbError) as e:
        bad.result()
    assert "simulated grammar engine failure" in str(e.value) and "\n" not in str(e.value)
    out = good.result()
    assert out["text"].startswith("z") and len(out["text"]) == 7
    assert rt.alive()
    rt.check_integrity()
    monkeypatch.undo()
    again = rt.submit("x", regex="q[a-z]{2}", max_new_tokens=8, temperature=0).result()
    assert again["text"].startswith("q") and len(again["text"]) == 3
    rt.check_integrity()
