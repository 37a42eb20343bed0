"""Every record writes itself to a directory and reads itself back unchanged, and names the
files it writes."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from marketsearch.records import (CleanData, Decision, Deployment, DriftResult, Evaluation,
                                  Snapshot, TrainedModel, ValidatedData)


def _frames():
    products = pd.DataFrame({"id": ["p1", "p2"], "title": ["Bike", "Sofa"], "price": [5.0, 9.5],
                             "category": ["Sports", "Home"], "split": ["train", "test"]})
    images = pd.DataFrame({"id": ["i1"], "product_id": ["p1"], "row": [0],
                           "category": ["Sports"], "split": ["train"]})
    return products, images


def _files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def test_snapshot_round_trips(tmp_path):
    products, _ = _frames()
    images = pd.DataFrame({"id": ["i1"], "product_id": ["p1"], "data": [b"\xff\xd8jpeg"],
                           "sha256": ["ab" * 32], "source_error": [""]})
    manifest = {"source": "local", "n_products": 2, "n_images": 1, "content_hash": "f" * 64}
    Snapshot(products, images, manifest).save(tmp_path)
    back = Snapshot.load(tmp_path)
    pd.testing.assert_frame_equal(back.products, products)
    assert back.images["data"].tolist() == [b"\xff\xd8jpeg"]
    assert {k: back.manifest[k] for k in manifest} == manifest
    assert [s["name"] for s in back.manifest["shards"]] == ["shard-all"]   # one shard: all
    assert _files(tmp_path) == set(Snapshot.FILES)
    assert back.metrics() == {"n_products": 2, "n_images": 1, "n_shards": 1}


def test_validated_data_round_trips_with_its_report(tmp_path):
    products, images = _frames()
    q = pd.DataFrame({"table": ["products"], "row_id": ["p9"], "stage": ["validate"],
                      "field": ["price"], "reason": ["not a price"], "raw": ["{}"]})
    report = {"n_products": 3, "n_images": 1, "n_products_valid": 2, "n_images_valid": 1,
              "critical": [], "quarantine_reasons": {"products": {"not a price": 1}}}
    ValidatedData(products, images, q, report, {"content_hash": "x"}).save(tmp_path)
    back = ValidatedData.load(tmp_path)
    pd.testing.assert_frame_equal(back.quarantine, q)
    assert back.report_data == report and back.source == {"content_hash": "x"}
    assert "not a price" in (tmp_path / "report.md").read_text()
    assert _files(tmp_path) == set(ValidatedData.FILES)


def test_clean_data_round_trips_pixels_thumbnails_and_summary(tmp_path):
    products, images = _frames()
    pixels = np.arange(1 * 4 * 4 * 3, dtype=np.uint8).reshape(1, 4, 4, 3)
    thumbs = pd.DataFrame({"product_id": ["p1"], "jpeg": [b"jpg"]})
    data = CleanData(products, images, pixels, [], thumbs, {"n_products": 2, "splits": {"train": 1}},
                     {"content_hash": "h"})
    data.save(tmp_path)
    back = CleanData.load(tmp_path)
    assert np.array_equal(back.pixels, pixels) and back.labels == ["Home", "Sports"]
    assert back.thumbnails["jpeg"].tolist() == [b"jpg"]
    assert back.summary == data.summary and back.source == {"content_hash": "h"}
    assert _files(tmp_path) == set(CleanData.FILES)


def test_trained_model_records_its_files_and_copies_itself(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "text.keras").write_bytes(b"model")
    model = TrainedModel.write(src, "text", ["a", "b"], {"train": {"loss": [1.0, 0.5]}},
                               {"best_val_accuracy": 0.5, "epochs_run": 2}, vocab={"bike": 2})
    model.save(tmp_path / "copy")
    back = TrainedModel.load(tmp_path / "copy")
    assert back.kind == "text" and back.labels == ["a", "b"] and back.vocab == {"bike": 2}
    assert back.result == {"best_val_accuracy": 0.5, "epochs_run": 2}
    assert back.model_file.read_bytes() == b"model"
    with pytest.raises(ValueError, match="trained on labels"):
        back.check_labels(["a", "c"])
    with pytest.raises(ValueError, match="unknown model kind"):
        TrainedModel.write(src, "audio", [], {}, {})


def test_decision_and_evaluation_round_trip(tmp_path):
    decision = Decision(promote=True, reason="no champion", challenger_score=0.8, version="3",
                        champion_version="none", n_test_pairs=10, data_hash="h")
    result = {"n_pairs": 2, "unknown_categories": [], "labels": ["a", "b"],
              "search": {"k": 10, **{m: {"n_queries": 1, "precision_at_10": 0.5, "top1": 1.0}
                                     for m in ("image", "text", "both")}},
              **{m: {"accuracy": 0.5, "top3_accuracy": 1.0, "macro_f1": 0.4,
                     "confusion_matrix": [[1, 0], [1, 0]]} for m in ("image", "text", "fusion")},
              "price": None}                   # a bundle without a price head
    Evaluation(result, decision, ["a", "b"]).save(tmp_path)
    back = Evaluation.load(tmp_path)
    assert back.decision == decision and Decision.load(tmp_path) == decision
    assert back.labels == ["a", "b"] and back.result["fusion"]["accuracy"] == 0.5
    assert (tmp_path / "confusion_fusion.png").stat().st_size > 0
    assert back.confusion() == (["a", "b"], [[1, 0], [1, 0]])
    metrics = back.metrics()
    assert metrics["decision"]["promote"] == 1.0 and metrics["test"]["fusion"]["accuracy"] == 0.5
    assert metrics["search"]["both"]["precision_at_10"] == 0.5
    assert metrics["price"] == {} and not (tmp_path / "price.png").exists()


def test_drift_result_and_deployment_round_trip(tmp_path):
    checks = {"price": {"statistic": 0.3, "threshold": 0.2, "p_value": 0.001, "drift": True}}
    result = DriftResult({"drift": True, "reason": "drift in price", "n_new_listings": 60,
                          "checks": checks, "fired": ["price"]}, retrain=False,
                         markdown="# Drift checks\n", figure=b"\x89PNG")
    result.save(tmp_path / "drift")
    back = DriftResult.load(tmp_path / "drift")
    assert back.result["checks"] == checks and back.retrain is False
    assert back.figure == b"\x89PNG" and back.markdown == "# Drift checks\n"
    assert back.metrics()["price"]["statistic"] == 0.3
    Deployment("4", {"model_dir": "/srv/m"}).save(tmp_path / "deploy")
    assert Deployment.load(tmp_path / "deploy") == Deployment("4", {"model_dir": "/srv/m"})
