"""Role prefixes and suffixes derived from a tokenizer's jinja chat template.

The template is rendered with sentinel contents and the text around each sentinel
becomes that role's prefix / suffix, so a program's text is exactly what
`tokenizer.apply_chat_template` would produce. The assistant prefix is the template's
generation prompt (what the model sees when it generates). Templates that inject a
default system prompt when a conversation does not start with one (SmolLM2's does)
get it as a `preamble`, emitted before the first turn.
"""
from __future__ import annotations

from dataclasses import dataclass

from lmnb.errors import LmnbError

_S, _U, _A = "\x00SYSTEM-7f3a\x00", "\x00USER-7f3a\x00", "\x00ASSISTANT-7f3a\x00"


@dataclass(frozen=True)
class ChatTemplate:
    prefix: dict[str, str]
    suffix: dict[str, str]
    preamble: dict[str, str]   # text before the first turn when the conversation starts with role
    generation_prompt: str

    def begin(self, role: str, first: bool) -> str:
        if role not in self.prefix:
            raise LmnbError(f"this model's chat template has no {role!r} role")
        return (self.preamble.get(role, "") if first else "") + self.prefix[role]

    def end(self, role: str) -> str:
        return self.suffix[role]

    @classmethod
    def from_tokenizer(cls, tokenizer, strip_bos: bool = True) -> ChatTemplate | None:
        """None when the tokenizer has no chat template. `strip_bos` drops a leading BOS
        token string that the tokenizer's `encode` adds by itself."""
        if not getattr(tokenizer, "chat_template", None):
            return None
        return derive(lambda msgs, gen=False: _render(tokenizer, msgs, gen),
                      _bos_to_strip(tokenizer) if strip_bos else "")


def derive(render, bos: str = "") -> ChatTemplate:
    """Build a ChatTemplate from `render(messages, add_generation_prompt) -> str`."""
    sys_m, user_m, asst_m = ({"role": "system", "content": _S}, {"role": "user", "content": _U},
                             {"role": "assistant", "content": _A})
    prefix, suffix, preamble = {}, {}, {}
    s = _try(render, [sys_m])
    if s is not None:
        prefix["system"], suffix["system"] = _split(s, _S)
    su = render([sys_m, user_m]) if s is not None else render([user_m])
    base = s if s is not None and su.startswith(s) else ""
    prefix["user"], suffix["user"] = _split(su[len(base):], _U)
    gen_prompt = render([sys_m, user_m] if s is not None else [user_m], True)[len(su):]
    sua = _try(render, [sys_m, user_m, asst_m] if s is not None else [user_m, asst_m])
    if sua is not None and sua.startswith(su) and _A in sua:
        _, suffix["assistant"] = _split(sua[len(su):], _A)
    else:
        suffix["assistant"] = suffix["user"]
    prefix["assistant"] = gen_prompt
    for role, msg in (("user", user_m), ("assistant", asst_m)):
        alone = _try(render, [msg])
        if alone is not None and (prefix[role] + msg["content"]) in alone:
            preamble[role] = alone[: alone.index(prefix[role] + msg["content"])]
    for d in (prefix, preamble):
        for k, v in d.items():
            if bos and v.startswith(bos):
                d[k] = v[len(bos):]
    return ChatTemplate(prefix, suffix, preamble, gen_prompt)


def _render(tokenizer, messages, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def _try(render, messages):
    try:
        out = render(messages)
    except Exception:  # noqa: BLE001 - templates raise anything (jinja raise_exception)
        return None
    return out if all(m["content"] in out for m in messages) else None


def _split(text: str, sentinel: str) -> tuple[str, str]:
    k = text.index(sentinel)
    return text[:k], text[k + len(sentinel):]


def _bos_to_strip(tokenizer) -> str:
    bos = getattr(tokenizer, "bos_token", None)
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if not bos or bos_id is None:
        return ""
    try:
        ids = tokenizer.encode("a", add_special_tokens=True)
    except Exception:  # noqa: BLE001
        return ""
    return bos if ids and ids[0] == bos_id else ""
