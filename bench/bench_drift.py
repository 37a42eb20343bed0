"""Drift checks on real data: false-alarm rate on in-distribution batches, detection rate on
shifted ones.

    .venv/bin/python bench/bench_drift.py [--clean RUN_DIR] [--bundle DIR] [--repeats 100]

Reads the clean data of the latest full run under runs/kfp (its clean shards,
``for-loop-*-iteration-*/prepare-shard/clean_shard``, with the splits of gather_clean's plan,
``gather-clean/plan``; ``--clean`` takes a run directory, or one CleanData directory, the
layout before the shards) and the trained bundle (runs/serving/marketsearch); builds the
reference exactly as build_index does (``drift.build_reference`` with the default
``DriftConfig``: data statistics from the training split, model statistics from the
validation split), then summarises random batches of listings (with their photos) the
reference never saw and runs ``drift.run_checks`` on each:

* in-distribution batches, seeded: 500 (and 250) listings from the test split, which no part
  of the reference has seen; 500 listings from val + test (the validation listings are in the
  reference's embedding sample, so these batches are a little easier);
* the same with a training-split-only reference (``holdout_splits: []``): why the model
  statistics come from held-out listings;
* shifted batches (from val + test): category mix skewed, prices x3, x1.5, x1.3 and x0.77
  (1/1.3, a fall), texts three times as long, a quarter of the tokens replaced by random
  words, photos degraded (heavy: blur + darkening + noise; mild: blur only, darkening only).

Writes bench/reports/drift.md and drift.json (and, with --figure PNG, the figure of one
batch with a skewed category mix).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import string
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from marketsearch import drift  # noqa: E402
from marketsearch.config import DriftConfig  # noqa: E402

REPORTS = ROOT / "bench" / "reports"
SEED = 20240501


# --------------------------------------------------------------------------- shifts
def degrade(pixels: np.ndarray, blur: float = 0.0, dark: float = 1.0, noise: float = 0.0,
            seed: int = 0) -> np.ndarray:
    """Blur (Gaussian radius px), darken (multiply), add Gaussian noise (sigma in 0-255)."""
    from PIL import Image, ImageFilter

    out = pixels.astype(np.float32)
    if blur:
        out = np.stack([np.asarray(Image.fromarray(p).filter(ImageFilter.GaussianBlur(blur)),
                                   dtype=np.float32) for p in pixels])
    out = out * dark
    if noise:
        out = out + np.random.default_rng(seed).normal(0, noise, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def random_words(texts: list[str], fraction: float, seed: int) -> list[str]:
    """Replace ``fraction`` of each text's words by random lowercase strings."""
    rng = np.random.default_rng(seed)
    letters = np.array(list(string.ascii_lowercase))
    out = []
    for text in texts:
        words = text.split()
        for i in np.flatnonzero(rng.random(len(words)) < fraction):
            words[i] = "".join(rng.choice(letters, rng.integers(5, 10)))
        out.append(" ".join(words))
    return out


class Batches:
    """Seeded random batches of listings (with their photos) from a pool of listing ids."""

    def __init__(self, data, bundle, cfg: DriftConfig):
        self.data, self.bundle, self.cfg = data, bundle, cfg

    def take(self, products, seed: int, transform=None):
        """-> (summary of the batch, transform applied)."""
        images = self.data.images[self.data.images["product_id"].isin(products["id"])]
        pixels = self.data.pixels
        if transform is not None:
            products, images, pixels = transform(products.copy(), images.copy(), seed)
        return drift.current_statistics(self.bundle, products, images, pixels, self.cfg, seed)


def sample(pool, n: int, rng) -> "object":
    return pool.iloc[np.sort(rng.choice(len(pool), size=min(n, len(pool)), replace=False))]


def photo_transform(**kw):
    def apply(products, images, seed):
        rows = images["row"].to_numpy()
        pixels = degrade(DATA.pixels[rows], seed=seed, **kw)
        images = images.assign(row=np.arange(len(images)))
        return products, images, pixels
    return apply


def text_transform(fn):
    def apply(products, images, seed):
        products["text"] = fn(products["text"].tolist(), seed)
        return products, images, DATA.pixels
    return apply


def price_transform(factor):
    def apply(products, images, seed):
        products["price"] = products["price"] * factor
        return products, images, DATA.pixels
    return apply


DATA = None


def latest_run() -> Path | None:
    """The latest run under runs/kfp whose clean data is in shards (None: there is none)."""
    runs = sorted(p.parent.parent for p in (ROOT / "runs" / "kfp").glob(
        "marketsearch-training-*/gather-clean/plan"))
    return runs[-1] if runs else None


