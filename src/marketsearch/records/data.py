"""The data records: raw snapshot (ingest) -> validated snapshot (validate) -> clean data (clean).

Each carries ``source``, the raw snapshot's manifest (source, counts, content hash), so a
model trained on it can say which data it came from without asking the run that made it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from marketsearch import quarantine, shards, snapshot
from marketsearch.records.base import Record, Report


class Snapshot(Record):
    """ingest's output: the listings and photos as the source holds them (schema.py: raw), in
    shards of at most ``shard_rows`` listings, each with its photos (marketsearch.shards).

    Either in memory (``Snapshot(products, images, manifest, shard_rows)``: ``save`` splits it
    into shards) or already written (``Snapshot.written``: ingest streams its shards into a
    directory; ``save`` writes only snapshot.json there, or copies the shards elsewhere, and
    ``products`` / ``images`` read every shard back only when asked for)."""

    FILES = {"shards": "shards/<name>/products.parquet (listings, every value a string) and "
                       "images.parquet (their photos with bytes, sha256 and source_error)",
             "snapshot.json": "source, location, counts, the content hash and the shards "
                              "(name, path, row counts, content hash)"}

    def __init__(self, products: pd.DataFrame | None, images: pd.DataFrame | None,
                 manifest: dict, shard_rows: int | None = None):
        self._products = products
        self._images = images      # with ``data`` (photo bytes), ``sha256`` and ``source_error``
        self.manifest = manifest   # source, location, counts, content_hash; shards once saved
        self.shard_rows = shard_rows           # None: one shard
        self.directory: Path | None = None     # where its shards are written, if they are
        self._staging = None                   # a TemporaryDirectory holding them, if any

    @classmethod
    def written(cls, directory, manifest: dict, staging=None) -> "Snapshot":
        """The snapshot whose shards (and snapshot.json) are in ``directory`` already.
        ``staging``: the tempfile.TemporaryDirectory that ``directory`` is, removed when this
        record is (save it somewhere first)."""
        snap = cls(None, None, manifest, manifest.get("shard_rows"))
        snap.directory, snap._staging = Path(directory), staging
        return snap

    @property
    def products(self) -> pd.DataFrame:
        if self._products is None:
            self._read_tables()
        return self._products

    @property
    def images(self) -> pd.DataFrame:
        if self._images is None:
            self._read_tables()
        return self._images

    def _read_tables(self) -> None:
        if self.directory is None:
            raise ValueError("this Snapshot has neither tables nor a directory to read them from")
        parts = [shards.read(self.directory, entry) for entry in self.manifest.get("shards", [])]
        if not parts:
            raise FileNotFoundError(f"{self.directory}/snapshot.json lists no shards: is it the "
                                    "output of ingest?")
        self._products = pd.concat([p for p, _ in parts], ignore_index=True)
        self._images = pd.concat([i for _, i in parts], ignore_index=True)

    def save(self, directory):
        if self.directory is not None:       # written already: copy the shards if elsewhere
            import shutil

            target = Path(directory)
            if not (target.exists() and target.resolve() == self.directory.resolve()):
                for entry in self.manifest.get("shards", []):
                    shutil.copytree(self.directory / entry["path"], target / entry["path"],
                                    dirs_exist_ok=True)
            snapshot.write_json(target, "snapshot.json", self.manifest)
            return
        entries = shards.write(directory, self.products, self.images,
                               self.shard_rows or max(len(self.products), 1))
        self.manifest = dict(self.manifest, shard_rows=self.shard_rows,
                             shards=[e.as_dict() for e in entries])
        snapshot.write_json(directory, "snapshot.json", self.manifest)

    @classmethod
    def load(cls, directory):
        manifest = snapshot.read_json(directory, "snapshot.json")
        snap = cls.written(directory, manifest)
        snap._read_tables()                  # now, as the files are now
        snap.directory = None                # a copy in memory from here on
        return snap

    def metrics(self):
        out = {k: v for k, v in self.manifest.items() if k.startswith("n_")}
        if "shards" in self.manifest:
            out["n_shards"] = len(self.manifest["shards"])
        return out

    def headline(self):
        m = self.manifest
        shards_part = f" in {len(m['shards'])} shard(s)" if "shards" in m else ""
        return (f"{m['n_products']} listings, {m['n_images']} photos from {m['source']}"
                f"{shards_part} (hash {m['content_hash'][:12]})")


def _read_only(why: str):
    """``save`` of a record that only reads what another stage saved: refuses, saying so."""
    def save(self, directory):
        raise TypeError(why)
    return save


@dataclass
class SnapshotShards(Record):
    """ingest's output read shard by shard: the manifest, and one shard at a time on demand
    (a per-shard task loads only its own shard, never the catalogue)."""
    directory: Path
    manifest: dict

    FILES = Snapshot.FILES
    save = _read_only("SnapshotShards only reads an ingest output; ingest saves a Snapshot")

    @classmethod
    def load(cls, directory):
        return cls(Path(directory), snapshot.read_json(directory, "snapshot.json"))

    def shard(self, entry: dict) -> Snapshot:
        """One shard as a Snapshot (its manifest: the snapshot's, with ``shard`` = the entry)."""
        known = {e["name"]: e for e in self.manifest.get("shards", [])}
        if entry["name"] not in known:
            raise KeyError(f"shard {entry['name']!r} is not in {self.directory}/snapshot.json")
        products, images = shards.read(self.directory, known[entry["name"]])
        manifest = {k: v for k, v in self.manifest.items() if k != "shards"}
        return Snapshot(products, images, dict(manifest, shard=known[entry["name"]]))


@dataclass
class ValidatedData(Record):
    """validate's output: the rows that passed, the quarantined ones with their reasons, and the
    Great Expectations report."""
    products: pd.DataFrame
    images: pd.DataFrame
    quarantine: pd.DataFrame
    report_data: dict          # counts, checks, critical failures (report_markdown)
    source: dict = field(default_factory=dict)

    FILES = {"products.parquet": "listings that passed", "images.parquet": "photos that passed",
             "quarantine.parquet": "rows that failed, each with its field and reason",
             "report.json": "per-expectation results and counts", "report.md": "the same, to read",
             "source.json": "the raw snapshot's manifest"}

    def save(self, directory):
        snapshot.write_tables(directory, products=self.products, images=self.images,
                              quarantine=self.quarantine)
        snapshot.write_json(directory, "report.json", self.report_data)
        (Path(directory) / "report.md").write_text(report_markdown(self.report_data))
        snapshot.write_json(directory, "source.json", self.source)

    @classmethod
    def load(cls, directory):
        source = Path(directory) / "source.json"
        return cls(snapshot.read_table(directory, "products"),
                   snapshot.read_table(directory, "images"),
                   snapshot.read_table(directory, "quarantine"),
                   snapshot.read_json(directory, "report.json"),
                   snapshot.read_json(directory, "source.json") if source.exists() else {})

    def metrics(self):
        return {k: v for k, v in self.report_data.items() if k.startswith("n_")}

    def headline(self):
        r = self.report_data
        return (f"{r.get('n_products_valid', 0)}/{r['n_products']} listings and "
                f"{r.get('n_images_valid', 0)}/{r['n_images']} photos pass; "
                f"{len(self.quarantine)} rows quarantined")

    def report(self, directory):
        return Report("Data validation", [], {}, markdown=report_markdown(self.report_data))


def report_markdown(report: dict) -> str:
    """validate's report as Markdown (the KFP UI shows it)."""
    lines = ["# Data validation", ""]
    if report["critical"]:
        lines += ["**Critical failures, the run stops:**", ""] + [f"- {c}" for c in report["critical"]] + [""]
    lines += [f"Listings: {report.get('n_products_valid', 0)} of {report['n_products']} pass; "
              f"photos: {report.get('n_images_valid', 0)} of {report['n_images']} pass.", ""]
    for table, checks in report.get("checks", {}).items():
        lines += [f"## {table}", "", "| expectation | column | failing rows |", "|---|---|---|"]
        lines += [f"| {c['expectation']} | {c['column']} | {c['unexpected']} |" for c in checks]
        lines.append("")
    reasons = report.get("quarantine_reasons") or {}
    if reasons:
        lines += ["## Quarantined", "", "| table | reason | rows |", "|---|---|---|"]
        for table, by_reason in reasons.items():
            lines += [f"| {table} | {r} | {n} |" for r, n in sorted(by_reason.items(), key=lambda x: -x[1])]
    return "\n".join(lines) + "\n"


PIXELS_FILE = "images_uint8.npy"
THUMBS_TABLE = "thumbnails"


@dataclass
class CleanData(Record):
    """clean's output, the data contract of training, the index, evaluation and drift checks."""
    products: pd.DataFrame
    images: pd.DataFrame
    pixels: np.ndarray  # uint8 [n_images, size, size, 3], row i belongs to images.row == i
    quarantine: list[dict] = field(default_factory=list)
    # One JPEG per listing (its first photo) for the search page: columns product_id, jpeg.
    thumbnails: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame({"product_id": [], "jpeg": []}))
    summary: dict = field(default_factory=dict)   # counts, splits, labels (clean.clean)
    source: dict = field(default_factory=dict)

    FILES = {"products.parquet": "typed listings with their split (schema.CLEAN_PRODUCT_COLUMNS)",
             "images.parquet": "photo rows; `row` indexes the pixel array",
             PIXELS_FILE: "uint8 [photos, size, size, 3], square RGB",
             "quarantine.parquet": "rows clean refused, with the reason",
             f"{THUMBS_TABLE}.parquet": "one JPEG per listing for the search page",
             "summary.json": "counts, splits, labels", "source.json": "the raw snapshot's manifest"}

    @property
    def labels(self) -> list[str]:
        return sorted(self.products["category"].unique())

    def save(self, directory):
        out_dir = Path(directory)
        snapshot.write_tables(out_dir, products=self.products, images=self.images,
                              quarantine=quarantine.frame(self.quarantine),
                              **{THUMBS_TABLE: self.thumbnails})
        np.save(out_dir / PIXELS_FILE, self.pixels)
        snapshot.write_json(out_dir, "summary.json", self.summary)
        snapshot.write_json(out_dir, "source.json", self.source)

    @classmethod
    def load(cls, directory, mmap: bool = False):
        """The CleanData saved in ``directory``; ``mmap``: its pixels memory-mapped, read from
        disk only where indexed (a shard's photos are never all in memory at once)."""
        d = Path(directory)
        q = snapshot.read_table(d, "quarantine")
        data = cls(snapshot.read_table(d, "products"), snapshot.read_table(d, "images"),
                   np.load(d / PIXELS_FILE, mmap_mode="r" if mmap else None), q.to_dict("records"))
        if (d / f"{THUMBS_TABLE}.parquet").exists():
            data.thumbnails = snapshot.read_table(d, THUMBS_TABLE)
        for name in ("summary", "source"):
            if (d / f"{name}.json").exists():
                setattr(data, name, snapshot.read_json(d, f"{name}.json"))
        return data

    def metrics(self):
        return {k: v for k, v in self.summary.items() if k.startswith("n_") or k == "splits"}

    def headline(self):
        s = self.summary
        return (f"{s.get('n_products')} listings ({s.get('n_geocoded')} geocoded), "
                f"{s.get('n_images')} photos; quarantined {s.get('n_products_quarantined')} "
                f"listings, {s.get('n_images_quarantined')} photos")

    def report(self, directory):
        if self.summary.get("shard"):           # one shard of many: gather_clean plots them all
            return None
        return clean_data_report(self.products, self.summary, directory)


