"""select accuracy and batched scoring, fork/join batching, and run_batch cache reuse,
proved on engine counters and step history of the real smollm2."""
from __future__ import annotations

import lmnb as lm
from lmnb.lang import ir

QUESTIONS = [
    ("What is the capital of France?", ["Paris", "London", "Berlin", "Madrid"], "Paris"),
    ("What color is the sky on a clear day?", ["blue", "green", "red", "yellow"], "blue"),
    ("What is the capital of England?", ["London", "Paris", "Rome", "Cairo"], "London"),
    ("What do cows drink?", ["water", "oil", "ink", "paint"], "water"),
    ("What is 2 + 2?", ["4", "7", "9", "12"], "4"),
    ("Which animal says meow?", ["cat", "cow", "dog", "duck"], "cat"),
    ("What is the opposite of hot?", ["cold", "tall", "fast", "loud"], "cold"),
    ("What do bees make?", ["honey", "milk", "silk", "wool"], "honey"),
    ("Which planet do we live on?", ["Earth", "Mars", "Jupiter", "Venus"], "Earth"),
    ("What is frozen water called?", ["ice", "steam", "sand", "glass"], "ice"),
    ("How many days are in a week?", ["seven", "three", "ten", "twelve"], "seven"),
    ("What is the capital of Japan?", ["Tokyo", "Beijing", "Seoul", "Bangkok"], "Tokyo"),
    ("What color is a banana?", ["yellow", "blue", "purple", "black"], "yellow"),
    ("Which language is spoken in Spain?", ["Spanish", "German", "Chinese", "Russian"], "Spanish"),
    ("Which fruit is red and grows on trees?", ["apple", "carrot", "potato", "onion"], "apple"),
    ("What is the capital of Germany?", ["Berlin", "Madrid", "Lisbon", "Oslo"], "Berlin"),
    ("What is the largest ocean on Earth?", ["Pacific", "Atlantic", "Indian", "Arctic"], "Pacific"),
    ("Which gas do humans need to breathe?", ["oxygen", "helium", "neon", "argon"], "oxygen"),
    ("What is the capital of Italy?", ["Rome", "Vienna", "Athens", "Dublin"], "Rome"),
    ("What do you call a baby cat?", ["kitten", "puppy", "calf", "foal"], "kitten"),
]


@lm.function
def quiz(s, question, options, method="token_length_normalized"):
    s += "Question: What is the capital of Spain?\nAnswer: Madrid\n\n"
    s += "Question: " + question + "\nAnswer: " + lm.select("answer", options, method=method)


def test_select_answers_unambiguous_questions(rt):
    states = quiz.run_batch([{"question": q, "options": o} for q, o, _ in QUESTIONS])
    right = sum(st["answer"] == want for st, (_, _, want) in zip(states, QUESTIONS))
    print(f"select accuracy {right}/{len(QUESTIONS)}")
    assert right >= 0.9 * len(QUESTIONS)
    st = states[0]
    assert st.text().endswith("Answer: " + st["answer"])
    meta = st.get_meta_info("answer")
    assert len(meta["normalized_prompt_logprobs"]) == 4


def test_other_select_methods_run(rt):
    for method in ("greedy_token", "unconditional_likelihood_normalized"):
        st = quiz.run(question="What is the capital of France?", options=["Paris", "London"], method=method)
        assert st["answer"] == "Paris"
        assert st.get_meta_info("answer")["method"] == method


