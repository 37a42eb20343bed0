"""What every source shares: ``RawData``, the file names of a file source, shaping frames so
that every value is a str, reading a marketplace CSV, and fetching photo bytes later
(``PhotoFetcher``, ``fetch_photos``)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from marketsearch.schema import RAW_IMAGE_COLUMNS

PRODUCTS_FILE = "products.csv"
IMAGES_FILE = "images.csv"
PHOTO_DIR = "images"


@dataclass
class RawData:
    """A raw snapshot.

    products: the listing columns found (RAW_PRODUCT_COLUMNS order first, then any others),
              every value a str ("" for a missing value).
    images:   the photo-row columns found (RAW_IMAGE_COLUMNS order first), then ``data``
              (bytes or None) and ``source_error`` ("" when the bytes were read, else why not).
              In a *photo index* (``index=True`` readers, ``read_source_index``) ``data`` is
              still None everywhere and two private columns say where the bytes are:
              ``_fetch`` (the source's PhotoFetcher, or None where ``source_error`` already
              says why there are none) and ``_key`` (what that fetcher looks the row up by);
              ``fetch_photos`` turns some of its rows into ordinary photo rows.
    source:   where it came from, for logs (never holds a password).
    """

    products: pd.DataFrame
    images: pd.DataFrame
    source: str = ""

    def summary(self) -> dict:
        errors = int((self.images["source_error"] != "").sum()) if len(self.images) else 0
        return {"source": self.source, "products": len(self.products),
                "images": len(self.images), "photo_errors": errors}


# --- shaping -----------------------------------------------------------------------------
def _ordered(columns, known: list[str]) -> list[str]:
    columns = list(columns)
    return [c for c in known if c in columns] + [c for c in columns if c not in known]


def _as_str_frame(df: pd.DataFrame, known: list[str]) -> pd.DataFrame:
    """Known columns first; every value a str, missing values as ""."""
    df = df[_ordered(df.columns, known)].copy()
    for col in df.columns:
        values = df[col]
        df[col] = values.where(values.notna(), "").map(
            lambda v: v if isinstance(v, str) else _to_str(v)).astype(str)
    return df.reset_index(drop=True)


def _to_str(value) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _images_frame(meta: pd.DataFrame, data: list, errors: list[str]) -> pd.DataFrame:
    images = _as_str_frame(meta.drop(columns=["data", "source_error", FETCH, KEY],
                                     errors="ignore"), RAW_IMAGE_COLUMNS)
    images["data"] = pd.Series(data, index=images.index, dtype=object)
    images["source_error"] = pd.Series(errors, index=images.index, dtype=object).astype(str)
    return images


# --- photo bytes, fetched later ------------------------------------------------------------
FETCH, KEY = "_fetch", "_key"        # the private columns of a photo index (RawData)

# keys -> (bytes or None per key, source_error per key), in the keys' order
PhotoFetcher = Callable[[list], "tuple[list, list[str]]"]


def _index_frame(meta: pd.DataFrame, fetcher, keys: list | None,
                 errors: list[str]) -> pd.DataFrame:
    """A photo index (see RawData): the rows shaped as ``_images_frame`` shapes them, no bytes
    yet; row i is fetched by ``fetcher`` (one PhotoFetcher, or a list of one per row) with
    ``keys[i]``, unless ``errors[i]`` already says why it has no bytes."""
    n = len(meta)
    fetchers = fetcher if isinstance(fetcher, list) else [fetcher] * n
    keys = keys if keys is not None else [None] * n
    images = _images_frame(meta, [None] * n, errors)
    todo = images["source_error"].eq("").to_numpy()
    images[FETCH] = pd.Series([f if t else None for f, t in zip(fetchers, todo)],
                              index=images.index, dtype=object)
    images[KEY] = pd.Series([k if t else None for k, t in zip(keys, todo)],
                            index=images.index, dtype=object)
    return images


def is_index(images: pd.DataFrame) -> bool:
    return FETCH in images.columns


def fetch_photos(index: pd.DataFrame) -> pd.DataFrame:
    """Rows of a photo index -> the same rows with their bytes in ``data`` and ``source_error``
    set as a full read would set them (the private columns dropped). One call per fetcher,
    with that fetcher's keys in row order."""
    data = list(index["data"])
    errors = list(index["source_error"])
    fetchers = index[FETCH].tolist()
    keys = index[KEY].tolist()
    groups: dict[int, tuple[PhotoFetcher, list[int]]] = {}
    for i, fetcher in enumerate(fetchers):
        if fetcher is not None:
            groups.setdefault(id(fetcher), (fetcher, []))[1].append(i)
    for fetcher, rows in groups.values():
        blobs, why = fetcher([keys[i] for i in rows])
        for i, blob, error in zip(rows, blobs, why):
            data[i], errors[i] = blob, error
    images = index.drop(columns=[FETCH, KEY])
    images["data"] = pd.Series(data, index=images.index, dtype=object)
    images["source_error"] = pd.Series(errors, index=images.index, dtype=object).astype(str)
    return images


def read_csv_text(source, name: str) -> pd.DataFrame:
    """A marketplace CSV (all fields quoted, line breaks and bare CRs inside fields) -> str frame.

    Rows with too few fields get "" for the rest; the validate stage reports them.
    """
    try:
        df = pd.read_csv(source, dtype=str, keep_default_na=False, na_filter=False,
                         encoding="utf-8-sig", quotechar='"', doublequote=True,
                         skipinitialspace=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except pd.errors.ParserError as exc:
        raise ValueError(f"{name} is not a readable CSV file: {exc}") from exc
    return df


def _photo_id(images: pd.DataFrame) -> pd.Series | None:
    return images["id"] if "id" in images.columns else None
