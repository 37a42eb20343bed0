"""The outcome records: evaluate's Evaluation and Decision, deploy's Deployment and
drift_check's DriftResult.

``Decision`` is the typed contract between evaluate and deploy: evaluate registers the
challenger as a model version and decides; deploy promotes exactly the version the decision
names, and only if the champion it was compared with still holds the alias.
"""
from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field
from pathlib import Path

from marketsearch import snapshot
from marketsearch.records.base import Record, Report


@dataclass
class Decision(Record):
    promote: bool
    reason: str
    challenger_score: float
    champion_score: float | None = None
    metric: str = "accuracy"
    min_improvement: float = 0.0
    n_test_pairs: int = 0
    n_seen_by_champion: int = 0
    champion_seen_ids: str | None = None    # "recorded" | "unknown" | None (no champion)
    version: str | None = None              # the registered challenger
    champion_version: str = "none"          # the champion it was compared with
    pipeline_run: str = ""
    data_hash: str = ""
    price_warning: str = ""                 # the suggested prices clearly worse than the champion's

    FILES = {"decision.json": "promote or keep, why, both scores, the registered version and "
                              "the champion it was compared with"}

    def save(self, directory):
        snapshot.write_json(directory, "decision.json", asdict(self))

    @classmethod
    def load(cls, directory):
        data = snapshot.read_json(directory, "decision.json")
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def metrics(self):
        out = {"promote": float(self.promote), "challenger_score": self.challenger_score,
               "n_test_pairs": self.n_test_pairs, "n_seen_by_champion": self.n_seen_by_champion}
        if self.champion_score is not None:
            out["champion_score"] = self.champion_score
        return out

    def headline(self):
        verdict = "PROMOTE" if self.promote else "keep the champion"
        warning = f"; WARNING: {self.price_warning}" if self.price_warning else ""
        return f"version {self.version}: {verdict} ({self.reason}){warning}"


@dataclass
class Evaluation(Record):
    """evaluate's output: the challenger's scores per modality and its search relevance, the
    champion's on the same pairs, and the decision."""
    result: dict                   # evaluation.evaluate_pairs (+ "search")
    decision: Decision
    labels: list[str]
    champion: dict | None = None

    FILES = {"evaluation.json": "per modality: accuracy, top-3, macro-F1, per-class report, "
                                "confusion matrix; search relevance per query mode",
             "champion_evaluation.json": "the champion on the same pairs (when there is one)",
             "confusion_<modality>.png": "the confusion matrices, plotted",
             "price.png": "suggested against listed price, the head and both baselines",
             **Decision.FILES}

    def save(self, directory):
        from marketsearch import plots
        from marketsearch.evaluation import MODALITIES

        snapshot.write_json(directory, "evaluation.json", self.result)
        if self.champion:
            snapshot.write_json(directory, "champion_evaluation.json", self.champion)
        self.decision.save(directory)
        labels = self.labels + self.result["unknown_categories"]
        if (self.result.get("price") or {}).get("sample"):
            from marketsearch.pricing import price_figure

            price_figure(self.result["price"]).savefig(Path(directory) / "price.png", dpi=110)
        for m in MODALITIES:
            plots.confusion_matrix_png(
                self.result[m]["confusion_matrix"], labels, Path(directory) / f"confusion_{m}.png",
                f"{m} model on the test pairs (accuracy {self.result[m]['accuracy']:.3f})")

    @classmethod
    def load(cls, directory):
        d = Path(directory)
        champion = d / "champion_evaluation.json"
        result = snapshot.read_json(d, "evaluation.json")
        return cls(result, Decision.load(d), result.get("labels", []),
                   snapshot.read_json(d, "champion_evaluation.json") if champion.exists() else None)

    def headline_scores(self) -> dict:
        from marketsearch.evaluation import headline

        return headline(self.result)

    def metrics(self):
        from marketsearch.evaluation import search_metrics

        head = self.headline_scores()
        price = self.result.get("price") or {}
        return {"test": {m: head[m] for m in ("image", "text", "fusion")},
                "search": search_metrics(self.result["search"]) if "search" in self.result else {},
                "price": {name: {k: v for k, v in figures.items()
                                 if k != "n" and v is not None}
                          for name, figures in {**price.get("models", {}), **{
                              f"mode_{m}": f for m, f in price.get("modes", {}).items()}}.items()},
                "decision": self.decision.metrics()}

    def confusion(self) -> tuple[list[str], list[list[int]]]:
        """The fused model's confusion matrix with its labels (KFP's ClassificationMetrics)."""
        return self.labels + self.result["unknown_categories"], self.result["fusion"]["confusion_matrix"]

    def headline(self):
        head = self.headline_scores()
        scores = "  ".join(f"{m} {head[m]['accuracy']:.3f}" for m in ("image", "text", "fusion"))
        return f"test accuracy {scores}; {self.decision.headline()}"

    def report(self, directory):
        pngs = sorted(Path(directory).glob("confusion_*.png")) + sorted(
            Path(directory).glob("price.png"))
        summary = {"headline": self.headline_scores(), "decision": asdict(self.decision),
                   "search": self.result.get("search")}
        return Report("Evaluation", pngs, summary)


