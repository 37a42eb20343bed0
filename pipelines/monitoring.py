"""The monitoring DAG, run on a schedule: ingest -> validate -> drift_check ->
[if drift] the training DAG's shard fan-out on the same snapshot (prepare_shard per shard,
gather_clean) and its training subgraph (load_db ... evaluate -> [if promoted] deploy),
under the same exit handler as the training DAG.

The drift check validates the snapshot whole: it compares the new listings with the
champion's reference.

The source is read whole (on a laptop: ``data.local_dir`` plus ``data.extra_local_dirs``, the
new listings); drift_check judges only the listings the champion has never seen. When it
finds drift, the champion is retrained on everything ingested and the challenger replaces it
only if evaluate finds it better on the same test pairs. ``monitoring.dry_run`` stops after
the drift checks.
"""

from kfp import dsl

from marketsearch.config import Config
from marketsearch.pipelines.training import (build_pipeline, ingest_snapshot, prepared_shards,
                                             training_subgraph)

PIPELINE_NAME = "marketsearch-monitoring"
DESCRIPTION = ("New listings -> validated -> drift checks against the champion's training "
               "reference -> retrain, evaluate and promote only on drift.")


def monitoring_dag(c, p, cfg) -> None:
    ing = ingest_snapshot(c, p)
    validated = c.validate(p, raw_snapshot=ing.outputs["raw_snapshot"]).outputs["validated"]
    drift = c.drift_check(p, validated=validated)
    # drift_check returns "retrain": drift found and not monitoring.dry_run
    with dsl.If(drift.outputs["Output"] == True, name="drifted"):  # noqa: E712
        training_subgraph(c, p, prepared_shards(c, p, ing, cfg.kfp.shard_parallelism))


def build_monitoring_pipeline(cfg: Config):
    """The monitoring pipeline, with the config as its parameters' defaults."""
    return build_pipeline(cfg, PIPELINE_NAME, DESCRIPTION, monitoring_dag)
