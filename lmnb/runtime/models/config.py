"""Model shape and the table of named real shapes for `dummy:<arch>` models."""
from __future__ import annotations

from dataclasses import dataclass, field

from lmnb.errors import LmnbError

SUPPORTED_ARCHS = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: dict | None = field(default=None, hash=False)
    rms_norm_eps: float = 1e-5
    max_position: int = 8192
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    qk_norm: bool = False

    @classmethod
    def from_hf(cls, hf: dict) -> ModelConfig:
        """From a transformers config dict (Llama 2/3, SmolLM2, Mistral, Qwen2, Qwen3)."""
        mt = hf.get("model_type", "llama")
        if mt not in SUPPORTED_ARCHS:
            raise LmnbError(f"model type {mt!r} is not supported; lmnb runs {', '.join(SUPPORTED_ARCHS)}")
        heads = hf["num_attention_heads"]
        rope = hf.get("rope_scaling") or None
        theta = hf.get("rope_theta")
        params = hf.get("rope_parameters") or {}
        if theta is None:
            theta = params.get("rope_theta", 10000.0)
        if rope is None and params.get("rope_type", "default") != "default":
            rope = dict(params)
        return cls(
            arch=mt, vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
            num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rope_theta=float(theta), rope_scaling=rope,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-5),
            max_position=hf.get("max_position_embeddings", 8192),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bool(hf.get("attention_bias", mt == "qwen2")),
            qk_norm=mt == "qwen3",
        )

    def num_params(self) -> int:
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        attn = h * d * (self.num_heads * 2 + self.num_kv_heads * 2)
        per_layer = attn + 3 * h * i + 2 * h
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + emb + h


# Named real shapes (HF config fields) for dummy:<arch>
DUMMY_SHAPES: dict[str, dict] = {
    "smollm2-135m": dict(model_type="llama", vocab_size=49152, hidden_size=576,
                         intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, rope_theta=100000.0, rms_norm_eps=1e-5,
                         max_position_embeddings=8192, tie_word_embeddings=True),
    "qwen3-0.6b": dict(model_type="qwen3", vocab_size=151936, hidden_size=1024,
                       intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, rope_theta=1000000.0,
                       rms_norm_eps=1e-6, max_position_embeddings=40960,
                       tie_word_embeddings=True),
    "qwen2-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896,
                       intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, rope_theta=1000000.0, rms_norm_eps=1e-6,
                       max_position_embeddings=32768, tie_word_embeddings=True),
    "llama3-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096,
                      intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, rope_theta=500000.0, rms_norm_eps=1e-5,
                      max_position_embeddings=8192, tie_word_embeddings=False),
    "llama2-7b": dict(model_type="llama", vocab_size=32000, hidden_size=4096,
                      intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, rope_theta=10000.0, rms_norm_eps=1e-5,
                      max_position_embeddings=4096, tie_word_embeddings=False),
    "mistral-7b": dict(model_type="mistral", vocab_size=32768, hidden_size=4096,
                       intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, rope_theta=1000000.0, rms_norm_eps=1e-5,
                       max_position_embeddings=32768, tie_word_embeddings=False),
    # a tiny shape for fast tests
    "tiny": dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=2048,
                 tie_word_embeddings=False),
}
