"""Images in prompts: from user objects to image positions of a request to embeddings.

    ImageData        one image, decoded to RGB once; `key` is its content hash, `marker`
                     the text that stands for it in a program's text (`<|image:KEY|>`)
    ImagePrompts     per runtime: prompt text with markers -> token ids; each image becomes
                     `image_tokens` positions whose id is the image's pad id (vocab_size +
                     a number from its hash), so the radix cache keys image positions by
                     content: the same image after the same text is a prefix hit
    MultimodalInputs the images of one request (offset, length, pixel values)
    VisionRunner     per step: encodes the images whose positions the step computes, all
                     in one vision-tower batch, and builds the step's embedding override

Token-id prompts may carry pad ids too (what `Runtime.encode` returns for a text with
markers): they are resolved through the pad ids this runtime has handed out, weakly
referenced, so an image stays usable while a program's state (or the caller) holds it.
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmnb.errors import LmnbError
from lmnb.runtime.forward_batch import EmbedOverride

MARKER_RE = re.compile(r"<\|image:([0-9a-f]{16})\|>")
_DATA_URL_RE = re.compile(r"data:image/[a-zA-Z0-9.+-]+;base64,(.*)", re.DOTALL)
PAD_RANGE = 1 << 30           # pad ids are vocab_size + [0, PAD_RANGE)
PIXEL_CACHE = 32              # preprocessed images kept per runtime, by content hash
_live: weakref.WeakValueDictionary[str, ImageData] = weakref.WeakValueDictionary()


class ImageData:
    """One image of a program. Build with `as_image(x)`."""

    __slots__ = ("__weakref__", "_thumb", "image", "key")

    def __init__(self, image) -> None:
        self.image = image.convert("RGB")
        h = hashlib.sha256(f"{self.image.width}x{self.image.height}:".encode())
        h.update(self.image.tobytes())
        self.key = h.hexdigest()[:16]
        self._thumb: str | None = None

    @property
    def marker(self) -> str:
        return f"<|image:{self.key}|>"

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    def data_url(self, max_side: int | None = None) -> str:
        """PNG as a data URL; `max_side` shrinks it first (thumbnails)."""
        img = self.image
        if max_side is not None and max(img.size) > max_side:
            img = img.copy()
            img.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    def thumbnail_url(self) -> str:
        """A small PNG data URL (at most 64 px a side) for views."""
        if self._thumb is None:
            self._thumb = self.data_url(max_side=64)
        return self._thumb

    def __repr__(self) -> str:
        return f"image({self.image.width}x{self.image.height}, key={self.key})"


def as_image(x) -> ImageData:
    """An image from a path, bytes, a `data:image/...;base64,` URL, a PIL image or a
    numpy array (H x W, H x W x 3 or 4; uint8, or floats in [0, 1])."""
    if isinstance(x, ImageData):
        return x
    img = _to_pil(x)
    data = ImageData(img)
    return _live.setdefault(data.key, data)


def _to_pil(x):
    from PIL import Image, UnidentifiedImageError

    if isinstance(x, Image.Image):
        return x
    if isinstance(x, str) and x.startswith("data:"):
        m = _DATA_URL_RE.fullmatch(x.strip())
        if m is None:
            raise LmnbError("an image data URL must look like data:image/png;base64,...")
        try:
            x = base64.b64decode(m.group(1), validate=False)
        except ValueError:
            raise LmnbError("the image data URL is not valid base64") from None
    if isinstance(x, (str, os.PathLike)):
        if not os.path.isfile(x):
            raise LmnbError(f"image file not found: {x}")
        x = Path(x).read_bytes()
    if isinstance(x, (bytes, bytearray, memoryview)):
        try:
            img = Image.open(io.BytesIO(bytes(x)))
            img.load()
            return img
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            raise LmnbError(f"could not decode the image bytes ({e}); give PNG, JPEG, GIF, BMP or WebP") from None
    if type(x).__module__ == "numpy" and hasattr(x, "shape"):
        return _from_array(x)
    if isinstance(x, torch.Tensor):
        return _from_array(x.detach().cpu().numpy())
    raise LmnbError(f"image(): give a path, bytes, a data URL, a PIL image or a numpy array, "
                    f"got {type(x).__name__}")


def _from_array(a):
    import numpy as np
    from PIL import Image

    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)) or 0 in a.shape:
        raise LmnbError(f"an image array must be H x W or H x W x 3 (or 4), got shape {a.shape}")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
            raise LmnbError(f"an image array must hold numbers, got dtype {a.dtype}")
        if np.issubdtype(a.dtype, np.floating):
            if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
                raise LmnbError("a float image array must hold values in [0, 1]")
            a = a * 255.0 + 0.5
        elif a.min() < 0 or a.max() > 255:
            raise LmnbError("an integer image array must hold values in [0, 255]")
        a = a.astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(a))


def lookup(key: str) -> ImageData | None:
    """The live image with this content hash (held by some program or caller), or None."""
    return _live.get(key)


def has_markers(text: str) -> bool:
    return "<|image:" in text and MARKER_RE.search(text) is not None


def split_markers(text: str) -> list[str | ImageData]:
    """Text pieces and the images between them (pieces may be empty)."""
    out: list[str | ImageData] = []
    at = 0
    for m in MARKER_RE.finditer(text):
        img = _live.get(m.group(1))
        if img is None:
            raise LmnbError(f"the prompt refers to image {m.group(1)}, which is no longer held by "
                            "any program; add it again with image(...)")
        out += [text[at:m.start()], img]
        at = m.end()
    out.append(text[at:])
    return out


# -- a request's images ---------------------------------------------------------------
@dataclass(eq=False)
class ImageItem:
    key: str
    offset: int                      # first prompt position of the image
    length: int                      # positions present (an image cut by a slice keeps its start)
    pixel_values: torch.Tensor       # [C, H, W], host
    features: torch.Tensor | None = None   # [image_tokens, hidden] while the prompt is computed

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(eq=False)
class MultimodalInputs:
    items: list[ImageItem] = field(default_factory=list)
    images: list[ImageData] = field(default_factory=list)   # held while the request lives

    @property
    def end(self) -> int:
        return max(it.end for it in self.items)


class ImagePrompts:
    """Prompt text or token ids of a vision-language runtime -> ids + MultimodalInputs."""

    def __init__(self, tokenizer, vocab_size: int, image_tokens: int, image_token_id: int,
                 image_processor) -> None:
        self.tokenizer, self.vocab_size, self.image_tokens = tokenizer, vocab_size, image_tokens
        self.image_token_id, self.image_processor = image_token_id, image_processor
        self.image_token = _single_token(tokenizer, image_token_id)
        self._pads: weakref.WeakValueDictionary[int, ImageData] = weakref.WeakValueDictionary()
        self._pixels: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()   # programs submit from many threads

    def pad_id(self, img: ImageData) -> int:
        pad = self.vocab_size + int(img.key, 16) % PAD_RANGE
        self._pads[pad] = img
        return pad

    def with_images(self, text: str, images) -> str:
        """`text` with each image placeholder (the model's image token, or `<image>`) in
        turn replaced by the marker of the next of `images`."""
        imgs = [as_image(x) for x in images]
        holder = self.image_token or "<image>"
        if text.count(holder) != len(imgs):
            raise LmnbError(f"the prompt has {text.count(holder)} {holder!r} placeholders for "
                            f"{len(imgs)} images; put one {holder!r} where each image goes")
        pieces = text.split(holder)
        return "".join(p + (imgs[i].marker if i < len(imgs) else "") for i, p in enumerate(pieces))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of a text whose markers become image pad runs. With the model's
        image token in the tokenizer, the text is tokenized whole with that token where
        each image goes (as the model's own processor does), then each is expanded."""
        parts = split_markers(text)
        images = [p for p in parts if isinstance(p, ImageData)]
        if not images:
            return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))
        if self.image_token is not None:
            if self.image_token in text:
                raise LmnbError(f"the prompt contains the image token {self.image_token!r} as text; "
                                "use image(...) for images and remove the literal token")
            joined = "".join(p if isinstance(p, str) else self.image_token for p in parts)
            ids = list(self.tokenizer.encode(joined, add_special_tokens=add_special_tokens))
            if ids.count(self.image_token_id) != len(images):
                raise LmnbError("the tokenizer did not keep one image token per image; "
                                "check that the prompt fits the context")
            out, it = [], iter(images)
            for t in ids:
                out += [self.pad_id(next(it))] * self.image_tokens if t == self.image_token_id else [t]
            return out
        out = []
        for i, p in enumerate(parts):   # no image token: pieces tokenized on their own
            if isinstance(p, ImageData):
                out += [self.pad_id(p)] * self.image_tokens
            elif p or i == 0:
                out += list(self.tokenizer.encode(p, add_special_tokens=add_special_tokens and i == 0))
        return out

    def is_pad(self, t: int) -> bool:
        return t in self._pads

    def inputs(self, ids: list[int]) -> MultimodalInputs | None:
        """The images of a token-id prompt (runs of pad ids), or None without any."""
        runs: list[tuple[int, int, int]] = []    # (pad, start, end)
        for i, t in enumerate(ids):
            if t < self.vocab_size:
                continue
            if runs and runs[-1][0] == t and runs[-1][2] == i:
                runs[-1] = (t, runs[-1][1], i + 1)
            else:
                runs.append((t, i, i + 1))
        if not runs:
            return None
        mm = MultimodalInputs()
        for pad, start, end in runs:
            img = self._pads.get(pad)
            if img is None:
                raise LmnbError(f"token id {pad} is neither in the vocabulary ({self.vocab_size}) "
                                "nor an image of this runtime")
            for at in range(start, end, self.image_tokens):   # the same image twice in a row
                mm.items.append(ImageItem(img.key, at, min(self.image_tokens, end - at), None))
            mm.images.append(img)
        self._preprocess(mm)
        return mm

    def _preprocess(self, mm: MultimodalInputs) -> None:
        with self._lock:
            self._preprocess_locked(mm)

    def _preprocess_locked(self, mm: MultimodalInputs) -> None:
        new = {img.key: img for img in mm.images if img.key not in self._pixels}
        if new:
            try:
                pv = self.image_processor(images=[i.image for i in new.values()], return_tensors="pt")
            except Exception as e:  # noqa: BLE001 - the processor's own message, on one line
                raise LmnbError(f"the image processor failed: {type(e).__name__}: {e}") from None
            for k, t in zip(new, pv["pixel_values"]):
                self._pixels[k] = t
        for it in mm.items:
            it.pixel_values = self._pixels[it.key]
            self._pixels.move_to_end(it.key)
        while len(self._pixels) > PIXEL_CACHE:
            self._pixels.popitem(last=False)


