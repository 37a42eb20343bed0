"""The whole training DAG through kfp.local on the small fixture, tracked by an MLflow server."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from marketsearch.cli import main
from tests.support import mlflow_server

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "gumtree_small"
TINY = [
    "clean.image_size=32", "image_model.epochs=2", "image_model.input_size=64", "image_model.batch_size=32",
    "text_model.epochs=3", "text_model.word2vec.epochs=2", "text_model.max_len=48",
    "fusion.epochs=3", "mlflow.artifact_location=null", "data.shard_rows=20",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    with mlflow_server(tmp / "mlflow") as url:
        os.environ["MLFLOW_TRACKING_URI"] = url
        try:
            args = ["run", "--json", "--set", f"run_dir={tmp / 'runs'}",
                    "--set", f"data.local_dir={FIXTURE}"]
            for item in TINY:
                args += ["--set", item]
            yield tmp, url, args
        finally:
            os.environ.pop("MLFLOW_TRACKING_URI", None)


def _last_pipeline_run(client):
    """The newest pipeline run's parent MLflow run and its stage runs."""
    experiment = client.get_experiment_by_name("marketsearch").experiment_id
    parent = client.search_runs([experiment], filter_string="tags.role = 'pipeline'",
                                order_by=["attributes.start_time DESC"])[0]
    children = client.search_runs([experiment],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return parent, children


def _run(args, capsys):
    assert main(args) == 0
    out = capsys.readouterr().out
    return json.loads(out.strip().splitlines()[-1])


def test_pipeline_trains_evaluates_indexes_and_deploys(pipeline_run, capsys):
    tmp, url, args = pipeline_run
    summary = _run(args, capsys)
    # every row accounted for
    for table in ("listings", "photos"):
        assert summary[table]["accounted"], summary[table]
        assert summary[table]["clean"] > 0
    # evaluated on the test pairs for all three models: each accuracy is its confusion
    # matrix's diagonal over the test pairs
    evaluation = json.loads((Path(summary["run_dir"]) / "evaluate" / "evaluation" /
                             "evaluation.json").read_text())
    for m in ("image", "text", "fusion"):
        matrix = evaluation[m]["confusion_matrix"]
        assert sum(map(sum, matrix)) == summary["test"]["n_pairs"] > 0
        right = sum(row[i] for i, row in enumerate(matrix))
        assert summary["test"][m]["accuracy"] == round(right / summary["test"]["n_pairs"], 4)
    assert summary["decision"]["promote"] is True  # no champion yet
    # the data fan-out: one prepare_shard task per shard of ingest's snapshot
    run_dir = Path(summary["run_dir"])
    manifest = json.loads((run_dir / "ingest" / "raw_snapshot" / "snapshot.json").read_text())
    iterations = [p for p in run_dir.glob("for-loop-*-iteration-*") if (p / "prepare-shard").is_dir()]
    assert len(manifest["shards"]) >= 2 and len(iterations) == len(manifest["shards"])
    # and in each, that shard's photos featurized into the cache, which train_image then read
    featurized = [json.loads((p / "featurize-shard" / "photo_features" / "features.json").read_text())
                  for p in iterations]
    assert sorted(f["shard"] for f in featurized) == sorted(s["name"] for s in manifest["shards"])
    image = json.loads((run_dir / "train-image" / "model" / "result.json").read_text())
    assert image["featurized_photos"] == sum(f["computed"] for f in featurized) > 0
    assert image["feature_cache_misses"] == 0
    assert summary["index"]["n_listings"] == summary["listings"]["clean"]

    import mlflow

    mlflow.set_tracking_uri(url)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("marketsearch", "champion")
    assert version.version == summary["decision"]["version"]
    assert version.tags["lineage.parent_model_version"] == "none"
    parent, children = _last_pipeline_run(client)
    assert parent.info.status == "FINISHED"          # closed by the DAG's exit handler
    stages = {r.data.tags["stage"] for r in children}
    assert stages == {"ingest", "prepare_shard", "featurize_shard", "gather_clean", "load_db",
                      "train_image",
                      "train_text", "train_fusion", "build_index", "evaluate", "deploy"}
    assert {r.info.status for r in children} == {"FINISHED"}
    train_run = next(r for r in children if r.data.tags["stage"] == "train_image")
    assert train_run.data.params["image_model.input_size"] == "64"   # its own config section
    assert not any(k.startswith("drift.") for k in train_run.data.params)
    evaluate_run = next(r for r in children if r.data.tags["stage"] == "evaluate")
    assert "test.fusion.accuracy" in evaluate_run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(evaluate_run.info.run_id, "plots")}
    assert "plots/confusion_fusion.png" in artifacts

    served = tmp / "runs" / "serving" / "marketsearch"
    assert (served / "fused.keras").exists() and (served / "index" / "index.faiss").exists()


def test_a_second_run_on_the_same_data_reuses_every_cached_stage(pipeline_run, capsys):
    """Same data, same config, same code: kfp.local's cache hands every cached stage the first
    run's outputs. Only the stages that act outside their artifacts run again (the run's open,
    with the source's fingerprint, the database load, evaluate and the run's close); evaluate finds
    the bundle already registered, and the champion it is, so nothing is promoted."""
    tmp, url, args = pipeline_run
    first = json.loads((tmp / "runs" / "serving" / "marketsearch" / "VERSION").read_text())
    summary = _run(args, capsys)
    ran = {p.name for p in Path(summary["run_dir"]).iterdir() if p.is_dir()}
    assert ran == {"open-run", "load-db", "evaluate", "close-run"}, ran
    assert summary["decision"]["version"] == first["version"]  # the same bundle, registered once
    assert summary["decision"]["promote"] is False
    assert "does not beat champion" in summary["decision"]["reason"]
    served = json.loads((tmp / "runs" / "serving" / "marketsearch" / "VERSION").read_text())
    assert served["version"] == first["version"]
    for table in ("listings", "photos"):   # the summary still accounts for every row
        assert summary[table]["accounted"], summary[table]


def test_a_failing_stage_fails_the_run_and_leaves_no_mlflow_run_open(pipeline_run, capsys):
    """train_text fails half-way through the DAG (a TF-Hub encoder that is not there); the exit
    handler still runs and closes the pipeline's MLflow run FAILED, with every stage run
    closed."""
    import mlflow

    tmp, url, args = pipeline_run
    with pytest.raises(SystemExit):
        main(args + ["--set", "text_model.encoder=tfhub",
                     "--set", f"text_model.hub_handle={tmp / 'no-such-encoder'}"])
    client = mlflow.MlflowClient(url)
    parent, children = _last_pipeline_run(client)
    assert parent.info.status == "FAILED"
    status = {r.data.tags["stage"]: r.info.status for r in children}
    assert status["train_text"] == "FAILED"
    assert "RUNNING" not in status.values(), status
    assert "evaluate" not in status and "deploy" not in status


def test_evaluate_cli_prints_json(pipeline_run):
    tmp, url, _ = pipeline_run
    env = dict(os.environ, MLFLOW_TRACKING_URI=url)
    proc = subprocess.run(
        [sys.executable, "-m", "marketsearch.cli", "evaluate", "--data", str(FIXTURE), "--json",
         "--set", f"run_dir={tmp / 'runs'}"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    n_photos = sum(1 for _ in open(FIXTURE / "images.csv")) - 1
    assert result["n_pairs"] == n_photos
    for m in ("image", "text", "fusion"):
        assert set(result[m]) == {"accuracy", "top3_accuracy", "macro_f1"}
