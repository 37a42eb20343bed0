"""Reporting a drift run: ``summary_markdown`` for a KFP Markdown artifact, ``drift_png`` for
its figure."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .reference import Reference


def _fmt(v: float | None) -> str:
    if v is None:
        return "–"
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:.4g}"
    return f"{v:.2e}"


def summary_markdown(result: Mapping, title: str = "Drift checks") -> str:
    """A Markdown report of ``run_checks``'s result (for a KFP Markdown artifact)."""
    verdict = ("**Drift detected**: " + ", ".join(result["fired"])) if result["drift"] \
        else "**No drift**: every check passed"
    lines = [f"# {title}", "",
             f"{verdict}. Batch: {result['n_listings']:,} listings, {result['n_photos']:,} "
             f"photos. Family-wise alpha {result['alpha']:g}, per p-value test "
             f"{result['alpha_per_test']:.3g}.", "",
             "| check | statistic | threshold | p-value | verdict | detail |",
             "|---|---|---|---|---|---|"]
    for name, r in result["checks"].items():
        verdict = "**drift**" if r["drift"] else ("skipped" if r["detail"].startswith("skipped")
                                                  else "ok")
        detail = str(r["detail"]).replace("|", "\\|")
        lines.append(f"| {name} | {_fmt(r['statistic'])} | {_fmt(r['threshold'])} | "
                     f"{_fmt(r['p_value'])} | {verdict} | {detail} |")
    lines += ["", "Thresholds: category_mix, text_length, photo_brightness and the embedding "
              "checks fire when p < the threshold (alpha per test; category_mix, text_length "
              "and photo_brightness also need an effect size above a floor, see the detail); "
              "price when its KS p-value < alpha per test and the median log-price moved by at "
              "least its threshold (the statistic) either way; oov_rate when the rise in OOV "
              "rate exceeds its threshold."]
    return "\n".join(lines) + "\n"


def drift_png(reference: Reference, current: Reference, result: Mapping, path: str | Path,
              title: str = "Drift: training reference vs batch") -> Path:
    """The figure of one drift run (see ``plots.drift_png``)."""
    from marketsearch import plots

    return plots.drift_png(reference.category_counts, current.category_counts,
                           reference.price_sample, current.price_sample,
                           reference.text_lengths, current.text_lengths,
                           result["checks"], path, title,
                           reference_brightness=reference.photo_brightness,
                           batch_brightness=current.photo_brightness)
