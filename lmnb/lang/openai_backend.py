"""`lm.OpenAI`: programs on a remote OpenAI-compatible server, through the official SDK.

    lm.set_default_backend(lm.OpenAI("gpt-4o-mini"))                      # OPENAI_API_KEY
    lm.set_default_backend(lm.OpenAI("smollm2", base_url="http://127.0.0.1:8000/v1"))

Chat or completion endpoint: `is_chat_model=None` picks by name (the legacy completion
models `gpt-3.5-turbo-instruct`, `davinci-002`, `babbage-002`, `text-*` use
/v1/completions, everything else /v1/chat/completions); pass it to choose. A chat model's
program text uses ChatML turn markers, which are parsed back into `messages`.

What each primitive becomes:
  * `gen`: stop / max_tokens / temperature / top_p / seed map to the request.
    `json_schema` is `response_format` json_schema on chat; `regex` (and `dtype`), a
    completion json_schema, top_k, min_p, ignore_eos and stop_token_ids are sent as the
    `extra_body` extensions that lmnb serve, SGLang and vLLM accept (`server_extras`,
    on by default for any base_url other than api.openai.com); elsewhere they are an error.
  * a `gen` inside an assistant turn that already has text (`"Name: " + gen(...)`): a
    chat API cannot continue a written turn, so run the program with
    `num_api_spec_tokens=N` (API speculative execution, spec_exec.py), or, where the
    server continues a final assistant message (vLLM, SGLang), pass
    `continue_final_message=True`.
  * `select`: completion models score each option from prompt logprobs (`echo=True,
    logprobs=1, max_tokens=0`, all options in one request). Chat APIs return no prompt
    logprobs, so chat models generate and match: with `server_extras` the reply is
    constrained to the options by a regex; otherwise the option the reply starts with
    (or shares the longest prefix with) is taken, and a reply naming none is an error.
    A completion server that refuses the echo form (llama.cpp) gets `max_tokens=1`, then
    generate-and-match, with a one-line warning (openai_select.py).
Errors are one-line `LmnbError`s naming the URL; 408/409/429/5xx answers and dropped
connections are retried `max_retries` times by the SDK with exponential backoff
(0.5 s doubling to 8 s, or the server's Retry-After).
Usage: `backend.usage` counts all calls; a program's own counts are in `state.api_usage`.
"""
from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

from lmnb.errors import LmnbError
from lmnb.lang.backend import Backend, SelectResult
from lmnb.lang.chat_template import ChatTemplate
from lmnb.lang.openai_requests import ApiCall, build_request, chat_messages, new_usage

OPENAI_URL = "https://api.openai.com/v1"
_COMPLETION_MODELS = re.compile(r"^(gpt-3\.5-turbo-instruct|davinci-002|babbage-002|text-)")
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
NO_KEY = "lmnb-no-key"   # what a local server without a key is sent

CHATML = ChatTemplate(
    prefix={r: f"<|im_start|>{r}\n" for r in ("system", "user", "assistant")},
    suffix={r: "<|im_end|>\n" for r in ("system", "user", "assistant")},
    preamble={}, generation_prompt="<|im_start|>assistant\n")


