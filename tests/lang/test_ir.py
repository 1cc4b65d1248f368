"""IR constructors, validation, choice-scoring rules and chat-template derivation
(no model needed)."""
from __future__ import annotations

import math

import pytest

import lmnb as lm
from lmnb.errors import LmnbError
from lmnb.lang import ir
from lmnb.lang.chat_template import derive
from lmnb.lang.choices import _common_len, greedy_token, unconditional_normalized
from lmnb.lang.interpreter import _stop_overlap


def test_concatenation_builds_a_flat_sequence():
    e = "a" + lm.gen("x", max_tokens=3) + "b" + ("c" + lm.select("y", ["1", "2"]))
    assert isinstance(e, ir.Seq)
    kinds = [type(n).__name__ for n in e.items]
    assert kinds == ["Text", "Gen", "Text", "Text", "Select"]
    assert e.items[1].sampling() == {"max_new_tokens": 3}


def test_roles_wrap_their_content():
    e = lm.user("hi " + lm.gen("g"))
    assert [type(n).__name__ for n in e.items] == ["RoleBegin", "Text", "Gen", "RoleEnd"]
    assert lm.assistant_begin().role == "assistant" and lm.system_end().role == "system"


def test_gen_options_map_to_runtime_names():
    g = lm.gen("x", max_tokens=5, stop="\n", temperature=0, top_k=3, seed=1, ignore_eos=True)
    assert g.sampling() == {"max_new_tokens": 5, "stop": ("\n",), "temperature": 0, "top_k": 3,
                            "seed": 1, "ignore_eos": True}


def test_constrained_gen_carries_regex_schema_and_parser():
    assert lm.gen("n", dtype=int).regex and lm.gen("n", dtype=int).parse is int
    g = lm.gen("p", json_schema={"type": "object", "properties": {"a": {"type": "integer"}}})
    assert '"integer"' in g.json_schema and isinstance(g.parse, dict)
    assert isinstance(lm.gen("c", choices=["a", "b"]), ir.Select)


@pytest.mark.parametrize("make, words", [
    (lambda: lm.gen("x", max_tokens=-1), "gen('x'): max_tokens"),
    (lambda: lm.gen("x", temperature=-1), "gen('x'): temperature"),
    (lambda: lm.gen("x", regex="("), "gen('x'): invalid regex"),
    (lambda: lm.gen("x", regex="a", dtype=int), "gen('x'): give only one"),
    (lambda: lm.gen("x", dtype=list), "gen('x'): dtype"),
    (lambda: lm.gen("x", json_schema=42), "gen('x'): json_schema"),
    (lambda: lm.gen(3), "gen(3): the name"),
    (lambda: lm.select("s", []), "select('s'): choices"),
    (lambda: lm.select("s", "abc"), "select('s'): choices"),
    (lambda: lm.select("s", ["a"], method="best"), "select('s'): method"),
    (lambda: lm.fork("a", n=0), "fork: n"),
])
def test_bad_arguments_name_the_primitive(make, words):
    with pytest.raises(LmnbError, match=None) as ei:
        make()
    assert str(ei.value).startswith(words)


def test_adding_an_unknown_value_is_a_clear_error():
    with pytest.raises(LmnbError, match="cannot add a int"):
        lm.user("x") + 3


def test_greedy_token_and_unconditional_rules():
    assert greedy_token([[-1.0, -5.0], [-1.0, -0.5], [-2.0]]) == 1
    assert greedy_token([[-0.5], [-1.0, -0.1]]) == 0
    s = unconditional_normalized([[-1.0, -2.0], [-1.0]], [[-4.0], []])
    assert s == [(-1.0 + 2.0) / 2, -1.0]
    assert _common_len([1, 2, 3], [1, 2, 3, 4]) == 3
    assert _common_len([1, 2, 3], [1, 2, 9]) == 2
    assert _common_len([1, 2], [1, 2]) == 1  # at least one token is left to score
    assert math.isinf(unconditional_normalized([[]], [[]])[0])


def test_stop_overlap_holds_back_a_possible_stop_prefix():
    assert _stop_overlap("abc\n", ("\n\n",)) == 1
    assert _stop_overlap("abc", ("\n\n",)) == 0
    assert _stop_overlap("xEN", ("END", "N!")) == 2


def _chatml(default_system: str | None, bos: str = ""):
    def render(msgs, gen=False):
        out = bos
        if default_system and msgs[0]["role"] != "system":
            out += f"<s>system\n{default_system}</s>\n"
        for m in msgs:
            out += f"<s>{m['role']}\n{m['content']}</s>\n"
        return out + ("<s>assistant\n" if gen else "")
    return render


def test_template_with_injected_default_system_prompt():
    t = derive(_chatml("Be nice."))
    assert t.prefix == {"system": "<s>system\n", "user": "<s>user\n", "assistant": "<s>assistant\n"}
    assert t.suffix["user"] == "</s>\n"
    assert t.begin("user", first=True) == "<s>system\nBe nice.</s>\n<s>user\n"
    assert t.begin("system", first=True) == "<s>system\n"
    assert t.begin("user", first=False) == "<s>user\n"


def test_template_bos_is_left_to_the_tokenizer():
    t = derive(_chatml(None, bos="<bos>"), bos="<bos>")
    assert t.begin("system", first=True) == "<s>system\n"
    assert t.begin("user", first=True) == "<s>user\n"


def test_smollm2_template_matches_apply_chat_template(rt):
    from lmnb.lang.backend import RuntimeBackend

    t = RuntimeBackend(rt).chat_template()
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
            {"role": "user", "content": "Again"}]
    ours = t.begin("user", True) + "Hi" + t.end("user") + t.begin("assistant", False) + "Yo" \
        + t.end("assistant") + t.begin("user", False) + "Again" + t.end("user") + t.begin("assistant", False)
    assert ours == rt.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert "SmolLM" in t.preamble["user"]
