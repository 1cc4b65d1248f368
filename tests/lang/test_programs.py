"""Programs on the real smollm2: parity with Runtime.generate, roles, constrained gen,
streaming, sub-programs, async, and errors that name the primitive."""
from __future__ import annotations

import asyncio
import time

import pytest

import lmnb as lm
from lmnb.errors import EngineError, LmnbError
from lmnb.lang.backend import RuntimeBackend, SelectResult


@lm.function
def qa(s, question, n=24):
    s += lm.system("You are a helpful assistant.")
    s += lm.user(question)
    s += lm.assistant(lm.gen("answer", max_tokens=n))


def test_chat_program_equals_runtime_generate(rt):
    st = qa.run(question="What is the capital of France?", temperature=0)
    msgs = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]
    prompt = rt.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ref = rt.generate(prompt, max_new_tokens=24, temperature=0)[0]
    assert st["answer"] == ref["text"] and st["answer"]
    assert st.text() == prompt + ref["text"] + "<|im_end|>\n"
    assert st.messages() == msgs + [{"role": "assistant", "content": ref["text"]}]
    meta = st.get_meta_info("answer")
    assert meta["prompt_tokens"] == len(rt.encode(prompt))
    assert meta["completion_tokens"] >= len(rt.encode(ref["text"]))


def test_raw_program_equals_runtime_generate_and_reuses_cache(rt):
    @lm.function
    def story(s):
        s += "Once upon a time, " + lm.gen("a", max_tokens=12, stop=".") + ". Then "
        s += lm.gen("b", max_tokens=10)

    st = story.run(temperature=0)
    # programs heal the prompt boundary (the trailing space) by default
    ref_a = rt.generate("Once upon a time, ", max_new_tokens=12, temperature=0, stop=".",
                        token_healing=True)[0]["text"]
    assert st["a"] == ref_a
    prompt_b = f"Once upon a time, {ref_a}. Then "
    assert st["b"] == rt.generate(prompt_b, max_new_tokens=10, temperature=0, token_healing=True)[0]["text"]
    assert st.get_meta_info("b")["cached_tokens"] > 0  # the first step's text came from the cache


def test_user_first_program_gets_the_templates_default_system_prompt(rt):
    st = lm.run_program(lm.user("Hi") + lm.assistant(lm.gen("r", max_tokens=4)), temperature=0)
    prompt = rt.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                              add_generation_prompt=True)
    assert st.text().startswith(prompt)
    assert st["r"] == rt.generate(prompt, max_new_tokens=4, temperature=0)[0]["text"]


def test_constrained_gen_parses_values(rt):
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        population: int

    @lm.function
    def facts(s):
        s += "Q: How many legs does a cat have?\nA: " + lm.gen("legs", dtype=int, max_tokens=6) + "\n"
        s += "Q: Is water wet?\nA: " + lm.gen("wet", dtype=bool, max_tokens=4) + "\n"
        s += "Code: " + lm.gen("code", regex=r"[A-Z]{3}-[0-9]{2}", max_tokens=10) + "\n"
        s += "A city as JSON: " + lm.gen("city", json_schema=City, max_tokens=48)

    st = facts.run(temperature=0)
    assert isinstance(st["legs"], int) and isinstance(st["wet"], bool)
    assert len(st["code"]) == 6 and st["code"][3] == "-"
    assert isinstance(st["city"], City)


def test_streaming_equals_non_streaming_in_several_chunks(rt):
    kw = {"question": "Write three sentences about the sea.", "n": 40, "temperature": 0}
    full = qa.run(**kw)
    st = qa.run(stream=True, **kw)
    chunks = list(st.text_iter())
    var_chunks = list(st.text_iter("answer"))
    assert "".join(chunks) == full.text() == st.text()
    assert "".join(var_chunks) == full["answer"] and len(var_chunks) >= 5


def test_streaming_with_a_multi_character_stop_string(rt):
    @lm.function
    def listing(s):
        s += "Three fruits, one per line:\n1." + lm.gen("items", max_tokens=30, stop="\n3")

    full = listing.run(temperature=0)
    st = listing.run(temperature=0, stream=True)
    assert "".join(st.text_iter("items")) == full["items"] == st["items"]


