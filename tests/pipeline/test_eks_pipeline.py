"""The compiled cluster pipelines (config/eks.yaml, config/kind.yaml): per task, the image, GPU,
node placement, requests/limits, retries, caching and secrets the config asks for, and no
secret or database URL anywhere in the YAML a person uploads."""
import json
import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from marketsearch.cli import main
from marketsearch.config import KFP_STAGE_KINDS, KFP_STAGES, Config, load_config
from marketsearch.steps import all_steps

REPO = Path(__file__).resolve().parents[2]
EKS, KIND = str(REPO / "config" / "eks.yaml"), str(REPO / "config" / "kind.yaml")
GPU_STAGES = {"train_image", "train_text", "train_fusion"}
SECRET_ENV = {"MARKETSEARCH_DB_URL", "MLFLOW_TRACKING_URI"}


def compile_config(config: str, out, *overrides: str) -> tuple[dict, dict, str]:
    args = ["compile", "--config", config, "--output", str(out)]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 0
    text = out.read_text()
    docs = list(yaml.safe_load_all(text))
    assert len(docs) == 2, "expected the pipeline spec and the Kubernetes platform spec"
    return docs[0], docs[1], text


def tasks_by_stage(spec: dict, platform: dict) -> dict[str, dict]:
    """stage -> {task, container, k8s, condition}: every task, the promoted sub-DAG's included."""
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    out: dict[str, dict] = {}

    def walk(dag_tasks: dict, condition: str | None) -> None:
        for name, task in dag_tasks.items():
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:  # the exit handler's or a condition's sub-DAG
                walk(component["dag"]["tasks"],
                     task["taskInfo"]["name"] if "triggerPolicy" in task else condition)
                continue
            label = component["executorLabel"]
            stage = name.removesuffix("-component").replace("-", "_")
            out[stage] = {"task": task, "condition": condition,
                          "container": spec["deploymentSpec"]["executors"][label]["container"],
                          "k8s": executors.get(label, {})}

    walk(spec["root"]["dag"]["tasks"], None)
    return out


@pytest.fixture(scope="module")
def eks(tmp_path_factory):
    out = tmp_path_factory.mktemp("eks") / "eks-training.yaml"
    spec, platform, text = compile_config(EKS, out)
    return load_config(EKS), spec, platform, text


def test_every_stage_is_compiled_deploy_under_promoted(eks):
    cfg, spec, platform, _ = eks
    tasks = tasks_by_stage(spec, platform)
    # drift_check is the monitoring DAG's; validate and clean run inside prepare_shard, shard
    # by shard, in both DAGs
    assert set(tasks) == set(KFP_STAGES) - {"drift_check", "validate", "clean"}
    # the run's id reaches every task from its pod's label, never as an input
    for stage, t in tasks.items():
        assert {"name": "MARKETSEARCH_PIPELINE_RUN",
                "fieldPath": "metadata.labels['pipeline/runid']"} in t["k8s"]["fieldPathAsEnv"], stage
    assert tasks["deploy"]["condition"] == "promoted"
    assert all(t["condition"] is None for s, t in tasks.items() if s != "deploy")


