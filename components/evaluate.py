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

The test split is never held whole: each model reads it one clean shard at a time
(``CleanCatalogue.parts``), keeping per photo–listing pair only its class probabilities and
category, and per searched listing its two search figures (``marketsearch.evaluation``).
"""

import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from marketsearch import checksums
from marketsearch.bundle import Bundle
from marketsearch.config import Config
from marketsearch.hub_handles import allow as allow_hub_handles
from marketsearch.records import CleanPlan, CleanShard, Decision, Evaluation
from marketsearch.steps import step

log = logging.getLogger(__name__)


@step(reads=("evaluate", "image_model", "text_model", "serving", "seed"),
      inputs={"clean_data": [CleanShard], "plan": CleanPlan, "bundle": Bundle},
      output=("evaluation", Evaluation), uris={"bundle_uri": "bundle"},
      views={"metrics": "Metrics", "confusion": "ClassificationMetrics", "report": "HTML"},
      returns=lambda evaluation: bool(evaluation.decision.promote), cached=False)
def evaluate(cfg: Config, clean_data, bundle: Bundle, bundle_uri: str | None = None,
             champion_dir: str | Path | None = None, register: bool = True,
             plan: CleanPlan | None = None) -> Evaluation:
    """Score the challenger ``bundle`` (and the champion) on the test split and decide.

    ``clean_data``: the clean shards (with gather_clean's ``plan``) or one CleanData; the
    test split is read one shard at a time (``score``). ``register``: look the champion up in
    the registry (unless ``champion_dir`` names one) and register the challenger as a model
    version, recorded in the Decision with the champion it was compared with; False only
    scores and decides (no registry)."""
    from marketsearch import registry, tracking
    from marketsearch.catalogue import CleanCatalogue

    allow_hub_handles([cfg.text_model.hub_handle, *cfg.serving.hub_handles])
    catalogue = CleanCatalogue.of(clean_data, plan)
    challenger = Bundle.coerce(bundle)
    challenger.verify()                     # before any of its files is loaded
    with tempfile.TemporaryDirectory() as tmp:
        current = registry.champion(cfg) if register and champion_dir is None else None
        if current is not None:
            champion_dir = registry.download_bundle(cfg, current.version, tmp)
        result, champion, decision = score(cfg, catalogue, challenger, champion_dir)
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


def score(cfg: Config, clean, challenger: Bundle, champion_dir
          ) -> tuple[dict, dict | None, Decision]:
    """The challenger's (and champion's) scores on the test pairs, and the decision.

    ``clean``: a CleanCatalogue, or what ``CleanCatalogue.of`` takes without a plan (one
    CleanData). Its test split is read shard by shard, once per model and measure: the
    challenger's pairs and search, then the champion's pairs and, when the champion learned
    from some test listings, the challenger's again on the others; no more than one shard's
    photos are in memory at a time."""
    from marketsearch.catalogue import CleanCatalogue
    from marketsearch.evaluation import evaluate_parts, search_parts
    from marketsearch.feature_cache import FeatureCache
    from marketsearch.metrics import compare
    from marketsearch.pricing import score_prices

    catalogue = CleanCatalogue.of(clean)
    challenger.feature_cache = FeatureCache.from_config(cfg)  # photos seen in training: read back
    result = evaluate_parts(challenger, _test_parts(catalogue))
    result["labels"] = challenger.labels
    result["search"] = search_parts(challenger, _test_parts(catalogue), cfg.evaluate.search_k)
    result["price"] = score_prices(challenger, catalogue.parts("test"), seed=cfg.seed)
    challenger_scores, champion = result["fusion"], None
    fair = {"n_test_pairs": result["n_pairs"], "n_seen_by_champion": 0}
    if champion_dir is not None:
        champion_bundle = Bundle(champion_dir)
        if checksums.digest(champion_dir) is None:
            log.warning("evaluate: the champion bundle has no %s (built before bundles carried "
                        "one); it is compared unverified", checksums.CHECKSUMS_FILE)
        else:
            champion_bundle.verify()
        champion_bundle.feature_cache = challenger.feature_cache  # keyed by its own weights
        unseen, fair = unseen_by(champion_bundle, (
            images[images["split"] == "test"] for _, _, images in catalogue.table_parts()))
        if fair["n_test_pairs"]:
            champion = evaluate_parts(champion_bundle, _test_parts(catalogue, unseen))
            if fair["n_seen_by_champion"]:  # the challenger too, on the pairs neither learned from
                challenger_scores = evaluate_parts(challenger,
                                                   _test_parts(catalogue, unseen))["fusion"]
            champion["price"] = score_prices(champion_bundle, catalogue.parts("test"),
                                             seed=cfg.seed)
    decision = compare(challenger_scores, champion["fusion"] if champion else None,
                       cfg.evaluate.promotion_metric, cfg.evaluate.min_improvement)
    if champion_dir is not None and champion is None:
        decision.update(promote=False, reason=f"all {result['n_pairs']} test pairs are listings "
                        "the champion learned from: nothing to compare on, the champion is kept")
    decision.update(fair)
    decision["price_warning"] = price_warning(result["price"], champion and champion["price"],
                                              cfg.evaluate.price_tolerance)
    return result, champion, Decision(**decision)


def price_warning(challenger: dict | None, champion: dict | None, tolerance: float) -> str:
    """Promotion follows classification; a challenger whose suggested prices are clearly worse
    than the champion's (MdAPE more than ``tolerance`` above it, relatively, on the same test
    listings) is flagged in the decision. "" when not, or with nothing to compare."""
    if not challenger or not champion or not challenger.get("models") \
            or not champion.get("models"):
        return ""
    new, old = (x["models"]["model"]["mdape"] for x in (challenger, champion))
    if new > old * (1 + tolerance):
        return (f"the challenger's suggested prices are worse: MdAPE {new:.3f} against the "
                f"champion's {old:.3f} on the same test listings")
    return ""


def _test_parts(catalogue, keep: Callable | None = None) -> Iterator[tuple]:
    """The test split as ``marketsearch.evaluation``'s parts, one shard at a time: (its test
    listings, its test photo rows, its memory-mapped pixels); ``keep``: of the photo rows, only
    those it keeps (``unseen_by``'s filter)."""
    for part in catalogue.parts("test"):
        yield part.products, part.images if keep is None else keep(part.images), part.pixels


def unseen_by(champion, test_images: Iterable) -> tuple[Callable | None, dict]:
    """Which test pairs the champion is scored on: a filter that keeps, of a frame of test photo
    rows, those of listings it did not learn from (None: all), and the counts.

    ``test_images``: the test split's photo rows, one frame per shard (counted, not held). The
    split is fixed by listing id, so normally no test listing was learned from; a change of seed
    or split fractions in config, or a champion trained on other data, would otherwise let the
    champion be scored on its own training listings and win unfairly.
    """
    seen = champion.seen_ids
    n_pairs = n_seen = 0
    for images in test_images:
        n_pairs += len(images)
        if seen is not None:
            n_seen += int(images["product_id"].astype(str).isin(seen).sum())
    if seen is None:
        log.warning("evaluate: champion bundle has no seen_ids.json (made before they were "
                    "recorded); it is scored on all %d test pairs", n_pairs)
        return None, {"n_test_pairs": n_pairs, "n_seen_by_champion": 0,
                      "champion_seen_ids": "unknown"}
    if n_seen:
        log.warning("evaluate: %d of %d test pairs are listings the champion learned from; both "
                    "models are compared on the other %d", n_seen, n_pairs, n_pairs - n_seen)
    return (lambda images: images[~images["product_id"].astype(str).isin(seen)],
            {"n_test_pairs": n_pairs - n_seen, "n_seen_by_champion": n_seen,
             "champion_seen_ids": "recorded"})
