"""drift_check: is the new data different enough from what the champion learned to retrain?

The batch is the validated snapshot's listings that no retrain has considered yet: ids absent
from the champion's index (which holds every clean listing of its training snapshot) and from
the index of the newest registered version, when a retrain was kept out because it did not
beat the champion. Without the second, a drift that retraining cannot fix (prices, say, which
no model reads) would retrain on every scheduled run until new listings arrive. The batch is
cleaned by the training pipeline's own ``clean_frames`` and judged by ``marketsearch.drift``
against the reference the champion's training run saved in its bundle (``reference/``). Too
few new listings to judge means no drift (nothing worth a retraining yet); no champion at all
means "train".
"""

import json
import logging
import tempfile
from pathlib import Path

from marketsearch.config import Config
from marketsearch.records import DriftResult, ValidatedData
from marketsearch.steps import step

log = logging.getLogger(__name__)


def new_rows(products, images, known_ids: set):
    """The listings (and their photos) whose id is not in ``known_ids``."""
    fresh = products[~products["id"].isin(known_ids)]
    return fresh, images[images["product_id"].isin(set(fresh["id"]))]


def indexed_ids(bundle_dir: str | Path) -> set[str]:
    """The listing ids in a bundle's index: every clean listing of its training snapshot."""
    from marketsearch.index import IDS_FILE

    return set(json.loads((Path(bundle_dir) / "index" / IDS_FILE).read_text()))


@step(reads=("drift", "clean", "monitoring", "image_model", "text_model", "serving", "seed"),
      inputs={"validated": ValidatedData}, output=("drift_report", DriftResult),
      views={"summary": "Markdown"}, returns=lambda result: bool(result.retrain), cached=False)
def drift_check(cfg: Config, validated: ValidatedData, champion_dir: str | Path | None = None,
                considered_ids: set[str] | None = None) -> DriftResult:
    """Judge the listings no retrain has considered yet against the champion's reference.

    Without ``champion_dir`` the champion and the newest registered version come from the
    registry (``considered_ids``: the listings of a newer version that was kept out). The
    result says whether to retrain: drift found and not ``monitoring.dry_run``."""
    from marketsearch import registry
    from marketsearch.hub_handles import allow as allow_hub_handles

    allow_hub_handles([cfg.text_model.hub_handle, *cfg.serving.hub_handles])
    if champion_dir is not None:
        return judge(cfg, ValidatedData.coerce(validated), champion_dir, considered_ids or set())
    with tempfile.TemporaryDirectory() as tmp:
        current = registry.champion(cfg)
        champion_dir = registry.download_bundle(cfg, current.version, tmp) if current else None
        latest = registry.latest_version(cfg) if current else None
        considered: set[str] = set(considered_ids or ())
        if latest is not None and latest.version != current.version:  # a retrain kept out
            considered |= indexed_ids(registry.download_bundle(cfg, latest.version,
                                                               Path(tmp) / "latest"))
        result = judge(cfg, ValidatedData.coerce(validated), champion_dir, considered)
    result.result.update(champion_version=str(current.version) if current else "none",
                         latest_version=str(latest.version) if latest else "none")
    return result


def judge(cfg: Config, validated: ValidatedData, champion_dir: str | Path | None,
          considered_ids: set[str]) -> DriftResult:
    """The drift checks of ``validated``'s new listings against the bundle at ``champion_dir``."""
    from marketsearch import quarantine
    from marketsearch.bundle import Bundle
    from marketsearch.cleaning import clean_frames
    from marketsearch.drift import (REFERENCE_DIR, DriftInputError, check_batch, drift_png,
                                    summary_markdown)
    from marketsearch.feature_cache import FeatureCache

    products, images = validated.products, validated.images
    result: dict = {"checks": {}, "fired": []}
    markdown, q, figure = "", None, None
    if champion_dir is None:
        result.update(drift=True, reason="no champion yet: train one", n_new_listings=len(products),
                      n_new_photos=len(images))
    elif not (Path(champion_dir) / REFERENCE_DIR).exists():
        result.update(drift=True, reason="the champion has no drift reference (trained before "
                      "the drift checks): retrain to get one", n_new_listings=None)
    else:
        bundle = Bundle(champion_dir)
        # new photos' features are cached here, so a retrain that follows reads them back
        bundle.feature_cache = FeatureCache.from_config(cfg)
        known = indexed_ids(bundle.root) | set(considered_ids)
        fresh_p, fresh_i = new_rows(products, images, known)
        data = clean_frames(fresh_p, fresh_i, cfg, image_size=bundle.image_size,
                            assign_split=False)
        result.update(n_new_listings=len(data.products), n_new_photos=len(data.images),
                      n_quarantined=len(data.quarantine))
        # rows the cleaning refused stay with the report, each with its reason
        q = quarantine.frame(data.quarantine)
        try:
            checks, reference, current = check_batch(bundle, data.products, data.images,
                                                     data.pixels, cfg.drift, cfg.seed)
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
