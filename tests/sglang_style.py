"""Programs written the way SGLang's documentation and examples write them, with only the
import renamed (`import lmnb as sgl`). Each `check_*` runs one on the default backend
and asserts its structure (a 135M model's answers may be wrong). The same checks run
in process (tests/lang/test_sglang_style.py) and through `sgl.RuntimeEndpoint` against
a real `lmnb serve` (tests/remote/test_sglang_style_remote.py)."""
from __future__ import annotations

import asyncio
import json
import re

from pydantic import BaseModel

import lmnb as sgl

T = 8   # max_tokens for free text: keeps CPU time small


# -- few-shot QA ---------------------------------------------------------------------
@sgl.function
def few_shot_qa(s, question):
    s += "The following are questions with answers.\n\n"
    s += "Q: What is the capital of France?\nA: Paris\n"
    s += "Q: What is the capital of Germany?\nA: Berlin\n"
    s += "Q: " + question + "\n"
    s += "A:" + sgl.gen("answer", stop="\n", temperature=0, max_tokens=T)


def check_few_shot_qa():
    state = few_shot_qa.run(question="What is the capital of Italy?")
    assert isinstance(state["answer"], str) and "\n" not in state["answer"]
    assert state.text().endswith(state["answer"])


# -- multi-turn chat -------------------------------------------------------------------
@sgl.function
def multi_turn_question(s, question_1, question_2):
    s += sgl.system("You are a helpful assistant.")
    s += sgl.user(question_1)
    s += sgl.assistant(sgl.gen("answer_1", max_tokens=T))
    s += sgl.user(question_2)
    s += sgl.assistant(sgl.gen("answer_2", max_tokens=T))


def check_multi_turn_question():
    state = multi_turn_question.run(question_1="What is the capital of the United States?",
                                    question_2="List two local attractions.", temperature=0)
    roles = [m["role"] for m in state.messages()]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert state.messages()[2]["content"] == state["answer_1"]
    assert state.messages()[4]["content"] == state["answer_2"]


@sgl.function
def chat_with_scopes(s, question):
    with s.system():
        s += "You are a helpful assistant."
    with s.user():
        s += question
    with s.assistant():
        s += sgl.gen("answer", max_tokens=T)
    with s.user():
        s += "Now say it in one word."
    with s.assistant():
        s += sgl.gen("short", max_tokens=4)


def check_chat_with_scopes():
    state = chat_with_scopes(question="What colour is the sky?", temperature=0)   # a direct call runs it
    msgs = state.messages()
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    assert msgs[1]["content"] == "What colour is the sky?" and msgs[4]["content"] == state["short"]


# -- select ------------------------------------------------------------------------------
@sgl.function
def tool_use(s, question):
    s += "To answer this question: " + question + ", "
    s += "I need to use a " + sgl.gen("tool", choices=["calculator", "search engine"]) + ". "
    if s["tool"] == "calculator":
        s += "The math expression is" + sgl.gen("expression", max_tokens=8, stop="\n")
    elif s["tool"] == "search engine":
        s += "The key word to search is" + sgl.gen("word", max_tokens=8, stop="\n")


def check_tool_use():
    state = tool_use.run(question="What is 16 times 12?", temperature=0)
    assert state["tool"] in ("calculator", "search engine")
    key = "expression" if state["tool"] == "calculator" else "word"
    assert isinstance(state[key], str)


@sgl.function
def choose_methods(s):
    s += "Question: Is water wet?\nAnswer:"
    s += sgl.select("greedy", choices=[" yes", " no"], choices_method=sgl.greedy_token_selection)
    s += "\nAgain:"
    s += sgl.select("normalized", choices=[" yes", " no"], choices_method=sgl.token_length_normalized)
    s += "\nOnce more:"
    s += sgl.select("uncond", choices=[" yes", " no", " maybe"],
                    choices_method=sgl.unconditional_likelihood_normalized)


def check_choose_methods():
    state = choose_methods.run()
    assert state["greedy"] in (" yes", " no") and state["normalized"] in (" yes", " no")
    assert state["uncond"] in (" yes", " no", " maybe")
    meta = state.get_meta_info("normalized")
    lps = meta["normalized_prompt_logprobs"]
    assert len(lps) == 2 and state["normalized"] == [" yes", " no"][lps.index(max(lps))]


# -- constrained decoding ----------------------------------------------------------------
character_regex = (
    r"""\{\n"""
    + r"""    "name": "[\w\d\s]{1,16}",\n"""
    + r"""    "house": "(Gryffindor|Slytherin|Ravenclaw|Hufflepuff)",\n"""
    + r"""    "wand": "(oak|holly|willow)",\n"""
    + r"""    "alive": "(Alive|Deceased)"\n"""
    + r"""\}"""
)


