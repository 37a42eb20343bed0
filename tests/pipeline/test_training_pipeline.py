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
    "fusion.epochs=3", "mlflow.artifact_location=null",
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
    # evaluated on the test pairs for all three models
    for m in ("image", "text", "fusion"):
        assert 0.0 <= summary["test"][m]["accuracy"] <= 1.0
    assert summary["decision"]["promote"] is True  # no champion yet
    assert summary["index"]["ntotal"] == summary["listings"]["clean"]

    import mlflow

    mlflow.set_tracking_uri(url)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("marketsearch", "champion")
    assert version.version == summary["decision"]["version"]
    assert version.tags["lineage.parent_model_version"] == "none"
    parent = client.search_runs([client.get_experiment_by_name("marketsearch").experiment_id],
                                filter_string="tags.pipeline_run != ''")[0]
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    stages = {r.data.tags["stage"] for r in children}
    assert stages == {"ingest", "validate", "clean", "train_image", "train_text", "train_fusion",
                      "build_index", "evaluate", "deploy"}
    evaluate_run = next(r for r in children if r.data.tags["stage"] == "evaluate")
    assert "test.fusion.accuracy" in evaluate_run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(evaluate_run.info.run_id, "plots")}
    assert "plots/confusion_fusion.png" in artifacts

    served = tmp / "runs" / "serving" / "marketsearch"
    assert (served / "fused.keras").exists() and (served / "index" / "index.faiss").exists()


def test_second_run_does_not_replace_an_equal_champion(pipeline_run, capsys):
    """Same data, same seed: the challenger cannot beat the champion, so it is kept."""
    tmp, url, args = pipeline_run
    first = json.loads((tmp / "runs" / "serving" / "marketsearch" / "VERSION").read_text())
    summary = _run(args, capsys)
    assert summary["decision"]["version"] != first["version"]
    if not summary["decision"]["promote"]:
        served = json.loads((tmp / "runs" / "serving" / "marketsearch" / "VERSION").read_text())
        assert served["version"] == first["version"]
    assert "champion" in summary["decision"]["reason"]


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
