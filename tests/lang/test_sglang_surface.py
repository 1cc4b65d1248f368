"""The SGLang frontend surface in detail: tracing a constant prefix, bind, calling a
function in and out of programs, choice methods, named chat templates, global_config,
SGLang's Runtime keywords, generator-style batches and their abort."""
from __future__ import annotations

import pytest

import lmnb as sgl
from lmnb.errors import LmnbError
from lmnb.runtime.sglang_args import model_spec, translate


@sgl.function
def prompt_then_gen(s, topic, n=2):
    s += sgl.system("Be brief.")
    with s.user():
        s += "Tell me " + str(n) + " facts about " + topic
    s += sgl.assistant(sgl.gen("facts", max_tokens=4))


def test_trace_stops_at_the_first_unknown():
    plain = sgl.function(lambda s, q: s.__iadd__("Fixed intro. ").__iadd__("Q: " + q))
    t = plain.trace()
    assert t.prefix == "Fixed intro. " and t.stopped_at == "q"
    t = plain.trace(q="known")
    assert t.prefix == "Fixed intro. Q: known" and t.stopped_at == "the end of the program"
    f = sgl.function(lambda s: s.__iadd__("A" + sgl.gen("x")))
    assert f.trace().prefix == "A" and f.trace().stopped_at == "gen('x')"


def test_trace_renders_roles_with_the_backend_template(smollm2):
    from lmnb.lang.backend import as_backend

    t = prompt_then_gen.trace(backend=smollm2, topic="tea")
    template = as_backend(smollm2).chat_template()
    assert t.prefix.startswith(template.begin("system", True) + "Be brief." + template.end("system"))
    assert t.prefix.endswith("Tell me 2 facts about tea" + template.end("user") + template.begin("assistant", False))
    assert t.stopped_at == "gen('facts')"
    t = prompt_then_gen.trace(backend=smollm2)
    assert t.prefix.endswith("Tell me 2 facts about ") is False and t.stopped_at == "topic"


def test_bind_checks_names_and_merges():
    b = prompt_then_gen.bind(topic="owls")
    assert b.bind(n=3).bind_arguments == {"topic": "owls", "n": 3}
    with pytest.raises(LmnbError, match="no argument 'topik'"):
        prompt_then_gen.bind(topik="x")
    with pytest.raises(LmnbError, match="prompt_then_gen\\(\\)"):
        b.run(colour="red")


def test_call_runs_outside_and_nests_inside(smollm2):
    @sgl.function
    def inner(s, x):
        s += f"<{x}>"

    @sgl.function
    def outer(s):
        s += "a"
        s += inner(x=1)      # a sub-program: runs on s
        inner(s, x=2)        # SGLang's style: the state passed in
        s += "b"

    st = outer(backend=smollm2)
    assert st.text() == "a<1><2>b"
    alone = inner(x=3, backend=smollm2)
    assert alone.text() == "<3>"


def test_fork_items_cannot_be_replaced(smollm2):
    @sgl.function
    def f(s):
        s += "x"
        forks = s.fork(2)
        forks[0] = forks[1]

    with pytest.raises(LmnbError, match="cannot be replaced"):
        f.run(backend=smollm2)


def test_choice_methods():
    from lmnb.lang.compat import method_name

    assert method_name(sgl.greedy_token_selection) == "greedy_token"
    assert method_name("greedy_token_selection") == "greedy_token"
    assert sgl.unconditional_likelihood_normalized.requires_unconditional_logprobs
    node = sgl.select("x", ["a", "b"], choices_method=sgl.greedy_token_selection)
    assert node.method == "greedy_token"
    assert sgl.gen("x", choices=["a", "b"], choices_method=sgl.token_length_normalized).method == \
        "token_length_normalized"
    with pytest.raises(LmnbError, match="select\\('x'\\): choices_method must be one of"):
        sgl.select("x", ["a"], choices_method=max)


def test_named_chat_templates():
    t = sgl.get_chat_template("chatml")
    assert t.begin("user", True) == "<|im_start|>user\n" and t.end("user") == "<|im_end|>\n"
    assert sgl.get_chat_template("llama-3-instruct").begin("user", True).startswith("<|begin_of_text|>")
    with pytest.raises(LmnbError, match="unknown chat template 'nope'; known: .*chatml"):
        sgl.get_chat_template("nope")
    from lmnb.lang.chat_templates import template_for_model

    assert template_for_model("Qwen/Qwen2.5-7B-Instruct") is sgl.get_chat_template("chatml")
    assert template_for_model("meta-llama/Meta-Llama-3-8B-Instruct") is sgl.get_chat_template("llama-3-instruct")
    assert template_for_model("gpt2") is None


