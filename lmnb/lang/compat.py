"""The rest of SGLang's frontend surface, so programs port by `import lmnb as sgl`:
`global_config`, the choice-method objects of `select`, `flush_cache()` /
`get_server_info()` on the default backend, and the regex constants of its IR.

    sgl.select("x", choices=[...], choices_method=sgl.greedy_token_selection)
    sgl.global_config.default_sampling = {"temperature": 0}   # under every run's own options
"""
from __future__ import annotations

from dataclasses import dataclass

from lmnb.errors import LmnbError
from lmnb.runtime.constrained.dtypes import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR

__all__ = ["REGEX_BOOL", "REGEX_FLOAT", "REGEX_INT", "REGEX_STR", "ChoicesSamplingMethod", "flush_cache",
           "get_server_info", "global_config", "greedy_token_selection", "method_name",
           "token_length_normalized", "unconditional_likelihood_normalized"]


@dataclass(frozen=True)
class ChoicesSamplingMethod:
    """How `select` picks among scored options (SGLang's choice-method objects). `name`
    is the method the backends implement (see choices.py)."""

    name: str

    @property
    def requires_unconditional_logprobs(self) -> bool:
        return self.name == "unconditional_likelihood_normalized"

    def __repr__(self) -> str:
        return f"<choices method {self.name}>"


token_length_normalized = ChoicesSamplingMethod("token_length_normalized")
greedy_token_selection = ChoicesSamplingMethod("greedy_token")
unconditional_likelihood_normalized = ChoicesSamplingMethod("unconditional_likelihood_normalized")
_METHODS = {m.name: m for m in (token_length_normalized, greedy_token_selection,
                                unconditional_likelihood_normalized)}
_ALIASES = {"greedy_token_selection": "greedy_token"}


def method_name(method) -> str:
    """A choice method (object or name) as the name backends take."""
    if isinstance(method, ChoicesSamplingMethod):
        return method.name
    if isinstance(method, str) and _ALIASES.get(method, method) in _METHODS:
        return _ALIASES.get(method, method)
    raise LmnbError(f"choices_method must be one of lm.token_length_normalized, lm.greedy_token_selection, "
                    f"lm.unconditional_likelihood_normalized (or their names), got {method!r}")


class GlobalConfig:
    """Process-wide frontend settings (SGLang's `global_config`).

    default_backend: the backend programs use (the same as `lm.set_default_backend`).
    verbosity: 2 prints each program's final text after `run`.
    default_sampling: sampling defaults under every run's own (e.g. {"temperature": 0}).
    num_api_spec_tokens: API speculative execution for programs that set none.
    skip_special_tokens_in_output: the default `skip_special_tokens` of every gen.
    enable_precache_with_tracing: run_batch first computes the program's traced
    constant prefix into the cache (`f.cache()`); False skips that (the batch's
    first prompt is still shared).
    spaces_between_special_tokens_in_out, enable_parallel_encoding: accepted for
    SGLang programs that set them; lmnb decodes and encodes one way."""

    def __init__(self) -> None:
        self.verbosity = 0
        self.default_sampling: dict = {}
        self.num_api_spec_tokens: int | None = None
        self.skip_special_tokens_in_output = True
        self.spaces_between_special_tokens_in_out = True
        self.enable_precache_with_tracing = True
        self.enable_parallel_encoding = True

    @property
    def default_backend(self):
        from lmnb.lang.backend import get_default_backend

        return get_default_backend()

    @default_backend.setter
    def default_backend(self, backend) -> None:
        from lmnb.lang import backend as b

        if backend is None:
            b._default = None
        else:
            b.set_default_backend(backend)

    def __repr__(self) -> str:
        keys = ("verbosity", "default_sampling", "num_api_spec_tokens", "skip_special_tokens_in_output",
                "enable_precache_with_tracing")
        return "GlobalConfig(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in keys) + ")"


global_config = GlobalConfig()


def add_logprob_texts(backend, result) -> None:
    """`return_text_in_logprobs`: (token id, logprob) entries of a result's meta (and its
    samples') become (token id, logprob, text); a backend that reports texts already
    (RuntimeEndpoint) keeps them."""
    decode = getattr(getattr(backend, "inner", backend), "token_text", None)
    if decode is None:
        return
    for r in result.get("samples") or [result]:
        meta = r["meta"]
        for key in ("input_token_logprobs", "output_token_logprobs"):
            entries = meta.get(key)
            if entries:
                meta[key] = [e if len(e) > 2 else (e[0], e[1], decode(e[0])) for e in entries]
        tops = meta.get("output_top_logprobs")
        if tops:
            meta["output_top_logprobs"] = [None if k is None else [e if len(e) > 2 else (e[0], e[1], decode(e[0]))
                                                                 for e in k] for k in tops]


def _target(backend):
    from lmnb.lang.backend import as_backend, get_default_backend

    b = as_backend(backend) if backend is not None else get_default_backend()
    inner = getattr(b, "inner", None)   # a batch's prefix gate
    return inner if inner is not None else b


def flush_cache(backend=None) -> bool:
    """Drop the cached prefixes of the default (or given) backend; False without one."""
    b = _target(backend)
    if b is None:
        return False
    rt = getattr(b, "runtime", None)
    if rt is not None:
        rt.flush_cache()
        return True
    if hasattr(b, "flush_cache"):
        b.flush_cache()
        return True
    raise LmnbError(f"{b!r} has no cache to flush")


def get_server_info(backend=None) -> dict | None:
    """What the default (or given) backend runs: the runtime's config and cache, or a
    remote server's /get_server_info; None without a backend."""
    b = _target(backend)
    if b is None:
        return None
    rt = getattr(b, "runtime", None)
    if rt is not None:
        from dataclasses import asdict

        return {"model_path": rt.spec, "context_length": rt.context_len, "backend": "lmnb",
                "attention_backend": getattr(rt, "attention_backend", None),
                "runtime_config": asdict(rt.config), "cache_stats": rt.cache_stats()}
    if hasattr(b, "get_server_info"):
        return b.get_server_info()
    return {"backend": repr(b)}
