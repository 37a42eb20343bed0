"""evaluate: image, text and fused models on the test pairs; search relevance; champion/challenger
decision.

The challenger is registered as a new model version whatever the outcome (MLflow keeps every
version); a bundle already registered (the same artifact, when build_index was a cache hit)
keeps its version instead of gaining a second one. Its search is measured as buyers use it
(``search_relevance``): every test listing is searched for in the bundle's index by photo, by
text and by both, and scored on the share of the returned listings in its category; that is
reported, not compared. The current champion, if any, is evaluated on the same test pairs, so
the two scores are comparable; only a challenger that beats it is marked for promotion. Test
pairs of listings the champion learned from (its bundle's ``seen_ids.json``) are left out of
the comparison for both models. Never cached: the decision depends on the registry's champion.
"""

import logging
import tempfile
from pathlib import Path

from marketsearch import checksums
from marketsearch.bundle import Bundle
from marketsearch.config import Config
from marketsearch.hub_handles import allow as allow_hub_handles
from marketsearch.records import CleanData, CleanPlan, CleanShard, Decision, Evaluation
from marketsearch.steps import step

log = logging.getLogger(__name__)


@step(reads=("evaluate", "image_model", "text_model", "serving"),
      inputs={"clean_data": [CleanShard], "plan": CleanPlan, "bundle": Bundle},
      output=("evaluation", Evaluation), uris={"bundle_uri": "bundle"},
      views={"metrics": "Metrics", "confusion": "ClassificationMetrics", "report": "HTML"},
      returns=lambda evaluation: bool(evaluation.decision.promote), cached=False)
def evaluate(cfg: Config, clean_data, bundle: Bundle, bundle_uri: str | None = None,
             champion_dir: str | Path | None = None, register: bool = True,
             plan: CleanPlan | None = None) -> Evaluation:
    """Score the challenger ``bundle`` (and the champion) on the test split and decide.

    ``clean_data``: the clean shards (with gather_clean's ``plan``) or one CleanData; only
    the test split is read into memory. ``register``: look the champion up in the registry
    (unless ``champion_dir`` names one) and register the challenger as a model version,
    recorded in the Decision with the champion it was compared with; False only scores and
    decides (no registry)."""
    from marketsearch import registry, tracking
    from marketsearch.catalogue import CleanCatalogue

    allow_hub_handles([cfg.text_model.hub_handle, *cfg.serving.hub_handles])
    catalogue = CleanCatalogue.of(clean_data, plan)
    data = catalogue.gathered(split="test")
    challenger = Bundle.coerce(bundle)
    challenger.verify()                     # before any of its files is loaded
    with tempfile.TemporaryDirectory() as tmp:
        current = registry.champion(cfg) if register and champion_dir is None else None
        if current is not None:
            champion_dir = registry.download_bundle(cfg, current.version, tmp)
        result, champion, decision = score(cfg, data, challenger, champion_dir)
    if register:
        decision.champion_version = str(current.version) if current else "none"
        decision.pipeline_run = tracking.pipeline_run() or ""
        decision.data_hash = catalogue.source.get("content_hash", "")
        decision.version = registry.register_bundle(
            cfg, challenger.root, bundle_uri or str(challenger.root.resolve()), {
                "pipeline_run": decision.pipeline_run, "data.content_hash": decision.data_hash,
                "test.fusion.accuracy": result["fusion"]["accuracy"],
                "decision": "promote" if decision.promote else "keep",
                "decision.reason": decision.reason,
                "bundle.checksums_sha256": checksums.digest(challenger.root)})
    # what it was given, so the run's summary needs no other stage's output (they may be cached)
    result["inputs"] = {"source": catalogue.source, "clean": catalogue.summary,
                        "index": challenger.metrics()}
    evaluation = Evaluation(result, decision, challenger.labels, champion)
    log.info("evaluate: %s", evaluation.headline())
    return evaluation


def score(cfg: Config, data: CleanData, challenger: Bundle, champion_dir
          ) -> tuple[dict, dict | None, Decision]:
    """The challenger's (and champion's) scores on the test pairs, and the decision."""
    from marketsearch.evaluation import evaluate_pairs, search_relevance
    from marketsearch.feature_cache import FeatureCache
    from marketsearch.metrics import compare

    test = data.images[data.images["split"] == "test"]
    challenger.feature_cache = FeatureCache.from_config(cfg)  # photos seen in training: read back
    result = evaluate_pairs(challenger, data.products, test, data.pixels)
    result["labels"] = challenger.labels
    test_listings = data.products[data.products["split"] == "test"]
    result["search"] = search_relevance(challenger, test_listings, test, data.pixels,
                                        cfg.evaluate.search_k)
    challenger_scores, champion = result["fusion"], None
    fair = {"n_test_pairs": len(test), "n_seen_by_champion": 0}
    if champion_dir is not None:
        champion_bundle = Bundle(champion_dir)
        if checksums.digest(champion_dir) is None:
            log.warning("evaluate: the champion bundle has no %s (built before bundles carried "
                        "one); it is compared unverified", checksums.CHECKSUMS_FILE)
        else:
            champion_bundle.verify()
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
    return result, champion, Decision(**decision)


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
