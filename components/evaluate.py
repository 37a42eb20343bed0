"""evaluate: image, text and fused models on the test pairs; search relevance; champion/challenger
decision.

The challenger is registered as a new model version whatever the outcome (MLflow keeps every
version). Its search is measured as buyers use it (``search_relevance``): every test listing
is searched for in the bundle's index by photo, by text and by both, and scored on the share of
the returned listings in its category; that is reported, not compared. The current champion,
if any, is evaluated on the same test pairs, so the two scores are comparable; only a
challenger that beats it is marked for promotion. Test pairs of listings the champion learned
from (its bundle's ``seen_ids.json``) are left out of the comparison for both models.
"""

import logging
from pathlib import Path

from kfp import dsl

from marketsearch.config import Config

log = logging.getLogger(__name__)


def evaluate(cfg: Config, clean_dir: str | Path, bundle_dir: str | Path, out_dir: str | Path,
             champion_dir: str | Path | None = None) -> dict:
    """Write ``evaluation.json`` (+ champion's), ``decision.json`` and confusion-matrix PNGs.

    ``evaluation.json`` and the returned summary carry ``search``: the challenger's search
    relevance on the test split's listings (not part of the champion comparison)."""
    from marketsearch import plots, snapshot
    from marketsearch.bundle import Bundle
    from marketsearch.components.clean import CleanData
    from marketsearch.evaluation import MODALITIES, evaluate_pairs, headline, search_relevance
    from marketsearch.feature_cache import FeatureCache
    from marketsearch.metrics import compare

    data = CleanData.load(clean_dir)
    test = data.images[data.images["split"] == "test"]
    challenger = Bundle(bundle_dir)
    challenger.feature_cache = FeatureCache.from_config(cfg)  # photos seen in training: read back
    result = evaluate_pairs(challenger, data.products, test, data.pixels)
    test_listings = data.products[data.products["split"] == "test"]
    result["search"] = search_relevance(challenger, test_listings, test, data.pixels,
                                        cfg.evaluate.search_k)
    challenger_scores, champion = result["fusion"], None
    fair = {"n_test_pairs": len(test), "n_seen_by_champion": 0}
    if champion_dir is not None:
        champion_bundle = Bundle(champion_dir)
        champion_bundle.feature_cache = challenger.feature_cache  # keyed by its own weights
        fair_test, fair = unseen_by(champion_bundle, test)
        if len(fair_test):
            champion = evaluate_pairs(champion_bundle, data.products, fair_test, data.pixels)
            if fair["n_seen_by_champion"]:  # the challenger too, on the pairs neither learned from
                challenger_scores = evaluate_pairs(challenger, data.products, fair_test,
                                                   data.pixels)["fusion"]
    decision = compare(challenger_scores, champion["fusion"] if champion else None,
                       cfg.evaluate.promotion_metric, cfg.evaluate.min_improvement)
    if champion_dir is not None and champion is None:
        decision.update(promote=False, reason=f"all {len(test)} test pairs are listings the "
                        "champion learned from: nothing to compare on, the champion is kept")
    decision.update(fair)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    snapshot.write_json(out_dir, "evaluation.json", result)
    if champion:
        snapshot.write_json(out_dir, "champion_evaluation.json", champion)
    snapshot.write_json(out_dir, "decision.json", decision)
    labels = challenger.labels + result["unknown_categories"]
    for m in MODALITIES:
        plots.confusion_matrix_png(result[m]["confusion_matrix"], labels, out_dir / f"confusion_{m}.png",
                                   f"{m} model on the test pairs (accuracy {result[m]['accuracy']:.3f})")
    summary = {"headline": headline(result), "decision": decision,
               "champion": headline(champion) if champion else None,
               "search": result["search"]}
    log.info("evaluate: %s", summary)
    return summary


def unseen_by(champion, test):
    """The test pairs whose listings the champion did not learn from, and how many were left out.

    The split is fixed by listing id, so normally none are; a change of seed or split fractions
    in config, or a champion trained on other data, would otherwise let the champion be scored
    on its own training listings and win unfairly.
    """
    seen = champion.seen_ids
    if seen is None:
        log.warning("evaluate: champion bundle has no seen_ids.json (made before they were "
                    "recorded); it is scored on all %d test pairs", len(test))
        return test, {"n_test_pairs": len(test), "n_seen_by_champion": 0,
                      "champion_seen_ids": "unknown"}
    mask = test["product_id"].astype(str).isin(seen)
    if mask.any():
        log.warning("evaluate: %d of %d test pairs are listings the champion learned from; both "
                    "models are compared on the other %d", int(mask.sum()), len(test),
                    int((~mask).sum()))
    return test[~mask], {"n_test_pairs": int((~mask).sum()), "n_seen_by_champion": int(mask.sum()),
                         "champion_seen_ids": "recorded"}


