"""The one table of generation parameters, validated once with clear errors.

Every sampling/generation parameter is a field of `SamplingParams`; its metadata says how
the outer layers name and send it. `gen()`, the `%%lm` options, program defaults, the
server's request bodies and the OpenAI request builder derive their keys from `PARAMS`.
Names differ only at the user-facing edges (`gen`, magics, HTTP): `max_tokens` there is
`max_new_tokens` here, `min_tokens` is `min_new_tokens` (`user_name` / `runtime_name`).

`api` says how an OpenAI-compatible request carries a parameter:
  "std"      a standard OpenAI body key (its user name)
  "extra"    a server extension (vLLM / SGLang / lmnb serve) sent in `extra_body`
  "special"  mapped by dedicated code (logprobs, JSON schema as response_format, ...)
"""
from __future__ import annotations

import math
import re
from dataclasses import MISSING, dataclass, field, fields, replace
from types import MappingProxyType

from lmnb.errors import LmnbError

GREEDY_BELOW = 1e-5        # smaller temperatures sample as greedy: logits / t overflow fp32
MAX_TEMPERATURE = 1e6      # larger ones overflow fp32 and turn masked logits into NaN
MAX_SEED = 2**64 - 1       # torch generators take 64-bit seeds
MAX_COUNT = 2**31 - 1      # token counts and indices beyond this are nonsense (and overflow torch)
MAX_N = 128                # samples of one request (they share its prompt KV)
MAX_PENALTY = 2.0          # frequency / presence penalties lie in [-2, 2], as in the OpenAI API
MAX_STOP_REGEX = 1000      # characters of a stop_regex pattern


