"""The monitoring DAG through kfp.local on real listings: an in-distribution batch of new
listings -> no drift, no training; a shifted batch (two categories, degraded photos) -> drift,
retraining, and a promotion decided on the same test pairs."""
import csv
import json
import random
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image, ImageFilter

from marketsearch.cli import main

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "gumtree"
TINY = ["clean.image_size=32", "clean.thumbnail_size=0", "image_model.epochs=2",
        "image_model.input_size=64",
        "image_model.batch_size=64", "text_model.epochs=3", "text_model.word2vec.epochs=2",
        "text_model.max_len=48", "fusion.epochs=3"]
BASE_PER_CATEGORY, BATCH_PER_CATEGORY, SHIFT_LISTINGS = 40, 20, 240
SHIFT_CATEGORIES = ("Phones, Mobile Phones & Telecoms", "Video Games & Consoles")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (SHARED / "products.csv").exists(),
                                 reason=f"the shared Gumtree data is not at {SHARED}")]


def _read(path: Path):
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def _write_dir(dest: Path, p_header, products, i_header, photos_of, degrade: bool = False) -> Path:
    """A folder laid out like the shared data with these listings and their photos."""
    (dest / "images").mkdir(parents=True)
    with open(dest / "products.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, quoting=csv.QUOTE_ALL).writerows([p_header, *products])
    rows = [r for p in products for r in photos_of[p[0]]]
    with open(dest / "images.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, quoting=csv.QUOTE_ALL).writerows([i_header, *rows])
    for r in rows:
        src, dst = SHARED / "images" / f"{r[0]}.jpg", dest / "images" / f"{r[0]}.jpg"
        if degrade:  # a cheap phone camera in the dark: small, blurred, dim
            img = Image.open(src).convert("RGB")
            img = img.resize((max(8, img.width // 8), max(8, img.height // 8)))
            img = img.filter(ImageFilter.GaussianBlur(2)).point(lambda v: v // 3)
            img.save(dst, quality=30)
        else:
            dst.symlink_to(src)
    return dest


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    """base (the champion's data), same (new listings drawn like it), shifted and shifted_later
    (new listings of two categories with degraded photos); no listing in two of them."""
    tmp = tmp_path_factory.mktemp("monitoring_data")
    p_header, products = _read(SHARED / "products.csv")
    i_header, images = _read(SHARED / "images.csv")
    photos_of = defaultdict(list)
    for r in images:
        photos_of[r[1]].append(r)
    cat_col = p_header.index("category")
    by_cat = defaultdict(list)
    for p in products:
        if photos_of[p[0]]:
            by_cat[p[cat_col].split("/")[0].strip()].append(p)
    rng = random.Random(7)
    base, same, rest = [], [], []
    for cat in sorted(by_cat):
        rows = by_cat[cat][:]
        rng.shuffle(rows)
        base += rows[:BASE_PER_CATEGORY]
        same += rows[BASE_PER_CATEGORY:BASE_PER_CATEGORY + BATCH_PER_CATEGORY]
        rest += rows[BASE_PER_CATEGORY + BATCH_PER_CATEGORY:]
    shifted = [p for p in rest if p[cat_col].split("/")[0].strip() in SHIFT_CATEGORIES]
    later = shifted[SHIFT_LISTINGS:2 * SHIFT_LISTINGS]
    shifted = shifted[:SHIFT_LISTINGS]
    assert len(later) == SHIFT_LISTINGS
    return {"base": _write_dir(tmp / "base", p_header, base, i_header, photos_of),
            "same": _write_dir(tmp / "same", p_header, same, i_header, photos_of),
            "shifted": _write_dir(tmp / "shifted", p_header, shifted, i_header, photos_of,
                                  degrade=True),
            "shifted_later": _write_dir(tmp / "shifted_later", p_header, later, i_header,
                                        photos_of, degrade=True)}


@pytest.fixture(scope="module")
def champion(data_dirs, tmp_path_factory):
    """A champion trained by the training DAG on the base listings; returns the CLI args.
    MLflow is the run dir's SQLite store: an MLFLOW_TRACKING_URI left by another test (MLflow's
    set_tracking_uri exports it) would win over the config, so it is cleared here."""
    env = pytest.MonkeyPatch()
    env.delenv("MLFLOW_TRACKING_URI", raising=False)
    tmp = tmp_path_factory.mktemp("monitoring_runs")
    args = ["--set", f"run_dir={tmp / 'runs'}", "--set", f"data.local_dir={data_dirs['base']}"]
    for item in TINY:
        args += ["--set", item]
    try:
        assert main(["run", *args]) == 0
        served = json.loads((tmp / "runs" / "serving" / "marketsearch" / "VERSION").read_text())
        yield tmp, args, served["version"]
    finally:
        env.undo()


def _monitor(args, data_dir, capsys, *extra) -> dict:
    capsys.readouterr()
    assert main(["monitor", "--data", str(data_dir), "--json", *args, *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_new_listings_drawn_like_the_training_data_do_not_retrain(champion, data_dirs, capsys):
    tmp, args, version = champion
    out = _monitor(args, data_dirs["same"], capsys)
    n_batch = len(_read(data_dirs["same"] / "products.csv")[1])
    assert 0.95 * n_batch <= out["n_new_listings"] <= n_batch
    # every new listing is judged or kept in the report's quarantine with its reason
    import pandas as pd

    q = pd.read_parquet(Path(out["run_dir"]) / "drift-check" / "drift_report"
                        / "quarantine.parquet")
    assert out["n_new_listings"] + int((q["table"] == "products").sum()) == n_batch
    assert q["reason"].str.len().gt(0).all()
    assert out["drift"] is False, out["checks"]
    assert set(out["checks"]) >= {"category_mix", "price", "text_length", "oov_rate",
                                  "photo_embedding", "text_embedding"}
    assert out["retrained"] is False and out["promoted"] is False
    served = json.loads((tmp / "runs" / "serving" / "marketsearch" / "VERSION").read_text())
    assert served["version"] == version


def test_a_dry_run_stops_after_the_checks(champion, data_dirs, capsys):
    _, args, _ = champion
    out = _monitor(args, data_dirs["shifted"], capsys, "--dry-run")
    assert out["drift"] is True and out["retrained"] is False
    assert out["checks"]["category_mix"]["drift"] is True
    assert out["checks"]["photo_embedding"]["drift"] is True


def test_a_shifted_batch_retrains_and_promotes_only_a_better_model(champion, data_dirs, capsys):
    tmp, args, version = champion
    out = _monitor(args, data_dirs["shifted"], capsys)
    assert out["drift"] is True and out["retrained"] is True
    decision = out["decision"]
    assert decision["champion_score"] is not None and decision["challenger_score"] is not None
    assert out["promoted"] is (decision["challenger_score"] > decision["champion_score"])
    served = json.loads((tmp / "runs" / "serving" / "marketsearch" / "VERSION").read_text())
    assert (served["version"] == decision["version"]) is out["promoted"]
    if not out["promoted"]:
        assert served["version"] == version
    # the evaluation split is fixed: the base listings keep their splits in the retraining run,
    # so the champion is not scored on listings it trained on
    import pandas as pd

    # (both DAGs' gather_clean write the plan: every clean listing with its split. Every
    # monitoring run gathers one, its drift checks read the clean shards; the retraining run's
    # is its own or, reused from kfp.local's cache, the dry run's on the same listings: the
    # newest either way)
    plans = sorted((tmp / "runs" / "kfp").glob("*/gather-clean/plan/listings.parquet"))
    [first] = [p for p in plans if p.parts[-4].startswith("marketsearch-training-")]
    retrain = [p for p in plans if p.parts[-4].startswith("marketsearch-monitoring-")][-1]
    before = pd.read_parquet(first).set_index("id")["split"]
    after = pd.read_parquet(retrain).set_index("id")["split"]
    assert len(after) > len(before) and before.index.isin(after.index).all()
    assert (after.loc[before.index] == before).all()


def test_a_retrain_kept_out_is_not_repeated_on_the_same_listings(champion, data_dirs, capsys):
    """A retrain that cannot beat the champion (forced here with min_improvement 1) is not run
    again on every schedule: the next run judges only listings no retrain has seen."""
    import mlflow

    tmp, args, _ = champion
    served_before = json.loads((tmp / "runs" / "serving" / "marketsearch" / "VERSION").read_text())
    out = _monitor(args + ["--set", "evaluate.min_improvement=1.0"], data_dirs["shifted_later"],
                   capsys)
    assert out["drift"] is True and out["retrained"] is True and out["promoted"] is False
    served = json.loads((tmp / "runs" / "serving" / "marketsearch" / "VERSION").read_text())
    assert served["version"] == served_before["version"]
    # each check's statistic, threshold and verdict are in the drift_check stage's MLflow run
    client = mlflow.MlflowClient(f"sqlite:///{tmp / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("marketsearch").experiment_id

    def last_drift_check_run():
        return client.search_runs([exp], "tags.stage = 'drift_check'",
                                  order_by=["attributes.start_time DESC"], max_results=1)[0]

    run = last_drift_check_run()
    for name, check in out["checks"].items():
        assert run.data.metrics[f"{name}.drift"] == float(check["drift"]), name
        assert run.data.metrics[f"{name}.statistic"] == pytest.approx(check["statistic"]), name
        assert run.data.metrics[f"{name}.threshold"] == pytest.approx(check["threshold"]), name

    again = _monitor(args, data_dirs["shifted_later"], capsys)
    assert again["n_new_listings"] == 0, again
    assert again["drift"] is False and again["retrained"] is False
    assert "not judged" in again["reason"]
    # the listings were known from the kept-out version, not from the champion
    verdict = json.loads((Path(again["run_dir"]) / "drift-check" / "drift_report" /
                          "drift.json").read_text())
    assert verdict["champion_version"] == served["version"]
    assert verdict["latest_version"] == out["decision"]["version"] != served["version"]
