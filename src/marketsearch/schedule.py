"""The recurring drift check: schedule the compiled monitoring pipeline on a KFP deployment.

``make schedule`` compiles pipelines/monitoring.py (``marketsearch-monitoring``) and runs
``marketsearch schedule``, which calls :func:`schedule`:

1. connects to the KFP API at the configured host (``--host``, else the env var named by
   ``monitoring.kfp_host_env`` (KFP_HOST), else ``monitoring.kfp_host``; a bearer token only
   from the env var named by ``monitoring.kfp_token_env``);
2. gets or creates the experiment ``monitoring.experiment`` (unarchiving it if archived);
3. creates the recurring run ``monitoring.recurring_run_name`` from the package with
   ``monitoring.cron`` (KFP's six-field cron, seconds first), ``max_concurrency``, no catch-up
   unless ``monitoring.catchup``, and the loaded config as the pipeline's parameters (one per
   config section, marketsearch.steps.kfp.pipeline_parameters), then
   deletes the runs of that name the experiment had before. Scheduling again therefore
   replaces the schedule instead of adding a second one, and a refused package leaves the old
   schedule running.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from marketsearch.config import Config

log = logging.getLogger(__name__)

MONITORING_PIPELINE_NAME = "marketsearch-monitoring"
PACKAGE_SUFFIXES = (".yaml", ".yml", ".zip", ".tar.gz", ".tgz")


class ScheduleError(RuntimeError):
    """Scheduling cannot start: no host, no usable package, or a config the package can't take."""


@dataclass
class Scheduled:
    """What :func:`schedule_recurring_run` did."""
    recurring_run_id: str
    recurring_run_name: str
    experiment_id: str
    experiment: str
    host: str
    pipeline_name: str
    cron: str
    replaced: list[str] = field(default_factory=list)
    experiment_created: bool = False


def resolve_host(cfg: Config, host: str | None = None) -> str:
    """The KFP endpoint to use, or a :class:`ScheduleError` saying how to give one."""
    m = cfg.monitoring
    host = host or m.host()
    if not host:
        raise ScheduleError(
            f"no KFP host to schedule on: pass --host URL, set the {m.kfp_host_env} environment "
            f"variable or monitoring.kfp_host in the config (e.g. http://localhost:8888 after "
            f"`kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8888:80`)")
    if not host.startswith(("http://", "https://")):
        raise ScheduleError(f"KFP host {host!r} must be an http:// or https:// URL")
    return host.rstrip("/")


def read_package(package_path: str | Path) -> dict:
    """The pipeline spec (first YAML document) of a compiled package; checked to be one."""
    path = Path(package_path)
    if not path.is_file():
        raise ScheduleError(f"pipeline package {path} not found (compile it first: "
                            f"marketsearch compile --pipeline monitoring --output {path})")
    if not path.name.endswith(PACKAGE_SUFFIXES):
        raise ScheduleError(f"pipeline package {path} must end with one of {PACKAGE_SUFFIXES}")
    if path.name.endswith((".yaml", ".yml")):
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as exc:
            raise ScheduleError(f"pipeline package {path} is not YAML: {exc}") from exc
        spec = docs[0] if docs else None
        if not isinstance(spec, dict) or "pipelineInfo" not in spec or "root" not in spec:
            raise ScheduleError(f"{path} is not a compiled KFP pipeline (no pipelineInfo/root)")
        return spec
    return {}  # archives: the KFP client unpacks and checks them itself


def _parameters(spec: dict) -> set[str]:
    return set(spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}))


def kfp_client(cfg: Config, host: str):
    """A ``kfp.Client`` on ``host`` (token from ``monitoring.kfp_token_env`` when set)."""
    import kfp

    m = cfg.monitoring
    token = os.environ.get(m.kfp_token_env) or None
    kwargs = {"namespace": m.namespace} if m.namespace else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP >= 2.0.0-beta.2"
        try:
            return kfp.Client(host=host, existing_token=token, **kwargs)
        except Exception as exc:  # healthz fails: unreachable or not a KFP API
            raise ScheduleError(f"cannot reach the KFP API at {host}: {exc}") from exc


def _experiment(client, cfg: Config):
    """(experiment, created): get the experiment by name, or create it."""
    m = cfg.monitoring
    namespace = m.namespace or client.get_user_namespace()
    try:
        experiment = client.get_experiment(experiment_name=m.experiment, namespace=namespace)
        created = False
    except ValueError as exc:
        if not str(exc).startswith("No experiment is found with name"):
            raise
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a UI link
            experiment = client.create_experiment(
                m.experiment, description="marketsearch monitoring: the recurring drift check",
                namespace=namespace or None)
        created = True
    if str(getattr(experiment, "storage_state", "") or "").upper() == "ARCHIVED":
        client.unarchive_experiment(experiment.experiment_id)
    return experiment, created


