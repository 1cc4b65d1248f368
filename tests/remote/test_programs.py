"""lm.OpenAI programs against `lmnb serve --model smollm2` (a real subprocess) through the
official openai client: the paper's few-shot extraction with and without API speculative
execution, a forced mismatch, select, chat speculation and structured output."""
from __future__ import annotations

import json

import pytest

import lmnb as lm

FEWSHOT = (
    "Text: Steve Jobs (born February 24, 1955) was an American businessman who co-founded Apple.\n"
    "Name: Steve Jobs\nBirthdate: February 24, 1955\nJob: businessman\n\n"
    "Text: Marie Curie (born November 7, 1867) was a Polish physicist and chemist.\n"
    "Name: Marie Curie\nBirthdate: November 7, 1867\nJob: physicist and chemist\n\n"
)
PEOPLE = ["Isaac Newton (born January 4, 1643) was an English mathematician and physicist.",
          "Ada Lovelace (born December 10, 1815) was an English mathematician and writer.",
          "Alan Turing (born June 23, 1912) was an English computer scientist."]
FIELDS = ("name", "birthday", "job")
SPEC = 32   # tokens per speculative call: the three fields and their labels fit


def _fields(labels):
    def body(s, text):
        s += FEWSHOT + "Text: " + text
        for label, name in zip(labels, FIELDS):
            s += f"\n{label}:" + lm.gen(name, stop="\n", max_tokens=16)
    return lm.function(body)


extract = _fields(("Name", "Birthdate", "Job"))
mismatched = _fields(("Name", "Birthday", "Job"))   # the model writes "Birthdate" there


@pytest.fixture(scope="module")
def backend(lmnb_serve):
    return lm.OpenAI("smollm2", base_url=lmnb_serve, is_chat_model=False)


@pytest.fixture(scope="module")
def chat(lmnb_serve):
    return lm.OpenAI("smollm2", base_url=lmnb_serve)


def _values(st):
    return tuple(st[f] for f in FIELDS)


def test_speculation_fills_three_fields_in_one_call(backend):
    plain = extract.run_batch([{"text": t} for t in PEOPLE], backend=backend, temperature=0,
                              progress_bar=False)
    spec = extract.run_batch([{"text": t} for t in PEOPLE], backend=backend, temperature=0,
                             num_api_spec_tokens=SPEC, progress_bar=False)
    calls_plain = sum(st.api_usage["calls"] for st in plain)
    calls_spec = sum(st.api_usage["calls"] for st in spec)
    print(f"\nextraction of {len(PEOPLE)} people: {calls_plain} calls without speculation, {calls_spec} with")
    assert calls_plain == 3 * len(PEOPLE) and calls_spec == len(PEOPLE)   # 3x fewer
    assert [_values(s) for s in spec] == [_values(p) for p in plain]
    assert spec[0]["name"] == " Isaac Newton" and all(all(v.strip() for v in _values(s)) for s in spec)
    u = spec[0].api_usage
    assert u["spec_calls"] == 1 and u["spec_fields"] == 3 and u["spec_mismatches"] == 0
    assert u["prompt_tokens"] > 0 and u["completion_tokens"] == SPEC   # no stops in the speculative call
    meta = spec[0].get_meta_info("job")
    assert meta["speculative"] and meta["api_calls"] == 0 and meta["finish_reason"] == "stop"


def test_decorator_option_and_text_identical(backend):
    prog = lm.function(num_api_spec_tokens=SPEC)(extract.func)
    st = prog.run(text=PEOPLE[0], backend=backend, temperature=0)
    ref = extract.run(text=PEOPLE[0], backend=backend, temperature=0)
    assert st.text() == ref.text() and st.api_usage["calls"] == 1
    off = prog.run(text=PEOPLE[0], backend=backend, temperature=0, num_api_spec_tokens=0)
    assert off.api_usage["calls"] == 3 and off.text() == ref.text()


def test_forced_mismatch_falls_back_and_fills_every_field(backend):
    ref = mismatched.run(text=PEOPLE[0], backend=backend, temperature=0)
    st = mismatched.run(text=PEOPLE[0], backend=backend, temperature=0, num_api_spec_tokens=SPEC)
    u = st.api_usage
    print(f"\nforced mismatch: {u}")
    assert u["spec_mismatches"] == 1 and u["fallback_calls"] == 2 and u["calls"] == 3
    assert _values(st) == _values(ref) and all(v.strip() for v in _values(st))
    assert st.get_meta_info("name")["speculative"]
    assert st.get_meta_info("birthday")["fallback"] == "per_field"


def test_short_speculation_speculates_again(backend):
    st = extract.run(text=PEOPLE[0], backend=backend, temperature=0, num_api_spec_tokens=8)
    ref = extract.run(text=PEOPLE[0], backend=backend, temperature=0)
    assert _values(st) == _values(ref)
    assert st.api_usage["spec_calls"] >= 2 and st.api_usage["spec_mismatches"] == 0


