"""The compiled pipeline: its stages, the promotion condition, the exit handler, the config as
its parameters, and task inputs that make KFP's caching right."""
import json

import yaml

from marketsearch.cli import main
from marketsearch.config import load_config
from marketsearch.steps import all_steps

STAGES = {"open-run", "ingest", "prepare-shard", "featurize-shard", "gather-clean", "load-db",
          "train-image",
          "train-text", "train-fusion", "build-index", "evaluate", "deploy"}
TRAINING = ("train-image", "train-text", "train-fusion")


def _compile(tmp_path, name: str, *overrides: str, pipeline: str = "training") -> dict:
    out = tmp_path / f"{name}.yaml"
    args = ["compile", "--pipeline", pipeline, "--output", str(out)]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 0
    return yaml.safe_load(out.read_text())


def _tasks(spec: dict) -> dict[str, dict]:
    """Every container task by name, through the exit handler's and conditions' sub-DAGs, with
    the name of the condition it sits under ("condition": None outside any)."""
    out: dict[str, dict] = {}

    def walk(tasks: dict, condition):
        for name, task in tasks.items():
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:
                inner = task["taskInfo"]["name"] if "triggerPolicy" in task else condition
                walk(component["dag"]["tasks"], inner)
            else:
                out[name] = dict(task, condition=condition)

    walk(spec["root"]["dag"]["tasks"], None)
    return out


def _inputs(spec: dict, task: dict) -> dict:
    """A task's parameter inputs, each resolved to its value in a run with the defaults: what
    KFP's cache key sees (with the input artifacts, which are upstream outputs)."""
    defaults = {k: p.get("defaultValue") for k, p in
                spec["root"]["inputDefinitions"]["parameters"].items()}
    values = {}
    for name, ref in task.get("inputs", {}).get("parameters", {}).items():
        source = ref.get("componentInputParameter", "").removeprefix("pipelinechannel--")
        if source in defaults:                   # a pipeline parameter, through the sub-DAGs
            values[name] = defaults[source]
        elif source:                             # a loop's item
            values[name] = source
        else:
            values[name] = ref.get("runtimeValue", ref.get("taskOutputParameter"))
    return values


def test_compile_writes_the_dag(tmp_path):
    spec = _compile(tmp_path, "training", "kfp.image_registry=123.dkr.ecr/ms", "kfp.image_tag=v1")
    tasks = _tasks(spec)
    assert set(tasks) == STAGES | {"close-run"}
    assert tasks["deploy"]["condition"] == "promoted"
    # the run's MLflow parent is closed by an exit handler around everything else
    [exit_task] = [t for n, t in spec["root"]["dag"]["tasks"].items() if n == "close-run"]
    assert exit_task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert exit_task["inputs"]["parameters"]["status"]["taskFinalStatus"]["producerTask"]
    # dependencies: fusion after both trainers, evaluate after build_index
    assert set(tasks["train-fusion"]["dependentTasks"]) >= {"train-image", "train-text", "gather-clean"}
    assert "build-index" in tasks["evaluate"]["dependentTasks"]
    # the data fan-out: prepare_shard once per item of ingest's shard list, at most
    # kfp.shard_parallelism at once, gathered from dsl.Collected
    loop = next(t for t in spec["components"]["comp-exit-handler-1"]["dag"]["tasks"].values()
                if "parameterIterator" in t)
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("ingest-Output")
    assert loop["iteratorPolicy"]["parallelismLimit"] == load_config().kfp.shard_parallelism
    gather = tasks["gather-clean"]["inputs"]["artifacts"]["clean_shards"]
    assert gather["taskOutputArtifact"]["outputArtifactKey"] == \
        "pipelinechannel--prepare-shard-clean_shard"
    assert "prepare-shard" not in tasks["gather-clean"]["dependentTasks"]   # the loop, whole
    assert tasks["prepare-shard"]["inputs"]["parameters"]["shard"]["componentInputParameter"] \
        .endswith("ingest-Output-loop-item")
    # in the same loop, each shard's photos featurized from that shard's clean output, and
    # train_image after all of them (their records, the loop's fan-in)
    assert tasks["featurize-shard"]["inputs"]["artifacts"]["clean_shard"]["taskOutputArtifact"] \
        == {"producerTask": "prepare-shard", "outputArtifactKey": "clean_shard"}
    assert tasks["train-image"]["inputs"]["artifacts"]["photo_features"]["taskOutputArtifact"] \
        ["outputArtifactKey"] == "pipelinechannel--featurize-shard-photo_features"
    assert "open-run" in tasks["ingest"]["dependentTasks"]     # the source's fingerprint
    # images from config (locally: tagged with the code's digest); no per-run id anywhere in a
    # stage's inputs but open_run's run name
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert {i.split("-code-")[0] for i in images} == {"123.dkr.ecr/ms/base:v1",
                                                      "123.dkr.ecr/ms/trainer:v1"}
    for name, task in tasks.items():
        if name != "open-run":
            assert "PIPELINE_JOB_NAME" not in json.dumps(task.get("inputs", {})), name
    # the config is the pipeline's parameters, one per section, with the compiled defaults
    params = spec["root"]["inputDefinitions"]["parameters"]
    compiled = load_config(overrides={k: json.loads(p["defaultValue"]) if p["parameterType"] ==
                                      "STRING" and k != "run_dir" else p["defaultValue"]
                                      for k, p in params.items()})
    assert compiled.kfp.image_tag == "v1" and compiled.kfp.image_registry == "123.dkr.ecr/ms"
    # the laptop's config compiles no Kubernetes settings: one YAML document, no
    # requests/limits, no retries; caching on exactly for the stages without side effects
    assert len(list(yaml.safe_load_all((tmp_path / "training.yaml").read_text()))) == 1
    assert all("resources" not in e["container"] for e in spec["deploymentSpec"]["executors"].values())
    assert not any("retryPolicy" in t for t in tasks.values())
    steps = all_steps()
    for name, task in tasks.items():
        assert task["cachingOptions"].get("enableCache", False) == steps[name.replace("-", "_")].cached, name
    never = {n for n, t in tasks.items() if not t["cachingOptions"].get("enableCache", False)}
    assert never == {"open-run", "load-db", "evaluate", "deploy", "close-run"}


