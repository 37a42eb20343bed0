"""The monitoring DAG, run on a schedule, under the same exit handler as the training DAG:

    open_run -> ingest (in shards)
        -> ParallelFor shard: prepare_shard (validate + clean one shard) -> featurize_shard
        -> gather_clean (the plan)
        -> drift_check (the clean shards, dsl.Collected, with the plan)
        -> [if drift] the training subgraph on those same clean shards
           (load_db ... evaluate -> [if promoted] deploy)
    close_run (exit handler: whatever happened)

The snapshot is validated and cleaned once, shard by shard, by the training DAG's own fan-out
(``prepared_shards``): no task holds the whole snapshot, and a retrain reads the shards the
drift checks read. The source is read whole (on a laptop: ``data.local_dir`` plus
``data.extra_local_dirs``, the new listings); drift_check judges only the listings no retrain
has considered, found from the plan's listing ids. When it finds drift, the champion is
retrained on everything ingested and the challenger replaces it only if evaluate finds it
better on the same test pairs. ``monitoring.dry_run`` stops after the drift checks.
"""

from kfp import dsl

from marketsearch.config import Config
from marketsearch.pipelines.training import (build_pipeline, ingest_snapshot, prepared_shards,
                                             training_subgraph)

PIPELINE_NAME = "marketsearch-monitoring"
DESCRIPTION = ("New listings -> validated, clean shards -> drift checks against the champion's "
               "training reference -> retrain, evaluate and promote only on drift.")


def monitoring_dag(c, p, cfg) -> None:
    shards = prepared_shards(c, p, ingest_snapshot(c, p), cfg.kfp.shard_parallelism)
    drift = c.drift_check(p, **shards.clean())
    # drift_check returns "retrain": drift found and not monitoring.dry_run
    with dsl.If(drift.outputs["Output"] == True, name="drifted"):  # noqa: E712
        training_subgraph(c, p, shards)


def build_monitoring_pipeline(cfg: Config):
    """The monitoring pipeline, with the config as its parameters' defaults."""
    return build_pipeline(cfg, PIPELINE_NAME, DESCRIPTION, monitoring_dag)
