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
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

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