def test_completion_model_roles_use_a_template(scripted_url):
    default = sgl.OpenAI("davinci-002", base_url=scripted_url)
    assert default.chat_template() is sgl.get_chat_template("default")
    named = sgl.OpenAI("davinci-002", base_url=scripted_url, chat_template="chatml")
    assert named.chat_template() is sgl.get_chat_template("chatml")


@pytest.fixture
def scripted_url():
    return "http://127.0.0.1:9/v1"   # never contacted: building a backend sends nothing


def test_global_config_defaults_and_backend(smollm2, capsys):
    cfg = sgl.global_config
    before = sgl.get_default_backend()
    try:
        cfg.default_backend = smollm2
        assert sgl.get_default_backend().runtime is smollm2
        cfg.default_sampling = {"max_new_tokens": 2, "temperature": 0}
        cfg.verbosity = 2
        st = sgl.function(lambda s: s.__iadd__("Hello" + sgl.gen("x"))).run()
        assert st.get_meta_info("x")["completion_tokens"] == 2
        assert capsys.readouterr().out.strip() == st.text().strip()
    finally:
        cfg.default_sampling, cfg.verbosity = {}, 0
        cfg.default_backend = before


def test_runtime_keywords_from_sglang():
    spec, opts = translate("smollm2", {"model_path": "Qwen/Qwen2.5-0.5B-Instruct", "mem_fraction_static": 0.7,
                                       "disable_radix_cache": True, "random_seed": 3, "dtype": "auto",
                                       "log_level": "error", "chunked_prefill_size": -1,
                                       "disable_cuda_graph": True, "max_running_requests": 8})
    assert spec == "hf:Qwen/Qwen2.5-0.5B-Instruct"
    assert opts == {"mem_fraction": 0.7, "enable_radix_cache": False, "seed": 3, "cuda_graph": False,
                    "max_running_requests": 8}
    assert translate("smollm2", {"kv_memory_gb": 1})[1] == {"kv_memory_gb": 1}
    assert model_spec("smollm2") == "smollm2" and model_spec("dummy:tiny") == "dummy:tiny"
    with pytest.raises(LmnbError, match="unknown Runtime options 'bogus', 'zap'"):
        translate("smollm2", {"bogus": 1, "zap": 2})
    with pytest.raises(LmnbError, match="give the model once"):
        translate("dummy:tiny", {"model_path": "gpt2"})


def test_runtime_accepts_model_path():
    rt = sgl.Runtime(model_path="dummy:tiny", device="cpu", disable_radix_cache=True, log_level="error")
    try:
        assert rt.spec == "dummy:tiny" and rt.config.enable_radix_cache is False
    finally:
        rt.shutdown()


def test_generator_batch_yields_in_order_and_aborts_when_closed(smollm2):
    @sgl.function
    def count(s, start):
        s += f"{start}, {start + 1}," + sgl.gen("next", max_tokens=3, temperature=0)

    it = count.run_batch([(i,) for i in range(4)], backend=smollm2, generator_style=True)
    first = next(it)
    assert first.text().startswith("0, 1,")
    it.close()   # the rest are aborted or done; nothing keeps running
    from tests.server.conftest import wait_idle

    stats = wait_idle(smollm2)
    assert stats["running"] == stats["waiting"] == 0
    smollm2.check_integrity()
    with pytest.raises(LmnbError, match="more values than count\\(\\) has arguments"):
        count.run_batch([(1, 2)], backend=smollm2)


def test_batches_precache_the_traced_prefix_unless_turned_off(smollm2, monkeypatch):
    from lmnb.lang.function import Function

    cached = []
    real = Function.cache
    monkeypatch.setattr(Function, "cache", lambda self, backend=None: cached.append(real(self, backend)))

    @sgl.function
    def ask(s, q):
        s += "A fixed instruction for every question.\n"
        s += "Q: " + q + "\nA:" + sgl.gen("a", max_tokens=2)

    ask.run_batch([{"q": "1?"}, {"q": "2?"}], backend=smollm2, progress_bar=False)
    assert cached == ["A fixed instruction for every question.\n"]
    sgl.global_config.enable_precache_with_tracing = False
    try:
        ask.run_batch([{"q": "1?"}, {"q": "2?"}], backend=smollm2, progress_bar=False)
    finally:
        sgl.global_config.enable_precache_with_tracing = True
    assert len(cached) == 1