def test_field_max_tokens_is_kept_within_a_speculation(backend):
    prog = lm.function(lambda s: s.__iadd__(FEWSHOT + "Text: " + PEOPLE[0] + "\nName:" +
                                            lm.gen("name", stop="\n", max_tokens=1) + "\nBirthdate:" +
                                            lm.gen("birthday", stop="\n", max_tokens=16)))
    ref = prog.run(backend=backend, temperature=0)
    st = prog.run(backend=backend, temperature=0, num_api_spec_tokens=SPEC)
    assert st["name"] == ref["name"] and st.get_meta_info("name")["finish_reason"] == "length"
    assert st["birthday"] == ref["birthday"] and st.api_usage["spec_mismatches"] == 1


def test_select_scores_options_from_echoed_logprobs(backend):
    prog = lm.function(lambda s: s.__iadd__("Q: Is the sky blue on a clear day? Answer yes or no.\nA:" +
                                            lm.select("a", [" yes", " no"])))
    st = prog.run(backend=backend)
    meta = st.get_meta_info("a")
    assert st["a"] in (" yes", " no") and len(meta["normalized_prompt_logprobs"]) == 2
    assert st.api_usage["calls"] == 1
    for method in ("greedy_token", "unconditional_likelihood_normalized"):
        p = lm.function(lambda s, m=method: s.__iadd__("The capital of France is" +
                                                       lm.select("c", [" Paris", " Rome"], method=m)))
        assert p.run(backend=backend)["c"] == " Paris"


def test_chat_program_speculates_the_assistant_turn(chat):
    @lm.function(num_api_spec_tokens=64)
    def person(s, text):
        s += lm.system("You extract facts about a person from a text, one per line, in the format shown.")
        s += lm.user(PEOPLE[0])
        s += lm.assistant("Name: Isaac Newton\nBorn: January 4, 1643\nJob: mathematician and physicist")
        s += lm.user(text)
        s += lm.assistant("Name:" + lm.gen("name", stop="\n") + "\nBorn:" + lm.gen("born", stop="\n")
                          + "\nJob:" + lm.gen("job", stop="\n"))

    st = person.run(text=PEOPLE[1], backend=chat, temperature=0)
    print(f"\nchat: {st.variables()} {st.api_usage}")
    assert st.api_usage["calls"] == 1 and st.api_usage["spec_fields"] == 3
    assert st["name"].strip() == "Ada Lovelace" and all(st[f].strip() for f in ("born", "job"))
    assert st.messages()[-1] == {"role": "assistant", "content": f"Name:{st['name']}\nBorn:{st['born']}"
                                 f"\nJob:{st['job']}"}
    with pytest.raises(lm.LmnbError, match="num_api_spec_tokens=N"):
        person.run(text=PEOPLE[1], backend=chat, temperature=0, num_api_spec_tokens=0)


def test_chat_mismatch_still_fills_every_field(chat):
    prog = lm.function(lambda s: s.__iadd__(
        lm.user("Describe a cat in three short lines: colour, mood, food.")
        + lm.assistant("Colour:" + lm.gen("colour", stop="\n", max_tokens=12) + "\nMood:"
                       + lm.gen("mood", stop="\n", max_tokens=12) + "\nFood:" + lm.gen("food", stop="\n", max_tokens=12))))
    st = prog.run(backend=chat, temperature=0, num_api_spec_tokens=SPEC)
    u = st.api_usage
    print(f"\nchat mismatch: {st.variables()} {u}")
    assert u["spec_mismatches"] >= 1 and u["fallback_calls"] >= 1
    assert all(st[f] for f in ("colour", "mood", "food"))


def test_chat_select_and_structured_output(chat):
    prog = lm.function(lambda s: s.__iadd__(
        lm.user("Is fire hot? Answer yes or no.") + lm.assistant(lm.select("a", ["yes", "no"]))
        + lm.user("Give a number between 1 and 9.") + lm.assistant(lm.gen("n", regex=r"[1-9]"))
        + lm.user("A person as JSON.") + lm.assistant(lm.gen("p", max_tokens=48, json_schema={
            "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}))))
    st = prog.run(backend=chat, temperature=0)
    assert st["a"] in ("yes", "no") and st.get_meta_info("a")["method"] == "generate_match"
    assert st["n"] in "123456789" and len(st["n"]) == 1
    assert isinstance(st["p"]["name"], str) and json.loads(st.messages()[-1]["content"]) == st["p"]
    assert st.api_usage["calls"] == 3


def test_streaming_and_default_backend(backend):
    from lmnb.lang import backend as backends

    prev = backends.get_default_backend()
    lm.set_default_backend(backend)
    try:
        st = extract.run(text=PEOPLE[2], stream=True, temperature=0, num_api_spec_tokens=SPEC)
        pieces = list(st.text_iter("job"))
        assert "".join(pieces) == st["job"] and st["job"].strip()
        st2 = extract.run(text=PEOPLE[2], stream=True, temperature=0)
        assert list(st2.text_iter("job")) and st2["job"] == st["job"]
    finally:
        backends._default = prev
