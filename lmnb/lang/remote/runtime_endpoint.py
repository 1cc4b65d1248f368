"""`lm.RuntimeEndpoint(url)`: programs on a remote SGLang server or router, or on another
`lmnb serve`, through SGLang's native API (`/generate`, see lmnb/server/native.py).

    lm.set_default_backend(lm.RuntimeEndpoint("http://10.0.0.5:30000"))
    state = program.run(...)          # the same program, now on the remote GPUs

What each primitive becomes:
  * `gen`: one `/generate` request (SSE when the program streams); every sampling
    parameter goes by SGLang's name (`seed` as `sampling_seed`), `regex`/`json_schema`
    are constrained on the server.
  * `select`: the prefix is cached (`max_new_tokens=0`, which also tells its token
    count), then ONE request scores every option from its prompt logprobs
    (`logprob_start_len` just before the option, `return_text_in_logprobs` to find the
    option's tokens); `unconditional_likelihood_normalized` adds the options alone to
    that same request. The three methods are the local runtime's (choices.py).
  * `fork`: the prefix is cached, then the branches are concurrent requests that share it.
  * `cache_prefix(text)`: a zero-token request, so the server's radix cache holds it.
Roles use the server's template when it is an lmnb serve (it reports one), else
`chat_template=` (a name for `lm.get_chat_template` or a ChatTemplate), else one matched
from the model path, else SGLang's `default` template. Errors are one-line `LmnbError`s
naming the URL; an aborted program closes its connection, which the server turns into
an abort of the request.
"""
from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator, Sequence

import httpx

from lmnb.errors import LmnbError, RequestAborted
from lmnb.lang.backend import Backend, SelectResult
from lmnb.lang.chat_template import ChatTemplate
from lmnb.lang.chat_templates import get_chat_template, template_for_model, template_from_json
from lmnb.runtime.results import GenMeta, GenResult

_TOP_LEVEL = ("return_logprob", "logprob_start_len", "top_logprobs_num")
_RENAME = {"seed": "sampling_seed"}


