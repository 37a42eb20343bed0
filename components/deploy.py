"""deploy: promote the evaluated version to champion and put its bundle where it is served.

Runs only when evaluate decided to promote, and only while the champion is still the one the
decision was compared with:

* on a laptop (``kserve.enabled`` false, the default) the bundle is published into the model
  server's model directory (``serving.model_dir``) first, complete and in one atomic swap, and
  the MLflow alias "champion" moves after it, all under a lock (marketsearch.publish); if the
  alias cannot move, the previous bundle is swapped back;
* on a cluster (``kserve.enabled``) the bundle is uploaded first, the alias moves, then the
  KServe InferenceService is rolled out to the bundle
  (marketsearch.kube: created when absent, else a canary that is promoted once Ready or rolled
  back). KServe downloads the bundle itself, so it must be in object storage: the bundle
  artifact's own URI in the pipeline root (an s3:// pipeline root), or, with
  ``kserve.model_uri_prefix``, a copy this step uploads to ``<prefix>/<version>/``. When the
  rollout fails, the champion alias goes back to the version that still serves, and the step
  fails with the reason.
"""

import logging
from pathlib import Path

from marketsearch import checksums
from marketsearch.bundle import Bundle
from marketsearch.config import Config
from marketsearch.records import Decision, Deployment
from marketsearch.steps import step

log = logging.getLogger(__name__)


@step(reads=("serving", "kserve", "kfp"), inputs={"bundle": Bundle, "decision": Decision},
      uris={"storage_uri": "bundle"}, output=("deployment", Deployment), cached=False)
def deploy(cfg: Config, bundle: Bundle, decision: Decision, storage_uri: str | None = None,
           api=None) -> Deployment:
    """Promote ``decision.version`` and publish its bundle (see the module docstring).

    ``storage_uri``: the bundle artifact's URI (KFP's ``Artifact.uri``), used on a cluster when
    no ``kserve.model_uri_prefix`` is set; ``api``: a kubernetes CustomObjectsApi (tests).
    """
    from marketsearch import registry

    bundle_dir = bundle.root if isinstance(bundle, Bundle) else Path(bundle)  # files to move
    checksums.verify(bundle_dir)           # publish nothing that is not what was evaluated
    decision = Decision.coerce(decision)
    if not decision.promote:
        raise ValueError(f"deploy called for a version that was not promoted: {decision.reason}")
    if decision.version is None:
        raise ValueError("deploy called with a decision that names no registered version "
                         "(evaluate ran with register=False)")
    version = str(decision.version)
    lineage = {"pipeline_run": decision.pipeline_run, "data_hash": decision.data_hash}
    if cfg.kserve.enabled:
        current = _check_fresh(cfg, version, decision.champion_version)
        # where KServe will read it, before the alias moves
        storage_uri = _cluster_storage_uri(cfg, bundle_dir, version, storage_uri)
        registry.promote(cfg, version, lineage)
        return _deploy_to_cluster(cfg, version, storage_uri, current, api)
    return _deploy_locally(cfg, bundle_dir, version, decision.champion_version, lineage)


def _check_fresh(cfg: Config, version: str, compared: str | None):
    """The current champion, if it is still the one the decision was compared with."""
    from marketsearch import registry

    current = registry.champion(cfg)
    now = str(current.version) if current else "none"
    if compared is not None and now != str(compared):
        raise ValueError(f"deploy: version {version} was compared with champion {compared}, but "
                         f"the champion is now {now} (another run promoted it meanwhile); not "
                         "promoting a stale decision")
    return current


def _deploy_locally(cfg: Config, bundle_dir: Path, version: str, compared: str | None,
                    lineage: dict) -> Deployment:
    """Publish into the served directory (marketsearch.publish), then move the alias, both
    under the deploy lock; the alias is checked again just before it moves."""
    from marketsearch import publish, registry

    target = cfg.path(cfg.serving.model_dir)
    with publish.deploy_lock(target):
        current = registry.champion(cfg)
        publish.recover(target, str(current.version) if current else None)
        _check_fresh(cfg, version, compared)

        def move_alias() -> None:
            _check_fresh(cfg, version, compared)
            registry.promote(cfg, version, lineage)

        publish.publish(bundle_dir, target, {"model": cfg.mlflow.registered_model,
                                             "version": version}, move_alias)
    log.info("deploy: version %s is champion, served from %s", version, target)
    return Deployment(version, {"model_dir": str(target)})


def _cluster_storage_uri(cfg: Config, bundle_dir: str | Path, version: str,
                         artifact_uri: str | None) -> str:
    from marketsearch import kube

    kube.serving_image(cfg)                # a bad (unpinned) image fails here, not half-way
    if cfg.kserve.model_uri_prefix:
        return kube.upload_bundle(cfg, bundle_dir, version)
    return kube.storage_uri_for(artifact_uri or str(bundle_dir))


def _deploy_to_cluster(cfg: Config, version: str, uri: str, previous, api) -> Deployment:
    from marketsearch import kube

    ks = cfg.kserve
    try:
        rollout = kube.deploy_inference_service(cfg, uri, model_version=version, api=api)
    except Exception:                      # nothing new serves: neither may the alias say so
        _restore_champion(cfg, previous, version)
        raise
    target = {"storage_uri": uri, "inference_service": f"{ks.namespace}/{ks.name}",
              "rollout": rollout["action"]}
    if rollout.get("url"):
        target["url"] = rollout["url"]
    log.info("deploy: version %s is champion, InferenceService %s %s on %s", version,
             target["inference_service"], rollout["action"], uri)
    return Deployment(version, target)


def _restore_champion(cfg: Config, previous, failed_version: str) -> None:
    """The cluster still serves ``previous``: give the champion alias back to it."""
    import mlflow

    client = mlflow.MlflowClient()
    name, alias = cfg.mlflow.registered_model, cfg.mlflow.champion_alias
    client.set_model_version_tag(name, failed_version, "deploy.status", "rolled_back")
    if previous is not None:
        client.set_registered_model_alias(name, alias, previous.version)
    else:
        client.delete_registered_model_alias(name, alias)
    log.error("deploy: the rollout of version %s failed; %s is %s again", failed_version, alias,
              previous.version if previous is not None else "unset")
