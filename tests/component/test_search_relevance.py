"""search_relevance on a real tiny bundle (tests/support.py), and its ``search`` section in the
evaluate stage's evaluation.json and summary and in ``marketsearch evaluate --json``.

Three epochs on 39 listings make no good search; these tests check the section's shape, that
every figure is a share, and that every listing was searched for the right number of ways."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from marketsearch.evaluation import SEARCH_MODES
from tests.support import FIXTURE, train_tiny_bundle


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config, clean data dir, bundle dir) of a tiny bundle trained on the fixture."""
    return train_tiny_bundle(tmp_path_factory.mktemp("search_relevance"))


def assert_section(search: dict, n_listings: int, n_with_photo: int, k: int = 10) -> None:
    assert search["k"] == k and search["n_listings"] == n_listings
    assert set(search) == {"k", "n_listings", *SEARCH_MODES}
    expected = {"image": n_with_photo, "text": n_listings, "both": n_with_photo}
    for mode in SEARCH_MODES:
        figures = search[mode]
        assert set(figures) == {"n_queries", f"precision_at_{k}", "top1"}, mode
        assert figures["n_queries"] == expected[mode], mode
        assert 0.0 <= figures[f"precision_at_{k}"] <= 1.0, mode
        assert 0.0 <= figures["top1"] <= 1.0, mode


def test_search_relevance_on_a_real_bundle(trained):
    from marketsearch.bundle import Bundle
    from marketsearch.records import CleanData
    from marketsearch.evaluation import search_relevance

    _, clean_dir, bundle_dir = trained
    data = CleanData.load(clean_dir)
    # Every fixture listing has a photo: take them away from five, which then count for "text"
    # only.
    photoless = data.products["id"].iloc[:5]
    images = data.images[~data.images["product_id"].isin(photoless)]
    result = search_relevance(Bundle(bundle_dir), data.products, images, data.pixels, k=10)
    assert_section(result, len(data.products), len(data.products) - 5)


def test_evaluate_stage_reports_search_on_the_test_split(trained, tmp_path):
    from marketsearch.records import CleanData
    from marketsearch.components.evaluate import evaluate

    cfg, clean_dir, bundle_dir = trained
    evaluation = evaluate(cfg, clean_dir, bundle_dir, register=False)
    evaluation.save(tmp_path / "eval")
    data = CleanData.load(clean_dir)
    test = data.products[data.products["split"] == "test"]
    test_photos = data.images[data.images["split"] == "test"]
    n_with_photo = int(test["id"].isin(test_photos["product_id"]).sum())
    written = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert written["search"] == json.loads(json.dumps(evaluation.result["search"]))
    assert_section(evaluation.result["search"], len(test), n_with_photo, cfg.evaluate.search_k)
    assert "search" not in (tmp_path / "eval" / "decision.json").read_text()  # not compared


def test_evaluate_cli_prints_search(trained, tmp_path, capsys):
    from marketsearch.cli import main

    _, _, bundle_dir = trained
    args = ["evaluate", "--data", str(FIXTURE), "--model", str(bundle_dir),
            "--set", f"run_dir={tmp_path / 'runs'}"]
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    products = pd.read_csv(FIXTURE / "products.csv", dtype=str)
    images = pd.read_csv(FIXTURE / "images.csv", dtype=str)
    n_with_photo = int(products["id"].isin(images["product_id"]).sum())
    assert out["n_quarantined"] == 0
    assert_section(out["search"], len(products), n_with_photo)

    assert main(args) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("search by")]
    assert [line.split()[2] for line in lines] == list(SEARCH_MODES)
    assert all("precision@10" in line and "top-1" in line for line in lines)
