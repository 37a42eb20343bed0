"""deploy: promote the evaluated version to champion and put its bundle where it is served.

Runs only when evaluate decided to promote, and only while the champion is still the one the
decision was compared with:

* on a laptop (``kserve.enabled`` false, the default) the bundle is published into the model
  server's model directory (``serving.model_dir``) first, complete and in one atomic swap, and
  the MLflow alias "champion" moves after it, all under a lock (marketsearch.publish); if the
  alias cannot move, the previous bundle is swapped back;
* on a cluster (``kserve.enabled``) the same order, under a Kubernetes Lease that lets one
  deploy through at a time (marketsearch.kube.lease): the bundle is put where KServe reads it
  and verified there, object by object, against its checksums; the InferenceService is rolled
  out to it (created when absent, else a canary that is promoted once Ready, or rolled back);
  only then does the alias move. KServe downloads the bundle itself, so it must be in object
  storage: the bundle artifact's own URI in the pipeline root (an s3:// pipeline root), or,
  with ``kserve.model_uri_prefix``, a copy this step uploads to ``<prefix>/<version>/``. When
  the rollout fails, the alias never moved; when the alias cannot move after it, the
  InferenceService is rolled back to the bundle it served. Either way the step fails with the
  reason and the version is tagged ``deploy.status=rolled_back``.
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
        return _deploy_to_cluster(cfg, bundle_dir, version, decision.champion_version, lineage,
                                  storage_uri, api)
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


def _deploy_to_cluster(cfg: Config, bundle_dir: Path, version: str, compared: str | None,
                       lineage: dict, artifact_uri: str | None, api) -> Deployment:
    """Under the deploy Lease: the bundle where KServe reads it, verified there; the rollout;
    the alias, checked again just before it moves (see the module docstring)."""
    from marketsearch import kube, registry

    kube.serving_image(cfg)                # a bad (unpinned) image fails here, not half-way
    api = api if api is not None else kube.custom_objects_api(cfg)
    with kube.deploy_lease(cfg, api.api_client):
        previous = _check_fresh(cfg, version, compared)
        if cfg.kserve.model_uri_prefix:
            uri = kube.upload_bundle(cfg, bundle_dir, version)
        else:
            uri = kube.storage_uri_for(artifact_uri or str(bundle_dir))
        kube.verify_uploaded(cfg, uri)     # what KServe will download is what was evaluated
        try:
            rollout = kube.deploy_inference_service(cfg, uri, model_version=version, api=api)
        except Exception:                  # rolled back by the rollout itself; alias untouched
            _tag_rolled_back(cfg, version)
            raise
        try:
            _check_fresh(cfg, version, compared)
            registry.promote(cfg, version, lineage)
        except Exception as exc:
            _serve_previous_again(cfg, rollout, previous, api, exc)
            _tag_rolled_back(cfg, version)
            raise
    ks = cfg.kserve
    target = {"storage_uri": uri, "inference_service": f"{ks.namespace}/{ks.name}",
              "rollout": rollout["action"]}
    if rollout.get("url"):
        target["url"] = rollout["url"]
    log.info("deploy: version %s is champion, InferenceService %s %s on %s", version,
             target["inference_service"], rollout["action"], uri)
    return Deployment(version, target)


def _serve_previous_again(cfg: Config, rollout: dict, previous, api, why: Exception) -> None:
    """The alias could not move after the rollout: roll the InferenceService back to the bundle
    it served before (none before: it is left serving the new one, and the error says so)."""
    from marketsearch import kube

    before = rollout.get("previous_storage_uri")
    if rollout["action"] == "unchanged" or not before:
        log.error("deploy: the alias did not move (%s) and the InferenceService had no earlier "
                  "bundle to go back to; it serves %s", why, rollout["storage_uri"])
        return
    log.error("deploy: the alias did not move (%s); rolling the InferenceService back to %s",
              why, before)
    kube.deploy_inference_service(cfg, before, api=api, model_version=str(previous.version)
                                  if previous is not None else None)


def _tag_rolled_back(cfg: Config, version: str) -> None:
    import mlflow

    mlflow.MlflowClient().set_model_version_tag(cfg.mlflow.registered_model, version,
                                                "deploy.status", "rolled_back")
    log.error("deploy: version %s was not deployed; %s stays where it was", version,
              cfg.mlflow.champion_alias)