def _recurring_runs_named(client, experiment_id: str, name: str) -> list:
    """Every recurring run of the experiment whose display name is ``name`` (all pages)."""
    flt = json.dumps({"predicates": [{"operation": 1, "key": "display_name",  # 1: EQUALS
                                      "stringValue": name}]})
    found, token = [], ""
    while True:
        page = client.list_recurring_runs(experiment_id=experiment_id, page_size=100,
                                          page_token=token, filter=flt)
        found += [r for r in page.recurring_runs or [] if r.display_name == name]
        token = page.next_page_token or ""
        if not token:
            return found


def schedule_recurring_run(cfg: Config, package_path: str | Path, host: str | None = None,
                           client=None) -> Scheduled:
    """Schedule (or re-schedule) the recurring run of ``package_path``; see the module doc.

    ``client``: an existing ``kfp.Client`` (else one is made for the resolved host)."""
    m = cfg.monitoring
    host = resolve_host(cfg, host)
    spec = read_package(package_path)
    pipeline_name = spec.get("pipelineInfo", {}).get("name", "?") if spec else "?"
    if spec and pipeline_name != MONITORING_PIPELINE_NAME:
        log.warning("scheduling pipeline %r, not %r", pipeline_name, MONITORING_PIPELINE_NAME)
    params = None
    if m.pass_config:
        from marketsearch.steps.kfp import pipeline_parameters

        params = pipeline_parameters(cfg)
        missing = sorted(set(params) - _parameters(spec)) if spec else []
        if missing:
            raise ScheduleError(
                f"{package_path} lacks the config parameter(s) {missing} (it has "
                f"{sorted(_parameters(spec))}): compile it with this version, or set "
                "monitoring.pass_config false to run it with its compiled-in defaults")

    client = client or kfp_client(cfg, host)
    experiment, created = _experiment(client, cfg)
    experiment_id = experiment.experiment_id
    previous = _recurring_runs_named(client, experiment_id, m.recurring_run_name)
    run = client.create_recurring_run(
        experiment_id=experiment_id, job_name=m.recurring_run_name, description=m.description,
        cron_expression=m.cron, max_concurrency=m.max_concurrency, no_catchup=not m.catchup,
        params=params, pipeline_package_path=str(package_path), enabled=True,
        pipeline_root=m.pipeline_root, service_account=m.service_account)
    log.info("created recurring run %s (%s), cron %r", run.recurring_run_id,
             m.recurring_run_name, m.cron)
    replaced = []
    for old in previous:
        client.delete_recurring_run(old.recurring_run_id)
        replaced.append(old.recurring_run_id)
        log.info("deleted the previous recurring run %s (%s)", old.recurring_run_id,
                 m.recurring_run_name)
    return Scheduled(recurring_run_id=run.recurring_run_id, recurring_run_name=m.recurring_run_name,
                     experiment_id=experiment_id, experiment=m.experiment, host=host,
                     pipeline_name=pipeline_name, cron=m.cron, replaced=replaced,
                     experiment_created=created)


def schedule(cfg: Config, package_path: str | Path, host: str | None = None) -> str:
    """Schedule the monitoring package as the config's recurring run; return its id."""
    return schedule_recurring_run(cfg, package_path, host).recurring_run_id


def cmd_schedule(cfg: Config, package_path: str | Path, host: str | None = None) -> int:
    """``marketsearch schedule``: schedule, print what was done; 0 on success, 2 when the
    schedule cannot start (no host, bad package), 1 when the KFP API refuses."""
    try:
        done = schedule_recurring_run(cfg, package_path, host)
    except ScheduleError as exc:
        print(f"marketsearch schedule: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from kfp_server_api import ApiException

        if not isinstance(exc, ApiException):
            raise
        print(f"marketsearch schedule: the KFP API at {resolve_host(cfg, host)} answered "
              f"{exc.status} {exc.reason}: {(exc.body or '')[:2000]}", file=sys.stderr)
        return 1
    exp = "created" if done.experiment_created else "existing"
    print(f"KFP {done.host}: {exp} experiment {done.experiment!r} ({done.experiment_id})")
    for old in done.replaced:
        print(f"deleted the previous recurring run {done.recurring_run_name!r} ({old})")
    m = cfg.monitoring
    print(f"scheduled recurring run {done.recurring_run_name!r} ({done.recurring_run_id}) of "
          f"pipeline {done.pipeline_name!r} from {package_path}: cron {done.cron!r}, "
          f"max_concurrency {m.max_concurrency}, catchup {str(m.catchup).lower()}")
    return 0
