"""Photo decoding and preprocessing: the one implementation used by training and serving.

Photos become RGB squares (letterboxed on white, like the marketplace's own thumbnails) of
the configured size, as uint8 arrays. Scaling to the network's input range happens inside
the Keras models, so a served model takes the same uint8 array.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000  # refuse decompression bombs


class ImageDecodeError(ValueError):
    """Bytes that are not a decodable photo."""


def decode(data: bytes | None) -> Image.Image:
    """Bytes -> RGB PIL image, or ImageDecodeError saying why not."""
    if data is None or len(data) == 0:
        raise ImageDecodeError("photo is empty")
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise ImageDecodeError(f"photo is {img.width}x{img.height}, over {MAX_PIXELS} pixels")
        img.load()
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"photo does not decode: {exc}") from exc
    img = ImageOps.exif_transpose(img)
    return img.convert("RGB")


def aspect_ratio(img: Image.Image) -> float:
    """max(w/h, h/w) of the photo's content (>= 1)."""
    w, h = img.size
    return max(w / h, h / w)


def to_square(img: Image.Image, size: int) -> np.ndarray:
    """Letterbox to a square on white, resize to ``size``; uint8 [size, size, 3]."""
    w, h = img.size
    side = max(w, h)
    if w != h:
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img = canvas
    if side != size:
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def thumbnail_jpeg(img: Image.Image, size: int, quality: int = 80) -> bytes:
    """The photo letterboxed to a ``size`` square, as JPEG bytes (for the search page)."""
    buf = io.BytesIO()
    Image.fromarray(to_square(img, size)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def preprocess(data: bytes, size: int) -> np.ndarray:
    """Photo bytes -> uint8 [size, size, 3]; raises ImageDecodeError for bad bytes."""
    return to_square(decode(data), size)


def preprocess_many(datas: list[bytes], size: int) -> np.ndarray:
    out = np.empty((len(datas), size, size, 3), dtype=np.uint8)
    for i, data in enumerate(datas):
        out[i] = preprocess(data, size)
    return out