def test_the_monitoring_dag_checks_drift_on_cpu_then_trains_on_gpus(tmp_path):
    out = tmp_path / "eks-monitoring.yaml"
    assert main(["compile", "--pipeline", "monitoring", "--config", EKS, "--output", str(out)]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    spec, platform = docs[0], docs[1]
    assert spec["pipelineInfo"]["name"] == "marketsearch-monitoring"
    tasks = tasks_by_stage(spec, platform)
    # one fan-out over the shards, before the checks; the training branch reads those shards
    assert "validate" not in tasks and "clean" not in tasks and "ingest_2" not in tasks
    assert "prepare_shard_2" not in tasks
    assert tasks["prepare_shard"]["condition"] == tasks["gather_clean"]["condition"] is None
    assert tasks["drift_check"]["condition"] is None
    assert tasks["train_image"]["condition"] == "drifted"
    assert tasks["deploy"]["condition"] == "promoted"
    drift = tasks["drift_check"]
    assert "accelerator" not in drift["container"]["resources"]
    assert "tolerations" not in drift["k8s"]
    assert {e["secretName"] for e in drift["k8s"]["secretAsEnv"]} == {"marketsearch-secrets"}
    for stage in GPU_STAGES:
        acc = tasks[stage]["container"]["resources"]["accelerator"]
        assert acc["resourceType"] == "nvidia.com/gpu" and acc["resourceCount"] == "1", stage
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
            tasks[stage]["k8s"]["tolerations"], stage
        assert tasks[stage]["k8s"]["nodeSelector"]["labels"] == {"marketsearch/node-pool": "gpu"}


def test_images_come_from_the_ecr_prefix(eks):
    cfg, spec, platform, _ = eks
    prefix = cfg.kfp.image_registry.rstrip("/") + "/"
    assert re.match(r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/", prefix)
    for stage, t in tasks_by_stage(spec, platform).items():
        image = t["container"]["image"]
        assert image.startswith(prefix), (stage, image)
        kind = KFP_STAGE_KINDS[stage]
        expected = {"data": f"{prefix}base:{cfg.kfp.image_tag}",
                    "evaluate": f"{prefix}trainer:{cfg.kfp.image_tag}",
                    "train": f"{prefix}trainer:{cfg.kfp.image_tag}"}[kind]
        assert image == expected + ("-gpu" if stage in GPU_STAGES else ""), stage
    # the per-shard photo features: the trainer image (TensorFlow, the backbone's wheel), on
    # the CPU node group, as many at once as the shards are cleaned
    assert KFP_STAGE_KINDS["featurize_shard"] == "train" and "featurize_shard" not in GPU_STAGES


def test_trainers_get_a_gpu_its_toleration_and_node_group(eks):
    cfg, spec, platform, _ = eks
    assert cfg.kfp.use_gpu and cfg.kfp.gpu_resource == "nvidia.com/gpu"
    for stage in GPU_STAGES:
        t = tasks_by_stage(spec, platform)[stage]
        acc = t["container"]["resources"]["accelerator"]
        assert acc["resourceType"] == "nvidia.com/gpu" and acc["resourceCount"] == "1", stage
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
            t["k8s"]["tolerations"], stage
        assert t["k8s"]["nodeSelector"]["labels"] == {"marketsearch/node-pool": "gpu"}, stage


def test_data_stages_get_cpu_and_memory_and_no_gpu(eks):
    cfg, spec, platform, _ = eks
    for stage, t in tasks_by_stage(spec, platform).items():
        res = t["container"]["resources"]
        want = cfg.kfp.resources[KFP_STAGE_KINDS[stage]]
        assert (res["resourceCpuRequest"], res["resourceCpuLimit"], res["resourceMemoryRequest"],
                res["resourceMemoryLimit"]) == (want.cpu_request, want.cpu_limit,
                                                want.memory_request, want.memory_limit), stage
        if stage in GPU_STAGES:
            continue
        assert "accelerator" not in res, stage
        assert not any(tol.get("key") == "nvidia.com/gpu" for tol in t["k8s"].get("tolerations", [])), stage
        assert t["k8s"]["nodeSelector"]["labels"] == cfg.kfp.node_selector, stage
        assert "gpu" not in json.dumps(t["k8s"]["nodeSelector"]), stage


def test_retries_and_caching_as_configured(eks):
    cfg, spec, platform, _ = eks
    tasks = tasks_by_stage(spec, platform)
    for stage, t in tasks.items():
        retries = cfg.kfp.retries.get(stage, 0)
        policy = t["task"].get("retryPolicy")
        if retries:
            assert policy["maxRetryCount"] == retries, stage
            assert policy["backoffDuration"] == cfg.kfp.retry_backoff, stage
        else:
            assert policy is None, stage
        cached = t["task"].get("cachingOptions", {}).get("enableCache", False)
        assert cached == (all_steps()[stage].cached and cfg.kfp.caching.get(stage, True)), stage
    # retries on the data stages, the index and the trainers; cache on for the stages that only
    # compute on their inputs (ingest included: the uncached open_run fingerprints the
    # source for it), off where the outside world is read or changed
    assert all(cfg.kfp.retries.get(s, 0) > 0 for s in
               ("ingest", "prepare_shard", "featurize_shard", "build_index", *GPU_STAGES))
    cached = {s for s, t in tasks.items() if t["task"].get("cachingOptions", {}).get("enableCache")}
    assert cached == {"ingest", "prepare_shard", "featurize_shard", "gather_clean", "build_index",
                      *GPU_STAGES}


def test_secrets_come_from_the_kubernetes_secret(eks):
    cfg, spec, platform, _ = eks
    assert SECRET_ENV <= set(cfg.kfp.secret_env)
    for stage, t in tasks_by_stage(spec, platform).items():
        (entry,) = t["k8s"]["secretAsEnv"]
        assert entry["secretName"] == cfg.kfp.secret_name == "marketsearch-secrets"
        assert entry["secretNameParameter"]["runtimeValue"]["constant"] == cfg.kfp.secret_name
        assert not entry.get("optional", False), stage
        assert {m["envVar"]: m["secretKey"] for m in entry["keyToEnv"]} == cfg.kfp.secret_env
        # no literal value for them in the container
        literal = {e.get("name") for e in t["container"].get("env", [])}
        assert not (literal & set(cfg.kfp.secret_env)), stage


def test_no_secret_or_database_url_in_the_yaml(eks):
    cfg, spec, _, text = eks
    params = spec["root"]["inputDefinitions"]["parameters"]
    default = json.dumps({k: json.loads(p["defaultValue"]) if p["parameterType"] == "STRING" and
                          k != "run_dir" else p["defaultValue"] for k, p in params.items()})
    compiled = Config.from_json(default)
    assert compiled == cfg
    assert compiled.data.postgres_url is None
    assert compiled.clean.database_url == "" and compiled.mlflow.tracking_uri == ""
    assert compiled.clean.database_url_env == "MARKETSEARCH_DB_URL"
    assert compiled.mlflow.tracking_uri_env == "MLFLOW_TRACKING_URI"

    def strings(node):
        if isinstance(node, dict):
            for key, value in node.items():
                yield key
                yield from strings(value)
        elif isinstance(node, list):
            for value in node:
                yield from strings(value)
        elif isinstance(node, str):
            yield node

    for value in strings(json.loads(default)):
        assert not re.search(r"(postgres(ql)?|mysql|sqlite)(\+\w+)?://", value, re.I), value
        assert "password" not in value.lower(), value
    lowered = text.lower()
    for needle in ("postgresql://", "postgres://", "mysql://", "sqlite:///", "password"):
        assert needle not in lowered, needle
    assert not re.search(r"://[^/\s:@'\"]+:[^/\s@'\"]+@", text), "credentials inside a URL"
    assert not re.search(r"AKIA[0-9A-Z]{16}", text), "an AWS access key id"


def test_kind_pipeline_uses_the_loaded_images_and_no_gpu(tmp_path):
    spec, platform, text = compile_config(KIND, tmp_path / "kind.yaml")
    cfg = load_config(KIND)
    assert not cfg.kfp.use_gpu and cfg.data.source == "s3" and cfg.data.limit
    for stage, t in tasks_by_stage(spec, platform).items():
        assert t["container"]["image"].startswith(cfg.kfp.image_registry + "/"), stage
        assert t["container"]["image"].endswith(f":{cfg.kfp.image_tag}"), stage
        assert "accelerator" not in t["container"].get("resources", {}), stage
        assert "tolerations" not in t["k8s"] and "nodeSelector" not in t["k8s"], stage
        assert t["k8s"]["imagePullPolicy"] == "IfNotPresent", stage
        by_secret = {e["secretName"]: {m["secretKey"]: m["envVar"] for m in e["keyToEnv"]}
                     for e in t["k8s"]["secretAsEnv"]}
        assert by_secret == cfg.kfp.secret_refs(), stage
        assert {env for refs in by_secret.values() for env in refs.values()} == {
            "MARKETSEARCH_DB_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, stage
    assert "password" not in text.lower() and "postgresql://" not in text
    assert not re.search(r"://[^/\s:@'\"]+:[^/\s@'\"]+@", text), "credentials inside a URL"


def test_cluster_settings_are_refused_when_inconsistent():
    with pytest.raises(ValidationError, match="use_gpu needs kfp.kubernetes"):
        load_config(overrides=["kfp.use_gpu=true"])
    with pytest.raises(ValidationError, match="not 'latest'"):
        load_config(overrides=["kfp.kubernetes=true"])
    with pytest.raises(ValidationError, match="unknown stage"):
        load_config(EKS, overrides=["kfp.retries.train_imgae=2"])
    with pytest.raises(ValidationError, match="secret_name is not"):
        load_config(overrides={"kfp": {"secret_env": {"X": "y"}}})
    with pytest.raises(ValidationError, match="one env var only"):
        load_config(KIND, overrides={"kfp": {"secret_env": {"A": "url", "B": "marketsearch-db/url"}}})
    qualified = load_config(overrides={"kfp": {"secret_env": {"A": "s1/k", "B": "s2/k"}}}).kfp
    assert qualified.secret_refs() == {"s1": {"k": "A"}, "s2": {"k": "B"}}
    with pytest.raises(ValidationError, match="cpu_request"):
        load_config(EKS, overrides=["kfp.resources.data.cpu_request=lots"])