def _single_token(tokenizer, token_id: int) -> str | None:
    """The image token's text when the tokenizer maps it to exactly that one id."""
    conv = getattr(tokenizer, "convert_ids_to_tokens", None)
    if conv is None:
        return None
    try:
        tok = conv(token_id)
        ok = isinstance(tok, str) and list(tokenizer.encode(tok, add_special_tokens=False)) == [token_id]
    except Exception:  # noqa: BLE001 - an id past the tokenizer's vocabulary
        return None
    return tok if ok else None


# -- per step ----------------------------------------------------------------------
class VisionRunner:
    """Builds a step's embedding override from the images its extend rows cover; every
    image the step needs and has not encoded yet goes through the tower in one batch."""

    def __init__(self, model) -> None:
        self.model = model
        self.counters = {"images_encoded": 0, "image_tokens_computed": 0, "vision_batches": 0}

    def plan(self, reqs, lens, prefix_lens, input_ids: list[int]) -> EmbedOverride | None:
        """`input_ids` is the step's flat input; image rows get id 0 there (the override
        replaces their embeddings)."""
        spans = []        # (first row, item, first image position, end image position)
        off = 0
        for r, n, pre in zip(reqs, lens, prefix_lens):
            mm = getattr(r, "mm", None)
            if mm is not None and pre < mm.end:
                for it in mm.items:
                    lo, hi = max(it.offset, pre), min(it.end, pre + n)
                    if lo < hi:
                        spans.append((off + lo - pre, it, lo - it.offset, hi - it.offset))
            off += n
        if not spans:
            return None
        self._encode([it for _, it, _, _ in spans if it.features is None])
        rows, embeds = [], []
        for row, it, a, b in spans:
            rows += range(row, row + b - a)
            embeds.append(it.features[a:b])
            input_ids[row:row + b - a] = [0] * (b - a)
        for _, it, _, b in spans:
            if b == it.length:
                it.features = None   # its positions are all computed now (KV holds them)
        self.counters["image_tokens_computed"] += len(rows)
        dev = embeds[0].device
        return EmbedOverride(torch.tensor(rows, dtype=torch.int64).to(dev), torch.cat(embeds))

    def _encode(self, items: list[ImageItem]) -> None:
        if not items:
            return
        by_key: dict[str, list[ImageItem]] = {}
        for it in items:
            by_key.setdefault(it.key, []).append(it)
        first = [v[0] for v in by_key.values()]
        feats = self.model.encode_images(torch.stack([it.pixel_values for it in first]))
        for f, group in zip(feats, by_key.values()):
            for it in group:
                it.features = f
        self.counters["images_encoded"] += len(first)
        self.counters["vision_batches"] += 1
