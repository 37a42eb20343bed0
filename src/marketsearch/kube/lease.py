"""One deploy at a time on a cluster: a Kubernetes Lease (coordination.k8s.io/v1) held for the
whole deploy, from the freshness check to the champion alias.

The API server gives what MLflow's registry lacks, compare-and-set: ``create`` fails with 409
when the Lease exists, and a ``replace`` carrying the resourceVersion it read fails with 409 when
someone wrote in between. So of two deploys started together exactly one gets the Lease and the
other fails at once with a message naming the holder, before either touches the bucket, the
InferenceService or the alias. A Lease whose holder died (older than ``kserve.deploy_lease_s``
since it was renewed) is taken over, again by compare-and-set; the deploy renews nothing, so
the duration must outlast a rollout (the config checks it is more than two
``ready_timeout_s``). Released by deleting it, on the precondition that it is still ours.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
from contextlib import contextmanager
from typing import Iterator

from marketsearch.config import Config

from .service import KServeDeployError

log = logging.getLogger(__name__)


class DeployInProgress(KServeDeployError):
    """Another deploy holds the Lease."""


def lease_name(cfg: Config) -> str:
    return f"{cfg.kserve.name}-deploy"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _expired(lease, now: dt.datetime) -> bool:
    spec = lease.spec
    renewed = spec.renew_time or spec.acquire_time
    if renewed is None or spec.lease_duration_seconds is None:
        return True                                   # no holder worth waiting for
    if renewed.tzinfo is None:
        renewed = renewed.replace(tzinfo=dt.timezone.utc)
    return now >= renewed + dt.timedelta(seconds=spec.lease_duration_seconds)


def _describe(lease) -> str:
    spec = lease.spec
    return f"{spec.holder_identity or '?'} since {spec.acquire_time or spec.renew_time or '?'}"


@contextmanager
def deploy_lease(cfg: Config, api_client, holder: str | None = None) -> Iterator[str]:
    """Hold the deploy Lease of ``cfg.kserve`` for the block; yields the holder identity.
    Raises DeployInProgress when a live deploy holds it."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ks = cfg.kserve
    api = client.CoordinationV1Api(api_client)
    name = lease_name(cfg)
    where = f"Lease {ks.namespace}/{name}"
    holder = holder or f"{os.environ.get('HOSTNAME', 'local')}/{os.getpid()}"
    now = _now()
    spec = client.V1LeaseSpec(holder_identity=holder, acquire_time=now, renew_time=now,
                              lease_duration_seconds=int(ks.deploy_lease_s))
    body = client.V1Lease(metadata=client.V1ObjectMeta(
        name=name, labels={"app.kubernetes.io/part-of": "marketsearch"}), spec=spec)
    try:
        held = api.create_namespaced_lease(ks.namespace, body)
    except ApiException as exc:
        if exc.status != 409:
            raise _lease_error(exc, "creating", where) from exc
        held = _take_over(api, ks.namespace, name, spec, where, now)
    version = held.metadata.resource_version
    log.info("deploy: holding %s as %s", where, holder)
    try:
        yield holder
    finally:
        try:
            api.delete_namespaced_lease(name, ks.namespace, body=client.V1DeleteOptions(
                preconditions=client.V1Preconditions(resource_version=version)))
        except ApiException as exc:              # taken over after expiry, or already gone
            log.warning("deploy: could not release %s (HTTP %s): another deploy took it over "
                        "after it expired?", where, exc.status)


def _take_over(api, namespace: str, name: str, spec, where: str, now: dt.datetime):
    """The Lease exists: fail if its holder is live, else replace it by compare-and-set."""
    from kubernetes.client.exceptions import ApiException

    try:
        existing = api.read_namespaced_lease(name, namespace)
    except ApiException as exc:
        raise _lease_error(exc, "reading", where) from exc
    if not _expired(existing, now):
        raise DeployInProgress(f"another deploy is in progress: {where} is held by "
                               f"{_describe(existing)} for {existing.spec.lease_duration_seconds}s"
                               "; this deploy changed nothing. Run it again when that one ends.")
    log.warning("deploy: %s expired (held by %s); taking it over", where, _describe(existing))
    existing.spec = spec                    # metadata.resourceVersion stays: compare-and-set
    try:
        return api.replace_namespaced_lease(name, namespace, existing)
    except ApiException as exc:
        if exc.status == 409:
            raise DeployInProgress(f"another deploy took over the expired {where} first; this "
                                   "deploy changed nothing") from exc
        raise _lease_error(exc, "taking over", where) from exc


def _lease_error(exc, action: str, where: str) -> KServeDeployError:
    hint = (" (the pod's service account needs the Role in k8s/base/rbac.yaml: leases in "
            "coordination.k8s.io)") if exc.status in (401, 403) else ""
    return KServeDeployError(f"{action} {where} failed: HTTP {exc.status} "
                             f"{getattr(exc, 'reason', '') or exc}{hint}")
