"""The monitoring sections: the drift checks (drift) and their recurring run (monitoring)."""
from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, model_validator

from .base import _Section


class DriftConfig(_Section):
    """The drift checks of the recurring run (marketsearch.drift; measured false-alarm and
    detection rates in bench/reports/drift.md). Each training run saves a reference of the
    listings of ``reference_splits`` into its bundle (``reference/``); a new batch is
    summarised the same way and checked against it; any check that fires means drift."""
    # Which checks run (and count towards the Bonferroni split of alpha): category_mix, price,
    # text_length, oov_rate, photo_embedding, text_embedding, photo_brightness.
    checks: list[Literal["category_mix", "price", "text_length", "oov_rate", "photo_embedding",
                         "text_embedding", "photo_brightness"]] = [
        "category_mix", "price", "text_length", "oov_rate", "photo_embedding", "text_embedding",
        "photo_brightness"]
    # Family-wise false-alarm budget of the p-value tests (all checks but oov_rate); with
    # bonferroni each test uses alpha / (number of p-value tests): 0.05 / 6 ~ 0.0083.
    alpha: float = Field(0.05, gt=0, lt=1)
    bonferroni: bool = True
    # A batch with fewer listings than this is refused with an error naming the shortfall: the
    # tests say nothing useful on a handful of rows. With fewer photos than min_photos only the
    # photo checks are skipped (and say so); the others still run.
    min_listings: int = Field(50, ge=2)
    min_photos: int = Field(50, ge=0)
    # Seeded random samples kept in the reference (and drawn from a batch): prices,
    # tokens-per-text and per-photo mean luminance values, and embedding rows (photos,
    # listing texts).
    sample_size: int = Field(5000, ge=10)
    embedding_rows: int = Field(500, ge=10)
    # build_index draws the reference from a seeded sample of at most this many listings (its
    # own statistics are samples of sample_size / embedding_rows rows). The sample's tables
    # are in memory; its photos stay in their shards, read only where those samples take them.
    reference_max_listings: int = Field(5000, ge=100)
    # drift_check judges a seeded sample of at most this many of the new listings (every one
    # when there are fewer; their photos read from the shards as for the reference): what
    # drift_check's memory grows with, up to this, however many listings arrive at once.
    # At least min_listings.
    batch_max_listings: int = Field(5000, ge=2)
    # category_mix: chi-square p < alpha AND total variation distance >= this (practical
    # significance: on very large batches every tiny shift is "significant").
    category_min_tvd: float = Field(0.05, ge=0, le=1)
    # price: KS p < alpha AND the median log-price moved by at least this either way,
    # |log(batch median / reference median)| over the positive prices (0 turns the floor off):
    # what the price-suggestion model, a model of log(price), is then off by on every listing.
    # 0.1 (about 10%) sits at the noise of 500-listing in-distribution batches (|shift| up to
    # 0.12: round prices, a median of £40 becoming £45) and below the 0.26 of prices x1.3 (5%
    # of batches under 0.15), so x1.3 and x1.5 are caught about as often as by KS alone (95%
    # and 100% of 500-listing batches; the check fires on <= 1% of in-distribution ones),
    # while a batch large enough for KS to flag a few percent does not retrain over it.
    price_min_log_shift: float = Field(0.1, ge=0)
    # text_length: KS p < alpha AND D >= this (0 turns the floor off).
    text_length_min_ks: float = Field(0.1, ge=0, le=1)
    # photo_brightness: KS on per-photo mean luminance (0.299 R + 0.587 G + 0.114 B, 0-255),
    # p < alpha AND D >= this (0 turns the floor off). The ImageNet photo model's embeddings
    # ignore exposure, so darker or brighter photos are caught here, not by photo_embedding.
    # Measured on the shared listings: in-distribution batches reach D 0.09 (500 listings)
    # and 0.11 (250); photos x0.9 darker give D 0.16, x0.7 darker 0.51.
    photo_brightness_min_ks: float = Field(0.15, ge=0, le=1)
    # oov_rate: batch OOV rate minus the reference's above this (absolute).
    oov_max_increase: float = Field(0.05, gt=0)
    # Embedding checks: MMD with an RBF kernel (median-heuristic bandwidth from the reference),
    # permutation p-value over this many permutations, each side subsampled to mmd_max_rows.
    mmd_permutations: int = Field(200, ge=20)
    mmd_max_rows: int = Field(500, ge=10)
    # The training run's reference: category counts, prices, text lengths and photo luminance
    # of the listings the model learned from (reference_splits); OOV rate and photo/text
    # embeddings of held-out listings (holdout_splits; empty: reference_splits), because the
    # model fits its own training rows (measured: the text embeddings of training texts flag
    # every unseen batch, and the training texts' OOV rate is half an unseen text's; see
    # marketsearch.drift.build_reference).
    reference_splits: list[Literal["train", "val", "test"]] = ["train"]
    holdout_splits: list[Literal["train", "val", "test"]] = ["val"]

    @model_validator(mode="after")
    def _checks_can_fire(self):
        if not self.checks or len(set(self.checks)) != len(self.checks):
            raise ValueError(f"drift.checks must name each check once, at least one: {self.checks}")
        n_tests = sum(1 for c in self.checks if c != "oov_rate")  # as drift.per_test_alpha
        alpha = self.alpha / max(n_tests, 1) if self.bonferroni else self.alpha
        embedding = [c for c in self.checks if c.endswith("_embedding")]
        if embedding and 1 / (1 + self.mmd_permutations) >= alpha:
            raise ValueError(
                f"drift.mmd_permutations={self.mmd_permutations}: the smallest permutation "
                f"p-value, 1/{1 + self.mmd_permutations}, is not below the per-test alpha "
                f"{alpha:.3g}, so {', '.join(embedding)} could never fire; use at least "
                f"{int(1 / alpha)} permutations")
        if self.batch_max_listings < self.min_listings:
            raise ValueError(
                f"drift.batch_max_listings={self.batch_max_listings} is below "
                f"drift.min_listings={self.min_listings}: no batch could ever be judged")
        return self


