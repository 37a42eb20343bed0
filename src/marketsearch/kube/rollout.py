"""The rollout through the Kubernetes API: the calls on the one InferenceService, its readiness
as KServe reports it, and ``deploy_inference_service`` (create, canary and promote, or roll
back; see the package docstring)."""
from __future__ import annotations

import copy
import logging
import os
import time
from typing import Callable

from marketsearch.config import Config

from .service import (FATAL_REASONS, FATAL_TRANSITIONS, FIELD_MANAGER, GROUP, PLURAL, VERSION,
                      VERSION_ANNOTATION, KServeDeployError, build_inference_service,
                      storage_uri_of)

log = logging.getLogger(__name__)


# --- the Kubernetes API --------------------------------------------------------------------
def custom_objects_api(cfg: Config):
    """CustomObjectsApi with in-cluster credentials in a pod, the kubeconfig elsewhere."""
    from kubernetes import client, config

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
    else:
        config.load_kube_config(context=cfg.kserve.kube_context)
    return client.CustomObjectsApi()


def _api_error(exc, action: str, ks) -> KServeDeployError:
    status = getattr(exc, "status", None)
    hint = ""
    if status in (401, 403):
        hint = (f" (the pod's service account needs the Role in k8s/base/rbac.yaml: "
                f"inferenceservices in namespace {ks.namespace})")
    elif status == 404:
        hint = " (is KServe installed? its InferenceService CRD is missing)"
    reason = getattr(exc, "reason", None) or exc
    return KServeDeployError(f"{action} InferenceService {ks.namespace}/{ks.name} failed: "
                             f"HTTP {status} {reason}{hint}")