def test_select_scores_four_options_on_a_prefix_computed_once(rt):
    prefix = " ".join(f"Note {i}: the {w} box holds {i * 3} marbles." for i, w in
                      enumerate(["red", "blue", "green", "white", "black", "pink", "gray", "gold"] * 3))
    prefix += "\nWhich box holds the most marbles? The"
    options = [" red box", " blue box", " green one", " gold box"]
    n_prefix = len(rt.encode(prefix))
    option_tokens = [len(rt.encode(prefix + o)) - n_prefix for o in options]
    before = rt.stats()["computed_tokens"]
    st = lm.run_program(prefix + lm.select("box", options))
    computed = rt.stats()["computed_tokens"] - before
    meta = st.get_meta_info("box")
    print(f"select: prefix {n_prefix} tokens, 4 options, computed {computed} tokens")
    assert n_prefix > 150
    # the prefix once, then each option (plus the one prefix token its first logprob needs)
    assert computed <= n_prefix + sum(option_tokens) + 2 * len(options)
    assert computed == meta["computed_tokens"]
    assert meta["cached_tokens"] == [n_prefix - 1] * 4


def test_fork_branches_decode_together_and_join_in_order(rt):
    @lm.function
    def brainstorm(s):
        s += "Ideas for a weekend trip, one line each:\n"
        forks = s.fork(4)
        forks += lambda i: f"Idea {i + 1}:" + lm.gen("idea", max_tokens=16, ignore_eos=True, seed=i)
        forks.join()
        s += "Best idea:" + lm.gen("best", max_tokens=4)

    st = brainstorm.run(temperature=0.7)
    ideas, metas = st["idea"], st.get_meta_info("idea")
    assert isinstance(ideas, list) and len(ideas) == 4
    rids = {m["id"] for m in metas}
    steps = [set(h[4]) for h in rt.engine.history if h[1] == "decode" and rids & set(h[4])]
    together = sum(rids <= s for s in steps)
    print(f"fork(4): {together}/{len(steps)} decode steps held all 4 branches")
    assert together >= 12 and together >= 0.75 * len(steps)
    texts = [f"Idea {i + 1}:" + ideas[i] for i in range(4)]
    for t in texts:
        assert t not in st.text()  # gathered into variables, not appended to the parent
    assert st["best"] is not None


def test_fork_node_from_ir_gathers_lists(rt):
    body = "Color: " + lm.gen("c", max_tokens=3, stop="\n")
    prog = ir.Seq(["A list of colors.\n", ir.Fork((body,) * 3), "Done"])
    st = lm.run_program(prog, temperature=0)
    assert isinstance(st["c"], list) and len(st["c"]) == 3 and len(set(st["c"])) == 1
    assert st.text() == "A list of colors.\nDone"
    numbered = ir.Fork(tuple(lm.gen("k", regex=f"{i}{i}") for i in range(4)))
    st = lm.run_program(["Numbers: ", numbered], temperature=0)
    assert st["k"] == ["00", "11", "22", "33"]  # branch order
    st = lm.run_program(["Words: ", lm.fork("a", "b", join="concate_and_append")])
    assert st.text() == "Words: ab"


def test_run_batch_of_64_shares_the_few_shot_prefix(rt):
    shots = "\n".join(f"Q: What is {a} plus {b}?\nA: {a + b}" for a, b in
                      [(1, 2), (3, 4), (10, 5), (7, 7), (20, 1), (6, 9), (11, 11), (8, 3)] * 3)

    @lm.function
    def add(s, a, b):
        s += shots + f"\nQ: What is {a} plus {b}?\nA:" + lm.gen("sum", max_tokens=3, stop="\n")

    rt.flush_cache()
    before = rt.cache_stats()
    states = add.run_batch([{"a": i, "b": i + 1} for i in range(64)], temperature=0, progress_bar=True)
    after = rt.cache_stats()
    hit = (after["hit_tokens"] - before["hit_tokens"]) / (after["prompt_tokens"] - before["prompt_tokens"])
    print(f"run_batch(64): cache hit rate {hit:.3f}")
    assert all(st.error is None for st in states)
    assert hit >= 0.8
    assert [st.get_meta_info("sum")["prompt_tokens"] > 0 for st in states] == [True] * 64
    assert states[5].text().endswith(f"What is 5 plus 6?\nA:{states[5]['sum']}")
