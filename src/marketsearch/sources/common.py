"""What every source shares: ``RawData``, the file names of a file source, shaping frames so
that every value is a str, reading a marketplace CSV (in chunks: ``iter_csv_text``), a source
read in chunks (``ChunkedSource``), and fetching photo bytes later (``PhotoFetcher``,
``fetch_photos``; ``PhotoIndexCodec`` to keep a photo index on disk meanwhile)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from marketsearch.schema import RAW_IMAGE_COLUMNS

PRODUCTS_FILE = "products.csv"
IMAGES_FILE = "images.csv"
PHOTO_DIR = "images"
# Rows a chunked reader hands on at a time when nobody says (data.ingest_chunk_rows's default).
CHUNK_ROWS = 50_000


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


@dataclass
class ChunkedSource:
    """A source read a chunk at a time (``chunks_local``, ``chunks_s3``, ``chunks_postgres``).

    ``listings()`` iterates its listing rows as ``RawData.products`` frames, ``photos()`` its
    photo rows as photo-index frames (``RawData.images`` without bytes), each in the source's
    order, at most ``chunk_rows`` rows a frame, reading the source afresh on every call. Each
    yields at least one frame (an empty one when there are no rows), so that the columns are
    known. Chunking never changes a row: the chunks put together are what a whole read gives
    (``index``), and the photo fetchers are the source's own, one object each for all its
    chunks (``fetch_photos`` calls each once)."""

    source: str
    listings: Callable[[], Iterator[pd.DataFrame]]
    photos: Callable[[], Iterator[pd.DataFrame]]

    def index(self) -> RawData:
        """The whole photo index (every chunk in memory at once: small data and tests)."""
        return RawData(concat_chunks(self.listings()), concat_chunks(self.photos()),
                       source=self.source)


def concat_chunks(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Chunks of one table -> the table (a new RangeIndex)."""
    frames = list(frames)
    if len(frames) == 1:
        return frames[0].reset_index(drop=True)
    return pd.concat(frames, ignore_index=True)


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


class PhotoIndexCodec:
    """Photo-index rows <-> a frame of plain columns that parquet can hold, to keep a photo
    index on disk while it waits for its bytes (ingest's spill): ``data`` (None everywhere in
    an index) is left out and ``_fetch`` becomes ``CODE``, a number into this codec's list of
    fetchers (-1: None). Decode with the codec that encoded."""

    CODE = "_ms_fetch"

    def __init__(self):
        self.fetchers: list = []
        self._codes: dict[int, int] = {}

    def _code(self, fetcher) -> int:
        if fetcher is None:
            return -1
        code = self._codes.get(id(fetcher))
        if code is None:                       # the list keeps it alive: its id stays its own
            code = self._codes[id(fetcher)] = len(self.fetchers)
            self.fetchers.append(fetcher)
        return code

    def encode(self, index: pd.DataFrame) -> pd.DataFrame:
        codes = np.fromiter((self._code(f) for f in index[FETCH]), dtype=np.int32,
                            count=len(index))
        plain = index.drop(columns=["data", FETCH])
        plain[self.CODE] = codes
        return plain

    def decode(self, plain: pd.DataFrame, columns: list) -> pd.DataFrame:
        """``encode``'s frame -> photo-index rows with ``columns`` (the index's columns, in
        order; one the frame lacks is NaN, as ``pd.concat`` leaves it). A frame without rows
        may lack every column."""
        if self.CODE not in plain.columns and not len(plain):
            return conform(plain, columns, np.nan)
        index = plain.drop(columns=[self.CODE])
        index["data"] = pd.Series([None] * len(index), index=index.index, dtype=object)
        index[FETCH] = pd.Series([self.fetchers[c] if c >= 0 else None
                                  for c in plain[self.CODE].tolist()],
                                 index=index.index, dtype=object)
        return conform(index, columns, np.nan)


def union_columns(column_lists: Iterable[list]) -> list:
    """The columns of ``pd.concat`` of frames with these columns: each in the order it first
    appears."""
    out: list = []
    for columns in column_lists:
        out.extend(c for c in columns if c not in out)
    return out


def conform(frame: pd.DataFrame, columns: list, fill) -> pd.DataFrame:
    """``frame`` with exactly ``columns``, in order: a missing one is ``fill`` in every row (an
    object column, as ``pd.concat`` of frames with and without it leaves it)."""
    frame = frame.copy()
    for column in columns:
        if column not in frame.columns:
            frame[column] = pd.Series([fill] * len(frame), index=frame.index, dtype=object)
    return frame[list(columns)]


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

    Rows with too few fields get "" for the rest; the validate stage reports them. The chunks
    of ``iter_csv_text`` put together (one parsing path for both).
    """
    frames = list(iter_csv_text(source, name))
    return frames[0] if len(frames) == 1 else pd.concat(frames)


_CSV_OPTIONS = dict(dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig",
                    quotechar='"', doublequote=True, skipinitialspace=False)


def iter_csv_text(source, name: str, chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """``read_csv_text`` a chunk at a time: str frames of at most ``chunk_rows`` rows, in file
    order, numbered on (the second chunk's index goes on from the first's). ``source``: a path
    or a binary file object, read as the chunks are asked for. At least one frame: an empty
    file gives ``pd.DataFrame()``, a header alone an empty frame with its columns.

    One quirk of pandas' C parser moves with the chunks: it lets the first row it tokenizes in
    a batch have more fields than the header (cut to the header's width) where any other row
    with too many fields is an error. A whole read has the same blind spot at its own
    batches' starts (every 2**k rows, 131,072 for six columns); read in chunks it is the first
    row of each chunk instead. Only such a malformed row reads differently."""
    try:
        reader = pd.read_csv(source, chunksize=chunk_rows, **_CSV_OPTIONS)
    except pd.errors.EmptyDataError:
        yield pd.DataFrame()
        return
    except pd.errors.ParserError as exc:
        raise ValueError(f"{name} is not a readable CSV file: {exc}") from exc
    given = False
    with reader:
        while True:
            try:
                chunk = reader.get_chunk()
            except StopIteration:
                break
            except pd.errors.ParserError as exc:
                raise ValueError(f"{name} is not a readable CSV file: {exc}") from exc
            given = True
            yield chunk
    if not given:                                       # pragma: no cover - pandas gives one
        yield pd.DataFrame()


def _photo_id(images: pd.DataFrame) -> pd.Series | None:
    return images["id"] if "id" in images.columns else None
