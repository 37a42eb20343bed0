"""What a stage's generated KFP wrapper runs inside its task (see marketsearch.steps).

Moves records in and out of the task's artifacts, opens the stage's MLflow child run under the
pipeline run's parent, logs the stage's config as params and its record's metrics, report and
training curves, fills the KFP UI's views, and prints the stage's start and one-line result.
No stage logic lives here.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from marketsearch.records.base import Record
from marketsearch.steps import STEPS, Step
from marketsearch.steps.config_view import COMMON_READS, TOP_LEVEL_KEYS, config_from

log = logging.getLogger(__name__)


def say(text: str) -> None:
    """A line for the person at the terminal (the run's console, not its log file)."""
    print(f"[marketsearch] {text}", file=sys.stderr, flush=True)


def run_step(module: str, name: str, args: dict):
    importlib.import_module(module)
    step: Step = STEPS[name]
    from marketsearch import tracking

    cfg = config_from({k: args[k] for k in step.reads}, name)
    kwargs = {param: _load_input(kind, args[param]) for param, kind in step.inputs.items()
              if param in args}       # (a KFP task passes them all; a test may leave one out)
    kwargs.update({p: args[p] for p in step.params})
    kwargs.update({param: args[artifact].uri for param, artifact in step.uris.items()})
    if step.out_dir:
        kwargs["out_dir"] = args[step.output[0]].path
    say(f"{name}: started")
    start = time.time()
    with (tracking.stage_run(cfg, name) if step.tracked else contextlib.nullcontext()):
        if step.tracked:
            tracking.log_params(tracking.flatten({
                r: args[r] if r in TOP_LEVEL_KEYS else json.loads(args[r])
                for r in step.reads if r not in COMMON_READS}))
        try:
            result = step.func(cfg, **kwargs)
        except Exception as exc:
            partial = getattr(exc, "record", None)   # what the stage could say before failing
            if isinstance(partial, Record) and step.output:
                publish(step, partial, args)
            say(f"{name}: FAILED after {time.time() - start:.0f} s: {exc}")
            raise
        if isinstance(result, Record):
            publish(step, result, args)
        elif isinstance(result, Mapping):
            tracking.log_numbers(result)
    headline = (result.headline() if isinstance(result, Record) else result
                if isinstance(result, str) else
                ", ".join(f"{k} {v}" for k, v in result.items()) if isinstance(result, Mapping)
                else "")
    say(f"{name}: done in {time.time() - start:.0f} s{': ' + headline if headline else ''}")
    return step.returns(result) if step.returns else None


def _load_input(kind, artifact):
    """The record(s) of an input artifact; a list input (a fan-out's dsl.Collected) given one
    artifact takes it as a list of one."""
    if isinstance(kind, list):
        many = artifact if isinstance(artifact, (list, tuple)) else [artifact]
        return [kind[0].load(a.path) for a in many]
    return kind.load(artifact.path)


def publish(step: Step, record: Record, args: dict) -> None:
    """Save the record into the output artifact; log it to MLflow and the KFP UI."""
    import mlflow

    from marketsearch import tracking

    out = args[step.output[0]] if step.output else None
    if out is not None:
        Path(out.path).mkdir(parents=True, exist_ok=True)
        record.save(out.path)
    metrics = record.metrics()
    tracking.log_numbers(metrics)
    flat = {k: v for k, v in tracking.flatten(metrics).items()
            if isinstance(v, (int, float, str, bool))}
    if out is not None:
        out.metadata.update(flat)
    if hasattr(record, "history"):
        tracking.log_history(record.history, getattr(record, "kind", step.name))
    report = record.report(out.path) if out is not None else None
    if report is not None:
        for png in report.pngs:
            mlflow.log_artifact(str(png), "plots")
        if report.markdown:
            mlflow.log_text(report.markdown, f"{step.name}.md")
        if report.summary:
            mlflow.log_text(json.dumps(report.summary, indent=2, default=str),
                            f"{step.name}_summary.json")
    for view, kind in step.views.items():
        _fill_view(args[view], kind, record, report, flat)


def _fill_view(artifact, kind: str, record: Record, report, flat: dict) -> None:
    from marketsearch.reports import html_page

    if kind == "HTML":
        Path(artifact.path).write_text(
            html_page(report.title, report.pngs, report.summary) if report else "<html></html>")
    elif kind == "Markdown":
        Path(artifact.path).write_text(report.markdown if report and report.markdown else "")
    elif kind == "Metrics":
        for key, value in flat.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                artifact.log_metric(key.replace(".", "_"), float(value))
    elif kind == "ClassificationMetrics":
        labels, matrix = record.confusion()
        artifact.log_confusion_matrix(labels, matrix)
