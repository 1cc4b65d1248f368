"""Requests of `lm.OpenAI`: sampling keywords to API parameters, ChatML prompts to
messages, the call handle (blocking or streamed) and one-line errors.

A request may not continue the whole prompt: a chat API starts a fresh assistant turn,
so when the open turn already has text (`turn_text`) the reply is either a
continuation (the server continues a final assistant message), or restarts the turn
(`restart`: the reply is the turn from its beginning, what speculation matches against).
"""
from __future__ import annotations

import json
import re
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from lmnb.errors import LmnbError
from lmnb.runtime.results import GenMeta, GenResult
from lmnb.runtime.sampling_params import BY_NAME, PARAMS

DEFAULT_MAX_TOKENS = BY_NAME["max_new_tokens"].default
_TURN = re.compile(r"<\|im_start\|>(system|user|assistant)\n")
_END = "<|im_end|>\n"
# the table's parameters by how a request carries them: standard keys in the body,
# server extensions (lmnb serve / SGLang / vLLM) in extra_body; both by their user names
_STANDARD = tuple(p for p in PARAMS if p.api == "std")
_EXTRAS = tuple(p for p in PARAMS if p.api == "extra")


def new_usage() -> dict:
    """Counters of API use: requests sent, tokens the server reported, and what API
    speculative execution did (calls, fields filled from them, mismatches, fallbacks)."""
    return {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "spec_calls": 0,
            "spec_fields": 0, "spec_mismatches": 0, "fallback_calls": 0}


@dataclass
class Request:
    kwargs: dict
    turn_text: str = ""        # text of the open assistant turn the reply does not follow
    restart: bool = False      # the reply restarts the open turn (it should begin with turn_text)
    strip_restated: bool = False   # a best-effort continuation: drop turn_text if repeated
    chat: bool = False
    fallback: bool = False     # a per-field call after a speculation mismatch


def build_request(backend, prompt: str, sampling: dict, mode: str = "continue") -> Request:
    """mode: "continue" (the reply continues `prompt`; for a chat model inside a written
    turn this needs `continue_final_message`), "restart" (a chat reply restarts the open
    turn) or "best_effort" (send the written turn as a final assistant message anyway)."""
    kw = _params(backend, dict(sampling))
    if not backend.is_chat:
        kw["prompt"] = prompt
        return Request(kw)
    messages, turn = backend.messages(prompt)
    req = Request(kw, turn_text=turn, chat=True)
    if turn and mode == "restart" and not backend.continue_final_message:
        req.restart = True
    elif turn and (backend.continue_final_message or mode == "best_effort"):
        messages = messages + [{"role": "assistant", "content": turn}]
        if backend.continue_final_message:
            kw.setdefault("extra_body", {}).update(continue_final_message=True, add_generation_prompt=False)
        else:
            req.strip_restated = True
    elif turn:
        raise LmnbError("a chat API cannot continue an assistant turn that already has text "
                        f"({turn[-40:]!r}); run the program with num_api_spec_tokens=N (API speculative "
                        "execution), or pass lm.OpenAI(..., continue_final_message=True) when the server "
                        "continues a final assistant message (vLLM, SGLang)")
    kw["messages"] = messages
    return req


