"""Request bodies of the OpenAI API and their mapping to runtime sampling parameters.

The sampling fields of both endpoints come from the parameter table
(`runtime.sampling_params.PARAMS`): its standard OpenAI keys and the vLLM / SGLang-style
extensions (`top_k`, `min_p`, `min_tokens`, `repetition_penalty`, `regex`, `stop_regex`,
`ignore_eos`, `stop_token_ids`, ...), by their user names, validated by `SamplingParams`.
Parameters lmnb cannot honour (tools, logit_bias, ...) are rejected with a 400 when set
to anything but their neutral value, never silently ignored.
"""
from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from lmnb.errors import LmnbError
from lmnb.runtime.sampling_params import PARAMS, SamplingParams, user_message
from lmnb.server.config import ServerConfig
from lmnb.server.errors import ApiError

MAX_TOP_LOGPROBS = 20
# table parameters a body carries by their user names; values are checked by SamplingParams
BODY_PARAMS = tuple(p for p in PARAMS if p.api in ("std", "extra"))
# handled by the request itself: the token limit (server cap) and n (one job per sample)
_OWN = ("max_new_tokens", "n")

_SamplingFields = create_model(
    "_SamplingFields", __base__=BaseModel,
    **{p.user: (Any, None) for p in BODY_PARAMS if p.name not in _OWN})


class _Request(_SamplingFields):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: dict | None = None
    user: str | None = None
    # accepted only at their neutral value
    logit_bias: dict | None = None

    def check(self, cfg: ServerConfig) -> None:
        if not cfg.accepts(self.model):
            raise ApiError(404, f"model {self.model!r} is not served here; use {cfg.model_name!r} "
                                "(or 'default'), see /v1/models", param="model", code="model_not_found")
        if isinstance(self.n, bool) or not 1 <= self.n <= cfg.max_n:
            raise ApiError(400, f"n must be in [1, {cfg.max_n}], got {self.n}", param="n")
        if self.logit_bias:
            raise ApiError(400, "logit_bias is not supported by lmnb serve", param="logit_bias")

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.get("include_usage"))

    def _sampling(self, cfg: ServerConfig, context_len: int, max_tokens: int | None) -> dict:
        """Runtime keyword arguments shared by all choices of this request."""
        limit = cfg.max_tokens_limit or context_len
        if max_tokens is None:
            max_tokens = limit
        if isinstance(max_tokens, bool) or max_tokens < 0:
            raise ApiError(400, f"max_tokens must be >= 0, got {max_tokens}", param="max_tokens")
        kw: dict[str, Any] = {"max_new_tokens": min(max_tokens, limit)}
        for p in BODY_PARAMS:
            if p.name not in _OWN and getattr(self, p.user) is not None:
                kw[p.name] = getattr(self, p.user)
        if "json_schema" in kw:
            kw["json_schema"] = _schema_str(kw["json_schema"])
        return kw

    @staticmethod
    def checked(kw: dict) -> dict:
        """Validate the runtime parameters now: a bad value is a one-line 400 naming it."""
        try:
            SamplingParams.make(**dict(kw))
        except LmnbError as e:
            msg = user_message(str(e))
            param = next((p.user for p in BODY_PARAMS if msg.startswith(p.user)), None)
            raise ApiError(400, msg, param=param) from None
        return kw


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None

    def check(self, cfg: ServerConfig) -> None:
        super().check(cfg)
        if self.suffix:
            raise ApiError(400, "suffix is not supported by lmnb serve", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise ApiError(400, "best_of is not supported by lmnb serve; use n", param="best_of")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise ApiError(400, f"logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.logprobs}",
                           param="logprobs")
        count = len(self.prompts())
        if not count:
            raise ApiError(400, "prompt is empty; give a string, a list of strings or token ids",
                           param="prompt")
        if count * self.n > cfg.max_choices:
            raise ApiError(400, f"{count} prompts x n={self.n} asks for {count * self.n} generations; "
                                f"this server allows {cfg.max_choices} per request, split it", param="prompt")

    def prompts(self) -> list:
        """One entry (str or token-id list) per prompt."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(t, int) for t in p):
            return [p]
        return list(p)

    def sampling(self, cfg: ServerConfig, context_len: int) -> dict:
        kw = self._sampling(cfg, context_len, self.max_tokens)
        if self.logprobs is not None:
            kw.update(return_logprob=True, top_logprobs_num=self.logprobs)
            if self.echo:
                kw["logprob_start_len"] = 0
        return self.checked(kw)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict] | None = None

    def for_template(self) -> dict:
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": _text_of(self.content)}


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    response_format: dict | None = None
    tools: list | None = None
    tool_choice: str | dict | None = None
    # as in vLLM / SGLang: continue the last (assistant) message instead of opening a new turn
    add_generation_prompt: bool = True
    continue_final_message: bool = False

    def check(self, cfg: ServerConfig) -> None:
        super().check(cfg)
        if not self.messages:
            raise ApiError(400, "messages is empty; give at least one message", param="messages")
        if self.continue_final_message and self.add_generation_prompt:
            raise ApiError(400, "continue_final_message needs add_generation_prompt=false",
                           param="continue_final_message")
        if self.tools or self.tool_choice not in (None, "none"):
            raise ApiError(400, "tools are not supported by lmnb serve", param="tools")
        if self.top_logprobs is not None:
            if not self.logprobs:
                raise ApiError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
            if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
                raise ApiError(400, f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], "
                                    f"got {self.top_logprobs}", param="top_logprobs")

    def sampling(self, cfg: ServerConfig, context_len: int) -> dict:
        asked = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        kw = self._sampling(cfg, context_len, asked)
        if self.logprobs:
            kw.update(return_logprob=True, top_logprobs_num=self.top_logprobs or 0)
        schema = _response_schema(self.response_format)
        if schema is not None:
            if self.regex is not None or self.json_schema is not None:
                raise ApiError(400, "give either regex / json_schema or response_format, not both",
                               param="response_format")
            kw["json_schema"] = schema
        return self.checked(kw)


def parse(model: type[BaseModel], body: dict) -> Any:
    """Validate a body; the first problem becomes a one-line 400."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"] if not isinstance(x, str) or "[" not in x)
        raise ApiError(400, f"{loc}: {err['msg']}", param=loc or None) from None


def _text_of(content) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, f"message content part of type {part.get('type')!r} is not "
                                "supported; only text parts", param="messages")
        parts.append(part["text"])
    return "".join(parts)


def _response_schema(fmt: dict | None) -> str | None:
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return json.dumps({"type": "object"})
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise ApiError(400, "response_format json_schema needs {'json_schema': {'schema': {...}}}",
                           param="response_format")
        return _schema_str(spec["schema"])
    raise ApiError(400, f"response_format type must be text, json_object or json_schema, "
                        f"got {fmt.get('type')!r}", param="response_format")


def _schema_str(schema) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, (dict, bool)):
        return json.dumps(schema)
    raise ApiError(400, "a JSON schema is an object (or its JSON text)", param="response_format")
