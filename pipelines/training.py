"""The training DAG: ingest -> validate -> clean -> (train_image || train_text) -> train_fusion
-> build_index -> evaluate -> [if promoted] deploy.

The same DAG runs locally through ``kfp.local`` (``marketsearch run``) and on a cluster from its
compiled YAML (``make compile``). Each stage is a lightweight component whose body imports the
stage from the installed package, so its container image only needs ``marketsearch``.
"""

from types import SimpleNamespace

from kfp import dsl

from marketsearch.components import (build_index, clean, deploy, evaluate, ingest, train_fusion,
                                     train_image, train_text, validate)
from marketsearch.config import Config

PIPELINE_NAME = "marketsearch-training"
GPU_STAGES = ("train_image", "train_text", "train_fusion")


def image_for(cfg: Config, stage: str) -> str:
    """Container image of a stage: trainer image for model stages, base image for data stages."""
    k = cfg.kfp
    name = k.trainer_image if stage in GPU_STAGES + ("build_index", "evaluate") else k.base_image
    prefix = f"{k.image_registry.rstrip('/')}/" if k.image_registry else ""
    return f"{prefix}{name}:{k.image_tag}"


def make_components(cfg: Config) -> SimpleNamespace:
    """One KFP component per stage, each with the image the config names."""
    funcs = {
        "ingest": ingest.ingest_component, "validate": validate.validate_component,
        "clean": clean.clean_component, "train_image": train_image.train_image_component,
        "train_text": train_text.train_text_component,
        "train_fusion": train_fusion.train_fusion_component,
        "build_index": build_index.build_index_component, "evaluate": evaluate.evaluate_component,
        "deploy": deploy.deploy_component,
    }
    return SimpleNamespace(**{name: dsl.component(func, base_image=image_for(cfg, name),
                                                  install_kfp_package=False)
                              for name, func in funcs.items()})


def training_subgraph(c: SimpleNamespace, config_json: str, parent_run_id, raw_snapshot):
    """validate ... deploy on a raw snapshot; shared by the training and monitoring DAGs."""
    val = c.validate(config_json=config_json, parent_run_id=parent_run_id, raw_snapshot=raw_snapshot)
    cln = c.clean(config_json=config_json, parent_run_id=parent_run_id,
                  validated=val.outputs["validated"])
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
    return SimpleNamespace(validate=val, clean=cln, train_image=img, train_text=txt,
                           train_fusion=fus, build_index=idx, evaluate=ev)


def build_training_pipeline(cfg: Config):
    """The pipeline function, with the config embedded as the default of its one parameter."""
    c = make_components(cfg)

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="Listings (photos + text) -> validated, clean data -> image, text and "
                              "fused TensorFlow models -> FAISS index -> evaluated, promoted champion.")
    def training(config_json: str = cfg.to_json()):
        ing = c.ingest(config_json=config_json, pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
        training_subgraph(c, config_json, ing.outputs["Output"], ing.outputs["raw_snapshot"])

    return training
