"""The pipeline run's MLflow parent: opened first, closed by the DAG's exit handler.

``open_run`` creates the parent run (the whole config as its params) for this pipeline run;
the stages find it by the pipeline run's id (tracking.pipeline_run), so no stage takes a
per-run id as an input. It also fingerprints the source (marketsearch.fingerprint), the one
input of ingest that changes when the data does: ingest may then be cached. Both are never
cached and both belong to the start of a run, so they share one task (a task costs a process
start, about 3 s locally). ``close_run`` runs under ``dsl.ExitHandler`` whatever happened, and
closes the parent with the pipeline's final state, failing any stage run left RUNNING.
"""
import logging

from marketsearch.config import Config
from marketsearch.steps import step
from marketsearch.steps.config_view import config_names

log = logging.getLogger(__name__)


@step(reads=tuple(config_names()), params={"run_name": "str"}, returns=str, returns_type="str", cached=False,
      tracked=False)
def open_run(cfg: Config, run_name: str) -> str:
    """Create the parent run, tagged with the pipeline run it belongs to (unless it exists);
    return the source's fingerprint, which changes whenever a row or a photo does."""
    from marketsearch import tracking
    from marketsearch.fingerprint import source_fingerprint

    run = tracking.pipeline_run() or run_name
    if not tracking.find_parent(cfg, run):
        tracking.start_parent(cfg, run_name=run_name, tags={"pipeline_run": run})
    return source_fingerprint(cfg)


def final_status(state: str) -> str:
    """KFP's final state of the pipeline -> MLflow's run status."""
    return "FINISHED" if state.upper() in ("SUCCEEDED", "SUCCESS") else "FAILED"


@step(params={"status": "dsl.PipelineTaskFinalStatus"}, cached=False, tracked=False)
def close_run(cfg: Config, status) -> str:
    """Close the parent run with the pipeline's final state; returns what it did."""
    from marketsearch import tracking

    parent = tracking.find_parent(cfg)
    if parent is None:
        return "no parent run to close"
    mlflow_status = final_status(status.state)
    dangling = tracking.end_parent(cfg, parent, mlflow_status)
    error = getattr(status, "error_message", "") or ""
    return (f"pipeline {status.state}: MLflow run {parent[:8]} {mlflow_status}"
            + (f"; stage runs left open, now FAILED: {', '.join(dangling)}" if dangling else "")
            + (f" ({error})" if error else ""))
