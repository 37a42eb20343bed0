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
from pathlib import Path

from kfp import dsl

from marketsearch.config import Config

log = logging.getLogger(__name__)


def new_rows(products, images, known_ids: set):
    """The listings (and their photos) whose id is not in ``known_ids``."""
    fresh = products[~products["id"].isin(known_ids)]
    return fresh, images[images["product_id"].isin(set(fresh["id"]))]


def indexed_ids(bundle_dir: str | Path) -> set[str]:
    """The listing ids in a bundle's index: every clean listing of its training snapshot."""
    from marketsearch.index import IDS_FILE

    return set(json.loads((Path(bundle_dir) / "index" / IDS_FILE).read_text()))


def drift_check(cfg: Config, validated_dir: str | Path, champion_dir: str | Path | None,
                out_dir: str | Path, considered_ids: set[str] = frozenset()) -> dict:
    """Write ``drift.json``, ``drift.md`` and ``drift.png`` to ``out_dir``; return the result:
    {"drift", "reason", "n_new_listings", "n_new_photos", "checks", "fired", ...}.
    ``considered_ids``: listings a kept-out retrain already learned from (not judged again)."""
    from marketsearch import quarantine, snapshot
    from marketsearch.bundle import Bundle
    from marketsearch.components.clean import clean_frames
    from marketsearch.drift import (REFERENCE_DIR, DriftInputError, check_batch, drift_png,
                                    summary_markdown)
    from marketsearch.feature_cache import FeatureCache

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    products = snapshot.read_table(validated_dir, "products")
    images = snapshot.read_table(validated_dir, "images")
    result: dict = {"checks": {}, "fired": []}
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
        snapshot.write_tables(out_dir, quarantine=quarantine.frame(data.quarantine))
        try:
            checks, reference, current = check_batch(bundle, data.products, data.images,
                                                     data.pixels, cfg.drift, cfg.seed)
        except DriftInputError as exc:
            result.update(drift=False, reason=f"not judged: {exc}")
        else:
            result.update(checks)
            result["reason"] = (f"drift in {', '.join(checks['fired'])}" if checks["drift"]
                                else "no check fired")
            drift_png(reference, current, checks, out_dir / "drift.png")
            (out_dir / "drift.md").write_text(summary_markdown(checks))
    if not (out_dir / "drift.md").exists():
        (out_dir / "drift.md").write_text(f"# Drift checks\n\n{result['reason']}\n")
    snapshot.write_json(out_dir, "drift.json", result)
    log.info("drift_check: %s (%s; %s new listings)", "DRIFT" if result["drift"] else "no drift",
             result["reason"], result.get("n_new_listings"))
    return result


def drift_check_component(config_json: str, parent_run_id: str,
                          validated: dsl.Input[dsl.Dataset], drift_report: dsl.Output[dsl.Artifact],
                          summary: dsl.Output[dsl.Markdown]) -> bool:
    """KFP: run the drift checks against the champion; log each check's statistic, threshold
    and verdict to MLflow; return whether to retrain."""
    import base64
    import tempfile
    from pathlib import Path

    import mlflow

    from marketsearch import registry, tracking
    from marketsearch.components.drift_check import drift_check, indexed_ids
    from marketsearch.config import Config

    cfg = Config.from_json(config_json)
    with tracking.stage_run(cfg, parent_run_id, "drift_check"), tempfile.TemporaryDirectory() as tmp:
        current = registry.champion(cfg)
        champion_dir = registry.download_bundle(cfg, current.version, tmp) if current else None
        latest = registry.latest_version(cfg) if current else None
        considered: set[str] = set()
        if latest is not None and latest.version != current.version:  # a retrain kept out
            considered = indexed_ids(registry.download_bundle(cfg, latest.version,
                                                              Path(tmp) / "latest"))
        # (the drift.* thresholds are params of the pipeline's parent run, with all the config)
        mlflow.log_params({"champion_version": current.version if current else "none",
                           "latest_version": latest.version if latest else "none"})
        result = drift_check(cfg, validated.path, champion_dir, drift_report.path, considered)
        tracking.log_numbers({"drift": result["drift"],
                              "n_new_listings": result.get("n_new_listings") or 0,
                              **{name: {k: check[k] for k in ("statistic", "threshold", "p_value",
                                                              "drift")}
                                 for name, check in result["checks"].items()}})
        out = Path(drift_report.path)
        mlflow.log_text(result["reason"], "drift_reason.txt")
        for name in ("drift.json", "drift.md", "drift.png"):
            if (out / name).exists():
                mlflow.log_artifact(str(out / name), "drift")
        text = (out / "drift.md").read_text()
        if (out / "drift.png").exists():
            b64 = base64.b64encode((out / "drift.png").read_bytes()).decode()
            text += f"\n\n![drift](data:image/png;base64,{b64})\n"
        Path(summary.path).write_text(text)
    retrain = bool(result["drift"]) and not cfg.monitoring.dry_run
    if not retrain:  # nothing follows that would close the pipeline's MLflow run
        tracking.end_parent(cfg, parent_run_id)
    drift_report.metadata.update({"drift": bool(result["drift"]), "reason": result["reason"],
                                  "dry_run": cfg.monitoring.dry_run})
    return retrain