def _param(default, doc: str, *, user: str | None = None, api: str = "extra", cell: bool = False):
    """A table entry: `user` is its name at the edges (default: the same), `cell` makes it a
    `%%lm` option (`--max-tokens`)."""
    meta = MappingProxyType({"doc": doc, "user": user, "api": api, "cell": cell})
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not parameters")
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one request samples and when it stops (see each field's doc in `PARAMS`)."""

    max_new_tokens: int = _param(128, "most tokens to generate", user="max_tokens", api="std", cell=True)
    min_new_tokens: int = _param(0, "EOS, stop ids and stop strings are ignored before this many tokens",
                                 user="min_tokens")
    temperature: float = _param(1.0, "0 = greedy", api="std", cell=True)
    top_p: float = _param(1.0, "nucleus sampling mass (1 = off)", api="std")
    top_k: int = _param(-1, "sample among the k most likely tokens (<= 0 = off)")
    min_p: float = _param(0.0, "drop tokens below min_p x the top probability (0 = off)")
    frequency_penalty: float = _param(0.0, "subtract penalty x count of each generated token", api="std")
    presence_penalty: float = _param(0.0, "subtract penalty once from every generated token", api="std")
    repetition_penalty: float = _param(1.0, "divide positive / multiply negative logits of seen tokens "
                                       "(prompt and output; 1 = off)")
    seed: int | None = _param(None, "per-request sampling seed", api="std", cell=True)
    stop: tuple[str, ...] = _param((), "stop strings, removed from the returned text", api="std")
    stop_token_ids: tuple[int, ...] = _param((), "token ids that end the generation")
    stop_regex: str | None = _param(None, "a regex whose first match on the text ends the generation "
                                    "(the match is removed)")
    ignore_eos: bool = _param(False, "keep going after the end-of-sequence token")
    n: int = _param(1, "samples of the request, sharing its prompt KV", api="std")
    return_logprob: bool = _param(False, "return the logprob of each output token", api="special")
    logprob_start_len: int = _param(-1, "prompt logprobs from this token index on (-1 = none)",
                                    api="special")
    top_logprobs_num: int = _param(0, "the k most likely tokens at each output position", api="special")
    regex: str | None = _param(None, "constrain the output to this regex")
    json_schema: str | None = _param(None, "constrain the output to this JSON schema (a JSON string)")
    skip_special_tokens: bool = _param(True, "leave special tokens out of the text")
    token_healing: bool = _param(False, "back off a prompt that ends mid-token (a trailing space, half a "
                                 "word) and regenerate its tail (programs: on by default)")
    speculative: bool | None = _param(None, "verify draft tokens from the cache and the prompt "
                                      "(None: the runtime's choice, greedy requests only; True: "
                                      "sampling requests too; False: never)")

    def __post_init__(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, 0)
        _check_int("min_new_tokens", self.min_new_tokens, 0)
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
        for name in ("frequency_penalty", "presence_penalty"):
            v = getattr(self, name)
            _check_num(name, v)
            if not -MAX_PENALTY <= v <= MAX_PENALTY:
                raise LmnbError(f"{name} must be in [-{MAX_PENALTY:g}, {MAX_PENALTY:g}], got {_short(v)}")
        _check_num("repetition_penalty", self.repetition_penalty)
        if not 0 < self.repetition_penalty <= MAX_TEMPERATURE:
            raise LmnbError(f"repetition_penalty must be > 0 (1 = off), got {_short(self.repetition_penalty)}")
        if self.seed is not None:
            _check_int("seed", self.seed, 0, MAX_SEED)
        _check_int("n", self.n, 1, MAX_N)
        _check_int("logprob_start_len", self.logprob_start_len, -1)
        _check_int("top_logprobs_num", self.top_logprobs_num, 0)
        for name in ("ignore_eos", "return_logprob", "skip_special_tokens", "token_healing"):
            if not isinstance(getattr(self, name), bool):
                raise LmnbError(f"{name} must be True or False, got {_short(getattr(self, name))}")
        if self.regex is not None and self.json_schema is not None:
            raise LmnbError("give either regex or json_schema, not both")
        for name in ("regex", "json_schema"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v):
                raise LmnbError(f"{name} must be a non-empty str, got {_short(v)}")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise LmnbError(f"stop strings must be non-empty str, got {_short(s)}")
        for t in self.stop_token_ids:
            _check_int("stop_token_ids item", t, 0)
        if self.stop_regex is not None:
            _check_stop_regex(self.stop_regex)
        if self.speculative is not None and not isinstance(self.speculative, bool):
            raise LmnbError(f"speculative must be True, False or None, got {_short(self.speculative)}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW or self.top_k == 1

    @property
    def penalized(self) -> bool:
        """True when logits are adjusted from the tokens seen so far."""
        return bool(self.frequency_penalty or self.presence_penalty or self.repetition_penalty != 1.0)

    @classmethod
    def make(cls, **kw) -> SamplingParams:
        """Build from runtime-named keyword arguments, normalising `stop` / `stop_token_ids`
        and rejecting unknown names with a message that lists the valid ones."""
        unknown = sorted(set(kw) - set(NAMES), key=str)
        if unknown:
            raise LmnbError(f"unknown sampling parameter {unknown[0]!r}; valid: {', '.join(sorted(NAMES))}")
        if "stop" in kw:
            kw["stop"] = as_tuple(kw["stop"], "stop") or ()
        if "stop_token_ids" in kw:
            kw["stop_token_ids"] = as_tuple(kw["stop_token_ids"], "stop_token_ids") or ()
        if kw.get("top_k") is None:
            kw.pop("top_k", None)
        return cls(**kw)

    def replace(self, **kw) -> SamplingParams:
        return replace(self, **kw)


@dataclass(frozen=True)
class Param:
    """One row of the table."""

    name: str        # runtime name (the SamplingParams field)
    user: str        # name in gen(), %%lm options and HTTP bodies
    default: object
    doc: str
    api: str         # how an OpenAI-compatible request carries it (module docstring)
    cell: bool       # a %%lm option
    type: type       # the scalar type of its value (a tuple's items for stop / stop_token_ids)


_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


def _scalar(annotation: str) -> type:
    """`int | None` -> int, `tuple[str, ...]` -> str."""
    inner = annotation.removeprefix("tuple[").split(",")[0].split("|")[0].strip(" ]")
    return _SCALARS[inner]


PARAMS: tuple[Param, ...] = tuple(
    Param(f.name, f.metadata["user"] or f.name, None if f.default is MISSING else f.default,
          f.metadata["doc"], f.metadata["api"], f.metadata["cell"], _scalar(f.type))
    for f in fields(SamplingParams))
NAMES: tuple[str, ...] = tuple(p.name for p in PARAMS)
USER_NAMES: tuple[str, ...] = tuple(p.user for p in PARAMS)
_TO_RUNTIME = {p.user: p.name for p in PARAMS}
_TO_USER = {p.name: p.user for p in PARAMS}
BY_NAME = MappingProxyType({p.name: p for p in PARAMS})


def runtime_name(user: str) -> str:
    """`max_tokens` -> `max_new_tokens`; names that do not differ come back as they are."""
    return _TO_RUNTIME.get(user, user)


def user_name(name: str) -> str:
    """`max_new_tokens` -> `max_tokens`."""
    return _TO_USER.get(name, name)


def to_runtime(user_kw: dict) -> dict:
    """User-named keyword arguments (gen, magics, HTTP) renamed to runtime names; an
    unknown name is an error that lists the valid ones."""
    unknown = sorted(set(user_kw) - set(_TO_RUNTIME), key=str)
    if unknown:
        raise LmnbError(f"unknown sampling parameter {unknown[0]!r}; valid: {', '.join(sorted(USER_NAMES))}")
    return {_TO_RUNTIME[k]: v for k, v in user_kw.items()}


def check_user(user_kw: dict) -> dict:
    """Validate user-named parameters (None = not set) as a request would; returns them
    with runtime names. Error messages use the user's names."""
    kw = {k: v for k, v in to_runtime(user_kw).items() if v is not None}
    try:
        SamplingParams.make(**dict(kw))
    except LmnbError as e:
        raise LmnbError(user_message(str(e))) from None
    return kw


def user_message(message: str) -> str:
    """A validation message with runtime names replaced by the users' names."""
    for p in PARAMS:
        if p.user != p.name:
            message = re.sub(rf"\b{p.name}\b", p.user, message)
    return message


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


def _check_stop_regex(pattern) -> None:
    if not isinstance(pattern, str) or not pattern:
        raise LmnbError(f"stop_regex must be a non-empty str, got {_short(pattern)}")
    if len(pattern) > MAX_STOP_REGEX:
        raise LmnbError(f"stop_regex is {len(pattern)} characters; the limit is {MAX_STOP_REGEX}")
    try:
        compiled = re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as e:
        raise LmnbError(f"stop_regex is not a valid regex: {e}") from None
    if compiled.search("") is not None:
        raise LmnbError(f"stop_regex {_short(pattern)} matches the empty string; it would stop at once")


def _check_num(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise LmnbError(f"{name} must be a finite number, got {_short(v)}")
    if isinstance(v, int) and abs(v) > 2**1023:   # float(v) would overflow
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
