"""Champion/challenger: a model worse than the champion is never promoted.

The bundles come from the pipeline's own stage functions on the 52-listing fixture (as
tests/serving/conftest.py's ``trained``). Three epochs on 39 training listings cannot make a
model that is good on held-out listings, so bundles with a known order are derived from it:

* ``strong``: the trained bundle with its fused classifier ("fused_logits", blend fused-only)
  refitted on the fused embeddings of all the fixture's pairs: it scores high on the test split;
* ``weak``: a copy of ``strong`` whose fused logits are negated (the blend weights times -1), so
  it predicts the class ``strong`` finds least likely: it scores near zero on the test split;
* ``medium``: a copy of ``strong`` whose classifier columns of half the classes are rotated
  among themselves: right on about half the test pairs.

The registry tests drive the evaluate and deploy stages' generated KFP wrappers themselves
(``tests.support.run_stage``: evaluate, then deploy only when it returns True, as the DAG's
``promoted`` condition does) against a real MLflow tracking server.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from marketsearch import checksums
from marketsearch.config import Config
from tests.support import mlflow_server, run_stage, tiny_config, train_tiny_bundle


def _edit_fused_head(src: Path, dst: Path, edit) -> Path:
    """A copy of bundle ``src`` at ``dst`` whose fused model's head went through ``edit``."""
    import keras

    import marketsearch.models  # noqa: F401  registers the custom layers

    shutil.copytree(src, dst)
    model = keras.models.load_model(dst / "fused.keras", compile=False)
    edit(model.get_layer("from_features").get_layer("fusion"))
    model.save(dst / "fused.keras")
    checksums.write(dst)                 # a new bundle, with its own manifest
    return dst


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """SimpleNamespace(cfg, clean, strong, medium, weak): the clean data dir and three bundle
    dirs that score high, about half and near zero on its test split."""
    from marketsearch.bundle import Bundle, pair_arrays
    from marketsearch.records import CleanData
    from sklearn.linear_model import LogisticRegression

    tmp = tmp_path_factory.mktemp("champion")
    cfg, _, _ = train_tiny_bundle(tmp, out_name="trained")

    data = CleanData.load(tmp / "clean")
    texts, pixels, cats, _ = pair_arrays(data.products, data.images, data.pixels)
    trained = Bundle(tmp / "trained")
    labels = trained.labels
    keep = [i for i, c in enumerate(cats) if c in labels]
    emb = trained.predict([texts[i] for i in keep], pixels[keep],
                          per_modality=False).fused_embedding
    y = np.array([labels.index(cats[i]) for i in keep])
    fit = LogisticRegression(C=100.0, max_iter=5000).fit(emb, y)
    assert fit.coef_.shape[0] == len(fit.classes_) > 2

    def refit(head):
        kernel, bias = head.get_layer("fused_logits").get_weights()
        kernel, bias = np.zeros_like(kernel), np.full_like(bias, -30.0)
        kernel[:, fit.classes_], bias[fit.classes_] = fit.coef_.T, fit.intercept_
        head.get_layer("fused_logits").set_weights([kernel, bias])
        blend = head.get_layer("blend")
        blend.set_weights([np.eye(1, len(blend.get_weights()[0]), dtype="float32")[0]])

    def scramble(head):
        blend = head.get_layer("blend")
        blend.set_weights([-w for w in blend.get_weights()])

    def halve(head):  # the second half of the classes' columns rotated among themselves
        kernel, bias = head.get_layer("fused_logits").get_weights()
        moved = list(range(kernel.shape[1] // 2, kernel.shape[1]))
        rolled = moved[1:] + moved[:1]
        kernel[:, moved], bias[moved] = kernel[:, rolled], bias[rolled]
        head.get_layer("fused_logits").set_weights([kernel, bias])

    # Each bundle directory is named "bundle", as the pipeline's (the KFP output artifact's)
    # is: registry.download_bundle finds a registered bundle only under that name (see
    # test_download_bundle_finds_a_bundle_whatever_its_directory_name).
    strong = _edit_fused_head(tmp / "trained", tmp / "strong" / "bundle", refit)
    weak = _edit_fused_head(strong, tmp / "weak" / "bundle", scramble)
    medium = _edit_fused_head(strong, tmp / "medium" / "bundle", halve)
    return SimpleNamespace(cfg=cfg, clean=tmp / "clean", strong=strong, weak=weak, medium=medium)


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _evaluate(b, challenger: Path, out: Path, champion: Path):
    """The evaluate stage without a registry, its record saved to ``out`` -> the record."""
    from marketsearch.components.evaluate import evaluate

    evaluation = evaluate(b.cfg, b.clean, challenger, champion_dir=champion, register=False)
    evaluation.save(out)
    return evaluation


# --- the decision itself ------------------------------------------------------------------
def test_evaluate_keeps_a_weaker_challenger_and_records_both_scores(bundles, tmp_path):
    b = bundles
    evaluation = _evaluate(b, b.weak, tmp_path / "worse", b.strong)
    decision = _read(tmp_path / "worse" / "decision.json")
    assert evaluation.decision.promote is decision["promote"]
    assert decision["promote"] is False and decision["metric"] == "accuracy"
    challenger = _read(tmp_path / "worse" / "evaluation.json")["fusion"]["accuracy"]
    champion = _read(tmp_path / "worse" / "champion_evaluation.json")["fusion"]["accuracy"]
    assert decision["challenger_score"] == challenger
    assert decision["champion_score"] == champion
    assert champion >= 0.8 and challenger <= 0.2  # clearly worse, not a near-tie
    assert f"{challenger:.4f} does not beat champion accuracy={champion:.4f}" in decision["reason"]
    assert evaluation.champion["fusion"]["accuracy"] == champion


def test_evaluate_promotes_a_better_challenger_and_never_a_tie(bundles, tmp_path):
    b = bundles
    better = _evaluate(b, b.strong, tmp_path / "better", b.weak).decision
    assert better.promote is True
    assert better.challenger_score > better.champion_score + 0.5
    same = _evaluate(b, b.strong, tmp_path / "same", b.strong).decision
    assert same.promote is False
    assert same.challenger_score == same.champion_score


def test_a_bundle_records_the_listings_it_learned_from(bundles):
    from marketsearch.bundle import Bundle
    from marketsearch.records import CleanData

    products = CleanData.load(bundles.clean).products
    learned = set(products.loc[products["split"] != "test", "id"])
    assert Bundle(bundles.strong).seen_ids == learned
    assert Bundle(bundles.strong).seen_ids.isdisjoint(products.loc[products["split"] == "test", "id"])


def _with_seen(src: Path, dst: Path, seen: list[str] | None) -> Path:
    """A copy of bundle ``src`` that says it learned from ``seen`` (None: a bundle made before
    the listings were recorded)."""
    from marketsearch.bundle import SEEN_FILE

    shutil.copytree(src, dst)
    (dst / SEEN_FILE).unlink()
    if seen is not None:
        (dst / SEEN_FILE).write_text(json.dumps(seen))
    checksums.write(dst)
    return dst


def test_a_champion_is_not_scored_on_listings_it_learned_from(bundles, tmp_path):
    """A champion trained under another split (another seed, say) has seen some of today's test
    listings: both models are compared on the others only, and the count is recorded."""
    from marketsearch.records import CleanData
    b = bundles
    data = CleanData.load(b.clean)
    test_pairs = data.images[data.images["split"] == "test"]
    test_ids = sorted(set(test_pairs["product_id"]))
    seen_test = test_ids[: len(test_ids) // 2]
    learned = sorted(set(data.products.loc[data.products["split"] != "test", "id"]))
    champion = _with_seen(b.weak, tmp_path / "champion", learned + seen_test)

    decision = vars(_evaluate(b, b.strong, tmp_path / "eval", champion).decision)
    n_seen = int(test_pairs["product_id"].isin(seen_test).sum())
    assert 0 < n_seen < len(test_pairs)
    assert decision["n_seen_by_champion"] == n_seen
    assert decision["n_test_pairs"] == len(test_pairs) - n_seen
    champion_eval = _read(tmp_path / "eval" / "champion_evaluation.json")
    assert champion_eval["fusion"]["n"] == len(test_pairs) - n_seen
    assert decision["champion_score"] == champion_eval["fusion"]["accuracy"]
    # the challenger's headline is on all test pairs, its score in the decision on the same
    # pairs as the champion's
    from marketsearch.bundle import Bundle
    from marketsearch.evaluation import evaluate_pairs

    headline = _read(tmp_path / "eval" / "evaluation.json")["fusion"]
    assert headline["n"] == len(test_pairs)
    unseen = test_pairs[~test_pairs["product_id"].isin(seen_test)]
    on_unseen = evaluate_pairs(Bundle(b.strong), data.products, unseen, data.pixels)["fusion"]
    assert decision["challenger_score"] == on_unseen["accuracy"]
    assert on_unseen["n"] == decision["n_test_pairs"] < headline["n"]


def test_the_test_split_read_shard_by_shard_scores_as_the_split_whole(bundles, tmp_path):
    """evaluate over three clean shards (each one's ``row`` indexing its own pixels) gives the
    figures, the champion's and the decision of evaluate over the same data as one CleanData;
    the champion learned from some test listings, so every pass over the shards is made."""
    from marketsearch.catalogue import CleanCatalogue
    from marketsearch.components.evaluate import evaluate
    from marketsearch.records import CleanData

    b = bundles
    data = CleanData.load(b.clean)
    test_ids = sorted(data.products.loc[data.products["split"] == "test", "id"])
    learned = sorted(data.products.loc[data.products["split"] != "test", "id"])
    champion = _with_seen(b.medium, tmp_path / "champion", learned + test_ids[::3])
    whole = evaluate(b.cfg, data, b.strong, champion_dir=champion, register=False)
    ids = data.products["id"].tolist()
    shards = [CleanCatalogue.of(data).gathered(ids=set(ids[i::3])) for i in range(3)]
    assert all(len(s.images.query("split == 'test'")) for s in shards)
    parted = evaluate(b.cfg, shards, b.strong, champion_dir=champion, register=False)

    assert 0 < whole.decision.n_seen_by_champion < whole.result["n_pairs"]
    assert whole.champion["n_pairs"] == whole.decision.n_test_pairs
    # the price figures run the price head over other batches (float32 sums in another
    # order), and sample the listings in the order they are read: equal to rounding
    price, whole_price = parted.result.pop("price"), whole.result.pop("price")
    for name, figures in whole_price["models"].items():
        assert parted_figures_match(price["models"][name], figures), name
    parted.champion.pop("price"), whole.champion.pop("price")
    assert parted.result == whole.result
    assert parted.champion == whole.champion
    assert vars(parted.decision) == vars(whole.decision)


def parted_figures_match(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k] == pytest.approx(b[k], rel=1e-4) for k in a if a[k] is not None)


def test_a_champion_that_saw_every_test_listing_is_kept_with_the_reason(bundles, tmp_path):
    from marketsearch.records import CleanData
    b = bundles
    everything = sorted(CleanData.load(b.clean).products["id"])
    champion = _with_seen(b.weak, tmp_path / "champion", everything)
    decision = vars(_evaluate(b, b.strong, tmp_path / "eval", champion).decision)
    assert decision["promote"] is False and decision["champion_score"] is None
    assert "listings the champion learned from" in decision["reason"]
    n_pairs = len(CleanData.load(b.clean).images.query("split == 'test'"))
    assert decision["n_test_pairs"] == 0 and decision["n_seen_by_champion"] == n_pairs


def test_a_champion_without_recorded_listings_is_scored_on_all_test_pairs(bundles, tmp_path):
    b = bundles
    from marketsearch.records import CleanData

    champion = _with_seen(b.strong, tmp_path / "champion", None)
    decision = vars(_evaluate(b, b.weak, tmp_path / "eval", champion).decision)
    n_pairs = len(CleanData.load(b.clean).images.query("split == 'test'"))
    assert decision["champion_seen_ids"] == "unknown" and decision["n_seen_by_champion"] == 0
    assert decision["n_test_pairs"] == n_pairs
    assert _read(tmp_path / "eval" / "champion_evaluation.json")["fusion"]["n"] == n_pairs
    assert decision["promote"] is False and decision["champion_score"] > decision["challenger_score"]


# --- through the registry: evaluate's and deploy's KFP wrappers on an MLflow server -------
@pytest.fixture(scope="module")
def tracking_url(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the config's URI is the one used
    try:
        with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
            yield url
    finally:
        patch.undo()


def _registry_cfg(tmp_path: Path, url: str, model: str) -> Config:
    return tiny_config(tmp_path / "runs", mlflow={"tracking_uri": url, "artifact_location": None,
                                           "registered_model": model})


def _evaluate_stage(cfg: Config, clean: Path, bundle: Path, out: Path, run: str) -> dict:
    """A pipeline run up to evaluate: its parent MLflow run (open_run's), then the evaluate
    stage's generated wrapper, in a process that belongs to pipeline run ``run``."""
    from kfp import dsl

    from marketsearch import tracking

    parent = tracking.start_parent(cfg, run_name=run, tags={"pipeline_run": run})
    out.mkdir(parents=True)
    model = dsl.Model(name="bundle", uri=str(bundle))
    evaluation = dsl.Artifact(name="evaluation", uri=str(out / "evaluation"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv(tracking.PIPELINE_RUN_ENV, run)
        promoted = run_stage(
            "evaluate", cfg, clean_data=dsl.Dataset(name="clean_data", uri=str(clean)),
            bundle=model, evaluation=evaluation,
            metrics=dsl.Metrics(name="metrics", uri=str(out / "metrics")),
            confusion=dsl.ClassificationMetrics(name="confusion", uri=str(out / "confusion")),
            report=dsl.HTML(name="report", uri=str(out / "report.html")))
    return {"promoted": promoted, "served": None, "parent": parent, "model": model, "run": run,
            "artifact": evaluation, "evaluation": out / "evaluation", "out": out,
            "decision": _read(out / "evaluation" / "decision.json")}


def _deploy_stage(cfg: Config, ev: dict) -> str:
    from kfp import dsl

    from marketsearch import tracking

    with pytest.MonkeyPatch.context() as env:
        env.setenv(tracking.PIPELINE_RUN_ENV, ev["run"])
        run_stage("deploy", cfg, bundle=ev["model"], decision=ev["artifact"],
                  deployment=dsl.Artifact(name="deployment", uri=str(ev["out"] / "deployment")))
    ev["served"] = _read(ev["out"] / "deployment" / "deployment.json")["version"]
    return ev["served"]


def _pipeline_tail(cfg: Config, clean: Path, bundle: Path, out: Path, run: str) -> dict:
    """evaluate -> [promoted] deploy, as the training DAG runs them after build_index."""
    ev = _evaluate_stage(cfg, clean, bundle, out, run)
    if ev["promoted"]:  # dsl.If(evaluate.Output == True, name="promoted")
        _deploy_stage(cfg, ev)
    return ev


def _stage_run(client, parent: str, stage: str):
    exp = client.get_experiment_by_name("marketsearch").experiment_id
    [run] = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}' "
                                                    f"and tags.stage = '{stage}'")
    return run


def _served_version(cfg: Config) -> str:
    return _read(cfg.path(cfg.serving.model_dir) / "VERSION")["version"]


def test_a_weaker_challenger_is_never_promoted(bundles, tracking_url, tmp_path):
    import mlflow

    from marketsearch import registry
    from marketsearch.components.deploy import deploy
    from marketsearch.records import Decision

    cfg = _registry_cfg(tmp_path, tracking_url, "marketsearch-keep")
    first = _pipeline_tail(cfg, bundles.clean, bundles.strong, tmp_path / "run1", "keep-1")
    assert first["promoted"] is True and first["decision"]["champion_score"] is None
    champion_version = first["served"]
    assert registry.champion(cfg).version == champion_version == _served_version(cfg)

    second = _pipeline_tail(cfg, bundles.clean, bundles.weak, tmp_path / "run2", "keep-2")
    decision = second["decision"]
    assert second["promoted"] is False and second["served"] is None
    # both scores, on the same test pairs, in decision.json and the evaluation files
    assert decision["champion_score"] > decision["challenger_score"] + 0.5
    assert decision["challenger_score"] == \
        _read(second["evaluation"] / "evaluation.json")["fusion"]["accuracy"]
    assert decision["champion_score"] == \
        _read(second["evaluation"] / "champion_evaluation.json")["fusion"]["accuracy"]
    # the challenger is registered (every bundle is), marked "keep", and nothing moved
    client = mlflow.MlflowClient(tracking_url)
    challenger = client.get_model_version("marketsearch-keep", decision["version"])
    assert decision["version"] != champion_version
    assert challenger.tags["decision"] == "keep"
    assert "lineage.parent_model_version" not in challenger.tags
    assert registry.champion(cfg).version == champion_version
    assert _served_version(cfg) == champion_version
    # ... and the deploy stage itself refuses a decision that did not promote
    with pytest.raises(ValueError, match="not promoted"):
        deploy(cfg, bundles.weak, Decision(**decision))
    assert registry.champion(cfg).version == champion_version
    # the evaluate stage's MLflow run holds both scores and which champion it was compared with
    assert decision["champion_version"] == champion_version
    run = _stage_run(client, second["parent"], "evaluate")
    assert run.data.params["evaluate.promotion_metric"] == "accuracy"   # its config section
    assert run.data.metrics["decision.promote"] == 0.0
    metrics = run.data.metrics
    assert metrics["decision.challenger_score"] == pytest.approx(decision["challenger_score"])
    assert metrics["decision.champion_score"] == pytest.approx(decision["champion_score"])
    assert metrics["test.fusion.accuracy"] == pytest.approx(decision["challenger_score"], abs=1e-4)
    # ... and the challenger's search relevance on the test listings, reported, not compared
    search = _read(second["evaluation"] / "evaluation.json")["search"]
    for mode in ("image", "text", "both"):
        for key in ("precision_at_10", "top1"):
            assert metrics[f"search.{mode}.{key}"] == pytest.approx(search[mode][key])
    assert "search" not in decision["reason"]


def test_a_better_challenger_is_promoted_with_lineage(bundles, tracking_url, tmp_path):
    import mlflow

    from marketsearch import registry

    cfg = _registry_cfg(tmp_path, tracking_url, "marketsearch-upgrade")
    first = _pipeline_tail(cfg, bundles.clean, bundles.weak, tmp_path / "run1", "upgrade-1")
    assert first["promoted"] is True  # no champion yet: even a weak model is promoted
    old = first["served"]
    client = mlflow.MlflowClient(tracking_url)
    assert client.get_model_version("marketsearch-upgrade", old).tags[
        "lineage.parent_model_version"] == "none"

    second = _pipeline_tail(cfg, bundles.clean, bundles.strong, tmp_path / "run2", "upgrade-2")
    decision = second["decision"]
    assert second["promoted"] is True
    new = second["served"]
    assert new == decision["version"] != old
    assert decision["challenger_score"] > decision["champion_score"] + 0.5
    assert registry.champion(cfg).version == new == _served_version(cfg)
    tags = client.get_model_version("marketsearch-upgrade", new).tags
    from marketsearch.records import CleanData

    data_hash = CleanData.load(bundles.clean).source["content_hash"]
    assert len(data_hash) == 64
    assert tags["lineage.pipeline_run"] == "upgrade-2"
    assert tags["lineage.data_hash"] == data_hash
    assert tags["lineage.parent_model_version"] == old
    assert tags["pipeline_run"] == "upgrade-2" and tags["data.content_hash"] == data_hash
    assert tags["decision"] == "promote"
    assert decision["champion_version"] == old
    run = _stage_run(client, second["parent"], "evaluate")
    assert run.data.metrics["decision.promote"] == 1.0
    assert run.data.metrics["decision.champion_score"] == pytest.approx(decision["champion_score"])
    deploy_run = _stage_run(client, second["parent"], "deploy")
    assert deploy_run.data.params["serving.model_dir"] == cfg.serving.model_dir  # its config


def test_download_bundle_finds_a_bundle_whatever_its_directory_name(tracking_url, tmp_path):
    import mlflow

    from marketsearch import registry, tracking
    from marketsearch.bundle import Bundle

    cfg = _registry_cfg(tmp_path, tracking_url, "marketsearch-dirname")
    src = tmp_path / "challenger-bundle"
    src.mkdir()
    (src / "meta.json").write_text(json.dumps({"labels": ["a", "b"], "image_size": 32}))
    checksums.write(src)
    tracking.setup(cfg)
    with mlflow.start_run():
        version = registry.register_bundle(cfg, src, str(src), {})
    got = registry.download_bundle(cfg, version, tmp_path / "download")
    assert Bundle(got).labels == ["a", "b"]  # FileNotFoundError: not a model bundle


def test_a_stale_decision_does_not_replace_a_newer_better_champion(bundles, tracking_url,
                                                                   tmp_path):
    """Two pipeline runs overlap: A's challenger beat the champion of the time, but B promoted
    a better model before A's deploy ran. A's deploy must not put its worse model back."""
    from marketsearch import registry

    b = bundles
    cfg = _registry_cfg(tmp_path, tracking_url, "marketsearch-race")
    first = _pipeline_tail(cfg, b.clean, b.weak, tmp_path / "run0", "race-0")
    a = _evaluate_stage(cfg, b.clean, b.medium, tmp_path / "runA", "race-A")
    run_b = _pipeline_tail(cfg, b.clean, b.strong, tmp_path / "runB", "race-B")
    if not (first["promoted"] and a["promoted"] and run_b["promoted"]) or \
            not a["decision"]["challenger_score"] < run_b["decision"]["challenger_score"]:
        pytest.fail(f"setup: {first['decision']}, {a['decision']}, {run_b['decision']}")
    newer = registry.champion(cfg).version
    assert newer == run_b["served"]
    with pytest.raises(ValueError, match="stale decision"):
        _deploy_stage(cfg, a)  # A's deploy (the "promoted" branch) runs last
    assert registry.champion(cfg).version == newer, (
        f"version {a['decision']['version']} (accuracy {a['decision']['challenger_score']:.3f}) "
        f"replaced champion {newer} (accuracy {run_b['decision']['challenger_score']:.3f})")


def test_evaluate_feeds_deploy_without_kfp(bundles, tracking_url, tmp_path):
    """The typed contract, called as plain functions: evaluate registers the challenger and
    returns its Decision; deploy takes that Decision and promotes exactly that version."""
    from marketsearch import registry
    from marketsearch.components.deploy import deploy
    from marketsearch.components.evaluate import evaluate
    from marketsearch.records import Decision, Deployment, Evaluation

    cfg = _registry_cfg(tmp_path, tracking_url, "marketsearch-contract")
    evaluation = evaluate(cfg, bundles.clean, bundles.strong)
    assert isinstance(evaluation, Evaluation) and isinstance(evaluation.decision, Decision)
    decision = evaluation.decision
    assert decision.promote and decision.champion_version == "none"
    assert decision.version is not None and registry.champion(cfg) is None
    deployment = deploy(cfg, bundles.strong, decision)
    assert deployment == Deployment(decision.version,
                                    {"model_dir": str(cfg.path(cfg.serving.model_dir))})
    assert str(registry.champion(cfg).version) == decision.version == _served_version(cfg)
    # the same bundle again: registered once, and it cannot beat itself
    again = evaluate(cfg, bundles.clean, bundles.strong).decision
    assert again.version == decision.version and again.promote is False
    assert again.champion_version == decision.version


def test_the_registered_model_is_code_not_a_pickle_and_verifies_its_bundle(bundles, tracking_url,
                                                                          tmp_path):
    import mlflow
    import pandas as pd

    from marketsearch import registry, tracking
    from marketsearch.bundle import Bundle

    cfg = _registry_cfg(tmp_path, tracking_url, "marketsearch-pyfunc")
    tracking.setup(cfg)
    with mlflow.start_run():
        version = registry.register_bundle(cfg, bundles.strong, str(bundles.strong), {})
    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/marketsearch-pyfunc/{version}", dst_path=str(tmp_path / "dl")))
    names = [p.name for p in local.rglob("*") if p.is_file()]
    assert not any(n.endswith((".pkl", ".pickle", ".cloudpickle")) for n in names), names
    assert "registry_model.py" in names
    model = mlflow.pyfunc.load_model(str(local))
    [label] = model.predict(pd.DataFrame({"text": ["mountain bike, 21 gears"]}))
    assert label in Bundle(bundles.strong).labels
    fused = next(local.rglob("fused.keras"))
    data = bytearray(fused.read_bytes())
    data[len(data) // 2] ^= 1
    fused.write_bytes(bytes(data))
    with pytest.raises(Exception, match="fused.keras does not match its sha256"):
        mlflow.pyfunc.load_model(str(local))