def _params(backend, s: dict) -> dict:
    """Runtime-named sampling parameters -> keyword arguments of the SDK call. Values at
    their table default are not sent (the server's default is the same)."""
    s = {k: v for k, v in s.items() if v is not None and v != BY_NAME[k].default} \
        if all(k in BY_NAME for k in s) else _unknown(s)
    kw: dict = {"model": backend.model, "max_tokens": s.pop("max_new_tokens", DEFAULT_MAX_TOKENS)}
    for p in _STANDARD:
        if p.name in s:
            v = s.pop(p.name)
            kw[p.user] = list(v) if isinstance(v, tuple) else v
    schema = s.pop("json_schema", None)
    if schema is not None and backend.is_chat:   # chat APIs take a schema as response_format
        kw["response_format"] = {"type": "json_schema",
                                 "json_schema": {"name": "output", "schema": json.loads(schema)}}
    elif schema is not None:
        s["json_schema"] = schema
    extra = {p.user: (list(v) if isinstance(v, tuple) else v)
             for p in _EXTRAS if (v := s.pop(p.name, None)) is not None}
    if extra and not backend.server_extras:
        raise LmnbError(f"{', '.join(extra)}: {backend.base_url} is the OpenAI API, which does not take "
                        "this option; use a server that does (lmnb serve, SGLang, vLLM) or drop it")
    if extra:
        kw["extra_body"] = extra
    want = s.pop("return_logprob", None)
    top = s.pop("top_logprobs_num", None)
    if want or top:
        if backend.is_chat:
            kw.update(logprobs=True, top_logprobs=top or 0)
        else:
            kw["logprobs"] = top or 0
    if s:
        raise LmnbError(f"lm.OpenAI does not support the sampling option {min(s)!r}")
    return kw


def _unknown(s: dict):
    bad = min(k for k in s if k not in BY_NAME)
    raise LmnbError(f"lm.OpenAI does not support the sampling option {bad!r}")


def chat_messages(prompt: str, model: str) -> tuple[list[dict], str]:
    """Split ChatML text into messages; the open assistant turn's text is returned apart."""
    parts = _TURN.split(prompt)
    if parts[0].strip():
        raise LmnbError(f"{model} is a chat model: write the prompt as system/user/assistant turns "
                        f"(text outside a turn: {parts[0][:40]!r}), or pass is_chat_model=False")
    messages, turn = [], ""
    for role, body in zip(parts[1::2], parts[2::2]):
        if body.endswith(_END):
            messages.append({"role": role, "content": body[: -len(_END)]})
        elif role == "assistant":
            turn = body
        else:
            messages.append({"role": role, "content": body})   # an open user turn: sent as is
    if not messages:
        raise LmnbError(f"{model} is a chat model: add a user turn before generating")
    return messages, turn


class ApiCall:
    """One request in flight: `result()` -> {"text", "meta"}; iterating it streams the
    text (stream=True); `abort()` stops waiting (the text so far is kept)."""

    def __init__(self, backend, req: Request, stream: bool, counters: list[dict]) -> None:
        self.backend, self.req, self.stream, self.counters = backend, req, stream, counters
        self._aborted = threading.Event()
        self._sdk_stream = None
        self._out: dict | None = None
        self._fut = None if stream else backend._pool.submit(self._call)

    # non-streamed ------------------------------------------------------------------
    def _call(self) -> GenResult:
        resp = send(self.backend, self.req.chat, **self.req.kwargs)
        results = []
        for c in resp.choices or []:
            text = (c.message.content or "") if self.req.chat else (c.text or "")
            results.append(self._finish(text, c.finish_reason, resp.usage if not results else None,
                                        _logprobs(c, self.req.chat)))
        if not results:
            raise LmnbError(f"{self.backend.endpoint()} answered with no choices")
        first = results[0]
        if len(results) > 1:   # n > 1: one call, every sample
            return GenResult(first.text, first.meta, samples=results)
        return first

    def result(self) -> GenResult:
        if self._out is not None:
            return self._out
        if self.stream:
            for _ in self:
                pass
            return self._out
        while True:
            try:
                self._out = self._fut.result(timeout=0.1)
                return self._out
            except FutureTimeout:
                if self._aborted.is_set():
                    return GenResult("", GenMeta("abort", extra={"api_calls": 1}))

    # streamed -----------------------------------------------------------------------
    def __iter__(self):
        if self._out is not None:
            yield self._out["text"]
            return
        if self._fut is not None:
            yield self.result()["text"]
            return
        kw = dict(self.req.kwargs, stream=True, stream_options={"include_usage": True})
        self._sdk_stream = send(self.backend, self.req.chat, **kw)
        text, finish, usage, raw = "", None, None, ""
        try:
            for chunk in self._sdk_stream:
                usage = chunk.usage or usage
                if not chunk.choices:
                    continue
                c = chunk.choices[0]
                piece = (c.delta.content or "") if self.req.chat else (c.text or "")
                finish = c.finish_reason or finish
                raw += piece
                shown = self._visible(raw)
                if len(shown) > len(text):
                    yield shown[len(text):]
                    text = shown
        except Exception as e:  # noqa: BLE001 - a dropped stream is reported like a failed call
            if not self._aborted.is_set():
                raise api_error(self.backend, e) from None
        finish = "abort" if self._aborted.is_set() else finish
        self._out = self._finish(raw, finish, usage, None)

    def _visible(self, raw: str) -> str:
        t = self.req.turn_text
        if self.req.strip_restated and t.startswith(raw):
            return ""   # may still turn out to restate the written turn
        return self._strip(raw)

    def abort(self) -> None:
        self._aborted.set()
        if self._sdk_stream is not None:
            try:
                self._sdk_stream.close()
            except Exception:  # noqa: BLE001,S110 - closing a broken stream
                pass

    # shared -------------------------------------------------------------------------
    def _strip(self, text: str) -> str:
        t = self.req.turn_text
        if self.req.strip_restated and t and text.startswith(t):
            return text[len(t):]
        return text

    def _finish(self, text: str, finish, usage, logprobs) -> GenResult:
        p = getattr(usage, "prompt_tokens", 0) or 0
        n = getattr(usage, "completion_tokens", 0) or 0
        if usage is not None:
            self.backend.add_usage(self.counters, calls=1, prompt_tokens=p, completion_tokens=n)
        meta = GenMeta(finish or "stop", prompt_tokens=p, completion_tokens=n, cached_tokens=_cached(usage),
                       output_token_logprobs=logprobs, extra={"api_calls": 1})
        if self.req.fallback:
            meta.extra["fallback"] = "per_field" if not self.req.strip_restated else "per_field_best_effort"
        return GenResult(self._strip(text), meta)


