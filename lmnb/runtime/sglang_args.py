"""SGLang's `Runtime(model_path=..., **server_args)` keywords as lmnb Runtime options,
so `sgl.Runtime(model_path="...", mem_fraction_static=0.8)` ports unchanged.

Each SGLang name with a meaning here maps to the RuntimeConfig option (renamed or
inverted: `disable_radix_cache=True` is `enable_radix_cache=False`); names that only
steer SGLang's server process (ports, logging, tokenizer workers) are accepted and have
no effect in process; any other name is a one-line error naming it.
"""
from __future__ import annotations

import os
from dataclasses import fields

from lmnb.errors import LmnbError

# SGLang name -> (lmnb option, value transform)
_MAP = {
    "context_length": ("context_length", None),
    "mem_fraction_static": ("mem_fraction", None),
    "max_running_requests": ("max_running_requests", None),
    "max_total_tokens": ("max_total_tokens", None),
    "chunked_prefill_size": ("chunked_prefill_size", lambda v: None if v in (-1, None) else v),
    "schedule_policy": ("schedule_policy", None),
    "random_seed": ("seed", None),
    "attention_backend": ("attention", None),
    "disable_radix_cache": ("enable_radix_cache", lambda v: not v),
    "disable_cuda_graph": ("cuda_graph", lambda v: False if v else None),
    "disable_overlap_schedule": ("overlap", lambda v: False if v else None),
    "dtype": ("dtype", lambda v: None if v == "auto" else {"half": "float16"}.get(v, v)),
    "quantization": ("quantization", None),
    "tp_size": ("tp_size", None),
    "speculative_algorithm": ("speculative", None),
    "enable_mixed_chunk": ("mixed_steps", None),
}
# only about SGLang's server process, logging or tokenizer: nothing to do in process
_NO_EFFECT = {"log_level", "log_level_http", "log_requests", "host", "port", "launch_timeout",
              "trust_remote_code", "tokenizer_mode", "skip_tokenizer_init", "served_model_name",
              "enable_metrics", "show_time_cost", "api_key", "file_storage_path", "watchdog_timeout",
              "stream_interval", "revision", "load_format", "base_gpu_id",
              "chat_template"}


def translate(spec: str | None, options: dict) -> tuple[str, dict]:
    """(model spec, RuntimeConfig options) from a Runtime call that may use SGLang's
    names; lmnb's own option names pass through."""
    from lmnb.runtime.runtime_config import RuntimeConfig

    options = dict(options)
    path = options.pop("model_path", None)
    tok = options.pop("tokenizer_path", None)
    if path is not None:
        if spec not in (None, "smollm2") and spec != path:
            raise LmnbError(f"give the model once: Runtime({spec!r}) or Runtime(model_path={path!r})")
        spec = model_spec(path)
    if tok is not None and path is not None and tok != path:
        raise LmnbError("tokenizer_path must be the model's own (lmnb loads the tokenizer with the model)")
    ours = {f.name for f in fields(RuntimeConfig)}
    out, unknown = {}, []
    for k, v in options.items():
        if k in _MAP:   # before lmnb's own: shared names (dtype, ...) take SGLang's values too
            name, fn = _MAP[k]
            value = fn(v) if fn else v
            if name not in ours:
                if v in (None, 1, False, "auto") and k != "quantization":
                    continue   # the neutral setting of an option lmnb does not have
                raise LmnbError(f"Runtime: {k}={v!r} is not supported by this lmnb")
            if value is not None:
                out[name] = value
        elif k in ours:
            out[k] = v
        elif k in _NO_EFFECT:
            continue
        else:
            unknown.append(k)
    if unknown:
        raise LmnbError(f"unknown Runtime option{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(map(repr, sorted(unknown)))}; lmnb takes {', '.join(sorted(ours))} "
                        f"and SGLang's {', '.join(sorted(_MAP))}")
    return spec or "smollm2", out


def model_spec(path: str) -> str:
    """An SGLang model path as an lmnb spec: lmnb's own specs as they are, a .gguf file
    as gguf:, anything else (a local dir or a hub repo id) as hf:."""
    if not isinstance(path, str) or not path:
        raise LmnbError(f"model_path must be a non-empty str, got {path!r}")
    if path == "smollm2" or path.split(":", 1)[0] in ("hf", "gguf", "dummy", "openai"):
        return path
    if path.endswith(".gguf") and os.path.isfile(path):
        return f"gguf:{path}"
    return f"hf:{path}"
