"""KFP components generated from the ``@step`` declarations, and their platform settings.

For each stage the wrapper's source is generated from its Step: one parameter per config
section or key it reads (a section as JSON text: the pipeline's parameters of the same name
feed it, so a task's cache key holds only what it reads), one ``Input[...]`` per input record,
one ``Output[...]`` for its record and each view, and a body that hands everything to
``marketsearch.steps.runner.run_step``. KFP embeds that source in the task's command, as it
does for any lightweight component.
"""
from __future__ import annotations

import functools
import json
import linecache
from types import SimpleNamespace
from typing import List

from kfp import dsl

from marketsearch.config import KFP_STAGE_KINDS, Config
from marketsearch.steps import Step, all_steps
from marketsearch.steps.config_view import values_for

# The KFP artifact type of each record.
ARTIFACT_TYPES = {"Snapshot": "Dataset", "SnapshotShards": "Dataset", "ValidatedData": "Dataset",
                  "CleanData": "Dataset", "CleanShard": "Dataset", "CleanPlan": "Dataset",
                  "TrainedModel": "Model", "ShardFeatures": "Artifact", "Bundle": "Model", "Evaluation": "Artifact",
                  "Decision": "Artifact", "DriftResult": "Artifact", "Deployment": "Artifact"}
SCALAR_TYPES = {"run_dir": "str", "seed": "int"}
PIPELINE_RUN_ENV = "MARKETSEARCH_PIPELINE_RUN"
# On a cluster every task learns its pipeline run from its pod's label (the downward API), so
# the run id reaches MLflow without being an input (which would defeat caching).
PIPELINE_RUN_LABEL = "metadata.labels['pipeline/runid']"

_TEMPLATE = '''def {name}({params}){returns}:
    args = dict(locals())
    from marketsearch.steps.runner import run_step
    return run_step({module!r}, {name!r}, args)
'''


def wrapper_source(step: Step) -> str:
    params = [f"{r}: {SCALAR_TYPES.get(r, 'str')}" for r in step.reads]
    params += [f"{p}: {t}" for p, t in step.params.items()]
    params += [f"{a}: dsl.Input[List[dsl.{ARTIFACT_TYPES[t[0].__name__]}]]" if isinstance(t, list)
               else f"{a}: dsl.Input[dsl.{ARTIFACT_TYPES[t.__name__]}]"
               for a, t in step.inputs.items()]
    if step.output:
        name, record = step.output
        params.append(f"{name}: dsl.Output[dsl.{ARTIFACT_TYPES[record.__name__]}]")
    params += [f"{v}: dsl.Output[dsl.{kind}]" for v, kind in step.views.items()]
    return _TEMPLATE.format(name=step.name, params=", ".join(params), module=step.module,
                            returns=f" -> {step.returns_type}" if step.returns else "")


def component(step: Step, base_image: str):
    """The KFP component of a stage (its wrapper compiled from ``wrapper_source``)."""
    source = wrapper_source(step)
    filename = f"<marketsearch step {step.name}>"
    # KFP reads a component's source with inspect.getsource, which finds it in linecache.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict = {}
    exec(compile(source, filename, "exec", dont_inherit=True),  # noqa: S102
         {"dsl": dsl, "List": List}, namespace)
    return dsl.component(namespace[step.name], base_image=base_image, install_kfp_package=False)


def uses_gpu(cfg: Config, stage: str) -> bool:
    """Whether a stage runs on the GPU node group (only on a cluster that asks for GPUs)."""
    return cfg.kfp.kubernetes and cfg.kfp.use_gpu and stage in cfg.kfp.gpu_stages


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A digest of the installed package's code and data (stages, pipelines and library).

    A task's cache key holds its image; on a cluster the image tag pins the code (the git sha
    `make images` pushed). The laptop runs every stage in this Python, so its image name
    carries this digest instead: editing the code invalidates kfp.local's cache."""
    import hashlib
    from pathlib import Path

    import marketsearch
    import marketsearch.components
    import marketsearch.pipelines

    digest = hashlib.sha256()
    roots = [Path(p) for m in (marketsearch, marketsearch.components, marketsearch.pipelines)
             for p in m.__path__]
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()
                           and p.suffix in (".py", ".yaml", ".json", ".html")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def image_for(cfg: Config, stage: str) -> str:
    """Container image of a stage: trainer image for model stages (its CUDA variant on the GPU
    node group), base image for the others; locally tagged with the code's digest."""
    k = cfg.kfp
    kind = KFP_STAGE_KINDS.get(stage, "data")
    name = k.trainer_image if kind in ("train", "evaluate") else k.base_image
    image = k.image(name, gpu=uses_gpu(cfg, stage))
    return image if k.kubernetes else f"{image}-code-{code_version()}"