@dataclass
class Deployment(Record):
    version: str
    target: dict = field(default_factory=dict)   # model_dir, or storage_uri + inference_service

    FILES = {"deployment.json": "the served version and where it is served from"}

    def save(self, directory):
        snapshot.write_json(directory, "deployment.json", {"version": self.version, **self.target})

    @classmethod
    def load(cls, directory):
        data = snapshot.read_json(directory, "deployment.json")
        return cls(str(data.pop("version")), data)

    def headline(self):
        where = self.target.get("model_dir") or self.target.get("inference_service")
        return f"version {self.version} is champion, served from {where}"


@dataclass
class DriftResult(Record):
    """drift_check's output: the verdict, each check's statistic, threshold and p-value, and
    whether the recurring run retrains."""
    result: dict                   # drift, reason, n_new_listings, checks, fired, ...
    retrain: bool
    markdown: str = ""
    quarantine: object = None      # DataFrame of new rows the shards refused (or None)
    figure: bytes | None = None    # drift.png

    FILES = {"drift.json": "the verdict, its reason and every check's figures",
             "drift.md": "the same, to read", "drift.png": "reference vs batch, plotted",
             "quarantine.parquet": "rows the shards refused (validation or cleaning) of "
                                   "listings no retrain has considered, with the reason"}

    def save(self, directory):
        d = Path(directory)
        snapshot.write_json(d, "drift.json", {**self.result, "retrain": self.retrain})
        (d / "drift.md").write_text(self.markdown or f"# Drift checks\n\n{self.result['reason']}\n")
        if self.quarantine is not None:
            snapshot.write_tables(d, quarantine=self.quarantine)
        if self.figure:
            (d / "drift.png").write_bytes(self.figure)

    @classmethod
    def load(cls, directory):
        d = Path(directory)
        result = snapshot.read_json(d, "drift.json")
        png = d / "drift.png"
        return cls(result, bool(result.pop("retrain", result.get("drift"))),
                   (d / "drift.md").read_text() if (d / "drift.md").exists() else "",
                   None, png.read_bytes() if png.exists() else None)

    def metrics(self):
        return {"drift": self.result["drift"], "retrain": self.retrain,
                "n_new_listings": self.result.get("n_new_listings") or 0,
                **{name: {k: check[k] for k in ("statistic", "threshold", "p_value", "drift")}
                   for name, check in self.result.get("checks", {}).items()}}

    def headline(self):
        verdict = "DRIFT" if self.result["drift"] else "no drift"
        return (f"{verdict} ({self.result['reason']}; {self.result.get('n_new_listings')} new "
                f"listings){': retrain' if self.retrain else ''}")

    def report(self, directory):
        text = self.markdown or f"# Drift checks\n\n{self.result['reason']}\n"
        pngs = [Path(directory) / "drift.png"] if self.figure else []
        if self.figure:
            text += f"\n\n![drift](data:image/png;base64,{base64.b64encode(self.figure).decode()})\n"
        return Report("Drift checks", pngs, self.result, markdown=text)
