"""Options of one `lmnb serve` instance, validated once."""
from __future__ import annotations

from dataclasses import dataclass

from lmnb.errors import LmnbError


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """model_name: the id clients send as `model` (the alias `default` is accepted too).
    api_key: when set, every request must carry `Authorization: Bearer <key>`.
    max_body_bytes: larger request bodies get 413. body_timeout: seconds a request body
    may take to arrive (then 408). max_tokens_limit: the most tokens one
    choice may generate (requests asking more are clamped; None: the context length);
    it is also the default `max_tokens` of chat requests. max_n: the largest `n`.
    max_choices: the most generations one request may ask for (prompts x n)."""

    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 4 * 2**20
    body_timeout: float = 30.0
    max_tokens_limit: int | None = None
    max_n: int = 16
    max_choices: int = 256

    def __post_init__(self) -> None:
        if not self.model_name:
            raise LmnbError("model_name must be a non-empty str")
        if self.api_key is not None and not self.api_key:
            raise LmnbError("api_key must be None or a non-empty str")
        for name in ("max_body_bytes", "max_n", "max_choices"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise LmnbError(f"{name} must be a positive int, got {v!r}")
        v = self.body_timeout
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
            raise LmnbError(f"body_timeout must be a positive number of seconds, got {v!r}")
        v = self.max_tokens_limit
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise LmnbError(f"max_tokens_limit must be None or a positive int, got {v!r}")

    def accepts(self, model: str | None) -> bool:
        return model is None or model in (self.model_name, "default")