def test_each_task_takes_only_the_config_it_reads(tmp_path):
    """Changing drift.* (or any section a stage does not read) leaves the training tasks'
    inputs, and so their cache keys, exactly as they were."""
    a = _compile(tmp_path, "a")
    b = _compile(tmp_path, "b", "drift.alpha=0.01", "drift.mmd_permutations=999",
                 "monitoring.dry_run=true", "evaluate.min_improvement=0.05")
    ta, tb = _tasks(a), _tasks(b)
    for name in ("ingest", "prepare-shard", "gather-clean", *TRAINING):
        assert _inputs(a, ta[name]) == _inputs(b, tb[name]), name
        assert "drift" not in ta[name]["inputs"]["parameters"], name
    # the stages that do read them see the change
    assert _inputs(a, ta["build-index"])["drift"] != _inputs(b, tb["build-index"])["drift"]
    assert _inputs(a, ta["evaluate"])["evaluate"] != _inputs(b, tb["evaluate"])["evaluate"]
    # and a change to what a trainer reads reaches that trainer only
    c = _compile(tmp_path, "c", "text_model.epochs=7")
    tc = _tasks(c)
    assert _inputs(a, ta["train-image"]) == _inputs(c, tc["train-image"])
    assert _inputs(a, ta["train-text"]) != _inputs(c, tc["train-text"])
    # the component code is in the key too (the command carries the wrapper)
    assert a["deploymentSpec"] == b["deploymentSpec"] == c["deploymentSpec"]


def test_the_monitoring_dag_decides_dry_run_at_run_time(tmp_path):
    """One compiled package serves dry runs and real ones: the training branch is always there,
    behind drift_check's answer, which reads monitoring.dry_run from its inputs."""
    specs = [_compile(tmp_path, f"monitoring-{dry}", f"monitoring.dry_run={dry}",
                      pipeline="monitoring") for dry in ("true", "false")]
    for spec in specs:
        tasks = _tasks(spec)
        # one fan-out over the shards, before the drift check; no whole-snapshot validate
        assert set(tasks) == STAGES | {"drift-check", "close-run"}
        assert tasks["prepare-shard"]["condition"] == tasks["gather-clean"]["condition"] is None
        assert tasks["drift-check"]["condition"] is None
        assert "monitoring" in tasks["drift-check"]["inputs"]["parameters"]
        # drift_check reads the gathered clean shards (the loop's fan-in) with the plan
        shards = "pipelinechannel--prepare-shard-clean_shard"
        drift = tasks["drift-check"]["inputs"]["artifacts"]
        assert drift["clean_data"]["taskOutputArtifact"]["outputArtifactKey"] == shards
        assert drift["plan"]["taskOutputArtifact"] == {"producerTask": "gather-clean",
                                                       "outputArtifactKey": "plan"}
        # the training branch, behind it, reads those same shards through its condition
        assert tasks["train-image"]["condition"] == "drifted"
        assert tasks["deploy"]["condition"] == "promoted"
        [drifted] = [c for c in spec["components"].values() if "dag" in c
                     and "train-image" in c["dag"]["tasks"]]
        given = drifted["inputDefinitions"]["artifacts"]
        [(name, definition)] = [(k, v) for k, v in given.items() if k.endswith(shards)]
        assert definition["isArtifactList"] is True
        features = "pipelinechannel--featurize-shard-photo_features"
        [(fname, fdef)] = [(k, v) for k, v in given.items() if k.endswith(features)]
        assert fdef["isArtifactList"] is True
        assert tasks["train-image"]["inputs"]["artifacts"]["photo_features"] == \
            {"componentInputArtifact": fname}
        for stage in ("load-db", "train-image", "train-text", "train-fusion", "build-index",
                      "evaluate"):
            assert tasks[stage]["inputs"]["artifacts"]["clean_data"] == \
                {"componentInputArtifact": name}, stage
    strip = lambda s: json.dumps({k: v for k, v in s.items() if k != "root"})  # noqa: E731
    assert strip(specs[0]) == strip(specs[1])  # only the parameters' defaults differ
