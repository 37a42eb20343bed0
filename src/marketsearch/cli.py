"""The ``marketsearch`` command."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger("marketsearch")


def _config(args):
    """The config, and the TF-Hub handles it allows saved models to load."""
    from marketsearch.config import load_config
    from marketsearch.hub_handles import allow as allow_hub_handles

    cfg = load_config(args.config, args.set)
    allow_hub_handles([cfg.text_model.hub_handle, *cfg.serving.hub_handles])
    return cfg


def _add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true",
                   help="show every stage's full output (default: in <run_dir>/logs/ only)")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (default: config/local.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set image_model.epochs=2 (repeatable)")


def cmd_run(args) -> int:
    from marketsearch.local_run import print_summary, run_locally, run_summary
    from marketsearch.pipelines.training import PIPELINE_NAME, build_training_pipeline

    cfg = _config(args)
    run_dir, wall = run_locally(cfg, build_training_pipeline, PIPELINE_NAME, args.verbose)
    summary = run_summary(run_dir) if run_dir else {}
    summary["wall_seconds"] = round(wall, 1)
    print_summary(summary, cfg)
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_evaluate(args) -> int:
    from marketsearch.bundle import Bundle
    from marketsearch.cleaning import clean_frames
    from marketsearch.components.validate import validate
    from marketsearch.records import Snapshot
    from marketsearch.evaluation import evaluate_pairs, headline, search_lines, search_relevance
    from marketsearch.feature_cache import FeatureCache
    from marketsearch import registry, sources
    import tempfile

    cfg = _config(args)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            bundle_dir = Path(args.model)
        else:
            served = cfg.path(cfg.serving.model_dir)
            current = registry.champion(cfg)
            if served.exists():
                bundle_dir = served
            elif current is not None:
                bundle_dir = registry.download_bundle(cfg, current.version, tmp)
            else:
                raise SystemExit("no champion bundle: run `make run` first or pass --model BUNDLE")
        bundle = Bundle(bundle_dir)
        bundle.verify()                    # refuse a changed bundle before loading any of it
        bundle.feature_cache = FeatureCache.from_config(cfg)  # photos seen before are read back
        raw = sources.read_local(args.data)
        cfg_eval = cfg.model_copy(deep=True)
        cfg_eval.validate_.max_bad_fraction = 1.0  # report bad rows, never refuse to evaluate
        validated = validate(cfg_eval, Snapshot(raw.products, raw.images, {"source": "local"}))
        report = validated.report_data
        data = clean_frames(validated.products, validated.images, cfg, image_size=bundle.image_size,
                            remove_outliers=False, assign_split=False)
        result = evaluate_pairs(bundle, data.products, data.images, data.pixels)
        search = search_relevance(bundle, data.products, data.images, data.pixels,
                                  cfg.evaluate.search_k)
    out = headline(result)
    out["n_quarantined"] = report["n_products_quarantined"] + report["n_images_quarantined"] + len(data.quarantine)
    out["search"] = search
    if args.json:
        print(json.dumps(out))
    else:
        for m in ("image", "text", "fusion"):
            print(f"{m:7s} accuracy {out[m]['accuracy']:.3f}  top-3 {out[m]['top3_accuracy']:.3f}  "
                  f"macro-F1 {out[m]['macro_f1']:.3f}")
        print(f"{out['n_pairs']} photo–listing pairs")
        for line in search_lines(search):
            print(line)
    return 0


def cmd_compile(args) -> int:
    from kfp import compiler

    from marketsearch.pipelines.monitoring import build_monitoring_pipeline
    from marketsearch.pipelines.training import build_training_pipeline

    cfg = _config(args)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    build = {"training": build_training_pipeline, "monitoring": build_monitoring_pipeline}
    compiler.Compiler().compile(build[args.pipeline](cfg), str(out))
    print(f"wrote {out}")
    return 0


def cmd_monitor(args) -> int:
    from marketsearch.local_run import monitor_summary, run_locally
    from marketsearch.pipelines.monitoring import PIPELINE_NAME, build_monitoring_pipeline

    if args.data and not all((Path(args.data) / f).is_file() for f in ("products.csv", "images.csv")):
        print(f"error: --data {args.data}: needs products.csv and images.csv (and images/), laid "
              "out like the shared data", file=sys.stderr)
        return 2
    overrides = list(args.set) + (["monitoring.dry_run=true"] if args.dry_run else [])
    if args.data:
        overrides.append(f"data.extra_local_dirs=[{json.dumps(str(Path(args.data).resolve()))}]")
    from marketsearch.config import load_config

    cfg = load_config(args.config, overrides)
    start = time.time()
    run_dir, _ = run_locally(cfg, build_monitoring_pipeline, PIPELINE_NAME, args.verbose)
    summary = monitor_summary(run_dir) if run_dir else {}
    summary["wall_seconds"] = round(time.time() - start, 1)
    print(f"\n=== marketsearch monitor ===\ndrift: {summary.get('drift')} ({summary.get('reason')}); "
          f"{summary.get('n_new_listings')} new listings; retrained: {summary.get('retrained')}; "
          f"promoted: {summary.get('promoted')}")
    for name, c in summary.get("checks", {}).items():
        p = "" if c["p_value"] is None else f" p={c['p_value']:.3g}"
        print(f"  {name:16s} {'DRIFT' if c['drift'] else 'ok   '} statistic {c['statistic']:.4g} "
              f"threshold {c['threshold']:.4g}{p}")
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_schedule(args) -> int:
    from marketsearch.schedule import cmd_schedule as schedule

    return schedule(_config(args), args.package, args.host)


def _serving_model_dir(cfg, model: str | None) -> Path:
    return Path(model) if model else cfg.path(cfg.serving.model_dir)


def cmd_serve(args) -> int:
    from marketsearch.serving.server import serve

    cfg = _config(args)
    if not args.model:                     # the deployed bundle: finish a deploy that died
        from marketsearch.publish import recover_served

        recover_served(cfg)
    serve(_serving_model_dir(cfg, args.model), cfg.serving, args.port)
    return 0


def _photo_b64(path: str) -> str:
    import base64

    return base64.b64encode(Path(path).read_bytes()).decode()


def cmd_search(args) -> int:
    from marketsearch.checksums import IntegrityError
    from marketsearch.serving.contract import RequestError
    from marketsearch.serving.engine import SearchEngine

    if args.image and not Path(args.image).is_file():
        print(f"error: --image {args.image}: no such file", file=sys.stderr)
        return 2
    cfg = _config(args)
    # One query: converting the photo model for LiteRT (seconds) would cost more than it saves.
    serving = cfg.serving.model_copy(update={"photo_runtime": "tensorflow"})
    try:
        engine = SearchEngine.load(_serving_model_dir(cfg, args.model), serving)
    except IntegrityError as exc:
        print(f"error: refusing the bundle: {exc}", file=sys.stderr)
        return 2
    instance = {"product_name": args.query or None, "k": args.k, "location": args.near}
    if args.image:
        instance["image_b64"] = _photo_b64(args.image)
    try:
        answer = engine.answer_instances([{k: v for k, v in instance.items() if v is not None}])[0]
    except RequestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(answer.to_v1()))
        return 0
    top = sorted(answer.scores.items(), key=lambda kv: -kv[1])[:3]
    print(f"category: {answer.category}  ({answer.modality} model; "
          + ", ".join(f"{c} {p:.2f}" for c, p in top) + ")")
    if answer.price is not None:
        estimate, low, high = answer.price
        print(f"suggested price: £{estimate:,.2f}  (80% range £{low:,.2f} - £{high:,.2f})")
    print(format_neighbors(answer.neighbors))
    return 0


def format_neighbors(rows: list[dict]) -> str:
    """A fixed-width table of neighbours for the terminal."""
    head = f"{'#':>3} {'score':>6} {'sim':>6} {'km':>6} {'price':>9}  {'category':<24} title"
    lines = [head, "-" * len(head)]
    for i, r in enumerate(rows, 1):
        km = "" if r.get("distance_km") is None else f"{r['distance_km']:.0f}"
        price = "" if r.get("price") is None else f"£{r['price']:,.0f}"
        lines.append(f"{i:>3} {r['score']:>6.3f} {r['similarity']:>6.3f} {km:>6} {price:>9}  "
                     f"{str(r.get('category') or '')[:24]:<24} {str(r.get('title') or '')[:60]}"
                     f"  [{r['product_id']}]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its probe of CPU builds
    parser = argparse.ArgumentParser(prog="marketsearch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the training pipeline locally through kfp.local")
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="also print the run summary as JSON")
    _add_verbose(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("evaluate", help="evaluate a bundle on a directory laid out like the shared data")
    _add_config_args(p)
    p.add_argument("--data", required=True, help="directory with products.csv, images.csv, images/")
    p.add_argument("--model", help="bundle directory (default: the champion)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compile", help="compile the training pipeline to YAML for the KFP UI")
    _add_config_args(p)
    p.add_argument("--output", default="build/pipelines/training.yaml")
    p.add_argument("--pipeline", choices=["training", "monitoring"], default="training")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("monitor", help="run the monitoring DAG locally: drift checks on new "
                                       "listings, retraining only on drift")
    _add_config_args(p)
    p.add_argument("--data", help="a folder laid out like the shared data holding the new "
                                  "listings (added to data.local_dir's)")
    p.add_argument("--dry-run", action="store_true", help="stop after the drift checks")
    _add_verbose(p)
    p.add_argument("--json", action="store_true",
                   help='print {"drift", "checks", "retrained", "promoted"} on the last line')
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("schedule", help="create the KFP recurring run of the monitoring DAG")
    _add_config_args(p)
    p.add_argument("--package", required=True, help="the compiled monitoring pipeline YAML")
    p.add_argument("--host", help="KFP API address (default: monitoring.kfp_host or $KFP_HOST)")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("serve", help="serve the champion bundle over HTTP (KServe V1 and V2, "
                                     "search page at /search)")
    _add_config_args(p)
    p.add_argument("--model", help="bundle directory, e.g. /mnt/models under KServe "
                                   "(default: serving.model_dir)")
    p.add_argument("--port", type=int, help="HTTP port (default: serving.port, 8080)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("search", help="search the index in-process, as the server does")
    _add_config_args(p)
    p.add_argument("query", nargs="?", default="", help="what you are looking for")
    p.add_argument("--image", help="a photo (JPEG/PNG) to search by, with or without a query")
    p.add_argument("--near", help='"Town, County": re-rank by distance from there')
    p.add_argument("-k", type=int, default=10, help="how many listings (default 10)")
    p.add_argument("--model", help="bundle directory (default: serving.model_dir)")
    p.add_argument("--json", action="store_true", help="print the V1 prediction as JSON")
    p.set_defaults(func=cmd_search)

    args = parser.parse_args(argv)
    if getattr(args, "json", False) and args.command in ("evaluate", "search"):
        logging.getLogger().setLevel(logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
