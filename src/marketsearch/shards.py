"""A catalogue in shards: listings, each with all its photos, in groups of at most
``data.shard_rows`` listings, with a manifest (shard paths, row counts, content hashes).

Which shard a listing goes to depends on its id alone, so that a catalogue that grows or
changes rewrites only the shards it touches (their content hash changes; every other shard's
stays, and a later stage can skip it). Each listing id's sha256 is read as a string of bits;
the whole catalogue starts as one shard, the empty prefix, and a shard holding more than
``shard_rows`` listings splits in two by the next bit, until none does. A shard is named by
its prefix (``shard-0110``; ``shard-all`` for a catalogue that fits in one). Adding listings
can only split the shards they land in; nothing else moves. Shards are about ``shard_rows``/2
to ``shard_rows`` listings when ids hash uniformly.

A photo goes to its listing's shard; a photo of a listing that is not in the catalogue goes to
the shard its listing id would be in, so that validation of that shard finds it.

``assign`` deals a catalogue in memory; ``Spill`` deals one read in chunks through scratch
files, holding a chunk or a group of shards at a time and 8 bytes (its id's hash) a listing.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from marketsearch import snapshot

SHARDS_DIR = "shards"
MAX_DEPTH = 64                    # bits of the id hash used; equal hashes cannot split further


def id_hashes(ids) -> np.ndarray:
    """The first 64 bits of each id's sha256, as unsigned integers."""
    return np.array([int.from_bytes(hashlib.sha256(str(i).encode()).digest()[:8], "big")
                     for i in ids], dtype=np.uint64)


def _bit(hashes: np.ndarray, depth: int) -> np.ndarray:
    return ((hashes >> np.uint64(MAX_DEPTH - 1 - depth)) & np.uint64(1)).astype(bool)


def split(hashes: np.ndarray, shard_rows: int) -> dict[str, np.ndarray]:
    """Prefix -> positions in ``hashes``: the leaves of the split, each holding at most
    ``shard_rows`` (unless the hashes are equal). Empty leaves are kept: together the leaves
    cover every possible id, so any id, listed or not, falls under exactly one."""
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be at least 1, got {shard_rows}")
    out: dict[str, np.ndarray] = {}
    stack = [("", np.arange(len(hashes)))]
    while stack:
        prefix, positions = stack.pop()
        if len(positions) <= shard_rows or len(prefix) == MAX_DEPTH:
            out[prefix] = positions
            continue
        ones = _bit(hashes[positions], len(prefix))
        stack.append((prefix + "1", positions[ones]))
        stack.append((prefix + "0", positions[~ones]))
    return dict(sorted(out.items()))


def leaf_of(hashes: np.ndarray, leaves) -> list[str]:
    """The leaf (prefix) each hash falls under."""
    depths = sorted({len(p) for p in leaves})
    known = set(leaves)
    bits = [format(int(h), f"0{MAX_DEPTH}b") for h in hashes]
    return [next(b[:d] for d in depths if b[:d] in known) for b in bits]


def leaf_starts(leaves) -> np.ndarray:
    """The first hash under each leaf (prefix), in the leaves' name order: for ``leaf_index``."""
    prefixes = sorted(leaves)
    return np.array([int(p, 2) << (MAX_DEPTH - len(p)) if p else 0 for p in prefixes],
                    dtype=np.uint64)


