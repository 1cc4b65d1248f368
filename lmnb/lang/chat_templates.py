"""Named chat templates, as SGLang's frontend names them (`lm.get_chat_template(name)`),
for backends that cannot read the model's own template: a remote SGLang server, or a
completion model behind an OpenAI-compatible API.

    lm.get_chat_template("chatml")            # <|im_start|>role ... <|im_end|>
    lm.OpenAI("gpt-3.5-turbo-instruct", chat_template="llama-3-instruct")

`template_for_model(path)` guesses one from a model name the way SGLang matches model
paths (Qwen / SmolLM / TinyLlama / Yi -> chatml, Llama 3 / 2 instruct, Mistral, Gemma,
Vicuna); None when nothing matches.
"""
from __future__ import annotations

import re

from lmnb.errors import LmnbError
from lmnb.lang.chat_template import ChatTemplate

_ROLES = ("system", "user", "assistant")


def _simple(prefix: dict, suffix: dict, preamble: dict | None = None) -> ChatTemplate:
    return ChatTemplate(prefix=prefix, suffix=suffix, preamble=preamble or {},
                        generation_prompt=prefix["assistant"])


_TEMPLATES: dict[str, ChatTemplate] = {
    "chatml": _simple({r: f"<|im_start|>{r}\n" for r in _ROLES}, {r: "<|im_end|>\n" for r in _ROLES}),
    "llama-3-instruct": _simple(
        {r: f"<|start_header_id|>{r}<|end_header_id|>\n\n" for r in _ROLES},
        {r: "<|eot_id|>" for r in _ROLES},
        {r: "<|begin_of_text|>" for r in _ROLES}),
    "llama-2-chat": _simple({"system": "<<SYS>>\n", "user": "[INST] ", "assistant": " "},
                            {"system": "\n<</SYS>>\n\n", "user": " [/INST]", "assistant": " </s><s>"}),
    "mistral": _simple({"system": "[SYSTEM_PROMPT] ", "user": "[INST] ", "assistant": " "},
                       {"system": " [/SYSTEM_PROMPT]", "user": " [/INST]", "assistant": "</s>"}),
    "gemma-it": _simple({"system": "", "user": "<start_of_turn>user\n", "assistant": "<start_of_turn>model\n"},
                        {"system": "\n\n", "user": "<end_of_turn>\n", "assistant": "<end_of_turn>\n"}),
    "vicuna_v1.1": _simple({"system": "", "user": "USER: ", "assistant": "ASSISTANT: "},
                           {"system": " ", "user": " ", "assistant": "</s>"}),
    "default": _simple({"system": "SYSTEM: ", "user": "USER: ", "assistant": "ASSISTANT: "},
                       {r: "\n" for r in _ROLES}),
}
_ALIASES = {"qwen": "chatml", "smollm": "chatml", "yi-1.5": "chatml", "tinyllama": "chatml",
            "llama3": "llama-3-instruct", "llama-3": "llama-3-instruct", "llama2": "llama-2-chat",
            "gemma": "gemma-it", "vicuna": "vicuna_v1.1", "plain": "default"}
_BY_PATH = [(r"qwen.*(chat|instruct)|qwen3|smollm|tinyllama|yi-1\.5.*chat|chatml|openhermes", "chatml"),
            (r"llama-?3.*instruct|meta-llama-3", "llama-3-instruct"),
            (r"llama-?2.*chat", "llama-2-chat"),
            (r"(mistral|mixtral).*instruct", "mistral"),
            (r"gemma.*it", "gemma-it"),
            (r"vicuna", "vicuna_v1.1")]


def get_chat_template(name: str) -> ChatTemplate:
    """A named template (see `chat_template_names()`); a one-line error lists them."""
    if isinstance(name, ChatTemplate):
        return name
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in _TEMPLATES:
        raise LmnbError(f"unknown chat template {name!r}; known: {', '.join(chat_template_names())}")
    return _TEMPLATES[key]


def chat_template_names() -> list[str]:
    return sorted(_TEMPLATES) + sorted(_ALIASES)


def template_for_model(path: str | None) -> ChatTemplate | None:
    for pattern, name in _BY_PATH:
        if path and re.search(pattern, path, re.IGNORECASE):
            return _TEMPLATES[name]
    return None


def template_to_json(t: ChatTemplate) -> dict:
    return {"prefix": dict(t.prefix), "suffix": dict(t.suffix), "preamble": dict(t.preamble),
            "generation_prompt": t.generation_prompt}


def template_from_json(d) -> ChatTemplate | None:
    """The form `lmnb serve` reports in /get_model_info; None when malformed."""
    try:
        return ChatTemplate(prefix=dict(d["prefix"]), suffix=dict(d["suffix"]),
                            preamble=dict(d.get("preamble") or {}), generation_prompt=str(d["generation_prompt"]))
    except (KeyError, TypeError, ValueError):
        return None