class MonitoringConfig(_Section):
    """The recurring drift check on a KFP deployment (``marketsearch schedule``,
    marketsearch.schedule): one recurring run of the monitoring pipeline
    (pipelines/monitoring.py) in its own experiment, replaced whenever it is scheduled again."""
    # KFP cron (robfig/cron): six fields, SECONDS first: "sec min hour day-of-month month
    # day-of-week", or a descriptor such as "@daily" / "@every 6h". The default is 03:00:00
    # every day, in the time zone of KFP's ScheduledWorkflow controller (UTC unless set).
    cron: str = "0 0 3 * * *"
    # KFP API endpoint (e.g. http://localhost:8888 behind `kubectl port-forward`, or the
    # cluster's ml-pipeline-ui URL); the env var named by kfp_host_env wins over kfp_host.
    kfp_host: str | None = None
    kfp_host_env: str = "KFP_HOST"
    # Bearer token for an authenticated endpoint, only ever from this env var (unset: none).
    kfp_token_env: str = "KFP_TOKEN"
    # Multi-user KFP: the profile namespace the experiment and runs live in (None: the
    # client's own context / single-user mode).
    namespace: str | None = None
    experiment: str = "marketsearch-monitoring"
    recurring_run_name: str = "marketsearch-drift-check"
    description: str = "Daily drift check of new listings against the champion's reference."
    # Runs of the schedule at once (KFP allows 1 to 10); catchup false: after a pause only the
    # latest missed run starts, not one per missed day.
    max_concurrency: int = Field(1, ge=1, le=10)
    catchup: bool = False
    # Kubernetes service account of the runs' pods (None: KFP's default, pipeline-runner).
    service_account: str | None = None
    # Root of the runs' output artifacts (None: the KFP deployment's default pipeline root).
    pipeline_root: str | None = None
    # Send this config as the runs' parameters, one per section (false: the defaults compiled
    # into the package are used).
    pass_config: bool = True
    # Compile/run the monitoring DAG without its training branch: drift checks only
    # (`marketsearch monitor --dry-run`).
    dry_run: bool = False

    @model_validator(mode="after")
    def _valid_cron(self) -> "MonitoringConfig":
        cron = self.cron.strip()
        if not cron.startswith("@") and len(cron.split()) != 6:
            raise ValueError(
                f"monitoring.cron {self.cron!r}: KFP's cron has 6 fields, seconds first "
                f"('sec min hour day-of-month month day-of-week', e.g. '0 0 3 * * *' for "
                f"03:00 daily), or a descriptor such as '@daily'")
        return self

    def host(self) -> str | None:
        """The KFP endpoint: the env var ``kfp_host_env`` if set, else ``kfp_host``."""
        return os.environ.get(self.kfp_host_env) or self.kfp_host
