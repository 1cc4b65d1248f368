"""SGLang's native HTTP API on lmnb serve: /generate shapes (single, batch, n, logprobs,
streaming, constraints), info routes, flush, health, and SGLang-shaped errors."""
from __future__ import annotations

import itertools
import json
import math

import httpx
import pytest

from tests.server.conftest import API_KEY


@pytest.fixture(scope="module")
def base(server):
    return server.url[: -len("/v1")]


def post(base: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(f"{base}/generate", json=body, timeout=120, **kw)


def test_generate_single_matches_runtime(base, smollm2):
    r = post(base, {"text": "The capital of France is", "sampling_params": {"max_new_tokens": 6, "temperature": 0}})
    assert r.status_code == 200, r.text
    out = r.json()
    ref = smollm2.generate("The capital of France is", max_new_tokens=6, temperature=0)[0]
    assert out["text"] == ref["text"] and out["output_ids"] == ref["output_ids"]
    m = out["meta_info"]
    assert m["finish_reason"] == {"type": "length", "length": 6}
    assert m["prompt_tokens"] == len(smollm2.encode("The capital of France is"))
    assert m["completion_tokens"] == 6 and m["cached_tokens"] >= 0 and m["e2e_latency"] > 0
    assert isinstance(m["id"], str) and "input_token_logprobs" not in m


def test_batch_input_ids_rid_and_stop(base, smollm2):
    ids = smollm2.encode("One, two, three,")
    r = post(base, {"input_ids": [ids, ids[:3]], "rid": ["a", "b"],
                    "sampling_params": [{"max_new_tokens": 8, "temperature": 0, "stop": ","},
                                        {"max_new_tokens": 2, "temperature": 0}]})
    assert r.status_code == 200, r.text
    a, b = r.json()
    assert a["meta_info"]["id"] == "a" and b["meta_info"]["id"] == "b"
    assert a["meta_info"]["finish_reason"] == {"type": "stop", "matched": ","} and "," not in a["text"]
    assert b["meta_info"]["completion_tokens"] == 2


def test_parallel_samples_with_seed(base):
    r = post(base, {"text": "Once upon a time", "sampling_params": {"max_new_tokens": 5, "n": 3,
                                                                    "sampling_seed": 7, "temperature": 1.0}})
    outs = r.json()
    assert r.status_code == 200 and isinstance(outs, list) and len(outs) == 3
    again = post(base, {"text": "Once upon a time", "sampling_params": {"max_new_tokens": 5, "n": 3,
                                                                        "sampling_seed": 7}}).json()
    assert [o["text"] for o in outs] == [o["text"] for o in again]


def test_prompt_logprobs_as_select_reads_them(base, smollm2):
    """The shape SGLang's frontend scores `select` from: [logprob, id, text] per prompt
    token from logprob_start_len on, over a batch, with zero new tokens."""
    prefix = "Q: Is the sky blue?\nA:"
    n = len(smollm2.encode(prefix))
    r = post(base, {"text": [prefix + " yes", prefix + " no"], "return_logprob": True,
                    "return_text_in_logprobs": True, "logprob_start_len": n - 2,
                    "sampling_params": {"max_new_tokens": 0, "temperature": 0}})
    assert r.status_code == 200, r.text
    for out, opt in zip(r.json(), [" yes", " no"]):
        full = smollm2.encode(prefix + opt)
        lps = out["meta_info"]["input_token_logprobs"]
        assert [e[1] for e in lps] == full[n - 2:]
        assert all(isinstance(e[0], float) and e[0] <= 0 for e in lps)
        assert "".join(e[2] for e in lps) == smollm2.decode(full[n - 2:])
        assert out["meta_info"]["output_token_logprobs"] == [] and out["text"] == ""
    # from the start: the first token has no logprob; without text, the text slot is null
    r = post(base, {"text": prefix, "return_logprob": True, "logprob_start_len": 0,
                    "sampling_params": {"max_new_tokens": 2, "temperature": 0}, "top_logprobs_num": 3})
    m = r.json()["meta_info"]
    assert m["input_token_logprobs"][0][0] is None and len(m["input_token_logprobs"]) == n
    assert all(e[2] is None for e in m["input_token_logprobs"])
    assert len(m["output_token_logprobs"]) == 2 and len(m["output_top_logprobs"]) == 2
    top = m["output_top_logprobs"][0]
    assert len(top) == 3 and top[0][1] == m["output_token_logprobs"][0][1]   # greedy: the top token
    assert math.isclose(top[0][0], m["output_token_logprobs"][0][0], abs_tol=1e-4)


def test_min_tokens_penalties_and_stop_regex_reach_the_engine(base, smollm2):
    r = post(base, {"text": "Hi", "sampling_params": {"max_new_tokens": 6, "min_new_tokens": 6, "temperature": 0,
                                                      "stop": ["\n", " "], "frequency_penalty": 0.5,
                                                      "presence_penalty": 0.1, "repetition_penalty": 1.1}})
    assert r.status_code == 200, r.text
    assert r.json()["meta_info"]["completion_tokens"] == 6
    ref = smollm2.generate("Hi", max_new_tokens=6, min_new_tokens=6, temperature=0, stop=["\n", " "],
                           frequency_penalty=0.5, presence_penalty=0.1, repetition_penalty=1.1)[0]
    assert r.json()["text"] == ref["text"]
    r = post(base, {"text": "Count: 1, 2, 3, 4,", "sampling_params": {"max_new_tokens": 8, "temperature": 0,
                                                                       "stop_regex": ["[0-9]", "zz"]}})
    out = r.json()
    assert out["meta_info"]["finish_reason"]["type"] == "stop" and not any(c.isdigit() for c in out["text"])


def test_regex_and_json_schema(base):
    r = post(base, {"text": "My age is ", "sampling_params": {"max_new_tokens": 8, "regex": r"[0-9]{2}",
                                                              "temperature": 0}})
    assert r.status_code == 200 and len(r.json()["text"]) == 2 and r.json()["text"].isdigit()
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    r = post(base, {"text": "Answer in JSON: ", "sampling_params": {"max_new_tokens": 16, "temperature": 0,
                                                                    "json_schema": json.dumps(schema)}})
    assert isinstance(json.loads(r.json()["text"])["ok"], bool)


def _events(resp: httpx.Response) -> list:
    out = []
    for line in resp.iter_lines():
        if line.startswith("data:"):
            body = line[5:].strip()
            out.append(body if body == "[DONE]" else json.loads(body))
    return out


def test_stream_is_cumulative_text_then_done(base, smollm2):
    body = {"text": "Count: 1, 2, 3,", "stream": True, "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
    with httpx.stream("POST", f"{base}/generate", json=body, timeout=120) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = _events(resp)
    assert events[-1] == "[DONE]" and len(events) >= 3
    chunks = events[:-1]
    texts = [c["text"] for c in chunks]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))
    ref = smollm2.generate("Count: 1, 2, 3,", max_new_tokens=8, temperature=0)[0]
    assert texts[-1] == ref["text"] and chunks[-1]["meta_info"]["finish_reason"]["type"] == "length"
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])