def evaluate_component(config_json: str, parent_run_id: str, clean_data: dsl.Input[dsl.Dataset],
                       bundle: dsl.Input[dsl.Model], evaluation: dsl.Output[dsl.Artifact],
                       metrics: dsl.Output[dsl.Metrics],
                       confusion: dsl.Output[dsl.ClassificationMetrics],
                       report: dsl.Output[dsl.HTML]) -> bool:
    """KFP: evaluate, register the version, return whether deploy should promote it."""
    import json
    import tempfile
    from pathlib import Path

    import mlflow

    from marketsearch import registry, tracking
    from marketsearch.components.evaluate import evaluate
    from marketsearch.config import Config
    from marketsearch.evaluation import search_metrics
    from marketsearch.reports import html_page

    cfg = Config.from_json(config_json)
    with tracking.stage_run(cfg, parent_run_id, "evaluate"), tempfile.TemporaryDirectory() as tmp:
        current = registry.champion(cfg)
        champion_dir = registry.download_bundle(cfg, current.version, tmp) if current else None
        mlflow.log_params({"promotion_metric": cfg.evaluate.promotion_metric,
                           "min_improvement": cfg.evaluate.min_improvement,
                           "champion_version": current.version if current else "none"})
        summary = evaluate(cfg, clean_data.path, bundle.path, evaluation.path, champion_dir)
        head = summary["headline"]
        for modality in ("image", "text", "fusion"):
            for key, value in head[modality].items():
                mlflow.log_metric(f"test.{modality}.{key}", value)
                metrics.log_metric(f"{modality}_{key}", value)
        for mode, figures in search_metrics(summary["search"]).items():
            for key, value in figures.items():
                mlflow.log_metric(f"search.{mode}.{key}", value)
                metrics.log_metric(f"search_{mode}_{key}", value)
        decision = summary["decision"]
        mlflow.log_metrics({"decision.promote": float(decision["promote"]),
                            "decision.challenger_score": decision["challenger_score"]})
        if decision["champion_score"] is not None:
            mlflow.log_metric("decision.champion_score", decision["champion_score"])
        mlflow.log_metrics({"decision.n_test_pairs": decision["n_test_pairs"],
                            "decision.n_seen_by_champion": decision["n_seen_by_champion"]})
        mlflow.log_text(decision["reason"], "decision.txt")
        out = Path(evaluation.path)
        pngs = sorted(out.glob("confusion_*.png"))
        for png in pngs:
            mlflow.log_artifact(str(png), "plots")
        mlflow.log_artifact(str(out / "evaluation.json"))
        parent = mlflow.get_run(parent_run_id)
        version = registry.register_bundle(cfg, bundle.path, {
            "pipeline_run": parent.data.tags.get("pipeline_run", ""),
            "data.content_hash": parent.data.tags.get("data.content_hash", ""),
            "test.fusion.accuracy": head["fusion"]["accuracy"],
            "decision": "promote" if decision["promote"] else "keep",
            "decision.reason": decision["reason"]})
        evaluation_json = json.loads((out / "evaluation.json").read_text())
        fused = evaluation_json["fusion"]
        labels = json.loads((Path(bundle.path) / "meta.json").read_text())["labels"]
        confusion.log_confusion_matrix(labels + evaluation_json["unknown_categories"],
                                       fused["confusion_matrix"])
        Path(report.path).write_text(html_page("Evaluation", pngs, summary))
        (out / "decision.json").write_text(json.dumps(dict(decision, version=version,
                                                           champion_version=current.version if current else "none",
                                                           pipeline_run=parent.data.tags.get("pipeline_run", ""),
                                                           data_hash=parent.data.tags.get("data.content_hash", ""))))
    tracking.end_parent(cfg, parent_run_id)
    evaluation.metadata.update({"version": version, "promote": decision["promote"]})
    return bool(decision["promote"])
