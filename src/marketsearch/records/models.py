"""The trained-model record: what train_image, train_text and train_fusion hand on.

Directory-backed (Keras writes files): the stage trains straight into its output directory and
returns the record rooted there; ``save`` to another directory copies it.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from marketsearch import snapshot
from marketsearch.records.base import Record, Report

KINDS = ("image", "text", "fusion")


@dataclass
class TrainedModel(Record):
    root: Path
    kind: str                  # one of KINDS

    FILES = {"image.keras | text.keras": "the photo or text model (fusion: both, plus fused.keras, "
                                         "vocab.json and meta.json: the bundle's model part)",
             "labels.json": "the category names, in the order of the model's outputs",
             "vocab.json": "token -> id (word2vec text model)",
             "history.json": "per-epoch training curves and timings",
             "result.json": "kind, counts, epochs run, best val accuracy, seconds",
             "training_curves.png": "the curves, plotted"}

    @classmethod
    def write(cls, out_dir: str | Path, kind: str, labels: list[str], history: dict,
              result: dict, vocab: dict | None = None) -> "TrainedModel":
        """Record a model already saved in ``out_dir`` (its Keras files) with its metadata."""
        if kind not in KINDS:
            raise ValueError(f"unknown model kind {kind!r}; one of {KINDS}")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "labels.json").write_text(json.dumps(labels))
        (out_dir / "history.json").write_text(json.dumps(history, default=float))
        if vocab is not None:
            (out_dir / "vocab.json").write_text(json.dumps(vocab))
        snapshot.write_json(out_dir, "result.json", {"kind": kind, **result})
        return cls(out_dir, kind)

    def save(self, directory):
        directory = Path(directory)
        if directory.resolve() != self.root.resolve():
            shutil.copytree(self.root, directory, dirs_exist_ok=True)

    @classmethod
    def load(cls, directory):
        result = snapshot.read_json(directory, "result.json")
        return cls(Path(directory), result["kind"])

    @property
    def labels(self) -> list[str]:
        return json.loads((self.root / "labels.json").read_text())

    @property
    def history(self) -> dict:
        return json.loads((self.root / "history.json").read_text())

    @property
    def result(self) -> dict:
        return {k: v for k, v in snapshot.read_json(self.root, "result.json").items() if k != "kind"}

    @property
    def vocab(self) -> dict:
        path = self.root / "vocab.json"
        return json.loads(path.read_text()) if path.exists() else {}

    @property
    def model_file(self) -> Path:
        return self.root / f"{'fused' if self.kind == 'fusion' else self.kind}.keras"

    def model(self):
        import keras

        import marketsearch.models  # noqa: F401  registers the custom layers

        return keras.models.load_model(self.model_file, compile=False)

    def check_labels(self, labels: list[str]) -> None:
        if self.labels != labels:
            raise ValueError(f"{self.root} was trained on labels {self.labels}, the clean data "
                             f"has {labels}")

    def metrics(self):
        return self.result

    def headline(self):
        r = self.result
        extra = f", fusion {r['fusion_choice']}" if "fusion_choice" in r else ""
        return (f"best val accuracy {r.get('best_val_accuracy', float('nan')):.3f} after "
                f"{r.get('epochs_run')} epochs ({r.get('seconds')} s){extra}")

    def report(self, directory):
        from marketsearch import plots
        from marketsearch.tracking import epoch_curves

        title = {"image": "Image model", "text": "Text model", "fusion": "Fusion head"}[self.kind]
        png = plots.training_curves_png(epoch_curves(self.history),
                                        Path(directory) / "training_curves.png", title)
        return Report(f"{title} training", [png], self.result)


@dataclass
class ShardFeatures(Record):
    """featurize_shard's output: what it put in the photo-feature cache for one clean shard.
    The features themselves live in the cache (``image_model.feature_cache``), where every
    stage after reads them by photo content; this record says which shard, which backbone
    (its model key), how many photos, how many were cached already and how many it computed,
    and the seconds, or ``skipped`` with the reason (no cache configured, no frozen
    backbone, no photos)."""
    summary: dict

    FILES = {"features.json": "the shard, the cache, the backbone's model key and the counts, "
                              "or why nothing was computed"}

    def save(self, directory):
        snapshot.write_json(Path(directory), "features.json", self.summary)

    @classmethod
    def load(cls, directory):
        return cls(snapshot.read_json(Path(directory), "features.json"))

    def metrics(self):
        return {k: self.summary[k] for k in ("n_photos", "from_cache", "computed", "seconds")
                if k in self.summary}

    def headline(self):
        s = self.summary
        if s.get("skipped"):
            return f"{s.get('shard')}: no photo features computed: {s['skipped']}"
        return (f"{s['shard']}: {s['n_photos']} photos, {s['from_cache']} already cached, "
                f"{s['computed']} computed in {s['seconds']:.0f} s")