def leaf_index(hashes: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The position (in name order) of the leaf each hash falls under, ``leaf_of`` for the
    leaves of a ``split`` (which cover every hash: the last start at or below it)."""
    return np.searchsorted(starts, np.asarray(hashes, dtype=np.uint64), side="right") - 1


def shard_name(prefix: str) -> str:
    return f"shard-{prefix or 'all'}"


@dataclass
class Shard:
    """One shard's entry in the manifest."""
    name: str
    path: str                      # relative to the snapshot directory
    n_products: int
    n_images: int
    content_hash: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def assign(products: pd.DataFrame, images: pd.DataFrame,
           shard_rows: int) -> Iterator[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """(name, listings, photos) per shard (see the module docstring), in name order."""
    leaves = split(id_hashes(products["id"]), shard_rows)
    shard_of_listing = np.empty(len(products), dtype=object)
    for prefix, positions in leaves.items():
        shard_of_listing[positions] = prefix
    photo_shard = pd.Series(leaf_of(id_hashes(images["product_id"]), leaves), dtype=object,
                            index=images.index)
    for prefix in sorted(set(shard_of_listing) | set(photo_shard)):
        yield (shard_name(prefix), products[shard_of_listing == prefix].reset_index(drop=True),
               images[(photo_shard == prefix).to_numpy()].reset_index(drop=True))


class _Frames:
    """Frames appended to files and read back in the order they came: each a pickled frame
    (exact: every dtype and None as it was), compressed. The files are the process's own,
    in a private temporary directory, read by it alone."""

    def __init__(self):
        import pyarrow as pa

        self._codec = next((pa.Codec(c) for c in ("zstd", "lz4") if pa.Codec.is_available(c)),
                           None)

    def append(self, path: str, frame: pd.DataFrame) -> None:
        data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
        packed = self._codec.compress(data, asbytes=True) if self._codec else data
        with open(path, "ab") as f:
            f.write(struct.pack("<QQ", len(packed), len(data)))
            f.write(packed)

    def read(self, path: str) -> Iterator[pd.DataFrame]:
        """Every frame of ``path``, in order; the file is removed once read."""
        if not os.path.exists(path):
            return
        with open(path, "rb") as f:
            while header := f.read(16):
                size, raw = struct.unpack("<QQ", header)
                packed = f.read(size)
                data = (self._codec.decompress(packed, decompressed_size=raw, asbytes=True)
                        if self._codec else packed)
                yield pickle.loads(data)
        os.remove(path)


class Spill:
    """A catalogue read in chunks, dealt into its shards (the shards ``assign`` deals, rows in
    the same order) through files in a scratch ``directory``, in three passes:

    1. ``put(table, source, frame)``: every chunk of listings ("products") and photo rows
       ("images") of each source, as it is read, appended to a file of the source's. A
       listing's id hash is kept (8 bytes a listing); nothing else stays in memory.
    2. ``deal(listing_masks, photo_masks)``: which rows stay, per source (a bool per row, or
       None: all). The leaves are split from the hashes of the listings that stay; each chunk
       is read back and its rows dealt by their leaf (a photo by its ``product_id``'s hash) to
       groups of neighbouring leaves of about ``group_rows`` listings: appended to the
       group's file, one file per group (not one per chunk and group: their number would
       grow as the square of the catalogue's).
    3. ``shards()``: one group's file read back at a time, (prefix, listings, photos) per
       leaf that holds a row, in name order.

    So the most it holds is a chunk, or a group (at most ``group_rows`` listings, or one
    shard where a shard is larger) and its photo rows. Every row of a source keeps its order,
    sources in the order of their number. A file is removed once read."""

    LEAF = "_ms_leaf"

    def __init__(self, directory: str | Path, shard_rows: int, group_rows: int):
        if shard_rows < 1 or group_rows < 1:
            raise ValueError(f"shard_rows and group_rows must be at least 1, got {shard_rows}, "
                             f"{group_rows}")
        self.directory = str(directory)
        self.shard_rows, self.group_rows = shard_rows, group_rows
        self._frames = _Frames()
        self._rows: dict[tuple[str, int], list[int]] = {}      # rows per chunk put
        self._hashes: dict[int, list[np.ndarray]] = {}
        self._groups: list[list[int]] = []                      # leaf positions per group
        self.leaves: list[str] = []
        self._held: set[int] = set()                            # leaves dealt a row

    def _path(self, *name) -> str:
        return os.path.join(self.directory, "-".join(map(str, name)) + ".frames")

    # -- pass 1 -------------------------------------------------------------------------------
    def put(self, table: str, source: int, frame: pd.DataFrame) -> None:
        """One chunk of ``table`` ("products" or "images") of ``source``, as it was read
        (chunks of a source in their order)."""
        if table == "products":
            if "id" not in frame.columns:
                raise ValueError("the listings have no id column: a listing's shard follows "
                                 "from its id")
            self._hashes.setdefault(source, []).append(id_hashes(frame["id"]))
        elif "product_id" not in frame.columns:
            raise ValueError("the photo rows have no product_id column: a photo's shard "
                             "follows from its listing's id")
        rows = self._rows.setdefault((table, source), [])
        if len(frame):
            self._frames.append(self._path("chunks", table, source), frame)
            rows.append(len(frame))

    # -- pass 2 -------------------------------------------------------------------------------
    def deal(self, listing_masks: dict[int, np.ndarray | None],
             photo_masks: dict[int, np.ndarray | None]) -> None:
        """Split the leaves from the listings that stay and deal every chunk's rows that stay
        to their group of leaves (a mask per source: a bool per row in its order; None or
        missing: every row)."""
        sources = sorted({s for _, s in self._rows})
        hashes = {s: np.concatenate(self._hashes[s]) if self._hashes.get(s)
                  else np.zeros(0, np.uint64) for s in sources}
        self._hashes = {}
        kept = [h if listing_masks.get(s) is None else h[listing_masks[s]]
                for s, h in hashes.items()]
        leaves = split(np.concatenate(kept) if kept else np.zeros(0, np.uint64),
                       self.shard_rows)
        del kept
        self.leaves = list(leaves)                       # name order
        starts = leaf_starts(self.leaves)
        group_of = np.empty(len(self.leaves), dtype=np.int64)
        size = 0
        for i, prefix in enumerate(self.leaves):
            n = len(leaves[prefix])
            if not self._groups or (size > 0 and size + n > self.group_rows):
                self._groups.append([])
                size = 0
            self._groups[-1].append(i)
            group_of[i] = len(self._groups) - 1
            size += n
        del leaves
        total = sum(sum(rows) for rows in self._rows.values())
        with tqdm(total=total, desc="ingest: deal rows to shards", unit="row",
                  mininterval=2) as bar:
            for table, masks in (("products", listing_masks), ("images", photo_masks)):
                for source in sources:
                    mask, at = masks.get(source), 0
                    for frame in self._frames.read(self._path("chunks", table, source)):
                        n = len(frame)
                        part_hashes = (hashes[source][at:at + n] if table == "products"
                                       else id_hashes(frame["product_id"]))
                        if mask is not None:
                            keep = mask[at:at + n]
                            frame, part_hashes = frame[keep], part_hashes[keep]
                        at += n
                        self._deal_chunk(table, frame.reset_index(drop=True),
                                         leaf_index(part_hashes, starts), group_of)
                        bar.update(n)
                    assert at == sum(self._rows.pop((table, source), [])), "a chunk went missing"
                hashes = {}                              # the listings are dealt

    def _deal_chunk(self, table: str, frame: pd.DataFrame, leaf: np.ndarray,
                    group_of: np.ndarray) -> None:
        if not len(frame):
            return
        frame[self.LEAF] = leaf.astype(np.int64)
        self._held.update(np.unique(leaf).tolist())
        groups = group_of[leaf]
        order = np.argsort(groups, kind="stable")        # each group's rows in their order
        for rows in np.split(order, np.flatnonzero(np.diff(groups[order])) + 1):
            self._frames.append(self._path("group", table, int(groups[rows[0]])),
                                frame.iloc[rows])

    # -- pass 3 -------------------------------------------------------------------------------
    @property
    def n_shards(self) -> int:
        """How many shards ``shards`` gives (after ``deal``)."""
        return len(self._held)

    def shards(self) -> Iterator[tuple[str, pd.DataFrame, pd.DataFrame]]:
        """(prefix, listings, photo rows) of each leaf that holds a row, in name order, one
        group of leaves read at a time; the frames as they were put (with the columns the
        group's chunks had: an empty ``pd.DataFrame()`` where the group has no such rows)."""
        for g, members in enumerate(self._groups):
            tables = {}
            for table in ("products", "images"):
                frames = list(self._frames.read(self._path("group", table, g)))
                frame = (pd.concat(frames, ignore_index=True) if len(frames) > 1
                         else frames[0].reset_index(drop=True) if frames else None)
                del frames
                if frame is None:
                    tables[table] = None
                    continue
                leaf = frame.pop(self.LEAF).to_numpy()
                order = np.argsort(leaf, kind="stable")
                first = np.searchsorted(leaf[order], members, side="left")
                last = np.searchsorted(leaf[order], members, side="right")
                tables[table] = (frame, order, dict(zip(members, zip(first, last))))
            for i in members:
                rows = []
                for table in ("products", "images"):
                    if tables[table] is None:
                        rows.append(pd.DataFrame())
                        continue
                    frame, order, bounds = tables[table]
                    lo, hi = bounds[i]
                    rows.append(frame.iloc[order[lo:hi]].reset_index(drop=True))
                if len(rows[0]) or len(rows[1]):
                    yield self.leaves[i], rows[0], rows[1]
            del tables


def write_shard(directory: str | Path, name: str, products: pd.DataFrame,
                images: pd.DataFrame) -> Shard:
    """Write one shard's tables under ``<directory>/shards/<name>/``; return its entry."""
    rel = f"{SHARDS_DIR}/{name}"
    snapshot.write_tables(Path(directory) / rel, products=products, images=images)
    return Shard(name, rel, len(products), len(images), snapshot.content_hash(products, images))


def write(directory: str | Path, products: pd.DataFrame, images: pd.DataFrame,
          shard_rows: int) -> list[Shard]:
    """Write each shard's tables under ``<directory>/shards/<name>/``; return the entries."""
    return [write_shard(directory, name, p, i)
            for name, p, i in assign(products, images, shard_rows)]


def read(directory: str | Path, entry: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One shard's listings and photos."""
    where = Path(directory) / entry["path"]
    return snapshot.read_table(where, "products"), snapshot.read_table(where, "images")


def changed(entries: list[dict], before: list[dict]) -> list[str]:
    """Names of the shards in ``entries`` that are new or whose content hash differs from
    ``before`` (a previous run's manifest)."""
    old = {e["name"]: e["content_hash"] for e in before}
    return [e["name"] for e in entries if old.get(e["name"]) != e["content_hash"]]
