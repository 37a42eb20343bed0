"""The photo model's input size: accuracy against cost, on the shared listings.

    .venv/bin/python -m bench.bench_image [--clean DIR] [--sizes 128 160 192 224]

For each input size of ImageNet EfficientNet-Lite0 (the photos are 128 px and are resized
inside the model, as served), with the defaults of ``ImageModelConfig`` otherwise:

* the frozen backbone's features of every clean photo (through the feature cache under
  runs/cache/photo_features, so a rerun reads them), and the time to compute them;
* stage 1 of ``train_image_model`` (the head on those features, early-stopped on val) and its
  accuracy per test photo–listing pair;
* one photo through the backbone alone, p50 and p99 over 50 calls (the per-request cost a
  served photo adds).

Reads the clean data of the latest run (runs/kfp/*/clean/clean_data); writes
bench/reports/image.md and image.json.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "bench" / "reports"


def latest_clean_dir() -> Path:
    found = sorted(glob.glob(str(ROOT / "runs/kfp/*/clean/clean_data")),
                   key=os.path.getmtime)
    if not found:
        raise SystemExit("no clean data under runs/kfp: run `make run` first")
    return Path(found[-1])


def single_photo_ms(model, photo: np.ndarray, calls: int = 50) -> tuple[float, float]:
    from marketsearch.feature_cache import traced_features

    forward = traced_features(model)
    forward(photo[None])
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        forward(photo[None])
        times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def measure(data, size: int, cache_root: Path, seed: int) -> dict:
    from marketsearch.config import ImageModelConfig
    from marketsearch.feature_cache import FeatureCache
    from marketsearch.models.image import build_image_model, features_model, train_image_model

    cfg = ImageModelConfig(input_size=size)
    labels = data.labels
    index = {c: i for i, c in enumerate(labels)}
    images = data.images
    y = images["category"].map(index).to_numpy(np.int32)
    rows = images["row"].to_numpy()
    split = images["split"].to_numpy()
    pixels = data.pixels
    model = build_image_model(len(labels), cfg, pixels.shape[1], seed=seed)
    cache = FeatureCache(cache_root)
    start = time.perf_counter()
    cache.features(features_model(model), pixels[rows], desc=f"features at {size} px")
    feature_s = time.perf_counter() - start
    trained, history = train_image_model(
        pixels[rows[split == "train"]], y[split == "train"], pixels[rows[split == "val"]],
        y[split == "val"], len(labels), cfg, seed, verbose=0, cache=FeatureCache(cache_root))
    test = split == "test"
    from marketsearch.models.image import head_from_features
    feats = FeatureCache(cache_root).features(features_model(trained), pixels[rows[test]])
    probs = head_from_features(trained).predict(feats, verbose=0)
    p50, p99 = single_photo_ms(features_model(trained), pixels[0])
    return {"input_size": size, "test_accuracy": float(np.mean(probs.argmax(1) == y[test])),
            "best_val_accuracy": max(history["train"].get("val_accuracy", [float("nan")])),
            "n_test_pairs": int(test.sum()), "feature_seconds": round(feature_s, 1),
            "feature_cache_hits": cache.stats.hits, "head_seconds": round(history["seconds"], 1),
            "one_photo_p50_ms": round(p50, 2), "one_photo_p99_ms": round(p99, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", type=Path, default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 192, 224])
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from marketsearch.records import CleanData

    clean_dir = args.clean or latest_clean_dir()
    data = CleanData.load(clean_dir)
    cache_root = ROOT / "runs" / "cache" / "photo_features"
    rows = [measure(data, size, cache_root, args.seed) for size in args.sizes]
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "clean_dir": str(clean_dir),
              "rows": rows}
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "image.json").write_text(json.dumps(report, indent=2))
    lines = ["# Photo model: input size against accuracy and cost", "",
             f"`python -m bench.bench_image` on {report['machine']}; clean data "
             f"`{Path(clean_dir).name}` of the latest `make run`; ImageNet EfficientNet-Lite0, "
             "frozen, head trained on its cached features (stage 1). Photos are 128 px, resized "
             "inside the model.", "",
             "| input px | test accuracy (pairs) | best val accuracy | features of all photos (s, uncached) | one photo p50 / p99 (ms) |",
             "|---:|---:|---:|---:|---:|"]
    for r in rows:
        cached = " (cached)" if r["feature_cache_hits"] else ""
        lines.append(f"| {r['input_size']} | {r['test_accuracy']:.3f} | {r['best_val_accuracy']:.3f} | "
                     f"{r['feature_seconds']}{cached} | {r['one_photo_p50_ms']} / {r['one_photo_p99_ms']} |")
    lines += ["", f"{rows[0]['n_test_pairs']} test pairs. Times on a shared 2-core machine vary "
              "run to run; compare rows within one report."]
    (REPORTS / "image.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
