"""The local deploy publishes a bundle atomically, then moves the alias; a deploy killed at any
step leaves the served link on a complete bundle that the registry's champion names (after
the recovery every next deploy runs first); two deploys at once never mix."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from marketsearch import checksums
from marketsearch.config import load_config
from marketsearch.faults import CRASH_ENV
from marketsearch.publish import CRASH_POINTS, DeployLockError, deploy_lock, recover


def _cfg(tmp_path: Path):
    return load_config(base=tmp_path, overrides={"run_dir": str(tmp_path / "runs"),
                                                 "mlflow": {"artifact_location": None}})


def _bundle(tmp_path: Path, version: str) -> Path:
    """A bundle-shaped directory whose every file says which version it is."""
    root = tmp_path / f"bundle-v{version}"
    (root / "index").mkdir(parents=True)
    for name in ("meta.json", "fused.keras", "text.keras", "index/index.faiss"):
        (root / name).write_text(json.dumps({"version": version, "file": name}))
    checksums.write(root)
    return root


def _register(cfg, n: int) -> None:
    import mlflow

    from marketsearch import tracking

    tracking.setup(cfg)
    client = mlflow.MlflowClient()
    client.create_registered_model(cfg.mlflow.registered_model)
    for _ in range(n):
        client.create_model_version(cfg.mlflow.registered_model, source="none")


def _decision(version: str, champion: str):
    from marketsearch.records import Decision

    return Decision(promote=True, reason="better", challenger_score=0.9, version=version,
                    champion_version=champion)


def _served(cfg) -> tuple[str, str | None]:
    """(version the served bundle's files say, version the registry's champion alias names)."""
    from marketsearch import registry

    served = cfg.path(cfg.serving.model_dir)
    files = {json.loads((served / f).read_text())["version"]
             for f in ("meta.json", "fused.keras", "text.keras", "index/index.faiss")}
    assert len(files) == 1, f"a mixture is served: {files}"
    assert json.loads((served / "VERSION").read_text())["version"] == next(iter(files))
    champion = registry.champion(cfg)
    return next(iter(files)), str(champion.version) if champion else None


def test_deploy_publishes_then_moves_the_alias_and_keeps_the_previous_bundle(tmp_path):
    from marketsearch.components.deploy import deploy

    cfg = _cfg(tmp_path)
    _register(cfg, 2)
    deploy(cfg, _bundle(tmp_path, "1"), _decision("1", "none"))
    assert _served(cfg) == ("1", "1")
    served = cfg.path(cfg.serving.model_dir)
    first = served.resolve()
    assert served.is_symlink() and first.parent.name == ".bundles"
    deploy(cfg, _bundle(tmp_path, "2"), _decision("2", "1"))
    assert _served(cfg) == ("2", "2")
    assert first.is_dir()                            # kept for rollback and running servers


def test_the_previous_bundle_comes_back_when_the_alias_cannot_move(tmp_path):
    from marketsearch.components.deploy import deploy

    cfg = _cfg(tmp_path)
    _register(cfg, 2)
    deploy(cfg, _bundle(tmp_path, "1"), _decision("1", "none"))
    # version 2 was compared with champion "none": stale by the time the alias would move
    with pytest.raises(ValueError, match="stale decision"):
        deploy(cfg, _bundle(tmp_path, "2"), _decision("2", "none"))
    assert _served(cfg) == ("1", "1")


def test_a_second_deploy_at_the_same_time_is_refused_and_changes_nothing(tmp_path):
    from marketsearch.components.deploy import deploy

    cfg = _cfg(tmp_path)
    _register(cfg, 2)
    deploy(cfg, _bundle(tmp_path, "1"), _decision("1", "none"))
    with deploy_lock(cfg.path(cfg.serving.model_dir)):      # the first deploy, still running
        with pytest.raises(DeployLockError, match="another deploy of .* is running"):
            deploy(cfg, _bundle(tmp_path, "2"), _decision("2", "1"))
    assert _served(cfg) == ("1", "1")


_CRASHING_DEPLOY = textwrap.dedent("""
    import sys
    from marketsearch.config import load_config
    from marketsearch.components.deploy import deploy
    from marketsearch.records import Decision
    cfg = load_config(overrides={"run_dir": sys.argv[1], "mlflow": {"artifact_location": None}})
    deploy(cfg, sys.argv[2], Decision(promote=True, reason="better", challenger_score=0.9,
                                      version="2", champion_version="1"))
""")


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_deploy_killed_at_any_step_leaves_a_served_bundle_the_registry_agrees_with(
        tmp_path, point):
    from marketsearch import registry
    from marketsearch.components.deploy import deploy

    cfg = _cfg(tmp_path)
    _register(cfg, 3)
    deploy(cfg, _bundle(tmp_path, "1"), _decision("1", "none"))
    proc = subprocess.run([sys.executable, "-c", _CRASHING_DEPLOY, str(tmp_path / "runs"),
                           str(_bundle(tmp_path, "2"))], env={**os.environ, CRASH_ENV: point},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, (point, proc.returncode, proc.stderr[-2000:])
    # what the next deploy (or `marketsearch serve`) does first
    champion = registry.champion(cfg)
    recover(cfg.path(cfg.serving.model_dir), str(champion.version))
    served, alias = _served(cfg)
    assert served == alias, f"killed {point}: serves {served}, the registry says {alias}"
    assert served == ("2" if point == "after_alias" else "1"), point
    # and the next deploy goes through
    deploy(cfg, _bundle(tmp_path, "3"), _decision("3", alias))
    assert _served(cfg) == ("3", "3")