@sgl.function
def character_gen(s, name):
    s += name + " is a character in Harry Potter. Please fill in the following information about this character.\n"
    s += sgl.gen("json_output", max_tokens=64, regex=character_regex)


def check_json_regex():
    state = character_gen.run(name="Hermione Granger", temperature=0)
    data = json.loads(state["json_output"])
    assert set(data) == {"name", "house", "wand", "alive"}
    assert data["house"] in ("Gryffindor", "Slytherin", "Ravenclaw", "Hufflepuff")


class Person(BaseModel):
    name: str
    age: int


@sgl.function
def person_json(s):
    s += "Describe a person as JSON: "
    s += sgl.gen("person", max_tokens=48, json_schema=Person)


def check_json_schema():
    state = person_json.run(temperature=0)
    value = state["person"]
    assert isinstance(value, Person) and isinstance(value.age, int)


@sgl.function
def regex_gen(s):
    s += "Q: What is the IP address of the Google DNS servers?\n"
    s += "A: " + sgl.gen("answer", temperature=0,
                         regex=r"((25[0-5]|2[0-4]\d|[01]?\d\d?).){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)")


def check_regex():
    ip = regex_gen.run()["answer"]
    assert re.fullmatch(r"((25[0-5]|2[0-4]\d|[01]?\d\d?).){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)", ip)


@sgl.function
def dtypes(s):
    s += "Answer the questions.\nQ: How many legs does a dog have?\nA: " + sgl.gen("legs", dtype=int, max_tokens=4)
    s += "\nQ: What is pi to two decimals?\nA: " + sgl.gen("pi", dtype=float, max_tokens=6)
    s += "\nQ: Is the earth round? (True/False)\nA: " + sgl.gen("round", dtype=bool, max_tokens=3)
    s += "\nQ: Name a colour, quoted.\nA: " + sgl.gen_string("colour", max_tokens=16)
    s += "\nQ: How many days are in a week?\nA: " + sgl.gen_int("days", max_tokens=4)
    s += "\n" + sgl.gen("regex_int", regex=sgl.REGEX_INT, max_tokens=4)


def check_dtype_gen():
    state = dtypes.run(temperature=0)
    assert isinstance(state["legs"], int) and isinstance(state["days"], int)
    assert isinstance(state["pi"], float) and isinstance(state["round"], bool)
    assert isinstance(state["colour"], str)
    assert re.fullmatch(sgl.REGEX_INT, state["regex_int"])


# -- expert answer / tool use by direct call / ReAct -----------------------------------
@sgl.function
def expert_answer(s, question):
    s += "Question: " + question + "\n"
    s += "A good person to answer this question is" + sgl.gen("expert", stop=".", max_tokens=T) + ".\n"
    s += "For instance," + s["expert"] + " would answer that" + sgl.gen("answer", stop=".", max_tokens=T) + "."


def check_expert_answer():
    state = expert_answer.run(question="What is the best way to learn to swim?", temperature=0)
    assert "." not in state["expert"] and state["expert"] in state.text()
    assert state.text().count(state["expert"]) >= 2