def caching_of(cfg: Config, step: Step) -> bool:
    """A stage with side effects outside its artifacts is never cached (Step.cached); the
    others follow ``kfp.caching`` (default on)."""
    return step.cached and cfg.kfp.caching.get(step.name, True)


def configure_task(cfg: Config, step: Step, task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Caching from the step; on a cluster (``kfp.kubernetes``) also requests/limits, GPU,
    node selector and toleration, retries, secrets as env vars, pod labels and the pipeline
    run's id as an env var."""
    task.set_caching_options(enable_caching=caching_of(cfg, step))
    k = cfg.kfp
    if not k.kubernetes:
        return task
    from kfp import kubernetes

    stage = step.name
    res = k.resources.get(KFP_STAGE_KINDS.get(stage, "data"))
    if res is not None:
        for attr, setter in (("cpu_request", task.set_cpu_request), ("cpu_limit", task.set_cpu_limit),
                             ("memory_request", task.set_memory_request),
                             ("memory_limit", task.set_memory_limit)):
            if getattr(res, attr):
                setter(getattr(res, attr))
    if uses_gpu(cfg, stage):
        task.set_accelerator_type(k.gpu_resource).set_accelerator_limit(k.gpu_count)
        kubernetes.add_toleration(task, key=k.gpu_toleration_key, operator="Exists",
                                  effect=k.gpu_toleration_effect)
        selector = k.gpu_node_selector
    else:
        selector = k.node_selector
    for key, value in selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    if k.retries.get(stage, 0) > 0:
        task.set_retry(k.retries[stage], backoff_duration=k.retry_backoff,
                       backoff_factor=k.retry_backoff_factor,
                       backoff_max_duration=k.retry_backoff_max)
    for secret, key_to_env in k.secret_refs().items():
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=key_to_env)
    kubernetes.use_field_path_as_env(task, PIPELINE_RUN_ENV, PIPELINE_RUN_LABEL)
    if k.image_pull_policy:
        kubernetes.set_image_pull_policy(task, k.image_pull_policy)
    for key, value in {**k.pod_labels, "marketsearch/stage": stage.replace("_", "-")}.items():
        kubernetes.add_pod_label(task, label_key=key, label_value=value)
    return task


class _Task:
    """Calling a stage in a DAG: its config inputs come from the pipeline's parameters of the
    same names, its records from the keyword arguments; the task gets its platform settings."""

    def __init__(self, cfg: Config, step: Step):
        self.cfg, self.step = cfg, step
        self.component = component(step, image_for(cfg, step.name))

    def __call__(self, params: dict, **kwargs) -> dsl.PipelineTask:
        config = {name: params[name] for name in self.step.reads}
        return configure_task(self.cfg, self.step, self.component(**config, **kwargs))


def make_components(cfg: Config) -> SimpleNamespace:
    """One KFP component per stage, each with the image and platform settings the config names."""
    return SimpleNamespace(**{name: _Task(cfg, s) for name, s in all_steps().items()})


def pipeline_parameters(cfg: Config) -> dict:
    """The pipeline's parameters and their defaults: every config section (JSON text) and key,
    so a run from the KFP UI can change any of them."""
    from marketsearch.steps.config_view import config_names

    return values_for(cfg, config_names())


def config_from_parameters(values: dict) -> Config:
    """The Config a run's parameters (``pipeline_parameters``' form) describe."""
    from marketsearch.steps.config_view import TOP_LEVEL_KEYS

    return Config.model_validate({k: v if k in TOP_LEVEL_KEYS else json.loads(v)
                                  for k, v in values.items()})
