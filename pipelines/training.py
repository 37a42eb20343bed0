"""The training DAG, under an exit handler that closes the run's MLflow parent:

    open_run (+ the source's fingerprint) -> ingest (in shards)
        -> ParallelFor shard: prepare_shard (validate + clean one shard)
                              -> featurize_shard (its photos' backbone features, cached)
        -> gather_clean (dsl.Collected: the plan) -> load_db
                                                  \\-> (train_image || train_text)
                                                      -> train_fusion -> build_index
                                                      -> evaluate -> [if promoted] deploy
    (every stage after gather_clean takes the clean shards themselves, dsl.Collected, with
    the plan, and reads them one shard at a time: marketsearch.catalogue)
    close_run (exit handler: whatever happened)

The same DAG runs locally through ``kfp.local`` (``marketsearch run``) and on a cluster from its
compiled YAML (``make compile``). The pipeline's parameters are the config's sections (JSON
text each) and shared keys, with the config as their defaults; every task takes only the ones its
stage reads (marketsearch.steps), so a task's cache key changes only when they or its input
artifacts do. The source's fingerprint (never cached) lets ingest and all after it be cached.
"""

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace

from kfp import dsl
from kfp.compiler import pipeline_spec_builder
from kfp.dsl import for_loop, pipeline_channel

from marketsearch.config import Config
from marketsearch.steps.kfp import make_components, pipeline_parameters

PIPELINE_NAME = "marketsearch-training"
DESCRIPTION = ("Listings (photos + text) -> validated, clean data -> image, text and fused "
               "TensorFlow models -> FAISS index -> evaluated, promoted champion.")


@dataclass
class PreparedShards:
    """The fan-out's results as a stage takes them: ``clean()``, a stage's clean inputs,
    ``clean_data`` (the shards) and ``plan`` (gather_clean's); ``photo_features()``,
    featurize_shard's records. Each call gives a dsl.Collected of its own: KFP's compiler
    rewrites one it has seen."""
    prepare: dsl.PipelineTask
    featurize: dsl.PipelineTask
    gather: dsl.PipelineTask

    def clean(self) -> dict:
        return {"clean_data": dsl.Collected(self.prepare.outputs["clean_shard"]),
                "plan": self.gather.outputs["plan"]}

    def photo_features(self) -> dsl.Collected:
        return dsl.Collected(self.featurize.outputs["photo_features"])


def training_subgraph(c: SimpleNamespace, p: dict, shards: PreparedShards) -> SimpleNamespace:
    """load_db ... deploy on the clean shards; shared by the training and monitoring DAGs."""
    clean = shards.clean
    c.load_db(p, **clean())
    img = c.train_image(p, **clean(), photo_features=shards.photo_features())
    txt = c.train_text(p, **clean())
    fus = c.train_fusion(p, **clean(), image=img.outputs["model"], text=txt.outputs["model"])
    idx = c.build_index(p, **clean(), fused_model=fus.outputs["model"])
    ev = c.evaluate(p, **clean(), bundle=idx.outputs["bundle"])
    with dsl.If(ev.outputs["Output"] == True, name="promoted"):  # noqa: E712  (KFP condition)
        c.deploy(p, bundle=idx.outputs["bundle"], decision=ev.outputs["evaluation"])
    return SimpleNamespace(train_image=img, train_text=txt, train_fusion=fus, build_index=idx,
                           evaluate=ev)


def ingest_snapshot(c: SimpleNamespace, p: dict):
    """open_run -> ingest, the head of both DAGs (ingest takes the source's fingerprint from
    open_run); returns the ingest task (outputs: the sharded snapshot, and its shards' list)."""
    opened = c.open_run(p, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
    return c.ingest(p, version=opened.output)


def prepared_shards(c: SimpleNamespace, p: dict, ing, parallelism: int) -> PreparedShards:
    """Each shard of ``ing``'s snapshot validated and cleaned, then its photos featurized, in
    tasks of their own, and the clean shards' plan gathered: what the training subgraph (and
    drift_check) takes. A stage under a ``dsl.If`` may take them too
    (``_collected_into_conditions``)."""
    with dsl.ParallelFor(ing.outputs["Output"], parallelism=parallelism, name="shards") as shard:
        prep = c.prepare_shard(p, raw_snapshot=ing.outputs["raw_snapshot"], shard=shard)
        feat = c.featurize_shard(p, clean_shard=prep.outputs["clean_shard"])
    gathered = c.gather_clean(p, clean_shards=dsl.Collected(prep.outputs["clean_shard"]))
    return PreparedShards(prep, feat, gathered)


def _artifact_lists(channels: list) -> list:
    """``channels`` with each fan-in of artifacts (dsl.Collected) as the list of artifacts it
    is."""
    return [pipeline_channel.PipelineArtifactChannel(c.name, c.channel_type, c.task_name,
                                                     is_artifact_list=True)
            if isinstance(c, for_loop.Collected) and c.is_artifact_channel else c
            for c in channels]


@contextmanager
def _collected_into_conditions() -> Iterator[None]:
    """While a pipeline is built, let a fan-in of artifacts (dsl.Collected) from a
    dsl.ParallelFor reach tasks under a dsl.If that does not hold the loop.

    KFP 2.17's compiler declares such a list as a parameter of the condition's sub-DAG and
    fails ("'NoneType' object cannot be interpreted as an integer"; kubeflow/pipelines#9808,
    closed unfixed). The monitoring DAG needs exactly that: its training branch, under
    dsl.If(drift), reads the shards cleaned before the drift check. Here the two builders of
    a sub-DAG (its component spec and its task) see such a channel as an artifact list
    (``isArtifactList``), as the compiler already declares the loop's own output and as a
    task in the same DAG already takes it."""
    builders = {"build_component_spec_for_group": "input_pipeline_channels",
                "build_task_spec_for_group": "pipeline_channels"}
    originals = {name: getattr(pipeline_spec_builder, name) for name in builders}

    def with_artifact_lists(name: str):
        build, argument = originals[name], builders[name]
        signature = inspect.signature(build)

        def wrapped(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.arguments[argument] = _artifact_lists(bound.arguments[argument])
            return build(*bound.args, **bound.kwargs)
        return wrapped

    for name in builders:
        setattr(pipeline_spec_builder, name, with_artifact_lists(name))
    try:
        yield
    finally:
        for name, build in originals.items():
            setattr(pipeline_spec_builder, name, build)


def build_pipeline(cfg: Config, name: str, description: str, body):
    """A pipeline whose parameters are the config's sections and keys (defaults: ``cfg``), run
    inside an exit handler that closes the MLflow parent run. ``body(c, p, cfg)`` builds the
    DAG."""
    c = make_components(cfg)
    defaults = pipeline_parameters(cfg)
    signature = inspect.Signature([
        inspect.Parameter(key, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=value,
                          annotation=type(value))
        for key, value in defaults.items()])

    def dag(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        with dsl.ExitHandler(c.close_run(bound.arguments), name="run"):
            body(c, bound.arguments, cfg)

    dag.__signature__ = signature
    dag.__name__ = name.replace("-", "_")
    with _collected_into_conditions():      # dsl.pipeline compiles the DAG here
        return dsl.pipeline(name=name, description=description)(dag)


def build_training_pipeline(cfg: Config):
    """The training pipeline, with the config as its parameters' defaults."""
    return build_pipeline(cfg, PIPELINE_NAME, DESCRIPTION, lambda c, p, cfg: training_subgraph(
        c, p, prepared_shards(c, p, ingest_snapshot(c, p), cfg.kfp.shard_parallelism)))
