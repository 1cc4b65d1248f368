"""Shared benchmark helpers: environment record, one-line output, JSON results."""
from __future__ import annotations

import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def environment() -> dict:
    import transformers

    env = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
           "torch": torch.__version__, "transformers": transformers.__version__,
           "cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    return env


def emit(name: str, **fields) -> dict:
    """Print one parseable line: `name key=value ...`."""
    parts = [name] + [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()]
    print(" ".join(parts), flush=True)
    return {"name": name, **fields}


def median_time(fn, repeats: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def save(filename: str, rows: list[dict], **extra) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / filename
    path.write_text(json.dumps({"environment": environment(), **extra, "results": rows}, indent=2))
    return path


def hf_model_for(rt):
    """HF transformers model with the runtime's exact weights (for side-by-side runs)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    from lmnb.runtime.loader import converted_dir, embedded_gguf_path

    if rt.spec == "smollm2":
        m = AutoModelForCausalLM.from_pretrained(converted_dir(embedded_gguf_path()), dtype=rt.dtype)
        return m.to(rt.device).eval()
    cls = {"llama": LlamaConfig, "mistral": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}
    hf = dict(rt.loaded.hf_config)
    arch = hf.pop("model_type")
    cfg = cls[arch](**hf)
    with torch.device(rt.device):
        m = AutoModelForCausalLM.from_config(cfg, dtype=rt.dtype)
    sd = dict(rt.loaded.weights(rt.device, rt.dtype))
    m.load_state_dict(sd, strict=False)
    if cfg.tie_word_embeddings:
        m.tie_weights()
    return m.eval()