def send(backend, chat: bool, **kw):
    """One SDK call (the SDK retries 408/409/429/5xx); failures become one LmnbError line."""
    c = backend.client
    create = c.chat.completions.create if chat else c.completions.create
    try:
        return create(**kw)
    except Exception as e:  # noqa: BLE001 - mapped to one line
        raise api_error(backend, e) from None


def _cached(usage) -> int:
    details = getattr(usage, "prompt_tokens_details", None)
    return getattr(details, "cached_tokens", 0) or 0


def _logprobs(choice, chat: bool) -> list | None:
    lp = getattr(choice, "logprobs", None)
    if lp is None:
        return None
    if chat:
        return [(t.token, t.logprob) for t in (lp.content or [])]
    return list(zip(lp.tokens or [], lp.token_logprobs or []))


def api_error(backend, e: Exception) -> LmnbError:
    """An SDK exception as one line naming the URL (and what to do)."""
    import openai

    url = backend.endpoint()
    if isinstance(e, LmnbError):
        return e
    if isinstance(e, openai.APITimeoutError):
        return LmnbError(f"{url}: no answer within {backend.timeout} s (timed out after "
                         f"{backend.max_retries} retries); raise lm.OpenAI(..., timeout=...) or check the server")
    if isinstance(e, openai.APIConnectionError):
        cause = e.__cause__ or e
        return LmnbError(f"cannot reach {url} ({type(cause).__name__}: {cause}); is the server running "
                         "and is base_url right?")
    if isinstance(e, openai.AuthenticationError):
        return LmnbError(f"{url} rejected the API key (HTTP 401); set OPENAI_API_KEY or pass api_key=...")
    if isinstance(e, openai.APIStatusError):
        retried = f" after {backend.max_retries} retries" if e.status_code in (408, 409, 429) or \
            e.status_code >= 500 else ""
        return LmnbError(f"{url} answered HTTP {e.status_code}{retried}: {_message(e)}")
    return LmnbError(f"{url}: {type(e).__name__}: {e}")


def _message(e) -> str:
    body = getattr(e, "body", None)
    err = body.get("error", body) if isinstance(body, dict) else None
    msg = err.get("message") if isinstance(err, dict) else None
    return str(msg or getattr(e, "message", e)).splitlines()[0][:300]
