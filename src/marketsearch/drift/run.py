"""Running the drift checks on one batch: the per-test alpha, the size check, ``run_checks``
and the monitoring pipeline's ``check_batch``."""
from __future__ import annotations

import logging
import time

import numpy as np

from marketsearch.config import DriftConfig

from .checks import (CHECKS, P_VALUE_CHECKS, DriftInputError, _result, category_check,
                     embedding_check, oov_check, photo_brightness_check, price_check,
                     text_length_check)
from .reference import REFERENCE_DIR, Reference
from .summary import current_statistics

log = logging.getLogger(__name__)


def per_test_alpha(cfg: DriftConfig) -> float:
    """The alpha each p-value test uses: ``cfg.alpha`` split over the enabled p-value tests
    when ``cfg.bonferroni`` (family-wise false-alarm rate <= cfg.alpha)."""
    n_tests = sum(1 for c in cfg.checks if c in P_VALUE_CHECKS)
    return cfg.alpha / max(n_tests, 1) if cfg.bonferroni else cfg.alpha


def check_size(n_listings: int, cfg: DriftConfig, what: str = "batch") -> None:
    """Raise DriftInputError when a batch has too few listings for the tests to mean anything.
    (Too few photos skips only the photo checks: see ``run_checks``.)"""
    if n_listings < cfg.min_listings:
        raise DriftInputError(
            f"the {what} has {n_listings} listing(s); the drift checks need at least "
            f"{cfg.min_listings} (drift.min_listings): wait for more data or lower the minimum")


def run_checks(reference: Reference, current: Reference, cfg: DriftConfig,
               seed: int = 0) -> dict:
    """Every check in ``cfg.checks`` -> {"drift": any check fired, "checks": {name: result},
    "fired": [names], "alpha_per_test", "n_listings", "n_photos", "seconds"}.

    Raises DriftInputError when the batch is smaller than ``cfg.min_listings`` listings. With
    fewer than ``cfg.min_photos`` photos the photo checks (photo_embedding, photo_brightness)
    are skipped, saying why, and the others run."""
    check_size(current.n_listings, cfg)
    start = time.perf_counter()
    alpha = per_test_alpha(cfg)

    def too_few_photos(name: str) -> dict:
        return _result(name, 0.0, alpha, None, False,
                       f"skipped: the batch has {current.n_photos} photo(s), fewer than "
                       f"drift.min_photos ({cfg.min_photos})", 0.0)

    runners = {
        "category_mix": lambda: category_check(reference, current, alpha, cfg.category_min_tvd),
        "price": lambda: price_check(reference, current, alpha, cfg.price_min_log_shift),
        "text_length": lambda: text_length_check(reference, current, alpha,
                                                 cfg.text_length_min_ks),
        "oov_rate": lambda: oov_check(reference, current, cfg.oov_max_increase),
        "photo_embedding": lambda: embedding_check(
            "photo_embedding", reference.photo_embeddings, current.photo_embeddings, alpha,
            cfg.mmd_permutations, cfg.mmd_max_rows, seed) if current.n_photos >= cfg.min_photos
        else too_few_photos("photo_embedding"),
        "text_embedding": lambda: embedding_check(
            "text_embedding", reference.text_embeddings, current.text_embeddings, alpha,
            cfg.mmd_permutations, cfg.mmd_max_rows, seed + 1),
        "photo_brightness": lambda: photo_brightness_check(
            reference, current, alpha, cfg.photo_brightness_min_ks)
        if current.n_photos >= cfg.min_photos else too_few_photos("photo_brightness"),
    }
    checks = {name: runners[name]() for name in CHECKS if name in cfg.checks}
    fired = [name for name, r in checks.items() if r["drift"]]
    result = {"drift": bool(fired), "fired": fired, "checks": checks, "alpha": cfg.alpha,
              "alpha_per_test": alpha, "n_listings": current.n_listings,
              "n_photos": current.n_photos,
              "seconds": round(time.perf_counter() - start, 3)}
    log.info("drift: %s (%s) in %.2fs", "DRIFT" if fired else "no drift",
             ", ".join(fired) or "no check fired", result["seconds"])
    return result


def check_batch(bundle, products, images, pixels: np.ndarray | None, cfg: DriftConfig,
                seed: int) -> tuple[dict, Reference, Reference]:
    """The monitoring pipeline's one call: load ``<bundle>/reference``, summarise the clean
    batch with the same bundle, run the checks -> (run_checks' result, reference, batch
    summary). ``bundle``: a Bundle or its directory (the champion the batch is judged for)."""
    from marketsearch.bundle import Bundle

    check_size(len(products), cfg)
    bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    reference = Reference.load(bundle.root / REFERENCE_DIR)
    current = current_statistics(bundle, products, images, pixels, cfg, seed)
    return run_checks(reference, current, cfg, seed=seed), reference, current
