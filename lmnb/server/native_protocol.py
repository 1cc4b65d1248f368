"""SGLang's native `/generate` request body (its `GenerateReqInput`) as runtime jobs.

A body holds one prompt (`text` str or `input_ids` list of ints) or a batch (a list of
either); `sampling_params`, `return_logprob`, `logprob_start_len`, `top_logprobs_num`
and `rid` are one value for all items or a list with one per item. `sampling_params`
uses SGLang's names (`max_new_tokens`, `sampling_seed`, ...). A name SGLang knows but
lmnb cannot honour is accepted at its neutral value and refused (400) otherwise; a name
neither knows is refused, as SGLang refuses it. Nothing is silently ignored except the
fields that only steer SGLang's own logging and routing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from lmnb.runtime.sampling_params import SamplingParams
from lmnb.server.config import ServerConfig
from lmnb.server.errors import ApiError

MAX_TOP_LOGPROBS = 20
DEFAULT_MAX_NEW_TOKENS = 128   # SGLang's default

# SGLang sampling names whose runtime name differs
_RENAMED = {"sampling_seed": "seed"}
# SGLang sampling names with their neutral value: passed on when the runtime has a
# parameter of that name, accepted when neutral, refused otherwise
_NEUTRAL: dict[str, Any] = {
    "frequency_penalty": 0.0, "presence_penalty": 0.0, "repetition_penalty": 1.0,
    "min_new_tokens": 0, "stop_regex": None, "ebnf": None, "structural_tag": None,
    "no_stop_trim": False, "logit_bias": None, "custom_params": None, "watermark": None,
    "beam_width": None,
}
# SGLang sampling names that only shape how text is returned or streamed
_COSMETIC = {"spaces_between_special_tokens", "stream_interval"}
_DIRECT = ("max_new_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "stop_token_ids",
           "regex", "json_schema", "ignore_eos", "skip_special_tokens")

# top-level fields: logging / routing hints (ignored), and features lmnb lacks (refused
# unless empty)
_IGNORED = {"log_metrics", "no_logs", "custom_labels", "priority", "routing_key", "conversation_id",
            "extra_key", "data_parallel_rank", "routed_dp_rank", "disagg_prefill_dp_rank",
            "http_worker_ipc", "modalities", "return_flat_raw_top_logprobs",
            "return_flat_raw_output_top_logprobs", "sampling_logprobs_mode", "background"}
_UNSUPPORTED = ("input_embeds", "image_data", "video_data", "audio_data", "mm_hashes",
                "mm_content_hashes", "use_audio_in_video", "video_config", "token_ids_logprob",
                "return_sampling_mask", "return_hidden_states", "return_routed_experts",
                "return_indexer_topk", "session_id", "session_params", "lora_path", "lora_id",
                "custom_logit_processor", "positional_embed_overrides", "bootstrap_host",
                "bootstrap_port", "bootstrap_room", "bootstrap_pair_key", "decode_tp_size",
                "require_reasoning", "max_thinking_tokens", "watermark", "routed_experts_start_len")
_SUPPORTED = ("text", "input_ids", "sampling_params", "rid", "return_logprob", "logprob_start_len",
              "top_logprobs_num", "return_text_in_logprobs", "stream")


@dataclass(slots=True)
class Item:
    """One generation: the prompt, runtime sampling keywords and which logprobs to
    report (`logprobs`: the table's return_logprob / logprob_start_len /
    top_logprobs_num as the request gave them; empty when none are asked for)."""

    prompt: str | list[int]
    sampling: dict
    rid: str | None = None
    logprobs: dict = field(default_factory=dict)

    @property
    def wants_logprobs(self) -> bool:
        return bool(self.logprobs)

    @property
    def start(self) -> int:
        return self.logprobs.get("logprob_start_len", -1)

    @property
    def top(self) -> int:
        return self.logprobs.get("top_logprobs_num", 0)


@dataclass(slots=True)
class GenerateRequest:
    items: list[Item] = field(default_factory=list)
    batch: bool = False
    stream: bool = False
    return_text_in_logprobs: bool = False


def parse_generate(body: dict, cfg: ServerConfig, context_len: int) -> GenerateRequest:
    """The body as jobs, or a one-line 400 naming the field to change."""
    _check_fields(body)
    prompts, batch = _prompts(body)
    n_items = len(prompts)
    sp = _per_item(body, "sampling_params", n_items, dict, {})
    lp = _per_item(body, "return_logprob", n_items, bool, False)
    start = _per_item(body, "logprob_start_len", n_items, int, -1)
    top = _per_item(body, "top_logprobs_num", n_items, int, 0)
    rid = _per_item(body, "rid", n_items, str, None)
    req = GenerateRequest(batch=batch, stream=_flag(body, "stream"),
                          return_text_in_logprobs=_flag(body, "return_text_in_logprobs"))
    for i, prompt in enumerate(prompts):
        sampling, n = runtime_sampling(sp[i], cfg, context_len)
        if not -1 <= start[i]:
            raise ApiError(400, f"logprob_start_len must be >= -1, got {start[i]}", param="logprob_start_len")
        if not 0 <= top[i] <= MAX_TOP_LOGPROBS:
            raise ApiError(400, f"top_logprobs_num must be in [0, {MAX_TOP_LOGPROBS}], got {top[i]}",
                           param="top_logprobs_num")
        for j in range(n):
            s = sampling if n == 1 or "seed" not in sampling else {**sampling, "seed": sampling["seed"] + j}
            asked = {"return_logprob": True, "logprob_start_len": start[i], "top_logprobs_num": top[i]}
            req.items.append(Item(prompt, s, rid[i] if n == 1 or rid[i] is None else f"{rid[i]}-{j}",
                                  asked if lp[i] else {}))
        batch = batch or n > 1
    req.batch = batch
    if len(req.items) > cfg.max_choices:
        raise ApiError(400, f"the request asks for {len(req.items)} generations; this server allows "
                            f"{cfg.max_choices} per request, split it", param="text")
    return req


def runtime_sampling(sp: dict, cfg: ServerConfig, context_len: int) -> tuple[dict, int]:
    """SGLang `sampling_params` as runtime keywords, and `n` (parallel samples)."""
    runtime_names = {f.name for f in fields(SamplingParams)} - {"extra"}
    limit = cfg.max_tokens_limit or context_len
    out: dict[str, Any] = {}
    n = 1
    for key, value in sp.items():
        if not isinstance(key, str):
            raise ApiError(400, "sampling_params keys must be strings", param="sampling_params")
        if (value is None or value in ("", [], {})) and key != "max_new_tokens":
            continue   # SGLang reads null (and an empty stop / grammar) as "the default"
        where = f"sampling_params.{key}"
        if key in _DIRECT:
            out[key] = _json_schema(value, where) if key == "json_schema" else value
        elif key == "n":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cfg.max_n:
                raise ApiError(400, f"{where} must be an int in [1, {cfg.max_n}], got {value!r}", param=where)
            n = value
        elif key in _COSMETIC:
            continue
        elif key in _RENAMED and _RENAMED[key] in runtime_names:
            out[_RENAMED[key]] = value
        elif key in _NEUTRAL:
            if key in runtime_names:
                out[key] = _one_regex(value, where) if key == "stop_regex" else value
            elif value != _NEUTRAL[key]:
                raise ApiError(400, f"{where} is not supported by lmnb serve; leave it at "
                                    f"{_NEUTRAL[key]!r}", param=where)
        else:
            known = sorted({*_DIRECT, "n", *_COSMETIC, *_RENAMED, *_NEUTRAL})
            raise ApiError(400, f"unknown sampling parameter {key!r}; valid: {', '.join(known)}",
                           param="sampling_params")
    m = out.get("max_new_tokens")
    if m is None:
        m = DEFAULT_MAX_NEW_TOKENS
    if isinstance(m, bool) or not isinstance(m, int) or m < 0:
        raise ApiError(400, f"sampling_params.max_new_tokens must be an int >= 0, got {m!r}",
                       param="sampling_params.max_new_tokens")
    out["max_new_tokens"] = min(m, limit)
    if out.get("regex") is not None and out.get("json_schema") is not None:
        raise ApiError(400, "give either regex or json_schema in sampling_params, not both",
                       param="sampling_params.regex")
    try:   # the runtime's own checks, answered before anything is queued
        SamplingParams.make(**out)
    except ValueError as e:
        raise ApiError(400, f"sampling_params: {e}", param="sampling_params") from None
    return out, n


def _one_regex(v, where: str) -> str:
    """SGLang takes one stop regex or a list; the runtime one pattern (the alternatives)."""
    if isinstance(v, str):
        return v
    if isinstance(v, list) and v and all(isinstance(x, str) and x for x in v):
        return v[0] if len(v) == 1 else "|".join(f"(?:{x})" for x in v)
    raise ApiError(400, f"{where} must be a regex or a list of them", param=where)


def _check_fields(body: dict) -> None:
    for key, value in body.items():
        if key in _SUPPORTED or key in _IGNORED:
            continue
        if key in _UNSUPPORTED:
            if value in (None, False, [], {}, 0):
                continue
            raise ApiError(400, f"{key} is not supported by lmnb serve", param=key)
        raise ApiError(400, f"unknown field {key!r}; valid: {', '.join(_SUPPORTED)}", param=key)


def _prompts(body: dict) -> tuple[list, bool]:
    text, ids = body.get("text"), body.get("input_ids")
    if (text is None) == (ids is None):
        raise ApiError(400, "give exactly one of text and input_ids", param="text")
    if text is not None:
        if isinstance(text, str):
            return [text], False
        if isinstance(text, list) and text and all(isinstance(t, str) for t in text):
            return list(text), True
        raise ApiError(400, "text must be a str or a non-empty list of str", param="text")
    if isinstance(ids, list) and ids and all(_is_int(t) for t in ids):
        return [list(ids)], False
    if isinstance(ids, list) and ids and all(isinstance(x, list) and x and all(_is_int(t) for t in x)
                                             for x in ids):
        return [list(x) for x in ids], True
    raise ApiError(400, "input_ids must be a non-empty list of ints or a list of such lists",
                   param="input_ids")


def _per_item(body: dict, key: str, n: int, kind: type, default) -> list:
    v = body.get(key)
    if v is None:
        return [default] * n
    if isinstance(v, list) and kind is not dict:
        if len(v) != n:
            raise ApiError(400, f"{key} has {len(v)} entries for {n} prompts", param=key)
        return [default if x is None else _typed(x, kind, key) for x in v]
    if isinstance(v, list):   # sampling_params: a list of dicts, one per prompt
        if len(v) != n:
            raise ApiError(400, f"{key} has {len(v)} entries for {n} prompts", param=key)
        return [{} if x is None else _typed(x, dict, key) for x in v]
    return [_typed(v, kind, key)] * n


def _typed(v, kind: type, key: str):
    ok = _is_int(v) if kind is int else isinstance(v, kind)
    if not ok:
        raise ApiError(400, f"{key} must be {_KIND_NAMES[kind]}, got {type(v).__name__}", param=key)
    return v


_KIND_NAMES = {dict: "an object (or a list of them, one per prompt)", bool: "true or false",
               int: "an int", str: "a str"}


def _flag(body: dict, key: str) -> bool:
    v = body.get(key, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise ApiError(400, f"{key} must be true or false, got {type(v).__name__}", param=key)
    return v


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _json_schema(v, where: str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (dict, bool)):
        return json.dumps(v)
    raise ApiError(400, f"{where} must be a JSON schema (its JSON text or an object)", param=where)
