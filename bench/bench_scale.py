"""make bench-scale: does each stage's memory stay flat, and its time per listing, as the
catalogue grows? (issue 13, item 6)

    .venv/bin/python -m bench.bench_scale [--base 6081] [--factors 1 4 16] [--shard-rows 500]

1. Grows a synthetic catalogue from the shared listings (``--base`` of them, a stratified
   sample): ``factor`` copies of each, copy k > 0 with a new id, its title and description
   perturbed (a word dropped, two swapped) and each photo re-encoded flipped (odd k) and
   cropped by a random margin, so no two copies share a photo's bytes or features.
2. Runs the training DAG's stages on it as KFP would, each task in a process of its own:
   ingest, prepare_shard then featurize_shard (the backbone's features of its photos, into
   the run's feature cache) once per shard (one after another), gather_clean, load_db,
   train_image (the head, on the cached features), train_text, train_fusion, build_index. The trainers run ``--epochs`` epochs (1 by default: a fixed number of passes,
   so their steps grow with the catalogue and time per listing is comparable), one text
   tower. No cache is shared between sizes (features and shards are computed at each size).
3. Records each stage's wall time and peak RSS (the task process's ru_maxrss from wait4; for
   the per-shard stages the largest of their tasks and the sum of their times) and writes
   bench/reports/scale.json and scale.md: per stage and size the time per listing, and the
   ratio of each to the smallest size (``peak_rss_ratio``, ``time_per_listing_ratio``); the
   goal is both <= 1.3 at 16x; and a projection to 2M listings on EKS.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "bench" / "reports"
STAGES = ["ingest", "prepare_shard", "featurize_shard", "gather_clean", "load_db", "train_image",
          "train_text", "train_fusion", "build_index"]
PER_SHARD = ("prepare_shard", "featurize_shard")   # one task a shard, like the DAG's ParallelFor
GOAL_RATIO = 1.3
SEED = 7
# EKS as terraform/variables.tf builds it, with on-demand list prices (us-east-1; an
# assumption of this report, not read from AWS): CPU nodes for the data stages, one GPU node
# for the trainers.
EKS = {"cpu_instance": "m6i.large", "cpu_vcpus": 2, "cpu_memory_gib": 8, "cpu_usd_per_hour": 0.096,
       "cpu_max_nodes": 4, "gpu_instance": "g4dn.xlarge", "gpu_usd_per_hour": 0.526}


def say(msg: str) -> None:
    print(f"[bench-scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------- the catalogue
def _perturb_words(text: str, rng: np.random.Generator) -> str:
    words = text.split()
    if len(words) > 3:
        del words[int(rng.integers(len(words)))]
        i = int(rng.integers(len(words) - 1))
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def _perturb_title(name: str, rng: np.random.Generator) -> str:
    """The title part of "Title | in Town, County | Gumtree" perturbed, the rest kept."""
    head, sep, tail = name.partition(" | ")
    return _perturb_words(head, rng) + sep + tail


def _perturb_photo(data: bytes, k: int, rng: np.random.Generator) -> bytes:
    """Flipped (odd k) and cropped by up to 8% a side, re-encoded; bytes that are no image
    stay as they are (a broken photo stays broken)."""
    from PIL import Image, ImageOps

    try:
        img = Image.open(io.BytesIO(data)).convert("RGB")
    except Exception:  # noqa: BLE001  (any undecodable photo is copied as it is)
        return data
    if k % 2:
        img = ImageOps.mirror(img)
    w, h = img.size
    m = rng.uniform(0, 0.08, size=4)
    box = (int(m[0] * w), int(m[1] * h), max(int(m[0] * w) + 1, w - int(m[2] * w)),
           max(int(m[1] * h) + 1, h - int(m[3] * h)))
    out = io.BytesIO()
    img.crop(box).save(out, format="JPEG", quality=90)
    return out.getvalue()


def grow(source: Path, out: Path, base: int, factor: int, seed: int = SEED) -> dict:
    """``factor`` copies of a stratified sample of ``base`` listings (see the module
    docstring), written as a local source (products.csv, images.csv, images/)."""
    from tqdm import tqdm

    from marketsearch.sources import read_local
    from marketsearch.sources.sampling import sample

    raw = sample(read_local(source), base, seed)
    products, images = raw.products, raw.images
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + factor)
    p_cols = [c for c in products.columns]
    i_cols = [c for c in images.columns if c not in ("data", "source_error")]
    n_photos = 0
    with open(out / "products.csv", "w", newline="") as pf, \
            open(out / "images.csv", "w", newline="") as imf:
        pw = csv.DictWriter(pf, p_cols, quoting=csv.QUOTE_ALL)
        iw = csv.DictWriter(imf, i_cols, quoting=csv.QUOTE_ALL)
        pw.writeheader()
        iw.writeheader()
        by_listing = images.groupby("product_id", sort=False)
        groups = {pid: g for pid, g in by_listing}
        for k in tqdm(range(factor), desc=f"grow x{factor}", unit="copy"):
            suffix = "" if k == 0 else f"-x{k}"
            for row in products.to_dict("records"):
                new = dict(row, id=row["id"] + suffix)
                if k:
                    new["product_name"] = _perturb_title(row.get("product_name", ""), rng)
                    new["product_description"] = _perturb_words(
                        row.get("product_description", ""), rng)
                pw.writerow(new)
                photos = groups.get(row["id"])
                for photo in ([] if photos is None else photos.to_dict("records")):
                    blob = photo["data"]
                    if blob is None:          # missing in the source: missing in the copy
                        iw.writerow({c: photo[c] for c in i_cols} | {
                            "id": photo["id"] + suffix, "product_id": new["id"]})
                        continue
                    data = blob if k == 0 else _perturb_photo(blob, k, rng)
                    pid = photo["id"] + suffix
                    (out / "images" / f"{pid}.jpg").write_bytes(data)
                    iw.writerow({c: photo[c] for c in i_cols} | {"id": pid, "product_id": new["id"]})
                    n_photos += 1
    return {"n_listings": len(products) * factor, "n_photos": n_photos}


# ----------------------------------------------------------------------- the stages
def overrides(work: Path, source: Path, args) -> dict:
    """The bench's config over config/local.yaml: its own run dir, source and database, no
    shard cache, ingest's chunks of a shard's rows, ``--epochs`` for every trainer, one text
    tower."""
    out = {"run_dir": str(work / "run"),
           # ingest reads as many rows at a time as a shard holds, as on EKS (50,000 each)
           "data": {"local_dir": str(source), "shard_rows": args.shard_rows, "shard_cache": None,
                    "limit": None, "ingest_chunk_rows": args.shard_rows},
           "clean": {"database_url": f"sqlite:///{work / 'run' / 'marketsearch.db'}"},
           "image_model": {"epochs": args.epochs, "fine_tune_epochs": 0},
           "text_model": {"epochs": args.epochs, "towers": 1},
           "fusion": {"epochs": args.epochs}}
    for item in getattr(args, "sets", []):
        key, _, value = item.partition("=")
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = json.loads(value) if value[:1].isdigit() or value in ("true", "false", "null") \
            else value
    return out


def run_child(stage: str, work: Path, cfg_overrides: dict, shard: int | None) -> None:
    """One stage, as its KFP task would run it: inputs read from ``work``, output saved there."""
    from marketsearch.config import load_config
    from marketsearch.records import CleanPlan, CleanShard, SnapshotShards, TrainedModel

    cfg = load_config(overrides=cfg_overrides)
    clean_dirs = sorted((work / "clean").glob("shard-*")) if (work / "clean").exists() else []
    shards = [CleanShard.load(d) for d in clean_dirs]
    plan = CleanPlan.load(work / "plan") if (work / "plan").exists() else None
    if stage == "ingest":
        from marketsearch.components.ingest import ingest
        ingest(cfg).save(work / "raw")
    elif stage == "prepare_shard":
        from marketsearch.components.shard import prepare_shard
        snap = SnapshotShards.load(work / "raw")
        prepare_shard(cfg, snap, snap.manifest["shards"][shard]).save(
            work / "clean" / f"shard-{shard:05d}")
    elif stage == "featurize_shard":
        from marketsearch.components.featurize import featurize_shard
        featurize_shard(cfg, shards[shard]).save(work / "features" / f"shard-{shard:05d}")
    elif stage == "gather_clean":
        from marketsearch.components.shard import gather_clean
        gather_clean(cfg, shards).save(work / "plan")
    elif stage == "load_db":
        from marketsearch.components.clean import load_db
        load_db(cfg, shards, plan)
    elif stage == "train_image":
        from marketsearch.components.train_image import train_image
        features = sorted((work / "features").glob("shard-*"))
        train_image(cfg, shards, work / "image", plan=plan, photo_features=features)
    elif stage == "train_text":
        from marketsearch.components.train_text import train_text
        train_text(cfg, shards, work / "text", plan=plan)
    elif stage == "train_fusion":
        from marketsearch.components.train_fusion import train_fusion
        train_fusion(cfg, shards, TrainedModel.load(work / "image"),
                     TrainedModel.load(work / "text"), work / "fused", plan=plan)
    elif stage == "build_index":
        from marketsearch.components.build_index import build_index
        build_index(cfg, shards, TrainedModel.load(work / "fused"), work / "bundle", plan=plan)
    else:
        raise ValueError(f"unknown stage {stage!r}; one of {STAGES}")


def measured(stage: str, work: Path, cfg_overrides: dict, shard: int | None = None) -> dict:
    """Run one task in a process of its own -> its wall seconds and peak RSS (MB)."""
    cmd = [sys.executable, "-m", "bench.bench_scale", "--child", stage, "--work", str(work),
           "--overrides", json.dumps(cfg_overrides)]
    if shard is not None:
        cmd += ["--shard", str(shard)]
    log = open(work / f"{stage}{'' if shard is None else f'-{shard}'}.log", "w")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    log.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{stage} failed (exit {os.waitstatus_to_exitcode(status)}); "
                           f"see {log.name}")
    return {"wall_s": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}


def run_size(factor: int, args, before: dict | None = None) -> dict:
    """One size: grow its catalogue and run every stage; with ``before`` (this size's entry
    of an earlier report, whose work directory is still there), only ``args.stages`` again."""
    work = Path(args.workdir) / f"x{factor}"
    source = work / "source"
    if before is None:
        if work.exists():
            import shutil
            shutil.rmtree(work)
        say(f"x{factor}: growing the catalogue from {args.base} listings")
        start = time.perf_counter()
        grown = grow(Path(args.source), source, args.base, factor)
        grow_s = time.perf_counter() - start
        stages: dict[str, dict] = {}
    else:
        grown = {"n_listings": before["n_listings_grown"], "n_photos": before["n_photos_grown"]}
        grow_s, stages = before["grow_s"], dict(before["stages"])
    cfg = overrides(work, source, args)
    for stage in (STAGES if before is None else args.stages):
        if stage in PER_SHARD:
            entries = json.loads((work / "raw" / "snapshot.json").read_text())["shards"]
            runs = [dict(measured(stage, work, cfg, k), rows=e["n_products"])
                    for k, e in enumerate(entries)]
            stages[stage] = {"wall_s": sum(r["wall_s"] for r in runs),
                             "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                             "tasks": len(runs), "per_task": runs}
        else:
            stages[stage] = dict(measured(stage, work, cfg), tasks=1)
        say(f"x{factor} {stage}: {stages[stage]['wall_s']:.1f} s, "
            f"peak RSS {stages[stage]['peak_rss_mb']:.0f} MB")
    plan = json.loads((work / "plan" / "summary.json").read_text())
    n = int(plan["n_products"])
    for s in stages.values():
        s["time_per_listing_ms"] = 1000 * s["wall_s"] / n
    return {"factor": factor, "n_listings_grown": grown["n_listings"],
            "n_photos_grown": grown["n_photos"], "n_listings": n, "n_photos": int(plan["n_images"]),
            "grow_s": grow_s, "stages": stages}


def ratios(sizes: dict) -> dict:
    first = sizes[min(sizes, key=int)]
    out = {}
    for key, size in sizes.items():
        out[key] = {stage: {
            "peak_rss_ratio": s["peak_rss_mb"] / first["stages"][stage]["peak_rss_mb"],
            "time_per_listing_ratio": s["time_per_listing_ms"] / first["stages"][stage]["time_per_listing_ms"]}
            for stage, s in size["stages"].items()}
    return out


def _line(x, y) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y on x, both kept >= 0: a negative intercept (or
    slope: noise over a narrow range of x) gives the line through the origin, all of y per
    unit of x (an over-estimate when there is a fixed part)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    through_origin = (0.0, float((x * y).sum() / (x * x).sum()))
    if len(set(x.tolist())) < 2:
        return through_origin
    slope, intercept = np.polyfit(x, y, 1)
    if intercept < 0 or slope < 0:
        return through_origin
    return float(intercept), float(slope)


def projection(sizes: dict, args) -> dict:
    """2M listings on EKS (config/eks.yaml's shard_rows and shard_parallelism, the node
    groups of terraform/variables.tf): each single-task stage's time as a fixed part plus a
    part per listing, fitted over the sizes measured; each per-shard stage's time and peak RSS
    per task fitted over all its tasks against their listings, then evaluated at EKS's shard
    size."""
    from marketsearch.config import load_config

    eks = load_config(ROOT / "config" / "eks.yaml")
    keys = sorted(sizes, key=int)
    n = 2_000_000
    largest = sizes[keys[-1]]
    shards = math.ceil(n / eks.data.shard_rows)
    rows = n / shards
    # featurize_shard holds at most image_model.feature_chunk photos at once: its memory
    # grows with a shard's listings only up to that many photos' listings
    photos_per_listing = largest["n_photos"] / largest["n_listings"]
    memory_rows = {"featurize_shard": min(rows, eks.image_model.feature_chunk / photos_per_listing)}
    per_task = {}
    for stage in PER_SHARD:
        tasks = [t for k in keys for t in sizes[k]["stages"][stage]["per_task"]]
        a, b = _line([t["rows"] for t in tasks], [t["wall_s"] for t in tasks])
        c, d = _line([t["rows"] for t in tasks], [t["peak_rss_mb"] for t in tasks])
        per_task[stage] = {"fixed_s": a, "per_listing_ms": 1000 * b, "rss_fixed_mb": c,
                           "rss_per_listing_kb": 1024 * d, "s_at_shard_rows": a + b * rows,
                           "memory_rows": memory_rows.get(stage, rows),
                           "peak_rss_mb_at_shard_rows": c + d * memory_rows.get(stage, rows),
                           "n_tasks": len(tasks)}
    task_mb = max(t["peak_rss_mb_at_shard_rows"] for t in per_task.values())
    # tasks a node takes: one a vCPU, as many as fit in 90% of its memory
    per_node = max(1, min(EKS["cpu_vcpus"], int(0.9 * EKS["cpu_memory_gib"] * 1024 // task_mb)))
    slots = min(eks.kfp.shard_parallelism, EKS["cpu_max_nodes"] * per_node)
    hours, fits = {}, {}
    for stage in STAGES:
        if stage in PER_SHARD:
            hours[stage] = math.ceil(shards / slots) * per_task[stage]["s_at_shard_rows"] / 3600
            continue
        fixed, per = _line([sizes[k]["n_listings"] for k in keys],
                           [sizes[k]["stages"][stage]["wall_s"] for k in keys])
        fits[stage] = {"fixed_s": fixed, "per_listing_ms": 1000 * per}
        hours[stage] = (fixed + per * n) / 3600
    train_stages = ["train_image", "train_text", "train_fusion"]
    cpu_node_hours = sum(h for s, h in hours.items() if s not in train_stages and s not in PER_SHARD) \
        + sum(shards * t["s_at_shard_rows"] / per_node / 3600 for t in per_task.values())
    gpu_node_hours = sum(hours[s] for s in train_stages)
    return {"n_listings": n,
            "n_photos": round(n * largest["n_photos"] / largest["n_listings"]),
            "shards": shards, "shard_rows": eks.data.shard_rows,
            "per_shard_parallel_tasks": slots, "per_shard_tasks_per_node": per_node,
            "cpu_nodes": math.ceil(slots / per_node),
            "gpu_nodes": 1, "per_shard_tasks": per_task,
            "fits": fits, "hours_by_stage": hours, "wall_hours": sum(hours.values()),
            "cpu_node_hours": cpu_node_hours, "gpu_node_hours": gpu_node_hours,
            "usd": cpu_node_hours * EKS["cpu_usd_per_hour"] + gpu_node_hours * EKS["gpu_usd_per_hour"],
            "prices": EKS, "epochs": args.epochs}


# ----------------------------------------------------------------------- the report
def write_report(report: dict) -> None:
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "scale.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    sizes, rat = report["sizes"], report["ratios"]
    keys = sorted(sizes, key=int)
    run = report["run"]
    lines = ["# Scale: memory and time per listing as the catalogue grows", "",
             f"`{run['command']}` on {run['date']} ({run['machine']}), commit {run['commit']}.",
             "Every stage ran as its KFP task would, in a process of its own; peak RSS is that "
             "process's ru_maxrss (a per-shard stage: the largest of its tasks, time: their "
             "sum).", "",
             "| size | listings | photos | shards | grow s |", "|---|---:|---:|---:|---:|"]
    for k in keys:
        s = sizes[k]
        lines.append(f"| {k}x | {s['n_listings']:,} | {s['n_photos']:,} | "
                     f"{s['stages']['prepare_shard']['tasks']} | {s['grow_s']:.0f} |")
    lines += ["", "| stage | " + " | ".join(f"{k}x s | {k}x ms/listing | {k}x peak MB" for k in keys)
              + " | " + " | ".join(f"{k}x time/listing ratio | {k}x peak RSS ratio" for k in keys[1:])
              + " |", "|---" * (1 + 3 * len(keys) + 2 * (len(keys) - 1)) + "|"]
    for stage in STAGES:
        cells = [f"{sizes[k]['stages'][stage]['wall_s']:.1f} | "
                 f"{sizes[k]['stages'][stage]['time_per_listing_ms']:.2f} | "
                 f"{sizes[k]['stages'][stage]['peak_rss_mb']:,.0f}" for k in keys]
        cells += [f"{rat[k][stage]['time_per_listing_ratio']:.2f} | {rat[k][stage]['peak_rss_ratio']:.2f}"
                  for k in keys[1:]]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    top = keys[-1]
    fails = [f"{stage} ({what} {rat[top][stage][what]:.2f})" for stage in STAGES
             for what in ("peak_rss_ratio", "time_per_listing_ratio")
             if rat[top][stage][what] > GOAL_RATIO]
    lines += ["", "### Verdict", "",
              f"Goal: at {top}x every stage's peak RSS and time per listing within {GOAL_RATIO}x "
              f"of {keys[0]}x. " + ("**Met.**" if not fails else "**Not met** by: " + ", ".join(fails) + ".")]
    p = report["projection"]
    per_task = p["per_shard_tasks"]
    lines += ["", "### Projection: 2M listings on EKS", "",
              f"{p['n_listings']:,} listings (~{p['n_photos']:,} photos) in {p['shards']} shards "
              f"of {p['shard_rows']:,}; the per-shard stages ({', '.join(PER_SHARD)}) as "
              f"{p['per_shard_parallel_tasks']} parallel tasks on {p['cpu_nodes']} "
              f"{p['prices']['cpu_instance']} nodes ({p['prices']['cpu_vcpus']} vCPU, "
              f"{p['prices']['cpu_memory_gib']} GiB: {p['per_shard_tasks_per_node']} task(s) a "
              f"node fit its memory), the trainers on one {p['prices']['gpu_instance']}, timed as "
              f"measured here on CPU with {p['epochs']} epoch(s). Each stage's time is a fixed "
              "part plus a part per listing, fitted over the sizes above; a per-shard stage's "
              "per task, fitted over its tasks against their listings:", ""]
    for stage, t in per_task.items():
        lines.append(f"- {stage} ({t['n_tasks']} tasks): {t['fixed_s']:.1f} s + "
                     f"{t['per_listing_ms']:.2f} ms a listing, peak RSS {t['rss_fixed_mb']:,.0f} MB "
                     f"+ {t['rss_per_listing_kb']:.1f} KB a listing, so "
                     f"{t['s_at_shard_rows'] / 60:.1f} min and "
                     f"{t['peak_rss_mb_at_shard_rows']:,.0f} MB a task at {p['shard_rows']:,} "
                     "listings" + ("." if t.get("memory_rows", p["shard_rows"]) >= p["shard_rows"]
                                   else f" (memory at {t['memory_rows']:,.0f} listings: "
                                        "image_model.feature_chunk photos at a time)."))
    lines += ["", "| stage | fixed s | ms a listing | hours at 2M |", "|---|---:|---:|---:|"]
    for s, h in p["hours_by_stage"].items():
        f = p["fits"].get(s) or per_task[s]
        lines.append(f"| {s} | {f['fixed_s']:.1f} | {f['per_listing_ms']:.2f} | {h:.2f} |")
    lines += [f"| **total (stages in sequence)** | | | **{p['wall_hours']:.1f}** |", "",
              f"Node-hours: CPU {p['cpu_node_hours']:.1f}, GPU {p['gpu_node_hours']:.1f}; at "
              f"${p['prices']['cpu_usd_per_hour']}/h and ${p['prices']['gpu_usd_per_hour']}/h "
              f"(on-demand list prices, us-east-1, assumed): **${p['usd']:.0f}** a run.", ""]
    lines += ["Notes:"] + [f"- {n}" for n in report.get("notes", [])]
    (REPORTS / "scale.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "gumtree"))
    ap.add_argument("--base", type=int, default=6081, help="listings of the 1x catalogue")
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--shard-rows", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--workdir", default="/tmp/bench-scale")
    ap.add_argument("--note", action="append", default=[], help="a note for the report")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                    help="a config override on top of the bench's (e.g. drift.reference_max_listings=900)")
    ap.add_argument("--rerun", nargs="+", choices=STAGES, dest="stages", default=None,
                    help="measure only these stages again, on the work directories and over "
                         "the figures of the last report (bench/reports/scale.json)")
    ap.add_argument("--report-only", action="store_true",
                    help="measure nothing: write the report again from scale.json (with --note)")
    ap.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--overrides", help=argparse.SUPPRESS)
    ap.add_argument("--shard", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        run_child(args.child, Path(args.work), json.loads(args.overrides), args.shard)
        return 0
    if args.report_only:
        report = json.loads((REPORTS / "scale.json").read_text())
        report["notes"] = report.get("notes", []) + args.note
        report["projection"] = projection(report["sizes"], argparse.Namespace(
            epochs=report["run"]["epochs"]))
        write_report(report)
        say(f"wrote {REPORTS / 'scale.md'} and scale.json again (nothing measured)")
        return 0
    last = json.loads((REPORTS / "scale.json").read_text()) if args.stages else None
    sizes = dict(last["sizes"]) if last else {}          # a rerun keeps the sizes not named
    sizes.update({str(f): run_size(f, args, last["sizes"][str(f)] if last else None)
                  for f in args.factors})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                            capture_output=True).stdout.strip()
    notes = list(last.get("notes", [])) if last else []
    if last:
        sets = f" with {', '.join(args.sets)}" if args.sets else ""
        notes.append(f"{', '.join(args.stages)} at {', '.join(f'{f}x' for f in args.factors)} "
                     f"measured again{sets} at commit {commit} on the same catalogues (the "
                     f"rest: commit {last['run']['commit']}).")
        commit = f"{last['run']['commit']} (+ {commit} for {', '.join(args.stages)})"
    command = "python -m bench.bench_scale " + " ".join(sys.argv[1:] if argv is None else argv)
    if last:
        command = f"{last['run']['command']}`, then `{command}"
    report = {"run": {"command": command,
                      "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                      "commit": commit, "base": args.base, "factors": args.factors,
                      "shard_rows": args.shard_rows, "epochs": args.epochs},
              "sizes": sizes, "ratios": ratios(sizes), "notes": notes + args.note}
    report["projection"] = projection(sizes, args)
    write_report(report)
    say(f"wrote {REPORTS / 'scale.md'} and scale.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