def load_clean(path: str | Path):
    """A run directory's clean shards, gathered into one CleanData (pixels in memory, the
    splits of gather_clean's plan), or one CleanData directory as it is."""
    from marketsearch.catalogue import CleanCatalogue
    from marketsearch.records import CleanData, CleanPlan, CleanShard

    path = Path(path)
    shards = sorted(path.glob("for-loop-*-iteration-*/prepare-shard/clean_shard"))
    if not shards:
        return CleanData.load(path)
    return CleanCatalogue.of([CleanShard.load(d) for d in shards],
                             CleanPlan.load(path / "gather-clean" / "plan")).gathered()


# --------------------------------------------------------------------------- running
def run_many(batches: Batches, reference, cfg: DriftConfig, make_batch, repeats: int,
             seed0: int) -> dict:
    """Run the checks on ``repeats`` batches -> rates per check and overall + timings."""
    fired = {name: 0 for name in cfg.checks}
    overall = 0
    p_values: dict[str, list] = {name: [] for name in cfg.checks}
    stats: dict[str, list] = {name: [] for name in cfg.checks}
    t_summary = t_checks = 0.0
    from tqdm import tqdm

    for r in tqdm(range(repeats), desc="batches", unit="batch", mininterval=2, leave=False):
        seed = seed0 + r
        start = time.perf_counter()
        current = make_batch(seed)
        t_summary += time.perf_counter() - start
        result = drift.run_checks(reference, current, cfg, seed=seed)
        t_checks += result["seconds"]
        overall += result["drift"]
        for name, check in result["checks"].items():
            fired[name] += check["drift"]
            p_values[name].append(check["p_value"])
            stats[name].append(check["statistic"])
    return {
        "repeats": repeats,
        "overall_rate": overall / repeats,
        "per_check_rate": {k: v / repeats for k, v in fired.items()},
        "median_p_value": {k: (float(np.median([p for p in v if p is not None]))
                               if any(p is not None for p in v) else None)
                           for k, v in p_values.items()},
        "median_statistic": {k: float(np.median(v)) for k, v in stats.items()},
        "seconds_per_batch": {"summary": t_summary / repeats, "checks": t_checks / repeats},
        "last_result": result,
    }