def test_stream_batch_has_index(base):
    body = {"text": ["A", "B"], "stream": True, "sampling_params": {"max_new_tokens": 3, "temperature": 0}}
    with httpx.stream("POST", f"{base}/generate", json=body, timeout=120) as resp:
        events = _events(resp)[:-1]
    finals = [e for e in events if e["meta_info"]["finish_reason"] is not None]
    assert sorted(e["index"] for e in finals) == [0, 1]


def test_info_flush_health(base, smollm2):
    info = httpx.get(f"{base}/get_model_info").json()
    assert info["model_path"] == "smollm2" and info["is_generation"] is True
    s = httpx.get(f"{base}/get_server_info").json()
    assert s["context_length"] == smollm2.context_len and "cache_stats" in s
    post(base, {"text": "A prefix to cache for the flush test.", "sampling_params": {"max_new_tokens": 0}})
    r = httpx.post(f"{base}/flush_cache", json={"empty_cache": True})
    assert r.status_code == 200 and "flushed" in r.text
    assert httpx.get(f"{base}/health").status_code == 200
    assert httpx.get(f"{base}/health_generate", timeout=60).status_code == 200
    smollm2.check_integrity()


@pytest.mark.parametrize("body, says", [
    ({"text": "x", "bogus": 1}, "unknown field 'bogus'"),
    ({"text": "x", "sampling_params": {"max_new_tokenz": 3}}, "unknown sampling parameter 'max_new_tokenz'"),
    ({"text": 5}, "text must be"),
    ({"text": "x", "input_ids": [1]}, "exactly one of text and input_ids"),
    ({}, "exactly one of text and input_ids"),
    ({"input_ids": [1, "a"]}, "input_ids must be"),
    ({"text": "x", "sampling_params": {"temperature": "hot"}}, "temperature"),
    ({"text": "x", "sampling_params": {"max_new_tokens": -1}}, "max_new_tokens"),
    ({"text": "x", "sampling_params": {"frequency_penalty": 0.5, "no_stop_trim": True}}, "not supported"),
    ({"text": "x", "sampling_params": {"frequency_penalty": 5}}, "frequency_penalty must be in"),
    ({"text": "x", "sampling_params": {"stop_regex": [1]}}, "stop_regex must be a regex"),
    ({"text": "x", "image_data": "http://example.invalid/a.png"}, "image_data is not supported"),
    ({"text": ["a", "b"], "sampling_params": [{}]}, "1 entries for 2 prompts"),
    ({"text": "x", "return_logprob": "yes"}, "return_logprob must be true or false"),
    ({"text": "x", "stream": 1}, "stream must be true or false"),
    ({"text": "hi", "return_logprob": True, "logprob_start_len": 50}, "higher than the number of input"),
    ({"text": "x", "sampling_params": {"regex": "(", "max_new_tokens": 2}}, "regex"),
    ({"input_ids": [10**9]}, "token ids must be in"),
])
def test_bad_input_is_a_400_with_a_message(base, body, says):
    r = post(base, body)
    assert r.status_code == 400, r.text
    msg = r.json()["error"]["message"]
    assert says in msg and "Traceback" not in msg and "\n" not in msg


def test_over_long_input_and_bad_json(base, smollm2):
    r = post(base, {"input_ids": [1] * (smollm2.context_len + 5)})
    assert r.status_code in (400, 413) and "error" in r.json()
    r = httpx.post(f"{base}/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(f"{base}/generate", json=[1, 2])
    assert r.status_code == 400


def test_api_key_applies_to_native_routes(keyed_server):
    base = keyed_server.url[: -len("/v1")]
    body = {"text": "Hi", "sampling_params": {"max_new_tokens": 1}}
    assert post(base, body).status_code == 401
    assert httpx.get(f"{base}/get_model_info").status_code == 401
    assert httpx.post(f"{base}/flush_cache").status_code == 401
    assert httpx.get(f"{base}/health").status_code == 200   # probes stay open
    ok = post(base, body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200 and ok.json()["meta_info"]["completion_tokens"] == 1
