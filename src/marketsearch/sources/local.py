"""A local folder: products.csv, images.csv and images/<id>.jpg."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from marketsearch.schema import RAW_PRODUCT_COLUMNS

from .common import (IMAGES_FILE, PHOTO_DIR, PRODUCTS_FILE, RawData, _as_str_frame,
                     _images_frame, _photo_id, read_csv_text)

log = logging.getLogger(__name__)


# --- local folder ------------------------------------------------------------------------
def read_local(directory: str | os.PathLike) -> RawData:
    """products.csv, images.csv and images/<id>.jpg from a folder."""
    directory = Path(directory)
    for name in (PRODUCTS_FILE, IMAGES_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{name} not found in {directory}")
    products = _as_str_frame(read_csv_text(directory / PRODUCTS_FILE, PRODUCTS_FILE),
                             RAW_PRODUCT_COLUMNS)
    meta = read_csv_text(directory / IMAGES_FILE, IMAGES_FILE)
    images = _with_photos_from_dir(meta, directory / PHOTO_DIR, f"{PHOTO_DIR}/", require=True)
    raw = RawData(products, images, source=f"local:{directory}")
    log.info("read %s", raw.summary())
    return raw


def _with_photos_from_dir(meta: pd.DataFrame, photo_dir: Path, shown: str,
                          require: bool = False) -> pd.DataFrame:
    """Attach bytes of <photo_dir>/<id>.jpg; ``shown`` prefixes the file name in errors."""
    ids = _photo_id(meta)
    if ids is None:
        return _images_frame(meta, [None] * len(meta), [f"{IMAGES_FILE} has no id column"] * len(meta))
    if require and len(meta) and not photo_dir.is_dir():
        raise FileNotFoundError(f"photo folder {photo_dir} not found")
    data, errors = [], []
    for photo_id in tqdm(ids.astype(str), desc="read photos", unit="photo",
                         disable=len(ids) < 200, leave=False):
        blob, error = _read_file(photo_dir, photo_id, shown)
        data.append(blob)
        errors.append(error)
    return _images_frame(meta, data, errors)


def _read_file(photo_dir: Path, photo_id: str, shown: str) -> tuple[bytes | None, str]:
    name = f"{photo_id}.jpg"
    if not photo_id or "/" in photo_id or "\\" in photo_id or photo_id in (".", ".."):
        return None, f"photo id {photo_id!r} is not a file name"
    try:
        return (photo_dir / name).read_bytes(), ""
    except FileNotFoundError:
        return None, f"photo file {shown}{name} not found"
    except OSError as exc:
        return None, f"photo file {shown}{name} could not be read: {exc.strerror or exc}"
