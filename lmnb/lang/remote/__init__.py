"""Backends that run programs on a server: `RuntimeEndpoint` (SGLang's native API: an
SGLang server or router, or another `lmnb serve`). `lm.OpenAI` (OpenAI-compatible APIs)
lives in lmnb/lang/openai_backend.py."""
from __future__ import annotations

from lmnb.lang.remote.runtime_endpoint import RuntimeEndpoint

__all__ = ["RuntimeEndpoint"]
