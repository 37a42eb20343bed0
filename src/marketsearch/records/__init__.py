"""Typed records between stages (see base.Record): each writes itself to an artifact directory
and reads itself back, and names its files in one place (``FILES``).

    ingest       -> Snapshot (in shards; SnapshotShards reads one at a time)
    prepare_shard -> CleanData (one shard; CleanShard reads it lazily)
    featurize_shard -> ShardFeatures (one shard's photos' backbone features, in the cache)
    gather_clean -> CleanPlan (splits, counts; the shards stay where they are:
                    marketsearch.catalogue.CleanCatalogue reads plan + shards)
    validate     -> ValidatedData     clean -> CleanData     (one whole shard)
    train_image  -> TrainedModel      train_text -> TrainedModel      train_fusion -> TrainedModel
    build_index  -> Bundle (marketsearch.bundle)
    evaluate     -> Evaluation (with its Decision)   deploy -> Deployment
    drift_check  -> DriftResult
"""
from marketsearch.records.base import Record, Report
from marketsearch.records.data import (CleanData, CleanPlan, CleanShard, Snapshot, SnapshotShards, ValidatedData,
                                       report_markdown)
from marketsearch.records.models import ShardFeatures, TrainedModel
from marketsearch.records.outcomes import Decision, Deployment, DriftResult, Evaluation

__all__ = ["CleanData", "CleanPlan", "CleanShard", "Decision", "Deployment", "DriftResult", "Evaluation", "Record", "Report",
           "ShardFeatures", "Snapshot", "SnapshotShards", "TrainedModel", "ValidatedData", "report_markdown"]