class OpenAI(Backend):
    """A model behind an OpenAI-compatible API (OpenAI, lmnb serve, vLLM, SGLang, ...).

    `model`: the model name the server knows. `base_url`: the API root ending in /v1
    (default: $OPENAI_BASE_URL or OpenAI). `api_key`: default $OPENAI_API_KEY; a local
    base_url needs none. `timeout` (seconds per request) and `max_retries` (for 408/409/
    429/5xx and dropped connections) go to the SDK. `num_api_spec_tokens`: speculate in
    every program run on this backend (a program's own option wins). `chat_template`:
    how roles are written for a completion model (a ChatTemplate or a name for
    `lm.get_chat_template`; default: matched from the model name, else SGLang's
    `default`); chat models use ChatML turns, parsed back into messages."""

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, *,
                 is_chat_model: bool | None = None, timeout: float = 60.0, max_retries: int = 3,
                 server_extras: bool | None = None, continue_final_message: bool = False,
                 num_api_spec_tokens: int | None = None, chat_template: ChatTemplate | str | None = None,
                 max_workers: int = 64) -> None:
        import openai

        if not isinstance(model, str) or not model:
            raise LmnbError(f"lm.OpenAI: model must be a non-empty str, got {model!r}")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL).rstrip("/")
        host = urlparse(self.base_url).hostname or ""
        if not urlparse(self.base_url).scheme.startswith("http") or not host:
            raise LmnbError(f"lm.OpenAI: base_url must look like http://HOST:PORT/v1, got {base_url!r}")
        self.is_chat = not _COMPLETION_MODELS.match(model) if is_chat_model is None else bool(is_chat_model)
        self.server_extras = host != "api.openai.com" if server_extras is None else bool(server_extras)
        self.continue_final_message = bool(continue_final_message)
        self.num_api_spec_tokens = num_api_spec_tokens
        self.timeout, self.max_retries = timeout, max_retries
        self.supports_logprobs = not self.is_chat
        self._template = CHATML if self.is_chat else _completion_template(model, chat_template)
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if host not in _LOCAL_HOSTS:
                raise LmnbError(f"lm.OpenAI: no API key for {self.base_url}; set the OPENAI_API_KEY "
                                "environment variable (in a notebook: %env OPENAI_API_KEY=sk-...) "
                                "or pass api_key=...")
            key = NO_KEY
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=timeout,
                                    max_retries=max_retries)
        self.usage = new_usage()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="lmnb-openai")

    # -- Backend ----------------------------------------------------------------------
    def generate(self, prompt: str, stream: bool = False, usage: dict | None = None,
                 mode: str = "continue", **sampling):
        """Send one request continuing `prompt`; the handle's `result()` is {"text", "meta"}
        with the server's token counts. `usage` (a program's counters) is added to; `mode`
        is how a chat request treats a written assistant turn (see `build_request`)."""
        req = build_request(self, prompt, sampling, mode)
        return ApiCall(self, req, stream, [self.usage] + ([usage] if usage is not None else []))

    def select(self, prompt: str, choices: Sequence[str], method: str, usage: dict | None = None,
               token_healing: bool = True) -> SelectResult:
        from lmnb.lang.openai_select import select_by_generation, select_completion

        counters = [self.usage] + ([usage] if usage is not None else [])
        if self.is_chat:
            return select_by_generation(self, prompt, list(choices), counters)
        return select_completion(self, prompt, list(choices), method, counters)

    def chat_template(self) -> ChatTemplate | None:
        return self._template

    def for_program(self, state, num_api_spec_tokens: int | None = None, **options) -> Backend:
        from lmnb.lang.spec_exec import ProgramView

        n = self.num_api_spec_tokens if num_api_spec_tokens is None else num_api_spec_tokens
        view = ProgramView(self, n)
        state.api_usage = view.usage
        return view

    # -- helpers used by requests, select and speculation --------------------------------
    def endpoint(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.is_chat else 'completions'}"

    def messages(self, prompt: str) -> tuple[list[dict], str]:
        """A chat prompt as (messages, text of the open assistant turn)."""
        return chat_messages(prompt, self.model)

    def add_usage(self, counters: list[dict], **counts) -> None:
        with self._lock:
            for c in counters:
                for k, v in counts.items():
                    c[k] = c.get(k, 0) + v

    def __repr__(self) -> str:
        kind = "chat" if self.is_chat else "completion"
        return f"lm.OpenAI({self.model!r}, base_url={self.base_url!r}, {kind})"


def _completion_template(model: str, chosen) -> ChatTemplate:
    """Roles on a completion model are plain text: the template given (a ChatTemplate or
    a name for `lm.get_chat_template`), else one matched from the model name, else
    SGLang's `default` (SYSTEM: / USER: / ASSISTANT: lines)."""
    from lmnb.lang.chat_templates import get_chat_template, template_for_model

    if chosen is not None:
        return get_chat_template(chosen)
    return template_for_model(model) or get_chat_template("default")


def from_spec(spec: str, **kwargs) -> OpenAI:
    """`openai:<model>` (the model-spec form `%lm model` takes) to a backend."""
    if not spec.startswith("openai:") or len(spec) == len("openai:"):
        raise LmnbError(f"an OpenAI model spec looks like openai:<model>, got {spec!r}")
    return OpenAI(spec[len("openai:"):], **kwargs)
