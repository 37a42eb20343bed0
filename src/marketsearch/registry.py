"""MLflow model registry: every trained bundle is a model version; the alias marks the champion."""
from __future__ import annotations

import logging
from pathlib import Path

from marketsearch import tracking
from marketsearch.config import Config

log = logging.getLogger(__name__)


def version_of(cfg: Config, bundle_uri: str):
    """The registered version made from the bundle artifact at ``bundle_uri``, or None."""
    import mlflow

    tracking.setup(cfg)
    versions = mlflow.MlflowClient().search_model_versions(
        f"name = '{cfg.mlflow.registered_model}'")
    return next((v for v in versions if v.tags.get("bundle_uri") == bundle_uri), None)


def register_bundle(cfg: Config, bundle_dir: str | Path, bundle_uri: str,
                    tags: dict[str, str]) -> str:
    """Log the bundle as a pyfunc model in the active run and register it; return the version.

    The same bundle artifact (``bundle_uri``: a cache hit of build_index hands on the earlier
    run's) is registered once: a second call returns its version and leaves its tags alone."""
    import mlflow

    from marketsearch import __version__

    existing = version_of(cfg, bundle_uri)
    if existing is not None:
        log.info("bundle %s is already %s version %s", bundle_uri, cfg.mlflow.registered_model,
                 existing.version)
        return str(existing.version)

    info = mlflow.pyfunc.log_model(          # models from code: no pickle (registry_model.py)
        name="model", python_model=str(Path(__file__).with_name("registry_model.py")),
        artifacts={"bundle": str(bundle_dir)},
        registered_model_name=cfg.mlflow.registered_model,
        pip_requirements=[f"marketsearch=={__version__}"])
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in {**tags, "bundle_uri": bundle_uri}.items():
        client.set_model_version_tag(cfg.mlflow.registered_model, version, key, str(value))
    log.info("registered %s version %s", cfg.mlflow.registered_model, version)
    return version


def champion(cfg: Config):
    """The model version that holds the champion alias, or None."""
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking.setup(cfg)
    try:
        return mlflow.MlflowClient().get_model_version_by_alias(
            cfg.mlflow.registered_model, cfg.mlflow.champion_alias)
    except MlflowException:
        return None


def latest_version(cfg: Config):
    """The newest registered version (promoted or kept out), or None."""
    import mlflow

    tracking.setup(cfg)
    versions = mlflow.MlflowClient().search_model_versions(
        f"name = '{cfg.mlflow.registered_model}'")
    return max(versions, key=lambda v: int(v.version), default=None)


def download_bundle(cfg: Config, version: str, dst: str | Path) -> Path:
    """Fetch a registered version's bundle directory to ``dst`` and return its path."""
    import mlflow

    tracking.setup(cfg)
    from mlflow.models import Model

    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{cfg.mlflow.registered_model}/{version}", dst_path=str(dst))
    # The pyfunc flavour records where it put the "bundle" artifact (artifacts/<dir name>).
    flavor = Model.load(str(Path(local) / "MLmodel")).flavors["python_function"]
    return Path(local) / flavor["artifacts"]["bundle"]["path"]


def promote(cfg: Config, version: str, lineage: dict[str, str]) -> None:
    """Give ``version`` the champion alias, recording what it replaced and where it came from."""
    import mlflow

    tracking.setup(cfg)
    client = mlflow.MlflowClient()
    previous = champion(cfg)
    lineage = dict(lineage, parent_model_version=previous.version if previous else "none")
    for key, value in lineage.items():
        client.set_model_version_tag(cfg.mlflow.registered_model, version, f"lineage.{key}", str(value))
    client.set_registered_model_alias(cfg.mlflow.registered_model, cfg.mlflow.champion_alias, version)
    log.info("version %s is now %s (was %s)", version, cfg.mlflow.champion_alias,
             previous.version if previous else "none")