class RuntimeEndpoint(Backend):
    """A server speaking SGLang's native HTTP API at `base_url` (http://HOST:PORT; a
    trailing /v1 is dropped). `api_key`: sent as a Bearer token. `timeout`: seconds a
    request may wait for its next bytes."""

    def __init__(self, base_url: str, api_key: str | None = None, *, chat_template=None,
                 timeout: float = 600.0, verify=True, max_connections: int = 256) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise LmnbError(f"lm.RuntimeEndpoint: base_url must look like http://HOST:PORT, got {base_url!r}")
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, verify=verify,
                                   timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                                   limits=httpx.Limits(max_connections=max_connections,
                                                       max_keepalive_connections=max_connections))
        self.model_info = self._get("/get_model_info")
        self._template = self._pick_template(chat_template)
        self._texts: dict[int, str] = {}   # token texts the server reported, for token_text()

    # -- info / cache --------------------------------------------------------------------
    def get_model_name(self) -> str:
        return self.model_info.get("model_path", "")

    def get_server_info(self) -> dict:
        return self._get("/get_server_info")

    def flush_cache(self) -> None:
        self._check(self._send("POST", "/flush_cache", json={}), "/flush_cache")

    def cache_prefix(self, prompt: str) -> None:
        if prompt:
            self._generate_json({"text": prompt, "sampling_params": {"max_new_tokens": 0}})

    def chat_template(self) -> ChatTemplate | None:
        return self._template

    def token_text(self, token_id: int) -> str:
        """The text of a token the server reported in a logprob entry ("" if never seen)."""
        return self._texts.get(token_id, "")

    def as_result(self, data) -> GenResult:
        """A native response (or the list a request with n > 1 answers) as the runtime's
        result: (token id, logprob) entries, the samples of n in `samples`."""
        if isinstance(data, list):
            results = [self.as_result(d) for d in data]
            first = results[0]
            first.samples = results if len(results) > 1 else None
            return first
        m = data.get("meta_info") or {}
        for key in ("input_token_logprobs", "output_token_logprobs"):
            self._remember(m.get(key) or [])
        for k in m.get("output_top_logprobs") or []:
            self._remember(k or [])
        return _as_result(data)

    def _remember(self, entries: list) -> None:
        if len(self._texts) > 500_000:
            self._texts.clear()
        for e in entries:
            if len(e) > 2 and isinstance(e[2], str):
                self._texts[e[1]] = e[2]

    # -- generate ------------------------------------------------------------------------
    def generate(self, prompt: str, stream: bool = False, **sampling) -> _Call:
        body = self.request_body(prompt, sampling)
        # n samples come back as a list: streamed, the program shows the first at the end
        return _Call(self, body, stream and body["sampling_params"].get("n", 1) == 1,
                     iterate=stream)

    def request_body(self, prompt: str | list, sampling: dict) -> dict:
        """A `/generate` body for `prompt` with runtime-named sampling keywords."""
        body: dict = {"text": prompt, "sampling_params": {}}
        for k, v in sampling.items():
            if v is None:
                continue
            if k in _TOP_LEVEL:
                body[k] = v
            else:
                body["sampling_params"][_RENAME.get(k, k)] = list(v) if isinstance(v, tuple) else v
        if body.get("return_logprob") or body.get("logprob_start_len", -1) >= 0:
            body["return_logprob"] = True
            body["return_text_in_logprobs"] = True   # kept for token_text(); entries stay pairs
        return body

    # -- select ------------------------------------------------------------------------------
    def select(self, prompt: str, choices: Sequence[str], method: str) -> SelectResult:
        choices = list(choices)
        warm = self._generate_json({"text": prompt, "sampling_params": {"max_new_tokens": 0}})
        start = max(warm["meta_info"]["prompt_tokens"] - 2, 0)   # the boundary token may change
        uncond = method == "unconditional_likelihood_normalized"
        texts = [prompt + c for c in choices] + (choices if uncond else [])
        n = len(choices)
        body = {"text": texts, "sampling_params": {"max_new_tokens": 0, "temperature": 0},
                "return_logprob": True, "return_text_in_logprobs": True,
                "logprob_start_len": [start] * n + [0] * (len(texts) - n)}
        outs = self._generate_json(body)
        cond = [_option_logprobs(o["meta_info"]["input_token_logprobs"], prompt, c)
                for o, c in zip(outs[:n], choices)]
        from lmnb.lang.choices import greedy_token, unconditional_normalized

        normalized = [sum(x) / len(x) if x else -math.inf for x in cond]
        alone = None
        if method == "greedy_token":
            best = greedy_token(cond)
        elif uncond:
            alone = [[e[0] for e in o["meta_info"]["input_token_logprobs"][1:]] for o in outs[n:]]
            scores = unconditional_normalized(cond, alone)
            best = max(range(n), key=scores.__getitem__)
        else:
            best = max(range(n), key=normalized.__getitem__)
        meta = {"normalized_prompt_logprobs": normalized, "input_token_logprobs": cond,
                "unconditional_token_logprobs": alone, "method": method,
                "prompt_tokens": warm["meta_info"]["prompt_tokens"],
                "cached_tokens": [o["meta_info"].get("cached_tokens", 0) for o in outs[:n]], "api_calls": 2}
        return SelectResult(best, choices[best], meta)

    # -- HTTP ----------------------------------------------------------------------------------
    def _send(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            return self.client.request(method, self.base_url + path, **kw)
        except httpx.HTTPError as e:
            raise LmnbError(f"cannot reach {self.base_url}{path}: {type(e).__name__}: {e}") from None

    def _get(self, path: str) -> dict:
        return self._check(self._send("GET", path), path).json()

    def _generate_json(self, body: dict):
        return self._check(self._send("POST", "/generate", json=body), "/generate").json()

    def _check(self, r: httpx.Response, path: str) -> httpx.Response:
        if r.status_code == 200:
            return r
        raise LmnbError(f"{self.base_url}{path} answered {r.status_code}: {_message(r)}")

    def _pick_template(self, chosen) -> ChatTemplate | None:
        if chosen is not None:
            return get_chat_template(chosen)
        served = template_from_json(self.model_info.get("lmnb_chat_template"))
        if served is not None:
            return served
        return template_for_model(self.get_model_name()) or get_chat_template("default")

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"lm.RuntimeEndpoint({self.base_url!r}, model={self.get_model_name()!r})"


class _Call:
    """One `/generate` request: `result()` blocks for {"text", "output_ids", "meta"},
    iterating yields text deltas (stream=True), `abort()` closes the connection."""

    def __init__(self, backend: RuntimeEndpoint, body: dict, stream: bool, iterate: bool = False) -> None:
        self.backend, self.body, self.stream = backend, {**body, "stream": stream}, stream
        self.iterate = iterate and not stream   # iterated but not streamed: one piece at the end
        self._result: dict | None = None
        self._response: httpx.Response | None = None
        self._aborted = False
        self._lock = threading.Lock()

    def _open(self) -> httpx.Response:
        b = self.backend
        req = b.client.build_request("POST", b.base_url + "/generate", json=self.body)
        try:
            r = b.client.send(req, stream=True)
        except httpx.HTTPError as e:
            raise LmnbError(f"cannot reach {b.base_url}/generate: {type(e).__name__}: {e}") from None
        with self._lock:
            self._response = r
            aborted = self._aborted
        if aborted:
            r.close()
            raise RequestAborted("the request was aborted")
        if r.status_code != 200:
            r.read()
            r.close()
            raise LmnbError(f"{b.base_url}/generate answered {r.status_code}: {_message(r)}")
        return r

    def result(self) -> dict:
        if self._result is None:
            if self.stream:
                for _ in self:
                    pass
            else:
                r = self._open()
                try:
                    data = json.loads(self._read(r))
                finally:
                    r.close()
                self._result = self.backend.as_result(data)
        return self._result

    def __iter__(self) -> Iterator[str]:
        if self._result is not None:
            return
        if self.iterate:
            yield self.result()["text"]
            return
        r = self._open()
        shown, last = 0, None
        try:
            for line in self._lines(r):
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                data = json.loads(payload)
                if "error" in data:
                    raise LmnbError(f"{self.backend.base_url}/generate: {data['error'].get('message')}")
                text = data.get("text") or ""
                if len(text) > shown:
                    piece, shown = text[shown:], len(text)
                    yield piece
                last = data
        finally:
            r.close()
        if last is None:
            raise LmnbError(f"{self.backend.base_url}/generate ended its stream without a result")
        self._result = self.backend.as_result(last)

    def _read(self, r: httpx.Response) -> bytes:
        try:
            return r.read()
        except httpx.HTTPError as e:
            if self._aborted:
                raise RequestAborted("the request was aborted") from None
            raise LmnbError(f"{self.backend.base_url}/generate: the connection failed: {e}") from None

    def _lines(self, r: httpx.Response) -> Iterator[str]:
        try:
            yield from r.iter_lines()
        except httpx.HTTPError as e:
            if self._aborted:
                raise RequestAborted("the request was aborted") from None
            raise LmnbError(f"{self.backend.base_url}/generate: the stream broke: {e}") from None

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            r = self._response
        if r is not None and self._result is None:
            r.close()


def _as_result(data: dict) -> GenResult:
    m = data.get("meta_info") or {}
    fin = m.get("finish_reason") or {}
    meta = GenMeta(id=m.get("id"), prompt_tokens=m.get("prompt_tokens", 0),
                   completion_tokens=m.get("completion_tokens", 0), cached_tokens=m.get("cached_tokens", 0),
                   finish_reason=fin.get("type", "abort") if isinstance(fin, dict) else str(fin),
                   matched_stop=fin.get("matched") if isinstance(fin, dict) else None,
                   e2e_latency=m.get("e2e_latency"))
    for key in ("input_token_logprobs", "output_token_logprobs"):
        if key in m:
            meta[key] = [(e[1], e[0]) for e in m[key]]
    if "output_top_logprobs" in m:
        meta["output_top_logprobs"] = [None if k is None else [(e[1], e[0]) for e in k]
                                       for k in m["output_top_logprobs"]]
    return GenResult(data.get("text") or "", meta, list(data.get("output_ids") or []))


def _option_logprobs(entries: list, prompt: str, option: str) -> list[float]:
    """Logprobs of the tokens that end past the prompt, found from the token texts
    (read backwards from the end of prompt + option)."""
    end = len(prompt) + len(option)
    out = []
    for lp, _tid, text in reversed(entries):
        if end <= len(prompt):
            break
        if lp is not None:
            out.append(lp)
        end -= len(text or "")
    return out[::-1]


def _message(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return " ".join(r.text.split())[:300]
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return str(err.get("message"))
    if isinstance(body, dict) and "message" in body:
        return str(body["message"])
    return json.dumps(body)[:300]