def test_sub_program_and_variable_reads_inside_a_program(rt):
    @lm.function
    def greet(s, who):
        s += f"Hello {who}, " + lm.gen("g", max_tokens=4)

    @lm.function
    def outer(s):
        s += greet(who="Ann")
        first = s["g"]            # waits for the value
        s += " / " + first.upper()

    st = outer.run(temperature=0)
    assert st.text().endswith(" / " + st["g"].upper())


def test_run_async(rt):
    async def main():
        return await asyncio.gather(qa.run_async(question="Say hi.", n=4, temperature=0),
                                    qa.run_async(question="Say bye.", n=4, temperature=0))

    a, b = asyncio.run(main())
    assert a["answer"] and b["answer"]


# -- errors ------------------------------------------------------------------------------
def test_bad_argument_raises_naming_the_primitive(rt):
    @lm.function
    def bad(s):
        s += "x" + lm.gen("n", max_tokens="ten")

    with pytest.raises(LmnbError, match=r"gen\('n'\): max_tokens must be an int"):
        bad.run()


def test_engine_side_error_names_the_primitive_and_batch_keeps_going(rt):
    @lm.function
    def maybe_long(s, words):
        s += "word " * words + lm.gen("out", max_tokens=2)

    with pytest.raises(LmnbError, match=r"gen\('out'\): the prompt has \d+ tokens") as ei:
        maybe_long.run(words=9000)
    assert ei.value.state.error is ei.value
    sts = maybe_long.run_batch([{"words": 3}, {"words": 9000}, {"words": 4}], temperature=0)
    assert sts[0].error is None and sts[2].error is None and sts[0]["out"]
    assert "gen('out')" in str(sts[1].error)
    with pytest.raises(LmnbError, match="gen"):
        sts[1]["out"]


def test_role_misuse_and_unknown_variable(rt):
    with pytest.raises(LmnbError, match=r"user_end\(\) without user_begin"):
        lm.run_program(lm.system_begin() + "x" + lm.user_end())
    with pytest.raises(LmnbError, match="the assistant turn is still open"):
        lm.run_program(lm.assistant_begin() + lm.user("x"))
    st = lm.run_program("Hello " + lm.gen("a", max_tokens=2), temperature=0)
    with pytest.raises(LmnbError, match="captured no variable 'b'"):
        st["b"]


class _DyingBackend(RuntimeBackend):
    """Generation fails after a while, the way a dead engine reports it."""

    class _Handle:
        def result(self):
            time.sleep(0.2)
            raise EngineError("the engine stopped before this request finished")

        def __iter__(self):
            return iter(())

        def abort(self):
            pass

    def generate(self, prompt, stream=False, **sampling):
        return self._Handle()

    def select(self, prompt, choices, method) -> SelectResult:
        raise EngineError("the engine stopped")


def test_engine_failure_surfaces_without_hanging(rt):
    backend = _DyingBackend(rt)
    t0 = time.monotonic()
    with pytest.raises(EngineError, match=r"gen\('a'\): the engine stopped"):
        lm.run_program("Hi " + lm.gen("a"), backend=backend)
    st = qa.run(question="x", backend=backend, stream=True)
    with pytest.raises(EngineError, match=r"gen\('answer'\)"):
        list(st.text_iter())
    assert "gen('answer')" in str(st.error)

    @lm.function
    def forked(s):
        s += "Pick: "
        f = s.fork(2)
        f += lm.select("c", ["a", "b"])
        f.join()

    with pytest.raises(EngineError, match=r"fork branch 0: select\('c'\)"):
        forked.run(backend=backend)
    assert time.monotonic() - t0 < 10


def test_wrong_program_arguments_are_clear(rt):
    with pytest.raises(LmnbError, match=r"qa\(\): missing a required argument: 'question'"):
        qa.run(questoin="x")
    with pytest.raises(LmnbError, match="list of dicts"):
        qa.run_batch({"question": "x"})
    with pytest.raises(LmnbError, match="unknown run option 'max_tokens'"):
        qa.run_batch([{"question": "x"}], max_tokens=3)
