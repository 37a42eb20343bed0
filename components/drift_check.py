"""drift_check: is the new data different enough from what the champion learned to retrain?

It takes the clean shards the monitoring DAG's fan-out made of the snapshot (prepare_shard per
shard, gather_clean's plan: the training DAG's own, so the listings are validated and cleaned
once, shard by shard, and a retrain reads the same shards). The batch is the clean listings no
retrain has considered yet: ids absent from the champion's index (which holds every clean
listing of its training snapshot) and from the index of the newest registered version, when a
retrain was kept out because it did not beat the champion. Without the second, a drift that
retraining cannot fix (prices, say, which no model reads) would retrain on every scheduled run
until new listings arrive. The new ids come from the plan's listing ids, so no shard is read to
find them; only those listings' rows and photos are gathered from the shards, a seeded sample
of at most ``drift.batch_max_listings`` of them when there are more, and judged by
``marketsearch.drift`` against the reference the champion's training run saved in its bundle
(``reference/``). The rows the shards refused (validation or cleaning) that are not of a
listing already considered go with the report, each with its reason. Too few new listings to
judge means no drift (nothing worth a retraining yet); no champion at all means "train".
"""

import json
import logging
import tempfile
from pathlib import Path

from marketsearch.catalogue import CleanCatalogue
from marketsearch.config import Config
from marketsearch.records import CleanPlan, CleanShard, DriftResult
from marketsearch.steps import step

log = logging.getLogger(__name__)


def indexed_ids(bundle_dir: str | Path) -> set[str]:
    """The listing ids in a bundle's index: every clean listing of its training snapshot."""
    from marketsearch.index import IDS_FILE

    return set(json.loads((Path(bundle_dir) / "index" / IDS_FILE).read_text()))


def refused_new(refused: list[dict], known_ids: set) -> list[dict]:
    """The quarantined rows (``refused``) that are not of a listing in ``known_ids``: a listing
    row by its id, a photo row by its listing's (``product_id`` in the raw row)."""
    def listing(row: dict):
        return row["row_id"] if row["table"] == "products" else \
            json.loads(row["raw"]).get("product_id")

    return [row for row in refused if listing(row) not in known_ids]


@step(reads=("drift", "monitoring", "image_model", "text_model", "serving", "seed"),
      inputs={"clean_data": [CleanShard], "plan": CleanPlan},
      output=("drift_report", DriftResult), views={"summary": "Markdown"},
      returns=lambda result: bool(result.retrain), cached=False)
def drift_check(cfg: Config, clean_data, champion_dir: str | Path | None = None,
                considered_ids: set[str] | None = None, *,
                plan: CleanPlan | None = None) -> DriftResult:
    """Judge the listings no retrain has considered yet against the champion's reference.

    ``clean_data``: the clean shards (with gather_clean's ``plan``) or one CleanData; only the
    new listings' rows and photos are read into memory. Without ``champion_dir`` the champion
    and the newest registered version come from the registry (``considered_ids``: the listings
    of a newer version that was kept out). The result says whether to retrain: drift found and
    not ``monitoring.dry_run``."""
    from marketsearch import registry
    from marketsearch.hub_handles import allow as allow_hub_handles

    allow_hub_handles([cfg.text_model.hub_handle, *cfg.serving.hub_handles])
    catalogue = CleanCatalogue.of(clean_data, plan)
    if champion_dir is not None:
        return judge(cfg, catalogue, champion_dir, considered_ids or set())
    with tempfile.TemporaryDirectory() as tmp:
        current = registry.champion(cfg)
        champion_dir = registry.download_bundle(cfg, current.version, tmp) if current else None
        latest = registry.latest_version(cfg) if current else None
        considered: set[str] = set(considered_ids or ())
        if latest is not None and latest.version != current.version:  # a retrain kept out
            considered |= indexed_ids(registry.download_bundle(cfg, latest.version,
                                                               Path(tmp) / "latest"))
        result = judge(cfg, catalogue, champion_dir, considered)
    result.result.update(champion_version=str(current.version) if current else "none",
                         latest_version=str(latest.version) if latest else "none")
    return result


def judge(cfg: Config, catalogue: CleanCatalogue, champion_dir: str | Path | None,
          considered_ids: set[str]) -> DriftResult:
    """The drift checks of ``catalogue``'s new listings against the bundle at
    ``champion_dir``."""
    from marketsearch import quarantine
    from marketsearch.bundle import Bundle
    from marketsearch.drift import (REFERENCE_DIR, DriftInputError, check_batch, check_size,
                                    drift_png, summary_markdown)
    from marketsearch.feature_cache import FeatureCache

    result: dict = {"checks": {}, "fired": []}
    markdown, q, figure = "", None, None
    if champion_dir is None:
        result.update(drift=True, reason="no champion yet: train one",
                      n_new_listings=len(catalogue))
    elif not (Path(champion_dir) / REFERENCE_DIR).exists():
        result.update(drift=True, reason="the champion has no drift reference (trained before "
                      "the drift checks): retrain to get one", n_new_listings=None)
    else:
        bundle = Bundle(champion_dir)
        # new photos' features are cached here, so a retrain that follows reads them back
        bundle.feature_cache = FeatureCache.from_config(cfg)
        known = indexed_ids(bundle.root) | set(considered_ids)
        ids = catalogue.listings["id"]
        new = ids[~ids.isin(known)]
        # rows the shards refused stay with the report, each with its reason
        refused = refused_new(catalogue.plan.quarantine, known)
        q = quarantine.frame(refused)
        result.update(n_new_listings=len(new), n_quarantined=len(refused))
        try:
            check_size(len(new), cfg.drift)              # before any shard is read
            sample = catalogue.sample_ids(cfg.drift.batch_max_listings, cfg.seed, new)
            if sample is not None:
                log.info("drift_check: judging a seeded sample of %d of the %d new listings "
                         "(drift.batch_max_listings)", len(sample), len(new))
            batch = catalogue.gathered(ids=set(new) if sample is None else sample, lazy=True)
            checks, reference, current = check_batch(bundle, batch.products, batch.images,
                                                     batch.pixels, cfg.drift, cfg.seed)
        except DriftInputError as exc:
            result.update(drift=False, reason=f"not judged: {exc}")
        else:
            result.update(checks)
            result["reason"] = (f"drift in {', '.join(checks['fired'])}" if checks["drift"]
                                else "no check fired")
            with tempfile.TemporaryDirectory() as tmp:
                figure = drift_png(reference, current, checks, Path(tmp) / "drift.png").read_bytes()
            markdown = summary_markdown(checks)
    retrain = bool(result["drift"]) and not cfg.monitoring.dry_run
    result["dry_run"] = cfg.monitoring.dry_run
    log.info("drift_check: %s (%s; %s new listings)", "DRIFT" if result["drift"] else "no drift",
             result["reason"], result.get("n_new_listings"))
    return DriftResult(result, retrain, markdown, q, figure)