def clean_data_report(listings: pd.DataFrame, summary: dict, directory) -> Report:
    """The clean data's plots (prices, categories, a map) from its listings' price,
    category, lat and lon."""
    from marketsearch import plots

    fig_dir = Path(directory) / "plots"
    fig_dir.mkdir(parents=True, exist_ok=True)
    p = listings
    pngs = [plots.price_distribution_png(p["price"].to_numpy(), fig_dir / "price_distribution.png"),
            plots.category_counts_png(p["category"].tolist(), fig_dir / "category_counts.png"),
            plots.uk_map_png(p["lat"].to_numpy(), p["lon"].to_numpy(), fig_dir / "uk_map.png",
                             categories=p["category"].tolist())]
    return Report("Clean data", pngs, summary)


@dataclass
class CleanShard(Record):
    """One clean shard (prepare_shard's output, or any saved CleanData) read lazily: its
    summary at once, its tables and memory-mapped pixels only when ``data()`` is called. A
    stage given the catalogue's shards (``dsl.Collected``) holds one shard's rows at a time."""
    directory: Path
    summary: dict

    FILES = CleanData.FILES
    save = _read_only("CleanShard only reads a clean shard; prepare_shard saves a CleanData")

    @classmethod
    def load(cls, directory):
        d = Path(directory)
        summary = snapshot.read_json(d, "summary.json") if (d / "summary.json").exists() else {}
        return cls(d, summary)

    @property
    def name(self) -> str:
        return self.summary.get("shard") or self.directory.name

    @property
    def n_products(self) -> int:
        return int(self.summary.get("n_products", 0))

    def data(self) -> CleanData:
        """The shard's CleanData, pixels memory-mapped."""
        return CleanData.load(self.directory, mmap=True)

    def products(self, columns: list[str] | None = None) -> pd.DataFrame:
        """The shard's listings (only ``columns``, when given)."""
        return snapshot.read_table(self.directory, "products", columns)

    def images(self) -> pd.DataFrame:
        """The shard's photo rows (``row`` indexes its pixels)."""
        return snapshot.read_table(self.directory, "images")

    def photos(self, rows) -> np.ndarray:
        """The pixels at ``rows``, copied out of a memory map opened for this call alone: its
        pages are let go when it returns, so a task reading a large shard a chunk at a time
        holds one chunk's pages, not every page it has read."""
        pixels = np.load(self.directory / PIXELS_FILE, mmap_mode="r")
        out = np.array(pixels[np.asarray(rows, dtype=np.int64)])
        del pixels                                  # the copy holds no view: unmapped here
        return out

    def quarantine(self) -> list[dict]:
        return snapshot.read_table(self.directory, "quarantine").to_dict("records")