def main() -> None:
    global DATA
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clean", help="a run directory with clean shards and a plan, or one "
                        "CleanData directory (default: the latest full run under runs/kfp)")
    parser.add_argument("--bundle", default=str(ROOT / "runs" / "serving" / "marketsearch"))
    parser.add_argument("--repeats", type=int, default=100, help="in-distribution batches")
    parser.add_argument("--shifted-repeats", type=int, default=20)
    parser.add_argument("--price-repeats", type=int, default=100,
                        help="shifted batches of prices x1.5, x1.3 and x0.77 (their detection "
                        "rates sit near the 90%% goal)")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--figure", metavar="PNG",
                        help="also draw the checks of one skewed-category batch to PNG")
    parser.add_argument("--markdown-only", action="store_true",
                        help="re-render drift.md from drift.json, run nothing")
    args = parser.parse_args()
    if args.markdown_only:
        report = json.loads((REPORTS / "drift.json").read_text())
        (REPORTS / "drift.md").write_text(markdown(report))
        return
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from marketsearch.bundle import Bundle

    clean = args.clean or latest_run()
    if clean is None:
        sys.exit("bench_drift: no run with clean shards under runs/kfp/: run `make run` first, "
                 "or pass --clean")
    DATA = data = load_clean(clean)
    bundle = Bundle(args.bundle)
    from marketsearch.feature_cache import FeatureCache
    # photos the run already saw are read back; shifted (degraded) photos are computed
    bundle.feature_cache = FeatureCache(ROOT / "runs" / "cache" / "photo_features")
    cfg = DriftConfig()
    products = data.products
    test = products[products["split"] == "test"]
    heldout = products[products["split"].isin(["val", "test"])]
    start = time.perf_counter()
    reference = drift.build_reference(bundle, products, data.images, data.pixels, cfg, SEED)
    t_ref_cold = time.perf_counter() - start
    start = time.perf_counter()
    reference = drift.build_reference(bundle, products, data.images, data.pixels, cfg, SEED)
    t_ref = time.perf_counter() - start
    train_only_cfg = cfg.model_copy(update={"holdout_splits": []})
    train_only = drift.build_reference(bundle, products, data.images, data.pixels,
                                       train_only_cfg, SEED)
    batches = Batches(data, bundle, cfg)
    b = args.batch
    t0 = time.perf_counter()

    def from_pool(pool, n, transform=None):
        return lambda seed: batches.take(sample(pool, n, np.random.default_rng(seed)), seed,
                                         transform)

    in_dist = {
        f"test split, {b} listings": (reference, from_pool(test, b)),
        f"test split, {b // 2} listings": (reference, from_pool(test, b // 2)),
        f"val + test, {b} listings": (reference, from_pool(heldout, b)),
        f"test split, {b} listings, training-split-only reference":
            (train_only, from_pool(test, b)),
    }
    results: dict = {"in_distribution": {}, "shifted": {}}
    for i, (name, (ref, make)) in enumerate(in_dist.items()):
        print(f"in-distribution: {name} x {args.repeats}", flush=True)
        results["in_distribution"][name] = run_many(batches, ref, cfg, make, args.repeats,
                                                    SEED + 1000 * (i + 1))

    cats = sorted(products["category"].unique())

    def skewed(share: float, n_cats: int, n: int):
        """``share`` of the batch from ``n_cats`` random categories, the rest at random."""
        def make(seed):
            rng = np.random.default_rng(seed)
            chosen = rng.choice(cats, n_cats, replace=False)
            inside = heldout[heldout["category"].isin(chosen)]
            k = min(int(round(share * n)), len(inside))
            part = sample(inside, k, rng)
            rest = sample(heldout[~heldout["id"].isin(part["id"])], n - k, rng)
            return batches.take(pd.concat([rest, part]), seed)
        return make

    # Moves of the price level a model of log(price) must be retrained on; their detection rates
    # sit near the 90% goal, so they get --price-repeats batches.
    price_moves = {f"prices x{label}": from_pool(heldout, b, price_transform(factor))
                   for label, factor in [("1.5", 1.5), ("1.3", 1.3),
                                         ("0.77 (1/1.3, a fall)", 1 / 1.3)]}
    shifted = {
        "category mix: 2 categories make up 50% (400 listings)": skewed(0.5, 2, 400),
        "category mix: 1 category makes up 20% (reference ~8%)": skewed(0.2, 1, b),
        "prices x3": from_pool(heldout, b, price_transform(3.0)),
        **price_moves,
        "texts 3x as long (repeated)": from_pool(heldout, b, text_transform(
            lambda t, s: [" ".join([x] * 3) for x in t])),
        "25% of words replaced by random strings": from_pool(heldout, b, text_transform(
            lambda t, s: random_words(t, 0.25, s))),
        "10% of words replaced by random strings": from_pool(heldout, b, text_transform(
            lambda t, s: random_words(t, 0.10, s))),
        "photos heavy: blur r=3, x0.5 darker, noise sd 20": from_pool(
            heldout, b, photo_transform(blur=3.0, dark=0.5, noise=20.0)),
        "photos mild: blur r=1": from_pool(heldout, b, photo_transform(blur=1.0)),
        "photos mild: x0.7 darker": from_pool(heldout, b, photo_transform(dark=0.7)),
    }
    for i, (name, make) in enumerate(shifted.items()):
        repeats = args.price_repeats if name in price_moves else args.shifted_repeats
        print(f"shifted: {name} x {repeats}", flush=True)
        results["shifted"][name] = run_many(batches, reference, cfg, make, repeats,
                                            SEED + 100_000 + 1000 * i)
    total = time.perf_counter() - t0

    if args.figure:
        cur = shifted["category mix: 2 categories make up 50% (400 listings)"](SEED)
        res = drift.run_checks(reference, cur, cfg, seed=SEED)
        drift.drift_png(reference, cur, res, args.figure,
                        "Drift: reference vs a batch with 2 categories at 50%")

    for group in results.values():
        for r in group.values():
            r["last_result"] = {k: v for k, v in r["last_result"].items() if k != "checks"} | {
                "checks": {n: {k: v for k, v in c.items() if k != "detail"}
                           for n, c in r["last_result"]["checks"].items()}}
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "clean_data": str(clean), "bundle": str(args.bundle),
        "config": cfg.model_dump(),
        "alpha_per_test": drift.per_test_alpha(cfg),
        "reference": {"listings": reference.n_listings, "photos": reference.n_photos,
                      "holdout_listings": reference.meta["model_stats_listings"],
                      "holdout_photos": reference.meta["model_stats_photos"],
                      "oov_rate": reference.oov_rate, "train_only_oov_rate": train_only.oov_rate,
                      "build_seconds": t_ref, "build_seconds_cold": t_ref_cold},
        "pools": {"test": len(test), "val_test": len(heldout)},
        "batch_size": b, "seconds_total": total, **results,
    }
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "drift.json").write_text(json.dumps(report, indent=1, default=float))
    (REPORTS / "drift.md").write_text(markdown(report))
    print((REPORTS / "drift.md").read_text())


