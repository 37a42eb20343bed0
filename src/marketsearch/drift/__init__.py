"""Drift checks: has a new batch of listings moved away from what the model was trained on?

Every training run saves a ``Reference`` inside its bundle (``<bundle>/reference/``), so the
reference is versioned, registered and deployed with the model it describes:

    reference/reference.json   statistics: category counts, price and text-length samples,
                               out-of-vocabulary rate, sample sizes, seed, provenance
    reference/embeddings.npz   photo and text embedding samples (the bundle's own image and
                               text models' "embedding" layers) and the photo-luminance sample
                               (key "photo_brightness"; references saved before that check
                               lack it, and the check then skips, saying so)

The monitoring pipeline summarises a new batch with the same function (``summarize``; the
batch's summary is a ``Reference`` too), then ``run_checks(reference, current, cfg)`` runs seven
checks, each a dict ``{"name", "statistic", "threshold", "p_value", "drift", "detail", ...}``:

    category_mix      chi-square goodness of fit of the batch's root categories against the
                      reference proportions (+ total variation distance as the effect size)
    price             two-sample Kolmogorov-Smirnov test (significance) and the shift of
                      the median log-price (effect size: what a model of log-price is off by)
    text_length       two-sample KS on tokens per listing text
    oov_rate          batch out-of-vocabulary rate minus the reference's
    photo_embedding   MMD (RBF kernel) between photo embeddings, permutation p-value
    text_embedding    the same between listing-text embeddings
    photo_brightness  two-sample KS on per-photo mean luminance (0.299 R + 0.587 G + 0.114 B,
                      0-255): the ImageNet photo model's embeddings are built to ignore
                      brightness, so photos that got darker (or brighter) need a check of their own

``drift`` is true when any check fires. The p-value tests share one family-wise ``alpha``
(Bonferroni: each test gets alpha / number of p-value tests), so a batch from the training
distribution raises a false alarm in at most ~alpha of runs; see ``DriftConfig`` and
bench/reports/drift.md for the measured rates.

``summary_markdown`` renders a result for a KFP Markdown artifact, ``plots.drift_png`` draws it.

The package, by what the code does:

    reference.py  the ``Reference`` dataclass and its files (save, load)
    summary.py    summarising listings: ``summarize``, ``build_reference``,
                  ``current_statistics``, ``write_reference``, ``mean_luminance``
    checks.py     the statistical checks, one function each (``mmd_test``, ...)
    run.py        ``run_checks`` and ``check_batch``: every configured check on one batch
    report.py     ``summary_markdown`` and ``drift_png``
"""
from .checks import (CHECKS, P_VALUE_CHECKS, DriftInputError, category_check, embedding_check,
                     median_bandwidth, mmd_test, oov_check, photo_brightness_check, price_check,
                     text_length_check)
from .reference import EMBEDDINGS_FILE, FORMAT_VERSION, REFERENCE_DIR, STATS_FILE, Reference
from .report import drift_png, summary_markdown
from .run import check_batch, check_size, per_test_alpha, run_checks
from .summary import (LUMA_WEIGHTS, build_reference, current_statistics, mean_luminance,
                      summarize, write_reference)

__all__ = [
    "CHECKS", "EMBEDDINGS_FILE", "FORMAT_VERSION", "LUMA_WEIGHTS", "P_VALUE_CHECKS",
    "REFERENCE_DIR", "STATS_FILE", "DriftInputError", "Reference", "build_reference",
    "category_check", "check_batch", "check_size", "current_statistics", "drift_png",
    "embedding_check", "mean_luminance", "median_bandwidth", "mmd_test", "oov_check",
    "per_test_alpha", "photo_brightness_check", "price_check", "run_checks",
    "summarize", "summary_markdown", "text_length_check", "write_reference",
]
