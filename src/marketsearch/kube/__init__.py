"""The cluster deploy: roll the KServe InferenceService out to a new champion bundle.

``build_inference_service`` is the one builder of the object (the same shape as
k8s/base/inferenceservice.yaml: a custom predictor running ``marketsearch serve --model
/mnt/models`` with the bundle's URI in ``STORAGE_URI``, which KServe's storage initializer
downloads into /mnt/models). ``deploy_inference_service`` applies it through the Kubernetes API
(only the namespaced ``inferenceservices`` of serving.kserve.io/v1beta1 are ever called):

* absent: create it and wait until it is Ready;
* present and Ready (a champion serves): patch the new STORAGE_URI with
  ``canaryTrafficPercent`` = ``kserve.canary_traffic_percent``, wait for the canary revision to be
  Ready, then promote (remove canaryTrafficPercent: 100% to the new revision);
* present but not Ready (nothing serves), or ``canary_traffic_percent`` 0 (RawDeployment mode,
  which has no traffic split): patch it in place and wait until it is Ready;
* on a failed rollout (a failed revision or model load, or not Ready within
  ``kserve.ready_timeout_s``): patch the previous predictor back and raise ``KServeDeployError``.

Readiness is read from the status KServe writes: ``observedGeneration`` has caught up with the
patch, condition ``Ready`` is True, the predictor's latest created revision is its latest ready
one (Serverless mode) and ``modelStatus.transitionStatus`` is ``UpToDate`` (when KServe reports
it). In RawDeployment mode KServe reports Ready from the Deployment's availability, which old
pods keep during a rolling update, so there the model status is the signal that matters.

The package, by what the code does:

    service.py  the names KServe uses, ``KServeDeployError`` and the object itself
                (``build_inference_service``, ``serving_image``, ``storage_uri_of``)
    storage.py  where KServe reads the bundle from (``storage_uri_for``, ``upload_bundle``) and
                its check there against the bundle's checksums (``verify_uploaded``)
    lease.py    one deploy at a time: a Kubernetes Lease held by compare-and-set
                (``deploy_lease``)
    rollout.py  the Kubernetes API calls, the readiness checks (``is_ready``, ``failure``) and
                the rollout (``deploy_inference_service``)
"""
from .lease import DeployInProgress, deploy_lease, lease_name
from .rollout import (custom_objects_api, deploy_inference_service, failure, is_ready,
                      wait_ready)
from .service import (API_VERSION, CONTAINER, FATAL_REASONS, FATAL_TRANSITIONS, FIELD_MANAGER,
                      GROUP, MODEL_MOUNT, PLURAL, STORAGE_URI_ENV, VERSION, VERSION_ANNOTATION,
                      KServeDeployError, build_inference_service, serving_image, storage_uri_of)
from .storage import storage_uri_for, upload_bundle, verify_uploaded

__all__ = [
    "API_VERSION", "CONTAINER", "FATAL_REASONS", "FATAL_TRANSITIONS", "FIELD_MANAGER", "GROUP",
    "MODEL_MOUNT", "PLURAL", "STORAGE_URI_ENV", "VERSION", "VERSION_ANNOTATION",
    "DeployInProgress", "KServeDeployError", "build_inference_service", "deploy_lease",
    "lease_name", "custom_objects_api",
    "deploy_inference_service", "failure", "is_ready", "serving_image", "storage_uri_for",
    "storage_uri_of", "upload_bundle", "verify_uploaded", "wait_ready",
]
