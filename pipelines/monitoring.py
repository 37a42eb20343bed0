"""The monitoring DAG, run on a schedule: ingest -> validate -> drift_check ->
[if drift] the training subgraph on the same validated snapshot (clean ... evaluate ->
[if promoted] deploy).

The source is read whole (on a laptop: ``data.local_dir`` plus ``data.extra_local_dirs``, the
new listings); drift_check judges only the listings the champion has never seen. When it
finds drift, the champion is retrained on everything ingested and the challenger replaces it
only if evaluate finds it better on the same test pairs. ``monitoring.dry_run`` stops after
the drift checks.
"""

from kfp import dsl

from marketsearch.config import Config
from marketsearch.pipelines.training import make_components, training_subgraph

PIPELINE_NAME = "marketsearch-monitoring"


def build_monitoring_pipeline(cfg: Config):
    """The pipeline function, with the config embedded as the default of its one parameter."""
    c = make_components(cfg)

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="New listings -> validated -> drift checks against the champion's "
                              "training reference -> retrain, evaluate and promote only on drift.")
    def monitoring(config_json: str = cfg.to_json()):
        ing = c.ingest(config_json=config_json, pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
        val = c.validate(config_json=config_json, parent_run_id=ing.outputs["Output"],
                         raw_snapshot=ing.outputs["raw_snapshot"])
        drift = c.drift_check(config_json=config_json, parent_run_id=ing.outputs["Output"],
                      validated=val.outputs["validated"])
        # drift_check returns "retrain": drift found and not monitoring.dry_run (read at run
        # time from config_json, so a package compiled once serves both)
        with dsl.If(drift.outputs["Output"] == True, name="drifted"):  # noqa: E712
            training_subgraph(c, config_json, ing.outputs["Output"], val.outputs["validated"])

    return monitoring