PLAN_COLUMNS = ["id", "split", "category", "price", "lat", "lon"]


@dataclass
class CleanPlan(Record):
    """gather_clean's output: what the whole catalogue needs decided once, with none of its
    photos or texts. ``listings`` has one row per clean listing in id order (PLAN_COLUMNS:
    its split, dealt over the whole catalogue, and what the plots and price checks read);
    ``summary`` the recounted counts, labels and photo size; ``quarantine`` every row a
    shard refused. The clean shards stay in prepare_shard's artifacts, and the stages after
    read them one at a time through ``marketsearch.catalogue.CleanCatalogue``."""
    listings: pd.DataFrame
    quarantine: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)

    FILES = {"listings.parquet": "one row per clean listing in id order: " + ", ".join(PLAN_COLUMNS),
             "quarantine.parquet": "rows the shards refused, with the reason",
             "summary.json": "counts, splits, labels, photo size, shards",
             "source.json": "the raw snapshot's manifest"}

    @property
    def labels(self) -> list[str]:
        return list(self.summary.get("labels") or sorted(self.listings["category"].unique()))

    def save(self, directory):
        snapshot.write_tables(directory, listings=self.listings,
                              quarantine=quarantine.frame(self.quarantine))
        snapshot.write_json(directory, "summary.json", self.summary)
        snapshot.write_json(directory, "source.json", self.source)

    @classmethod
    def load(cls, directory):
        return cls(snapshot.read_table(directory, "listings"),
                   snapshot.read_table(directory, "quarantine").to_dict("records"),
                   snapshot.read_json(directory, "summary.json"),
                   snapshot.read_json(directory, "source.json"))

    metrics = CleanData.metrics
    headline = CleanData.headline

    def report(self, directory):
        return clean_data_report(self.listings, self.summary, directory)
