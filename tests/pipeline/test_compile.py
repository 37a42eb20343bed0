"""The compiled pipeline: nine stages, the promotion condition, the config as its parameter."""
import json

import yaml

from marketsearch.cli import main
from marketsearch.config import Config, load_config

STAGES = {"ingest", "validate", "clean", "train-image", "train-text", "train-fusion",
          "build-index", "evaluate", "deploy"}


def test_compile_writes_the_dag(tmp_path):
    out = tmp_path / "training.yaml"
    assert main(["compile", "--output", str(out), "--set", "kfp.image_registry=123.dkr.ecr/ms",
                 "--set", "kfp.image_tag=v1"]) == 0
    spec = yaml.safe_load(out.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    names = {t.removesuffix("-component") for t in tasks}
    # deploy sits inside the "promoted" condition sub-DAG
    assert STAGES - {"deploy"} <= names
    condition = next(t for n, t in tasks.items() if n.startswith("condition"))
    assert "evaluate" in json.dumps(condition["triggerPolicy"]["condition"])
    sub = spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
    assert set(sub) == {"deploy-component"}
    # dependencies: fusion after both trainers, evaluate after build_index
    assert set(tasks["train-fusion-component"]["dependentTasks"]) >= {
        "train-image-component", "train-text-component", "clean-component"}
    assert "build-index-component" in tasks["evaluate-component"]["dependentTasks"]
    # images from config; the config is the pipeline's parameter, with the compiled default
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"123.dkr.ecr/ms/base:v1", "123.dkr.ecr/ms/trainer:v1"}
    default = spec["root"]["inputDefinitions"]["parameters"]["config_json"]["defaultValue"]
    assert Config.from_json(default).kfp.image_tag == "v1"
    assert default == load_config(overrides=["kfp.image_registry=123.dkr.ecr/ms",
                                             "kfp.image_tag=v1"]).to_json()
    # the laptop's config compiles no Kubernetes settings (those are for kind/EKS): one YAML
    # document (no platform spec), no requests/limits or GPU, no retries, KFP's default caching
    assert len(list(yaml.safe_load_all(out.read_text()))) == 1
    assert all("resources" not in e["container"] for e in spec["deploymentSpec"]["executors"].values())
    every = {**tasks, **sub}
    assert not any("retryPolicy" in t for t in every.values())
    assert all(t["cachingOptions"] == {"enableCache": True} for t in every.values()
               if "componentRef" in t and not t["componentRef"]["name"].startswith("comp-condition"))


def test_the_monitoring_dag_decides_dry_run_at_run_time(tmp_path):
    """One compiled package serves dry runs and real ones: the training branch is always there,
    behind drift_check's answer, which reads monitoring.dry_run from the run's config."""
    specs = []
    for dry in ("true", "false"):
        out = tmp_path / f"monitoring-{dry}.yaml"
        assert main(["compile", "--pipeline", "monitoring", "--output", str(out),
                     "--set", f"monitoring.dry_run={dry}"]) == 0
        specs.append(yaml.safe_load(out.read_text()))
    for spec in specs:
        tasks = spec["root"]["dag"]["tasks"]
        [branch] = [t for n, t in tasks.items() if n.startswith("condition")]
        assert branch["taskInfo"]["name"] == "drifted"
        assert "drift-check-component" in json.dumps(branch["triggerPolicy"]["condition"])
    strip = lambda s: json.dumps({k: v for k, v in s.items() if k != "root"})  # noqa: E731
    assert strip(specs[0]) == strip(specs[1])  # only the embedded config differs
