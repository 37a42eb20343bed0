"""Running a pipeline on this machine through kfp.local, and what a person reads after it.

``run_locally`` runs the training or monitoring DAG as one pipeline run (its id reaches the
stages by environment, tracking.pipeline_run), with kfp.local's cache and a quiet terminal
(marketsearch.console). The summaries are read from the records the run left.
"""
from __future__ import annotations

import builtins
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

log = logging.getLogger("marketsearch")


def latest_run_dir(pipeline_root: Path, name: str, since: float = 0.0) -> Path | None:
    runs = [p for p in pipeline_root.glob(f"{name}-*") if p.is_dir() and p.stat().st_mtime >= since]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def run_summary(run_dir: Path) -> dict:
    """What a person wants to see after a run, from its evaluation (evaluate always runs, and
    its record carries the figures of the data and the index it was given, cached or not)."""
    evaluation = _read(run_dir / "evaluate" / "evaluation" / "evaluation.json") or {}
    decision = _read(run_dir / "evaluate" / "evaluation" / "decision.json")
    inputs = evaluation.get("inputs", {})
    source, cleaned = inputs.get("source", {}), inputs.get("clean", {})
    validated = cleaned.get("validated", {})
    out: dict = {"run_dir": str(run_dir), "content_hash": source.get("content_hash")}
    for table, key in (("listings", "n_products"), ("photos", "n_images")):
        rows_in = source.get(key)
        quarantined = validated.get(f"{key}_quarantined", 0) + cleaned.get(f"{key}_quarantined", 0)
        rows_clean = cleaned.get(key)
        out[table] = {"in": rows_in, "clean": rows_clean, "quarantined": quarantined,
                      "accounted": rows_in == (rows_clean or 0) + quarantined}
    if evaluation:
        from marketsearch.evaluation import headline

        out["test"] = headline(evaluation)
    if (evaluation.get("price") or {}).get("models"):
        out["price"] = {name: {k: round(float(v), 3) for k, v in figures.items()
                               if k in ("mdape", "within_25", "coverage_80") and v is not None}
                        for name, figures in sorted(evaluation["price"]["models"].items(),
                                                    key=lambda item: item[0] != "model")}
    if decision:
        out["decision"] = {k: decision.get(k) for k in ("promote", "reason", "version")}
        if decision.get("price_warning"):
            out["decision"]["price_warning"] = decision["price_warning"]
    if inputs.get("index"):
        out["index"] = inputs["index"]
    return out


def run_locally(cfg, build, name: str, verbose: bool = False) -> tuple[Path | None, float]:
    """Run a pipeline through kfp.local (its own cache on with ``kfp.local_caching``) as one
    pipeline run: its id goes to the stages by environment (tracking.pipeline_run), never as
    an input. The full log goes to ``<run_dir>/logs/``, the terminal shows what matters
    (marketsearch.console). Returns the run's directory and its wall time in seconds."""
    import uuid

    from kfp import local

    from marketsearch import console, tracking

    root = cfg.path(cfg.kfp.pipeline_root)
    root.mkdir(parents=True, exist_ok=True)
    tracking.setup(cfg)  # create the experiment once, before the stages race to it
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               raise_on_error=True, enable_caching=cfg.kfp.local_caching)
    run = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    previous = os.environ.get(tracking.PIPELINE_RUN_ENV)
    os.environ[tracking.PIPELINE_RUN_ENV] = run       # the stage processes inherit it
    log_path = cfg.path("{run_dir}") / "logs" / f"{run}.log"
    print(f"{console.MARK} {name}: run {run}; full log: {log_path}", file=sys.stderr)
    start = time.time()
    pipeline = build(cfg)
    # kfp.local warns per task that the stage images are not plain Python images: expected,
    # the laptop runs every stage in this Python.
    warnings.filterwarnings("ignore", message="You may be attemping to run a task")
    # kfp.local indents a task's prints by swapping builtins.print for the task's duration;
    # two tasks that run at once (ParallelFor, parallel branches) each restore the print they
    # found, so one may leave the other's indenting print in place for the rest of the
    # process (the summary came out indented by four spaces). Put the real one back.
    real_print = builtins.print
    try:
        with console.quiet(log_path, verbose):
            pipeline()
    except Exception as exc:
        print(f"{console.MARK} {name} FAILED: {exc}\n{console.MARK} full log: {log_path}",
              file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        builtins.print = real_print
        if previous is None:
            os.environ.pop(tracking.PIPELINE_RUN_ENV, None)
        else:
            os.environ[tracking.PIPELINE_RUN_ENV] = previous
    return latest_run_dir(root, name, since=start - 1), time.time() - start


def print_summary(s: dict, cfg) -> None:
    print("\n=== marketsearch run ===")
    print(f"wall time: {s.get('wall_seconds', 0) / 60:.1f} min   run dir: {s.get('run_dir')}")
    for table in ("listings", "photos"):
        t = s.get(table)
        if t:
            mark = "ok" if t["accounted"] else "MISMATCH"
            print(f"{table:9s} in {t['in']} = clean {t['clean']} + quarantined {t['quarantined']}  [{mark}]")
    for m, v in (s.get("test") or {}).items():
        if isinstance(v, dict):
            print(f"test {m:7s} accuracy {v['accuracy']:.3f}  top-3 {v['top3_accuracy']:.3f}  "
                  f"macro-F1 {v['macro_f1']:.3f}")
    for name, v in (s.get("price") or {}).items():
        name = "head" if name == "model" else name.replace("_", " ")
        print(f"price {name:15s} MdAPE {v['mdape']:.3f}  within 25% {v['within_25']:.3f}  "
              f"80% interval coverage {v.get('coverage_80', float('nan')):.3f}")
    if s.get("decision"):
        d = s["decision"]
        print(f"model version {d['version']}: {'PROMOTED to champion' if d['promote'] else 'kept'} "
              f"({d['reason']})")
        if d.get("price_warning"):
            print(f"WARNING: {d['price_warning']}")
    print(f"MLflow UI: mlflow ui --backend-store-uri {cfg.tracking_uri}")
    print(f"served bundle: {cfg.path(cfg.serving.model_dir)}")


def monitor_summary(run_dir: Path) -> dict:
    """{"drift", "checks", "retrained", "promoted", ...} from a monitoring run's outputs."""
    drift = _read(run_dir / "drift-check" / "drift_report" / "drift.json") or {}
    decision = _read(run_dir / "evaluate" / "evaluation" / "decision.json")
    checks = {name: {k: c.get(k) for k in ("statistic", "threshold", "p_value", "drift")}
              for name, c in (drift.get("checks") or {}).items()}
    return {"drift": bool(drift.get("drift")), "checks": checks,
            "retrained": (run_dir / "evaluate").is_dir(),
            "promoted": bool(decision and decision.get("promote")),
            "reason": drift.get("reason"), "n_new_listings": drift.get("n_new_listings"),
            "decision": decision and {k: decision.get(k) for k in
                                      ("promote", "reason", "challenger_score", "champion_score",
                                       "version")},
            "run_dir": str(run_dir)}