def _pct(v: float) -> str:
    return f"{v:.0%}" if v in (0, 1) else f"{v:.1%}"


# How the Choices section names each p-value test.
P_TEST_NAMES = {"category_mix": "category chi-square", "price": "price KS",
                "text_length": "text-length KS", "photo_embedding": "photo MMD",
                "text_embedding": "text MMD", "photo_brightness": "photo-brightness KS"}


def price_notes(rep: dict) -> list[str]:
    """The Choices bullets on the price check: its rule, its rates in this report, and why
    its floor is what it is."""
    floor = rep["config"]["price_min_log_shift"]
    ind, shifted = rep["in_distribution"], rep["shifted"]

    def moved(label: str) -> str:
        r = shifted[f"prices x{label}"]
        return (f"x{label.split(' ')[0]} in {_pct(r['per_check_rate']['price'])} of "
                f"{r['repeats']} batches (median shift {r['median_statistic']['price']:+.2f})")

    quiet = ", ".join(_pct(r["per_check_rate"]["price"]) for r in ind.values())
    return [
        f"- Price: KS p < alpha (more than chance) AND the median log-price moved by >= {floor} "
        "either way (how big: log(batch median / reference median) over the positive prices). "
        "The price-suggestion model works on log(price): when prices move by a factor f and "
        "the listings' texts and photos do not, its suggestions are off by log f on every "
        "listing. Flagged here: prices "
        + ", ".join(moved(m) for m in ("1.5", "1.3", "0.77 (1/1.3, a fall)"))
        + f"; the price check alone fired on {quiet} of the in-distribution batches (rows in "
        "order).",
        f"- Why {floor} (about 10%): a 30% move gives a median shift of 0.26, but listed prices "
        "sit at round values, so a batch's median jumps by steps (£40 becoming £45 is 0.12) and "
        "5% of the x1.3 batches shift by less than 0.15; in-distribution 500-listing batches "
        "reach 0.12 by chance, which KS keeps quiet. At 0.1 the floor costs no detection here "
        "(the misses are KS's: in 500 price-only batches of this pool, KS alone flags x1.3 in "
        "93.8% and with the floor 93.6%), and a batch so large that KS finds any move "
        "significant does not retrain over a few percent.",
        "- Before (PSI over the reference deciles > 0.2 AND KS, when price was no model input): "
        "prices x1.3, x1.5 and x0.77 were flagged in 0 of 20 batches each; PSI grows with the "
        "square of a small shift (median 0.06, 0.12 and 0.09 for them), and a PSI threshold "
        "that caught 90% of x1.3 (~0.03) would sit where 250-listing in-distribution batches "
        "reach by chance (median 0.034, 95th percentile 0.074).",
        "- The shifted batches multiply every price by one factor, moving it off the round "
        "values sellers use (£10 becoming £13), and KS gets part of its power from those "
        "steps: re-rounded (whole pounds under £10, then steps of £5, £10, £50), prices x1.3 "
        "are flagged in 81% of 500 price-only batches instead of 94% (x1.5 99%, x0.77 71%).",
    ]


