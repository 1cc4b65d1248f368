"""Run by test_sglang_frontend.py in a subprocess: SGLang's own frontend package
(`import sglang as sgl`) drives the `lmnb serve` at argv[1] through
`sgl.RuntimeEndpoint`; prints one JSON object with what each program produced.

    python tests/server/sglang_client.py URL SGLANG_DIR
"""
from __future__ import annotations

import json
import sys


def main(url: str, where: str) -> dict:
    sys.path.append(where)   # after site-packages: only what the environment lacks comes from there
    import sglang as sgl

    backend = sgl.RuntimeEndpoint(url, chat_template_name="chatml")
    sgl.set_default_backend(backend)
    out: dict = {"version": sgl.__version__, "model": backend.get_model_name()}

    @sgl.function
    def qa(s, question):
        s += "Q: " + question + "\nA:" + sgl.gen("answer", max_tokens=12, stop="\n")

    st = qa.run(question="What is the capital of France?", temperature=0)
    out["gen"] = st["answer"]
    out["gen_meta"] = st.get_meta_info("answer")

    @sgl.function
    def pick(s):
        s += "The sky on a clear day is"
        s += sgl.select("colour", choices=[" blue", " green", " purple"])

    st = pick.run()
    out["select"] = st["colour"]
    out["select_logprobs"] = st.get_meta_info("colour")["normalized_prompt_logprobs"]

    @sgl.function
    def tips(s, topic):
        s += "Here are two tips about " + topic + ".\n"
        forks = s.fork(2)
        for i, f in enumerate(forks):
            f += f"Tip {i + 1}:" + sgl.gen("tip", max_tokens=8)
        s["tips"] = [f["tip"] for f in forks]
        forks.join()

    st = tips.run(topic="sleep", temperature=0)
    out["fork"] = [st.text(), st["tips"]]

    @sgl.function
    def number(s):
        s += "The year the first moon landing happened: "
        s += sgl.gen("year", max_tokens=6, regex=r"19[0-9]{2}")

    out["regex"] = number.run(temperature=0)["year"]

    @sgl.function
    def integer(s):
        s += "How many legs does a spider have? Answer: "
        s += sgl.gen("n", max_tokens=4, dtype=int)

    out["dtype_int"] = integer.run(temperature=0)["n"]

    @sgl.function
    def chat(s, question):
        s += sgl.system("You are a helpful assistant.")
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("reply", max_tokens=12))

    st = chat.run(question="Say hello.", temperature=0)
    out["chat"] = [st["reply"], [m["role"] for m in st.messages()]]

    @sgl.function
    def story(s):
        s += "Once upon a time" + sgl.gen("story", max_tokens=12)

    st = story.run(stream=True, temperature=0)
    out["stream"] = list(st.text_iter("story"))
    out["stream_final"] = st["story"]

    states = qa.run_batch([{"question": "1+1?"}, {"question": "2+2?"}], temperature=0, max_new_tokens=4)
    out["batch"] = [x["answer"] for x in states]

    prefix = "A long shared instruction that several requests reuse. " * 4
    backend.cache_prefix(prefix)
    out["cache_prefix"] = True
    out["server_info_keys"] = sorted(backend.get_server_info())[:50]
    backend.flush_cache()
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1], sys.argv[2])))
