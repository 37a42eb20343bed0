"""A raw or clean dataset on disk: parquet tables in one directory, plus a JSON manifest."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd


def write_tables(directory: str | Path, **tables: pd.DataFrame) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        table.reset_index(drop=True).to_parquet(directory / f"{name}.parquet", index=False)


def read_table(directory: str | Path, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    """The table ``name`` saved in ``directory`` (only ``columns``, when given)."""
    path = Path(directory) / f"{name}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {directory} the output of the stage before?")
    return pd.read_parquet(path, columns=columns)


def write_json(directory: str | Path, name: str, data: dict) -> Path:
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    return path


def read_json(directory: str | Path, name: str) -> dict:
    return json.loads((Path(directory) / name).read_text())


def content_hash(products: pd.DataFrame, images: pd.DataFrame) -> str:
    """A hash of the snapshot's content, independent of row order and file encoding."""
    digest = hashlib.sha256()
    cols = sorted(c for c in products.columns)
    for row in products[cols].astype(str).sort_values(cols).itertuples(index=False):
        digest.update("\x1f".join(row).encode())
        digest.update(b"\x1e")
    img_cols = sorted(c for c in images.columns if c != "data")
    for row in images[img_cols].astype(str).sort_values(img_cols).itertuples(index=False):
        digest.update("\x1f".join(row).encode())
        digest.update(b"\x1e")
    return digest.hexdigest()


def combined_hash(shard_hashes: dict[str, str]) -> str:
    """The content hash of a snapshot in shards: the sha256 of one line per shard, "<name>
    <content hash>", in shard-name order. It changes when any shard's content does, and only
    then (the shard names follow from the listing ids and ``data.shard_rows``, which it therefore
    also follows); the order rows were read in does not count."""
    digest = hashlib.sha256()
    for name in sorted(shard_hashes):
        digest.update(f"{name} {shard_hashes[name]}\n".encode())
    return digest.hexdigest()