def markdown(rep: dict) -> str:
    cfg = rep["config"]
    checks = cfg["checks"]
    p_tests = [c for c in checks if c in drift.P_VALUE_CHECKS]
    n_p = len(p_tests)
    head = "| batches | n | overall | " + " | ".join(c.replace("_", " ") for c in checks) + " |"
    sep = "|---|---|---|" + "---|" * len(checks)

    def rows(group):
        out = []
        for name, r in group.items():
            out.append(f"| {name} | {r['repeats']} | **{_pct(r['overall_rate'])}** | "
                       + " | ".join(_pct(r["per_check_rate"][c]) for c in checks) + " |")
        return out

    ref = rep["reference"]
    ind = rep["in_distribution"]
    main_key = next(iter(ind))
    timing = ind[main_key]["seconds_per_batch"]
    lines = [
        "# Drift checks: false alarms and detection on the shared listings", "",
        f"`bench/bench_drift.py` on {rep['machine']}; the clean shards of the full run "
        f"`{Path(rep['clean_data']).name}` and its trained bundle, default `DriftConfig` "
        f"(family-wise alpha {cfg['alpha']}, Bonferroni: {rep['alpha_per_test']:.3g} per p-value "
        f"test; price: KS p < alpha and the median log-price moved by >= "
        f"{cfg['price_min_log_shift']}; floors: text-length KS D >= {cfg['text_length_min_ks']}"
        + (f", photo-brightness KS D >= {cfg['photo_brightness_min_ks']}"
           if "photo_brightness_min_ks" in cfg else "")
        + f", category TVD >= {cfg['category_min_tvd']}; OOV rise > "
        f"{cfg['oov_max_increase']}; MMD "
        f"{cfg['mmd_permutations']} permutations, <= {cfg['mmd_max_rows']} rows a side).", "",
        f"Reference as build_index writes it: {ref['listings']:,} training listings "
        f"({ref['photos']:,} photos) for categories, prices, text lengths"
        + (" and photo brightness" if "photo_brightness" in checks else "") + "; "
        f"{ref['holdout_listings']:,} validation listings ({ref['holdout_photos']:,} photos) "
        f"for the OOV rate ({ref['oov_rate']:.3f}; on the training texts it would be "
        f"{ref['train_only_oov_rate']:.3f}) and the photo and text embedding samples. Built in "
        f"{ref['build_seconds']:.1f} s ({ref['build_seconds_cold']:.1f} s with the first "
        f"tracing of the embedding models). A batch of {rep['batch_size']} listings: summary "
        f"{timing['summary']:.2f} s, all {len(checks)} checks {timing['checks']:.2f} s.", "",
        "## False alarms: in-distribution batches (rate at which each check fires)", "",
        head, sep, *rows(ind), "",
        "Goal: overall <= 5%. The first three rows are the reference as it is built; the last "
        "row is the same reference with every statistic from the training split "
        "(`holdout_splits: []`): the text model has fitted its training texts, so the "
        "embeddings of any unseen texts differ from theirs and the text-embedding check fires "
        "on every batch, and the training texts' OOV rate is about half an unseen text's.", "",
        f"Batches are drawn without replacement from a finite pool ({rep['pools']['test']:,} "
        f"test listings; {rep['pools']['val_test']:,} val + test), so consecutive batches "
        "overlap and vary less than independent batches from the marketplace would; the "
        "250-listing row shows the same checks with more sampling noise. Every batch is "
        "compared with the same reference sample, as every run against one champion is, so "
        "the rate over 100 batches is the rate for this reference, not the average over "
        "references.", "",
        "## Detection: shifted batches (rate at which each check fires)", "",
        head, sep, *rows(rep["shifted"]), "",
        "Median p-values / statistics per scenario are in drift.json.", "",
        "## Choices", "",
        f"- One family-wise alpha ({cfg['alpha']}) split over the {n_p} p-value tests "
        f"({', '.join(P_TEST_NAMES[c] for c in p_tests)}: {rep['alpha_per_test']:.2g} each), so "
        "that a batch from the training distribution triggers a retrain in at most ~5% of runs; "
        "the OOV check is a fixed threshold on a difference of rates (no p-value).",
        *price_notes(rep),
        "- Effect-size floors on top of the p-values (category TVD >= 0.05, text-length and "
        "photo-brightness KS D >= 0.1 and 0.15, the median log-price shift for prices): with a "
        "big batch every tiny shift is significant; the floors sit at about the tests' own "
        "critical values for 500 listings, so they cost little power here and keep a week of "
        "50,000 listings from retraining over a 1-point shift.",
        "- Model-dependent statistics (OOV rate, photo and text embeddings) from the validation "
        "split, the data statistics from the training split (see the last in-distribution "
        "row).",
        "- One photo per listing in the embedding samples: a listing's photos resemble each "
        "other and the MMD permutation test assumes exchangeable rows. With every photo of a "
        "listing in the sample, the photo check fired on 1% (500 listings) and 4% (250) of "
        "the in-distribution batches and its median p-value was 0.17 instead of ~0.5.",
        "- Bonferroni is conservative, and so is KS on tied values (prices, token counts): "
        f"the expected rate of the {n_p} tests together is under 5%.",
        "- Photo brightness (KS on per-photo mean luminance, 0.299 R + 0.587 G + 0.114 B, of "
        "the training split's photos against the batch's): the ImageNet photo model's "
        "embeddings are trained to ignore exposure, so photos x0.7 darker left the photo MMD "
        "check quiet (0 of 20 batches) where the earlier from-scratch CNN caught them; the "
        "luminance check sees the change directly, whatever the model.", "",
        f"Total bench time {rep['seconds_total']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
