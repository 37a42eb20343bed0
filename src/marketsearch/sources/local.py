"""A local folder: products.csv, images.csv and images/<id>.jpg."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from marketsearch.schema import RAW_PRODUCT_COLUMNS

from .common import (IMAGES_FILE, PHOTO_DIR, PRODUCTS_FILE, RawData, _as_str_frame,
                     _index_frame, _photo_id, fetch_photos, read_csv_text)

log = logging.getLogger(__name__)


# --- local folder ------------------------------------------------------------------------
def index_local(directory: str | os.PathLike) -> RawData:
    """products.csv and images.csv from a folder, a photo index (RawData) over images/<id>.jpg:
    no photo is read yet (``fetch_photos`` reads them)."""
    directory = Path(directory)
    for name in (PRODUCTS_FILE, IMAGES_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{name} not found in {directory}")
    products = _as_str_frame(read_csv_text(directory / PRODUCTS_FILE, PRODUCTS_FILE),
                             RAW_PRODUCT_COLUMNS)
    meta = read_csv_text(directory / IMAGES_FILE, IMAGES_FILE)
    images = _index_from_dir(meta, directory / PHOTO_DIR, f"{PHOTO_DIR}/", require=True)
    return RawData(products, images, source=f"local:{directory}")


def read_local(directory: str | os.PathLike) -> RawData:
    """products.csv, images.csv and images/<id>.jpg from a folder."""
    index = index_local(directory)
    raw = RawData(index.products, fetch_photos(index.images), source=index.source)
    log.info("read %s", raw.summary())
    return raw


class FolderPhotos:
    """PhotoFetcher of <photo_dir>/<id>.jpg; ``shown`` prefixes the file name in errors."""

    def __init__(self, photo_dir: Path, shown: str):
        self.photo_dir, self.shown = Path(photo_dir), shown

    def __call__(self, ids: list) -> tuple[list, list[str]]:
        pairs = [_read_file(self.photo_dir, str(photo_id), self.shown) for photo_id in
                 tqdm(ids, desc="read photos", unit="photo", leave=False, disable=len(ids) < 200)]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def __repr__(self) -> str:
        return f"FolderPhotos({str(self.photo_dir)!r})"


def _index_from_dir(meta: pd.DataFrame, photo_dir: Path, shown: str,
                    require: bool = False) -> pd.DataFrame:
    """A photo index of <photo_dir>/<id>.jpg for ``meta``'s rows."""
    ids = _photo_id(meta)
    if ids is None:
        return _index_frame(meta, None, None, [f"{IMAGES_FILE} has no id column"] * len(meta))
    if require and len(meta) and not photo_dir.is_dir():
        raise FileNotFoundError(f"photo folder {photo_dir} not found")
    return _index_frame(meta, FolderPhotos(photo_dir, shown), ids.astype(str).tolist(),
                        [""] * len(meta))


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
