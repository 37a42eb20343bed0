"""deploy: promote the evaluated version to champion and put its bundle where it is served.

Runs only when evaluate decided to promote. Locally the serving directory is the model
server's model directory (``serving.model_dir``).
"""

import json
import logging
from pathlib import Path

from kfp import dsl

from marketsearch.config import Config

log = logging.getLogger(__name__)


def deploy(cfg: Config, bundle_dir: str | Path, decision: dict) -> dict:
    from marketsearch import registry
    from marketsearch.bundle import Bundle

    if not decision.get("promote"):
        raise ValueError(f"deploy called for a version that was not promoted: {decision.get('reason')}")
    version = str(decision["version"])
    registry.promote(cfg, version, {"pipeline_run": decision.get("pipeline_run", ""),
                                    "data_hash": decision.get("data_hash", "")})
    target = cfg.path(cfg.serving.model_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    Bundle.copy(bundle_dir, target)
    (target / "VERSION").write_text(json.dumps({"model": cfg.mlflow.registered_model, "version": version}))
    result = {"version": version, "model_dir": str(target)}
    log.info("deploy: version %s is champion, served from %s", version, target)
    return result


def deploy_component(config_json: str, parent_run_id: str, bundle: dsl.Input[dsl.Model],
                     evaluation: dsl.Input[dsl.Artifact]) -> str:
    """KFP: set the champion alias and publish the bundle; returns the served version."""
    import json
    from pathlib import Path

    import mlflow

    from marketsearch import tracking
    from marketsearch.components.deploy import deploy
    from marketsearch.config import Config

    cfg = Config.from_json(config_json)
    decision = json.loads((Path(evaluation.path) / "decision.json").read_text())
    with tracking.stage_run(cfg, parent_run_id, "deploy"):
        result = deploy(cfg, bundle.path, decision)
        mlflow.log_params(result)
        mlflow.log_dict(decision, "decision.json")
    return result["version"]