def calculator(expression: str) -> str:
    a, op, b = re.fullmatch(r"\s*(\d+)\s*([+*-])\s*(\d+)\s*", expression).groups()
    return str({"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op])


@sgl.function
def calculate(s, question):
    s += "Write the arithmetic for: " + question + "\nExpression: "
    s += sgl.gen("expression", regex=r"[0-9]{1,3} ?[+*-] ?[0-9]{1,3}", max_tokens=12)
    s += "\nResult: " + calculator(s["expression"])   # a plain Python call on the generated value
    s += "\nSo the answer is" + sgl.gen("final", max_tokens=8, stop="\n")


def check_tool_direct_call():
    state = calculate.run(question="twelve plus thirty", temperature=0)
    assert f"Result: {calculator(state['expression'])}" in state.text()


def search(query: str) -> str:
    return f"(results for {query.strip()!r}: nothing found)"


@sgl.function
def react(s, question):
    s += "Answer the question with Thought / Action steps. Actions: Search[query] or Finish[answer].\n"
    s += "Question: " + question + "\n"
    for i in range(2):
        s += f"Thought {i + 1}:" + sgl.gen(f"thought_{i}", stop="\n", max_tokens=T) + "\n"
        s += f"Action {i + 1}: " + sgl.select(f"action_{i}", choices=["Search", "Finish"]) + "["
        s += sgl.gen(f"argument_{i}", stop=["]", "\n"], max_tokens=8) + "]\n"
        if s[f"action_{i}"] == "Finish":
            break
        s += f"Observation {i + 1}: " + search(s[f"argument_{i}"]) + "\n"


def check_react():
    state = react.run(question="Which city hosted the 2012 Olympics?", temperature=0)
    assert state["action_0"] in ("Search", "Finish")
    if state["action_0"] == "Search":
        assert "Observation 1: (results for" in state.text() and state["action_1"] in ("Search", "Finish")


# -- parallelism ---------------------------------------------------------------------------
@sgl.function
def skeleton_of_thought(s, topic, num_points=2):
    s += "Here are " + str(num_points) + " tips about " + topic + ".\n"
    forks = s.fork(num_points)
    for i in range(num_points):
        forks[i] += f"Now, expand tip {i + 1} into one sentence:\n"
        forks[i] += sgl.gen("detailed_tip", max_tokens=T, stop="\n\n")
    forks.join()
    for i in range(num_points):
        s += f"Tip {i + 1}:" + forks[i]["detailed_tip"] + "\n"
    s += "In summary," + sgl.gen("summary", max_tokens=T)


def check_parallel_decoding():
    state = skeleton_of_thought.run(topic="staying healthy", temperature=0)
    tips = state["detailed_tip"]
    assert isinstance(tips, list) and len(tips) == 2
    assert all(f"Tip {i + 1}:{t}" in state.text() for i, t in enumerate(tips))
    assert isinstance(state["summary"], str)


@sgl.function
def parallel_encoding(s, docs, question):
    s += "Read the documents.\n"
    forks = s.fork(len(docs))
    forks += lambda i: f"Document {i + 1}: {docs[i]}\n"
    forks.join("concate_and_append")
    s += "Question: " + question + "\nAnswer:" + sgl.gen("answer", max_tokens=T, stop="\n")


def check_parallel_encoding():
    docs = ["The cat sat on the mat.", "The dog slept in the sun.", "The bird sang at dawn."]
    state = parallel_encoding.run(docs=docs, question="Where did the cat sit?", temperature=0)
    text = state.text()
    assert all(f"Document {i + 1}: {d}" in text for i, d in enumerate(docs))
    assert text.index("Document 1") < text.index("Question:")


# -- streaming -------------------------------------------------------------------------------
@sgl.function
def story(s):
    s += "Once upon a time, " + sgl.gen("story", max_tokens=T)


def check_streaming():
    state = story.run(stream=True, temperature=0)
    pieces = list(state.text_iter("story"))
    assert "".join(pieces) == state["story"] and len(pieces) >= 2
    state = story(stream=True, temperature=0)   # direct call, SGLang style
    assert state.sync()["story"] == "".join(pieces)


def check_async_stream():
    async def collect():
        state = story.run(stream=True, temperature=0)
        return [p async for p in state.text_async_iter(var_name="story")], state

    pieces, state = asyncio.run(collect())
    assert "".join(pieces) == state["story"]


# -- batches -------------------------------------------------------------------------------
@sgl.function
def hellaswag(s, context, endings):
    s += "Complete the sentence.\n" + context
    s += sgl.select("ending", choices=endings)


def check_hellaswag_batch():
    items = [{"context": "She poured the coffee and then", "endings": [" drank it.", " flew away.", " sang it."]},
             {"context": "He tied his shoes and", "endings": [" went for a run.", " ate them.", " melted."]},
             {"context": "The sun rose and", "endings": [" the birds sang.", " it was midnight.", " fish swam."]}]
    states = hellaswag.run_batch(items, progress_bar=False)
    assert len(states) == 3
    for st, item in zip(states, items):
        assert st.error is None and st["ending"] in item["endings"]


def check_generator_batch():
    qs = [{"question": "What is 1+1?"}, {"question": "What is 2+2?"}, ("What is 3+3?",)]
    it = few_shot_qa.run_batch(qs, generator_style=True)
    states = list(it)
    assert len(states) == 3 and all(isinstance(s["answer"], str) for s in states)


# -- gen options -----------------------------------------------------------------------------
@sgl.function
def long_enough(s):
    s += "Write a word:" + sgl.gen("word", min_tokens=6, max_tokens=8, stop="\n")


def check_min_tokens():
    state = long_enough.run(temperature=0)
    assert state.get_meta_info("word")["completion_tokens"] >= 6


@sgl.function
def with_logprobs(s):
    s += "The capital of France is" + sgl.gen("city", max_tokens=3, return_logprob=True, top_logprobs_num=2)


def check_return_logprob():
    state = with_logprobs.run(temperature=0)
    meta = state.get_meta_info("city")
    lps = meta["output_token_logprobs"]
    assert len(lps) == meta["completion_tokens"] and all(lp <= 0 for _, lp in lps)
    assert all(len(top) == 2 for top in meta["output_top_logprobs"])


@sgl.function
def several(s):
    s += "A fruit name:" + sgl.gen("fruit", n=2, max_tokens=3, temperature=0.9, seed=7,
                                    frequency_penalty=0.2, presence_penalty=0.1)
    s += "\nA colour:" + sgl.gen("colour", max_tokens=4, stop_regex=r"[.!?]", return_logprob=True,
                                  return_text_in_logprobs=True)


def check_n_penalties_stop_regex():
    state = several.run()
    assert isinstance(state["fruit"], list) and len(state["fruit"]) == 2
    meta = state.get_meta_info("colour")
    assert not re.search(r"[.!?]", state["colour"])
    assert all(len(e) == 3 and isinstance(e[2], str) for e in meta["output_token_logprobs"])


# -- speculative execution -----------------------------------------------------------------
@sgl.function(num_api_spec_tokens=64)
def gen_character_spec(s):
    s += "Construct a character within the following format:\n"
    s += "Name: Steve Jobs.\nBirthday: February 24, 1955.\nJob: Apple CEO.\n"
    s += "\nPlease generate new Name, Birthday and Job.\n"
    s += "Name:" + sgl.gen("name", stop="\n", max_tokens=T) + "\nBirthday:"
    s += sgl.gen("birthday", stop="\n", max_tokens=T) + "\nJob:" + sgl.gen("job", stop="\n", max_tokens=T) + "\n"


def check_completion_spec():
    state = gen_character_spec.run(temperature=0)
    for k in ("name", "birthday", "job"):
        assert isinstance(state[k], str) and "\n" not in state[k]
    assert f"Name:{state['name']}\nBirthday:{state['birthday']}\nJob:{state['job']}\n" in state.text()


@sgl.function(num_api_spec_tokens=64)
def gen_character_chat_spec(s):
    s += sgl.system("You are a helpful assistant.")
    s += sgl.user("Construct a character within the following format:")
    s += sgl.assistant("Name: Steve Jobs.\nBirthday: February 24, 1955.\nJob: Apple CEO.\n")
    s += sgl.user("Please generate new Name, Birthday and Job.\n")
    s += sgl.assistant_begin()
    s += "Name:" + sgl.gen("name", stop="\n", max_tokens=T) + "\nBirthday:" + sgl.gen("birthday", stop="\n", max_tokens=T)
    s += "\nJob:" + sgl.gen("job", stop="\n", max_tokens=T)
    s += sgl.assistant_end()


def check_chat_spec():
    state = gen_character_chat_spec.run(temperature=0)
    last = state.messages()[-1]
    assert last["role"] == "assistant" and last["content"].startswith("Name:" + state["name"])


# -- state API ---------------------------------------------------------------------------------
@sgl.function
def scoped(s, topic):
    s += "Topic: " + topic + "\n"
    with s.var_scope("intro"):
        s += "Intro:" + sgl.gen("intro_gen", max_tokens=6, stop="\n")
    s["topic_upper"] = topic.upper()
    with s.copy() as draft:
        draft += "\nDraft:" + sgl.gen("draft", max_tokens=6)
    s += "\nEnd."


def check_var_scope_copy_setitem():
    state = scoped.run(topic="tea", temperature=0)
    assert state["intro"] == "Intro:" + state["intro_gen"]
    assert state["topic_upper"] == "TEA" and state.text().endswith("\nEnd.")
    assert "Draft:" not in state.text()


@sgl.function
def styled_answer(s, style, question):
    s += "Answer in a " + style + " way.\n"
    s += "Q: " + question + "\nA:" + sgl.gen("answer", max_tokens=8, stop="\n")


def check_bind_and_cache():
    formal = styled_answer.bind(style="formal")
    prefix = formal.cache()
    assert prefix == "Answer in a formal way.\n"   # up to the first use of an unbound argument
    state = formal.run(question="How are you?", temperature=0)
    assert state.text().startswith(prefix) and isinstance(state["answer"], str)
    assert sgl.get_server_info() is not None
    assert sgl.flush_cache() is True


CHECKS = [v for k, v in sorted(globals().items()) if k.startswith("check_")]
