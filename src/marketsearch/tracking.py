"""MLflow glue: one parent run per pipeline run, one nested child run per stage."""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from marketsearch.config import Config

log = logging.getLogger(__name__)


def _mlflow():
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    return mlflow


def setup(cfg: Config) -> str:
    """Point MLflow at the configured store and make sure the experiment exists."""
    mlflow = _mlflow()
    uri = cfg.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is None:
        location = cfg.mlflow.artifact_location
        if location:
            location = location.format(run_dir=cfg.run_dir)
            if "://" not in location:
                Path(location).mkdir(parents=True, exist_ok=True)
                location = Path(location).resolve().as_uri()
        experiment_id = mlflow.create_experiment(cfg.mlflow.experiment, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def flatten(data: Mapping, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


PIPELINE_RUN_ENV = "MARKETSEARCH_PIPELINE_RUN"


def pipeline_run() -> str | None:
    """The pipeline run this process belongs to: set by ``marketsearch run`` locally and from
    the pod's ``pipeline/runid`` label on a cluster (marketsearch.steps.kfp). It is never a
    task input, so it cannot spoil a task's cache key."""
    return os.environ.get(PIPELINE_RUN_ENV) or None


def find_parent(cfg: Config, run: str | None = None) -> str | None:
    """The id of the MLflow parent run of pipeline run ``run`` (default: this process's)."""
    run = run or pipeline_run()
    if not run:
        return None
    mlflow = _mlflow()
    experiment_id = setup(cfg)
    found = mlflow.MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.pipeline_run = '{run}' and tags.role = 'pipeline'",
        max_results=1)
    return found[0].info.run_id if found else None


def start_parent(cfg: Config, run_name: str, tags: Mapping[str, str] | None = None) -> str:
    """Create the pipeline run's parent MLflow run (left open for the stages) with the whole
    config as its params, and return its id."""
    mlflow = _mlflow()
    experiment_id = setup(cfg)
    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id, run_name=run_name,
                            tags={"role": "pipeline", **dict(tags or {})})
    from mlflow.entities import Param

    params = flatten(cfg.model_dump(by_alias=True))
    batch = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(batch), 100):
        client.log_batch(run.info.run_id, params=batch[start:start + 100])
    return run.info.run_id


def end_parent(cfg: Config, run_id: str, status: str = "FINISHED") -> list[str]:
    """Close the parent run with ``status``; a child run still RUNNING (its stage died without
    closing it) is closed FAILED. Returns the names of the children so closed."""
    mlflow = _mlflow()
    experiment_id = setup(cfg)
    client = mlflow.MlflowClient()
    children = client.search_runs([experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    dangling = [c for c in children if c.info.status == "RUNNING"]
    for child in dangling:
        client.set_terminated(child.info.run_id, status="FAILED")
    client.set_terminated(run_id, status=status)
    return [c.info.run_name for c in dangling]


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str) -> Iterator[object]:
    """A child run named after the stage, nested under the pipeline run's parent (when this
    process belongs to one; otherwise a run of its own)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    mlflow = _mlflow()
    setup(cfg)
    parent = find_parent(cfg)
    kwargs = {"parent_run_id": parent, "nested": True} if parent else {}
    with mlflow.start_run(run_name=stage, **kwargs) as run:
        mlflow.set_tag("stage", stage)
        if pipeline_run():
            mlflow.set_tag("pipeline_run", pipeline_run())
        yield run


def log_params(params: Mapping[str, object]) -> None:
    """Log params in batches (MLflow caps a batch at 100), values cut to MLflow's limit."""
    mlflow = _mlflow()
    items = [(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start:start + 100]))


def log_numbers(values: Mapping[str, object], prefix: str = "") -> None:
    """Log every numeric leaf of a (nested) mapping as a metric."""
    mlflow = _mlflow()
    metrics = {}
    for key, value in flatten(values, prefix).items():
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)):
            metrics[key.replace(" ", "_").replace("&", "and").replace(",", "")] = float(value)
    if metrics:
        mlflow.log_metrics(metrics)


def epoch_curves(history: Mapping) -> dict[str, list[float]]:
    """The per-epoch series of a training history (the models nest them under "train")."""
    if isinstance(history.get("train"), Mapping):
        history = history["train"]
    return {k: [float(x) for x in v] for k, v in history.items() if isinstance(v, list)}


def log_history(history: Mapping, prefix: str) -> None:
    mlflow = _mlflow()
    for key, values in epoch_curves(history).items():
        for step, value in enumerate(values):
            mlflow.log_metric(f"{prefix}.{key}", float(value), step=step)


def training_summary(history: Mapping, **counts: int) -> dict:
    """Counts, epochs run, best val accuracy and seconds of a training history."""
    curves = epoch_curves(history)
    return {**{k: int(v) for k, v in counts.items()}, "epochs_run": len(curves.get("loss", [])),
            "best_val_accuracy": max(curves.get("val_accuracy", [float("nan")])),
            "seconds": round(float(history.get("seconds", 0.0)), 1)}
