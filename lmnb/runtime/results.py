"""Typed results of a generation, with the dict-style access older code uses.

`GenResult` is what `RequestHandle.result()` and `Runtime.generate` return; `GenMeta` is
its `meta`. Both read like dicts (`out["text"]`, `out["meta"]["cached_tokens"]`,
`meta.get("finish_reason")`, `"output_token_logprobs" in meta`): every field reads by
its name (None when unset), and `in` / `keys()` list the fields that are set.
Backend-specific values (API call counts, select scores) live in `extra` and read the
same way.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any


class DictAccess(Mapping):
    """Mapping-style reads over a dataclass's set fields (and its `extra`): code that
    checks `isinstance(x, Mapping)` or unpacks `**x` treats a result as the dict it was."""

    def _keys(self) -> list[str]:
        keys = [f.name for f in fields(self) if f.name != "extra" and getattr(self, f.name) is not None]
        return keys + list(getattr(self, "extra", {}) or {})

    def __getitem__(self, key: str) -> Any:
        extra = getattr(self, "extra", None) or {}
        if key in extra:
            return extra[key]
        if key in self._field_names():
            return getattr(self, key)
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self._field_names():
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._keys()

    def get(self, key: str, default: Any = None) -> Any:
        try:
            value = self[key]
        except KeyError:
            return default
        return default if value is None else value

    def keys(self) -> list[str]:
        return self._keys()

    def items(self) -> list[tuple[str, Any]]:
        return [(k, self[k]) for k in self._keys()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def to_dict(self) -> dict:
        return {k: (v.to_dict() if isinstance(v, DictAccess) else v) for k, v in self.items()}

    @classmethod
    def _field_names(cls) -> frozenset:
        names = cls.__dict__.get("_names")
        if names is None:
            names = frozenset(f.name for f in fields(cls)) - {"extra"}
            cls._names = names
        return names


@dataclass(eq=False)
class GenMeta(DictAccess):
    """What happened to one request. Token counts are the request's own: `cached_tokens`
    of its prompt came from the radix cache, `computed_tokens` ran through the model."""

    finish_reason: str = "abort"         # stop | length | abort
    id: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    matched_stop: Any = None              # the stop string / token id / regex match, if any
    computed_tokens: int | None = None
    decode_steps: int | None = None
    jump_forward_tokens: int | None = None
    forced_spans: list | None = None      # (start, end) char spans filled by jump-forward
    retractions: int | None = None
    draft_tokens: int | None = None       # speculative: draft tokens verified
    accepted_draft_tokens: int | None = None   # of those, kept beyond one token per step
    e2e_latency: float | None = None
    ttft: float | None = None
    input_token_logprobs: list | None = None     # [(token id, logprob)] of prompt tokens
    output_token_logprobs: list | None = None    # [(token id, logprob)]
    output_top_logprobs: list | None = None      # per position [(token id, logprob)] * k
    extra: dict = field(default_factory=dict)    # backend-specific (api_calls, scores, ...)


@dataclass(eq=False)
class GenResult(DictAccess):
    """One finished generation. With `n` > 1, `samples` holds all n results (this one first)."""

    text: str
    meta: GenMeta
    output_ids: list[int] = field(default_factory=list)
    samples: list[GenResult] | None = None

    def __repr__(self) -> str:
        return f"GenResult(text={self.text!r}, finish_reason={self.meta.finish_reason!r})"


@dataclass(slots=True, eq=False)
class StreamEvent:
    """One event of a request, in order: "delta" events, then one "done" (with `result`)
    or one "error" (with `error`). A delta carries the text that became final and the
    output tokens (with their logprobs, when asked) whose text it completes; a final
    EOS / stop token has no text and is not in any delta (it is in the result)."""

    kind: str
    text: str = ""
    token_ids: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)       # [(token id, logprob)]
    top_logprobs: list = field(default_factory=list)   # per token [(token id, logprob)] * k
    result: GenResult | None = None
    error: BaseException | None = None


@dataclass(eq=False)
class SelectResult(DictAccess):
    """The option `select` picked: its index and text, and how it was scored (`meta`:
    per-option logprobs, the method, the requests' metas, backend-specific keys)."""

    index: int
    text: str
    meta: dict = field(default_factory=dict)
