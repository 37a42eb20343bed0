"""The training DAG: ingest -> validate -> clean -> (train_image || train_text) -> train_fusion
-> build_index -> evaluate -> [if promoted] deploy.

The same DAG runs locally through ``kfp.local`` (``marketsearch run``) and on a cluster from its
compiled YAML (``make compile``). Each stage is a lightweight component whose body imports the
stage from the installed package, so its container image only needs ``marketsearch``.
"""

from types import SimpleNamespace

from kfp import dsl

from marketsearch.components import (build_index, clean, deploy, drift_check, evaluate, ingest,
                                     train_fusion, train_image, train_text, validate)
from marketsearch.config import KFP_STAGE_KINDS, Config

PIPELINE_NAME = "marketsearch-training"
GPU_STAGES = ("train_image", "train_text", "train_fusion")


def uses_gpu(cfg: Config, stage: str) -> bool:
    """Whether a stage runs on the GPU node group (only on a cluster that asks for GPUs)."""
    return cfg.kfp.kubernetes and cfg.kfp.use_gpu and stage in cfg.kfp.gpu_stages


def image_for(cfg: Config, stage: str) -> str:
    """Container image of a stage: trainer image for model stages (its CUDA variant on the GPU
    node group), base image for data stages."""
    k = cfg.kfp
    name = k.trainer_image if KFP_STAGE_KINDS[stage] in ("train", "evaluate") else k.base_image
    return k.image(name, gpu=uses_gpu(cfg, stage))


def configure_task(cfg: Config, stage: str, task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Kubernetes settings of one task from ``cfg.kfp``: requests/limits, GPU, node selector and
    toleration, retries, caching, secrets as env vars, pod labels. Nothing when
    ``kfp.kubernetes`` is false (the laptop's kfp.local run stays as it is)."""
    k = cfg.kfp
    if not k.kubernetes:
        return task
    from kfp import kubernetes

    res = k.resources.get(KFP_STAGE_KINDS[stage])
    if res is not None:
        if res.cpu_request:
            task.set_cpu_request(res.cpu_request)
        if res.cpu_limit:
            task.set_cpu_limit(res.cpu_limit)
        if res.memory_request:
            task.set_memory_request(res.memory_request)
        if res.memory_limit:
            task.set_memory_limit(res.memory_limit)
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
    if stage in k.caching:
        task.set_caching_options(enable_caching=k.caching[stage])
    for secret, key_to_env in k.secret_refs().items():
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=key_to_env)
    if k.image_pull_policy:
        kubernetes.set_image_pull_policy(task, k.image_pull_policy)
    for key, value in {**k.pod_labels, "marketsearch/stage": stage.replace("_", "-")}.items():
        kubernetes.add_pod_label(task, label_key=key, label_value=value)
    return task


class _Stage:
    """A stage's component that configures every task it makes (``configure_task``), so that any
    DAG built from ``make_components`` gets the config's platform settings."""

    def __init__(self, cfg: Config, stage: str, component):
        self.cfg, self.stage, self.component = cfg, stage, component

    def __call__(self, **kwargs) -> dsl.PipelineTask:
        return configure_task(self.cfg, self.stage, self.component(**kwargs))


def make_components(cfg: Config) -> SimpleNamespace:
    """One KFP component per stage, each with the image and platform settings the config names."""
    funcs = {
        "ingest": ingest.ingest_component, "validate": validate.validate_component,
        "clean": clean.clean_component, "train_image": train_image.train_image_component,
        "train_text": train_text.train_text_component,
        "train_fusion": train_fusion.train_fusion_component,
        "build_index": build_index.build_index_component, "evaluate": evaluate.evaluate_component,
        "deploy": deploy.deploy_component,
        "drift_check": drift_check.drift_check_component,  # the monitoring DAG's
    }
    return SimpleNamespace(**{
        name: _Stage(cfg, name, dsl.component(func, base_image=image_for(cfg, name),
                                              install_kfp_package=False))
        for name, func in funcs.items()})


def training_subgraph(c: SimpleNamespace, config_json: str, parent_run_id, validated):
    """clean ... deploy on a validated snapshot; shared by the training and monitoring DAGs
    (both validate the snapshot first, the monitoring DAG before its drift checks)."""
    cln = c.clean(config_json=config_json, parent_run_id=parent_run_id, validated=validated)
    img = c.train_image(config_json=config_json, parent_run_id=parent_run_id,
                        clean_data=cln.outputs["clean_data"])
    txt = c.train_text(config_json=config_json, parent_run_id=parent_run_id,
                       clean_data=cln.outputs["clean_data"])
    fus = c.train_fusion(config_json=config_json, parent_run_id=parent_run_id,
                         clean_data=cln.outputs["clean_data"], image_model=img.outputs["image_model"],
                         text_model=txt.outputs["text_model"])
    idx = c.build_index(config_json=config_json, parent_run_id=parent_run_id,
                        clean_data=cln.outputs["clean_data"], fused_model=fus.outputs["fused_model"])
    ev = c.evaluate(config_json=config_json, parent_run_id=parent_run_id,
                    clean_data=cln.outputs["clean_data"], bundle=idx.outputs["bundle"])
    with dsl.If(ev.outputs["Output"] == True, name="promoted"):  # noqa: E712  (KFP condition)
        c.deploy(config_json=config_json, parent_run_id=parent_run_id, bundle=idx.outputs["bundle"],
                 evaluation=ev.outputs["evaluation"])
    return SimpleNamespace(clean=cln, train_image=img, train_text=txt,
                           train_fusion=fus, build_index=idx, evaluate=ev)


def build_training_pipeline(cfg: Config):
    """The pipeline function, with the config embedded as the default of its one parameter."""
    c = make_components(cfg)

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="Listings (photos + text) -> validated, clean data -> image, text and "
                              "fused TensorFlow models -> FAISS index -> evaluated, promoted champion.")
    def training(config_json: str = cfg.to_json()):
        ing = c.ingest(config_json=config_json, pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
        val = c.validate(config_json=config_json, parent_run_id=ing.outputs["Output"],
                         raw_snapshot=ing.outputs["raw_snapshot"])
        training_subgraph(c, config_json, ing.outputs["Output"], val.outputs["validated"])

    return training
