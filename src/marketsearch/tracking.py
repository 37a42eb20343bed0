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


def start_parent(cfg: Config, run_name: str, tags: Mapping[str, str] | None = None) -> str:
    """Create the pipeline run's parent MLflow run (left open for the stages) and return its id."""
    mlflow = _mlflow()
    setup(cfg)
    client = mlflow.MlflowClient()
    experiment_id = mlflow.get_experiment_by_name(cfg.mlflow.experiment).experiment_id
    run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
    params = flatten(cfg.model_dump(by_alias=True))
    from mlflow.entities import Param

    batch = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(batch), 100):
        client.log_batch(run.info.run_id, params=batch[start:start + 100])
    return run.info.run_id


def end_parent(cfg: Config, run_id: str, status: str = "FINISHED") -> None:
    mlflow = _mlflow()
    setup(cfg)
    mlflow.MlflowClient().set_terminated(run_id, status=status)


@contextlib.contextmanager
def stage_run(cfg: Config, parent_run_id: str | None, stage: str) -> Iterator[object]:
    """A child run named after the stage, nested under the pipeline's parent run."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    mlflow = _mlflow()
    setup(cfg)
    kwargs = {"parent_run_id": parent_run_id} if parent_run_id else {}
    with mlflow.start_run(run_name=stage, nested=bool(parent_run_id), **kwargs) as run:
        mlflow.set_tag("stage", stage)
        yield run


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


def report_training(model_dir: str | Path, prefix: str, title: str, result: Mapping,
                    html_path: str | Path) -> None:
    """In the active stage run: log the per-epoch history and ``result``, plot the training
    curves to MLflow, and write them as the KFP UI's HTML artifact."""
    import json

    from marketsearch import plots
    from marketsearch.reports import html_page

    mlflow = _mlflow()
    history = json.loads((Path(model_dir) / "history.json").read_text())
    log_history(history, prefix)
    log_numbers(result)
    png = plots.training_curves_png(epoch_curves(history), Path(model_dir) / "training_curves.png", title)
    mlflow.log_artifact(str(png), "plots")
    Path(html_path).write_text(html_page(f"{title} training", [png], dict(result)))
