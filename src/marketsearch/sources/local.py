"""A local folder: products.csv, images.csv and images/<id>.jpg."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from marketsearch.schema import RAW_PRODUCT_COLUMNS

from .common import (CHUNK_ROWS, IMAGES_FILE, PHOTO_DIR, PRODUCTS_FILE, ChunkedSource, RawData,
                     _as_str_frame, _index_frame, _photo_id, fetch_photos, iter_csv_text)

log = logging.getLogger(__name__)


# --- local folder ------------------------------------------------------------------------
def chunks_local(directory: str | os.PathLike, chunk_rows: int = CHUNK_ROWS) -> ChunkedSource:
    """products.csv and images.csv from a folder, ``chunk_rows`` rows at a time (a
    ChunkedSource; its photo index over images/<id>.jpg: no photo is read yet)."""
    directory = Path(directory)
    for name in (PRODUCTS_FILE, IMAGES_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{name} not found in {directory}")
    folder = FolderPhotos(directory / PHOTO_DIR, f"{PHOTO_DIR}/")

    def listings():
        for chunk in iter_csv_text(directory / PRODUCTS_FILE, PRODUCTS_FILE, chunk_rows):
            yield _as_str_frame(chunk, RAW_PRODUCT_COLUMNS)

    def photos():
        for meta in iter_csv_text(directory / IMAGES_FILE, IMAGES_FILE, chunk_rows):
            yield _index_from_dir(meta, folder, require=True)

    return ChunkedSource(f"local:{directory}", listings, photos)


def index_local(directory: str | os.PathLike) -> RawData:
    """products.csv and images.csv from a folder, a photo index (RawData) over images/<id>.jpg:
    no photo is read yet (``fetch_photos`` reads them)."""
    return chunks_local(directory).index()


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


def _index_from_dir(meta: pd.DataFrame, folder: FolderPhotos,
                    require: bool = False) -> pd.DataFrame:
    """A photo index of ``folder``'s <id>.jpg for ``meta``'s rows."""
    ids = _photo_id(meta)
    if ids is None:
        return _index_frame(meta, None, None, [f"{IMAGES_FILE} has no id column"] * len(meta))
    if require and len(meta) and not folder.photo_dir.is_dir():
        raise FileNotFoundError(f"photo folder {folder.photo_dir} not found")
    return _index_frame(meta, folder, ids.astype(str).tolist(), [""] * len(meta))


def _read_file(photo_dir: Path, photo_id: str, shown: str) -> tuple[bytes | None, str]:
    name = f"{photo_id}.jpg"
    if not photo_id or "/" in photo_id or "\\" in photo_id or photo_id in (".", ".."):
        return None, f"photo id {photo_id!r} is not a file name"
    try:
        # a str path: pathlib would intern every photo's name, for the life of the process
        with open(os.path.join(photo_dir, name), "rb") as f:
            return f.read(), ""
    except FileNotFoundError:
        return None, f"photo file {shown}{name} not found"
    except OSError as exc:
        return None, f"photo file {shown}{name} could not be read: {exc.strerror or exc}"