class _Isvc:
    """The calls on one InferenceService; nothing else of the API is touched."""

    def __init__(self, api, ks):
        self.api, self.ks = api, ks
        self.key = dict(group=GROUP, version=VERSION, namespace=ks.namespace, plural=PLURAL)

    def get(self) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(name=self.ks.name, **self.key)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _api_error(exc, "reading", self.ks) from exc

    def create(self, body: dict) -> dict:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.create_namespaced_custom_object(body=body, field_manager=FIELD_MANAGER,
                                                            **self.key)
        except ApiException as exc:
            raise _api_error(exc, "creating", self.ks) from exc

    def patch(self, body: dict) -> dict:
        """A JSON merge patch (what the client sends for custom objects)."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.patch_namespaced_custom_object(
                name=self.ks.name, body=body, field_manager=FIELD_MANAGER, **self.key)
        except ApiException as exc:
            raise _api_error(exc, "patching", self.ks) from exc


# --- status ----------------------------------------------------------------------------------
def _conditions(obj: dict) -> dict[str, dict]:
    return {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}


def is_ready(obj: dict, generation: int | None) -> bool:
    status = obj.get("status") or {}
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        return False
    if _conditions(obj).get("Ready", {}).get("status") != "True":
        return False
    predictor = (status.get("components") or {}).get("predictor") or {}
    created, ready = predictor.get("latestCreatedRevision"), predictor.get("latestReadyRevision")
    if created and created != ready:
        return False
    transition = (status.get("modelStatus") or {}).get("transitionStatus")
    return transition in (None, "UpToDate")


def failure(obj: dict, generation: int | None) -> str | None:
    """Why the current generation will not become Ready on its own, or None."""
    status = obj.get("status") or {}
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        return None                                  # the status is about an older spec
    model = status.get("modelStatus") or {}
    if model.get("transitionStatus") in FATAL_TRANSITIONS:
        info = model.get("lastFailureInfo") or {}
        return (f"model status {model['transitionStatus']}: "
                f"{info.get('reason', '?')}: {info.get('message', '').strip()}").rstrip(": ")
    for ctype, cond in _conditions(obj).items():
        if cond.get("status") == "False" and cond.get("reason") in FATAL_REASONS:
            return f"condition {ctype} False ({cond['reason']}): {cond.get('message', '')}".strip()
    return None


def _summary(obj: dict | None) -> str:
    if not obj:
        return "no status"
    parts = [f"{t}={c.get('status')}" + (f" ({c['reason']})" if c.get("reason") else "")
             for t, c in _conditions(obj).items()]
    return ", ".join(parts) or "no conditions yet"


def wait_ready(isvc: _Isvc, generation: int | None, what: str, timeout_s: float,
               poll_s: float, sleep: Callable[[float], None] = time.sleep,
               clock: Callable[[], float] = time.monotonic) -> dict:
    """Poll until the InferenceService is Ready at ``generation``; raise KServeDeployError when
    the rollout fails or the time is up."""
    deadline = clock() + timeout_s
    obj = None
    while True:
        obj = isvc.get()
        if obj is None:
            raise KServeDeployError(f"{what}: InferenceService {isvc.ks.namespace}/{isvc.ks.name} "
                                    "disappeared while rolling out")
        if is_ready(obj, generation):
            return obj
        why = failure(obj, generation)
        if why:
            raise KServeDeployError(f"{what} failed: {why}")
        if clock() >= deadline:
            raise KServeDeployError(f"{what} not Ready within {timeout_s:g}s ({_summary(obj)})")
        log.info("%s: waiting for Ready (%s)", what, _summary(obj))
        sleep(poll_s)


# --- the rollout ---------------------------------------------------------------------------
def _restore_patch(previous: dict, desired: dict) -> dict:
    """A merge patch that puts ``previous`` (metadata annotations and predictor) back."""
    predictor = copy.deepcopy(previous["spec"]["predictor"])
    for key in desired["spec"]["predictor"]:
        predictor.setdefault(key, None)             # keys the new spec added: remove them
    predictor.setdefault("canaryTrafficPercent", None)
    annotations = (previous.get("metadata") or {}).get("annotations") or {}
    return {"metadata": {"annotations": {VERSION_ANNOTATION: annotations.get(VERSION_ANNOTATION)}},
            "spec": {"predictor": predictor}}


def deploy_inference_service(cfg: Config, storage_uri: str, model_version: str | None = None,
                             api=None, sleep: Callable[[float], None] = time.sleep,
                             clock: Callable[[], float] = time.monotonic) -> dict:
    """Create or roll out the InferenceService to ``storage_uri`` (see the module docstring).

    Returns {"action": "created" | "promoted" | "replaced" | "unchanged", "storage_uri",
    "previous_storage_uri", "url"}; raises KServeDeployError (after rolling back) on failure.
    """
    ks = cfg.kserve
    isvc = _Isvc(api if api is not None else custom_objects_api(cfg), ks)
    desired = build_inference_service(cfg, storage_uri, model_version)
    wait = dict(timeout_s=ks.ready_timeout_s, poll_s=ks.poll_interval_s, sleep=sleep, clock=clock)
    name = f"{ks.namespace}/{ks.name}"

    existing = isvc.get()
    if existing is None:
        log.info("InferenceService %s absent: creating it on %s", name, storage_uri)
        created = isvc.create(desired)
        try:
            ready = wait_ready(isvc, _generation(created),
                               f"new InferenceService {name}", **wait)
        except KServeDeployError as exc:
            raise KServeDeployError(f"{exc}. There was no champion to roll back to; the new "
                                    f"InferenceService is left for inspection (kubectl -n "
                                    f"{ks.namespace} describe inferenceservice {ks.name})") from exc
        return _result("created", storage_uri, None, ready)

    previous_predictor = existing["spec"]["predictor"]
    previous_uri = storage_uri_of(previous_predictor)
    wanted = desired["spec"]["predictor"]
    if ({k: v for k, v in previous_predictor.items() if k != "canaryTrafficPercent"} == wanted
            and previous_predictor.get("canaryTrafficPercent") in (None, 100)):
        log.info("InferenceService %s already serves %s", name, storage_uri)
        return _result("unchanged", storage_uri, previous_uri, existing)

    serving = is_ready(existing, _generation(existing))
    canary = ks.canary_traffic_percent if serving else 0
    patch = {"metadata": {"annotations": {VERSION_ANNOTATION: model_version}},
             "spec": {"predictor": dict(wanted, canaryTrafficPercent=canary or None)}}
    try:
        if canary:
            log.info("InferenceService %s: canary %d%% on %s (champion %s)", name, canary,
                     storage_uri, previous_uri)
            patched = isvc.patch(patch)
            wait_ready(isvc, _generation(patched),
                       f"canary of {storage_uri} at {canary}%", **wait)
            promoted = isvc.patch({"spec": {"predictor": {"canaryTrafficPercent": None}}})
            ready = wait_ready(isvc, _generation(promoted),
                               f"promotion of {storage_uri}", **wait)
            log.info("InferenceService %s: %s promoted to 100%%", name, storage_uri)
            return _result("promoted", storage_uri, previous_uri, ready)
        log.info("InferenceService %s %s: rolling out %s in place", name,
                 "is not Ready" if not serving else "has no canary (canary_traffic_percent 0)",
                 storage_uri)
        patched = isvc.patch(patch)
        ready = wait_ready(isvc, _generation(patched),
                           f"rollout of {storage_uri}", **wait)
        return _result("replaced", storage_uri, previous_uri, ready)
    except KServeDeployError as exc:
        log.error("%s; rolling InferenceService %s back to %s", exc, name, previous_uri)
        try:
            isvc.patch(_restore_patch(existing, desired))
        except KServeDeployError as restore_exc:
            raise KServeDeployError(f"{exc}; and the rollback to {previous_uri} failed too: "
                                    f"{restore_exc}") from exc
        raise KServeDeployError(f"{exc}. Rolled InferenceService {name} back to "
                                f"{previous_uri}") from exc


def _generation(obj: dict) -> int | None:
    return (obj.get("metadata") or {}).get("generation")


def _result(action: str, uri: str, previous: str | None, obj: dict) -> dict:
    return {"action": action, "storage_uri": uri, "previous_storage_uri": previous,
            "url": (obj.get("status") or {}).get("url")}
