"""Per-request sampling parameters, validated once with clear errors."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from lmnb.errors import LmnbError


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one request samples and when it stops.

    temperature 0 means greedy. top_k <= 0 disables top-k; top_p 1 and min_p 0 disable
    those filters. `stop` strings are matched on the decoded text (also across token
    boundaries) and removed from the returned text. `regex` / `json_schema` constrain
    the output (see runtime/constrained). `logprob_start_len` >= 0 asks for the
    logprobs of the prompt tokens from that index on (used by `select`).
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    regex: str | None = None
    json_schema: str | None = None
    skip_special_tokens: bool = True
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, 0)
        _check_num("temperature", self.temperature)
        if self.temperature < 0:
            raise LmnbError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        _check_num("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise LmnbError(f"top_p must be in (0, 1], got {self.top_p}")
        _check_int("top_k", self.top_k, None)
        _check_num("min_p", self.min_p)
        if not 0 <= self.min_p <= 1:
            raise LmnbError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.seed is not None:
            _check_int("seed", self.seed, 0)
        _check_int("logprob_start_len", self.logprob_start_len, -1)
        _check_int("top_logprobs_num", self.top_logprobs_num, 0)
        if self.regex is not None and self.json_schema is not None:
            raise LmnbError("give either regex or json_schema, not both")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise LmnbError(f"stop strings must be non-empty str, got {s!r}")
        for t in self.stop_token_ids:
            _check_int("stop_token_ids item", t, 0)

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5 or self.top_k == 1   # tiny t: logits / t overflows fp32

    @classmethod
    def make(cls, **kw) -> "SamplingParams":
        """Build from keyword arguments, normalising `stop` / `stop_token_ids` and
        rejecting unknown names with a message that lists the valid ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kw) - names)
        if unknown:
            raise LmnbError(
                f"unknown sampling parameter {unknown[0]!r}; valid: {', '.join(sorted(names - {'extra'}))}"
            )
        if "stop" in kw:
            kw["stop"] = as_tuple(kw["stop"], "stop") or ()
        if "stop_token_ids" in kw:
            kw["stop_token_ids"] = as_tuple(kw["stop_token_ids"], "stop_token_ids") or ()
        if kw.get("top_k") is None:
            kw.pop("top_k", None)
        return cls(**kw)


def as_tuple(v, name: str) -> tuple | None:
    """A value or a list of values as a tuple (None stays None)."""
    if v is None:
        return None
    if isinstance(v, (str, int)):
        return (v,)
    try:
        return tuple(v)
    except TypeError:
        raise LmnbError(f"{name} must be a value or a list of values, got {type(v).__name__}") from None


def _check_num(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v):
        raise LmnbError(f"{name} must be a finite number, got {v!r}")


def _check_int(name: str, v, lo: int | None) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise LmnbError(f"{name} must be an int, got {v!r}")
    if lo is not None and v < lo:
        raise LmnbError(f"{name} must be >= {lo}, got {v}")
