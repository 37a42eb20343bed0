"""Typed records between stages (see base.Record): each writes itself to an artifact directory
and reads itself back, and names its files in one place (``FILES``).

    ingest       -> Snapshot          validate   -> ValidatedData     clean -> CleanData
    train_image  -> TrainedModel      train_text -> TrainedModel      train_fusion -> TrainedModel
    build_index  -> Bundle (marketsearch.bundle)
    evaluate     -> Evaluation (with its Decision)   deploy -> Deployment
    drift_check  -> DriftResult
"""
from marketsearch.records.base import Record, Report
from marketsearch.records.data import CleanData, Snapshot, ValidatedData, report_markdown
from marketsearch.records.models import TrainedModel
from marketsearch.records.outcomes import Decision, Deployment, DriftResult, Evaluation

__all__ = ["CleanData", "Decision", "Deployment", "DriftResult", "Evaluation", "Record", "Report",
           "Snapshot", "TrainedModel", "ValidatedData", "report_markdown"]
