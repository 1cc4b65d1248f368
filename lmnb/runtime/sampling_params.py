"""Per-request sampling parameters, validated once with clear errors."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from lmnb.errors import LmnbError

GREEDY_BELOW = 1e-5        # smaller temperatures sample as greedy: logits / t overflow fp32
MAX_TEMPERATURE = 1e6      # larger ones overflow fp32 and turn masked logits into NaN
MAX_SEED = 2**64 - 1       # torch generators take 64-bit seeds
MAX_COUNT = 2**31 - 1      # token counts and indices beyond this are nonsense (and overflow torch)


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
            raise LmnbError(f"temperature must be >= 0 (0 = greedy), got {_short(self.temperature)}")
        if self.temperature > MAX_TEMPERATURE:
            raise LmnbError(f"temperature must be <= {MAX_TEMPERATURE:g}, got {_short(self.temperature)}")
        _check_num("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise LmnbError(f"top_p must be in (0, 1], got {_short(self.top_p)}")
        _check_int("top_k", self.top_k, None)
        _check_num("min_p", self.min_p)
        if not 0 <= self.min_p <= 1:
            raise LmnbError(f"min_p must be in [0, 1], got {_short(self.min_p)}")
        if self.seed is not None:
            _check_int("seed", self.seed, 0, MAX_SEED)
        _check_int("logprob_start_len", self.logprob_start_len, -1)
        _check_int("top_logprobs_num", self.top_logprobs_num, 0)
        for name in ("ignore_eos", "return_logprob", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise LmnbError(f"{name} must be True or False, got {_short(getattr(self, name))}")
        if self.regex is not None and self.json_schema is not None:
            raise LmnbError("give either regex or json_schema, not both")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise LmnbError(f"stop strings must be non-empty str, got {_short(s)}")
        for t in self.stop_token_ids:
            _check_int("stop_token_ids item", t, 0)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW or self.top_k == 1

    @classmethod
    def make(cls, **kw) -> SamplingParams:
        """Build from keyword arguments, normalising `stop` / `stop_token_ids` and
        rejecting unknown names with a message that lists the valid ones."""
        names = {f.name for f in fields(cls)} - {"extra"}
        unknown = sorted(set(kw) - names, key=str)
        if unknown:
            raise LmnbError(f"unknown sampling parameter {unknown[0]!r}; valid: {', '.join(sorted(names))}")
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
    if isinstance(v, (bytes, bytearray, dict)):   # iterating them gives ints / keys, not values
        raise LmnbError(f"{name} must be a value or a list of values, got {type(v).__name__}")
    if isinstance(v, (str, int)):
        return (v,)
    try:
        return tuple(v)
    except TypeError:
        raise LmnbError(f"{name} must be a value or a list of values, got {type(v).__name__}") from None


def _check_num(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise LmnbError(f"{name} must be a finite number, got {_short(v)}")


def _check_int(name: str, v, lo: int | None, hi: int = MAX_COUNT) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise LmnbError(f"{name} must be an int, got {_short(v)}")
    if lo is not None and v < lo:
        raise LmnbError(f"{name} must be >= {lo}, got {_short(v)}")
    if v > hi:
        raise LmnbError(f"{name} must be <= {hi}, got {_short(v)}")


def _short(v) -> str:
    """repr for messages, cut so a huge value never floods the one-line error."""
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."
