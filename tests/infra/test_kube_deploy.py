"""The cluster deploy (marketsearch.kube, components/deploy.py) against the real `kubernetes`
client and a fake API server over HTTP: a local server that replays the API responses in
tests/infra/data/kube/*.json (see the README there) and records every request. Nothing in the
client is mocked; only the cluster is missing.
"""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jsonschema
import pytest
import yaml

from marketsearch import checksums, kube
from marketsearch.config import load_config

DATA = Path(__file__).resolve().parent / "data"
CRD = DATA / "kserve-inferenceservice-crd.yaml"
REPO = Path(__file__).resolve().parents[2]
ISVC_PATH = "/apis/serving.kserve.io/v1beta1/namespaces/marketsearch/inferenceservices"
ONE = f"{ISVC_PATH}/marketsearch"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/marketsearch/leases"
LEASE = f"{LEASES}/marketsearch-deploy"
# the deploy Lease taken and given back (marketsearch.kube.lease)
LEASE_ROUTES = {("POST", LEASES): [(201, "lease-created")], ("DELETE", LEASE): [(200, "lease-deleted")]}
IMAGE = "123456789012.dkr.ecr.eu-west-2.amazonaws.com/marketsearch/serving:0.1.0"
PREFIX = "s3://marketsearch-artifacts-123456789012-eu-west-2/serving/marketsearch"
V3, V4 = f"{PREFIX}/3", f"{PREFIX}/4"
TOKEN = "test-token-not-a-secret"


# --- the fake API server -------------------------------------------------------------------
class FakeKubeApi:
    """Replays recorded responses: ``routes[(method, path)]`` is a list of (status, file) that
    successive requests get in order (the last one repeats). Every request is recorded."""

    def __init__(self, routes: dict[tuple[str, str], list[tuple[int, str]]], on_request=None):
        self.routes = {key: list(answers) for key, answers in routes.items()}
        self.requests: list[dict] = []
        self.on_request = on_request   # called with each recorded request before it is answered
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                fake.requests.append({
                    "method": self.command, "path": url.path, "query": parse_qs(url.query),
                    "content_type": self.headers.get("Content-Type"),
                    "authorization": self.headers.get("Authorization"),
                    "body": json.loads(raw) if raw else None})
                if fake.on_request is not None:
                    fake.on_request(fake.requests[-1])
                answers = fake.routes.get((self.command, url.path))
                if not answers:
                    status, body = 599, {"kind": "Status", "code": 599,
                                         "message": f"no recorded answer for {self.command} {url.path}"}
                else:
                    status, name = answers.pop(0) if len(answers) > 1 else answers[0]
                    body = json.loads((DATA / "kube" / f"{name}.json").read_text())
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

            def log_message(self, *args):  # keep pytest's output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FakeKubeApi":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def api(self):
        """The kubernetes client's CustomObjectsApi, configured for this server."""
        from kubernetes import client

        conf = client.Configuration()
        conf.host = self.url
        conf.api_key = {"authorization": TOKEN}
        conf.api_key_prefix = {"authorization": "Bearer"}
        return client.CustomObjectsApi(client.ApiClient(conf))

    def calls(self) -> list[tuple[str, str]]:
        return [(r["method"], r["path"]) for r in self.requests]


def only_the_namespaced_isvc_api(fake: FakeKubeApi) -> None:
    for request in fake.requests:
        assert request["path"] in (ISVC_PATH, ONE), request["path"]
        assert request["authorization"] == f"Bearer {TOKEN}"
        if request["method"] in ("POST", "PATCH"):
            assert request["query"].get("fieldManager") == [kube.FIELD_MANAGER]
        if request["method"] == "PATCH":
            assert request["content_type"] == "application/merge-patch+json"


@pytest.fixture
def cfg(tmp_path):
    return load_config(base=tmp_path, overrides={"kserve": {
        "enabled": True, "image": IMAGE, "ready_timeout_s": 5, "poll_interval_s": 0.01}})


def crd_schema() -> dict:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    return version["schema"]["openAPIV3Schema"]


def crd_errors(obj: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(crd_schema())
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


# --- the builder -------------------------------------------------------------------------
def test_builder_output_validates_against_the_kserve_crd(cfg):
    obj = kube.build_inference_service(cfg, V4, model_version="4")
    assert crd_errors(obj) == []
    (container,) = obj["spec"]["predictor"]["containers"]
    assert container["command"] == ["marketsearch", "serve"]
    assert container["args"] == ["--model", "/mnt/models", "--port", "8080"]
    assert {"name": "STORAGE_URI", "value": V4} in container["env"]
    assert kube.storage_uri_of(obj["spec"]["predictor"]) == V4
    # and a canary patch of it too
    obj["spec"]["predictor"]["canaryTrafficPercent"] = cfg.kserve.canary_traffic_percent
    assert crd_errors(obj) == []


def test_builder_is_k8s_base_inference_service(cfg):
    """The deploy step and k8s/base build the same object (kustomize's labels aside)."""
    base = yaml.safe_load((REPO / "k8s" / "base" / "inferenceservice.yaml").read_text())
    uri = kube.storage_uri_of(base["spec"]["predictor"])
    same = load_config(overrides={"kserve": {"image": base["spec"]["predictor"]["containers"][0]["image"]}})
    built = kube.build_inference_service(same, uri)
    assert built["spec"] == base["spec"]
    assert (built["apiVersion"], built["kind"]) == (base["apiVersion"], base["kind"])
    assert {k: built["metadata"][k] for k in ("name", "namespace")} == \
        {k: base["metadata"][k] for k in ("name", "namespace")}


def test_builder_refuses_an_unpinned_image(cfg):
    with pytest.raises(ValueError, match="latest"):
        kube.build_inference_service(load_config(), V4)     # kfp's default tag is "latest"
    with pytest.raises(ValueError, match="pin a tag"):
        load_config(overrides=["kserve.image=registry.example/marketsearch/serving"])


def test_storage_uri_for_kfp_artifacts():
    assert kube.storage_uri_for("s3://bucket/root/bundle/") == "s3://bucket/root/bundle"
    assert kube.storage_uri_for("minio://mlpipeline/v2/artifacts/x/bundle") == \
        "s3://mlpipeline/v2/artifacts/x/bundle"
    assert kube.storage_uri_for("/s3/bucket/root/bundle") == "s3://bucket/root/bundle"
    assert kube.storage_uri_for("/gcs/b/k") == "gs://b/k"
    with pytest.raises(ValueError, match="model_uri_prefix"):
        kube.storage_uri_for("/home/me/runs/kfp/bundle")


# --- the rollout against the API ------------------------------------------------------------
def test_creates_the_inference_service_when_absent(cfg):
    routes = {("GET", ONE): [(404, "isvc-not-found"), (200, "isvc-new-progressing"),
                             (200, "isvc-new-ready")],
              ("POST", ISVC_PATH): [(201, "isvc-created")]}
    with FakeKubeApi(routes) as fake:
        result = kube.deploy_inference_service(cfg, V3, model_version="3", api=fake.api())
    assert result["action"] == "created" and result["storage_uri"] == V3
    assert result["url"] == "http://marketsearch.marketsearch.example.com"
    assert fake.calls() == [("GET", ONE), ("POST", ISVC_PATH), ("GET", ONE), ("GET", ONE)]
    created = fake.requests[1]["body"]
    assert created == kube.build_inference_service(cfg, V3, model_version="3")
    assert crd_errors(created) == []
    only_the_namespaced_isvc_api(fake)


def test_canary_then_promote_when_a_champion_serves(cfg):
    routes = {("GET", ONE): [(200, "isvc-champion-ready"), (200, "isvc-canary-progressing"),
                             (200, "isvc-canary-ready"), (200, "isvc-promoted-ready")],
              ("PATCH", ONE): [(200, "isvc-canary-patched"), (200, "isvc-promoted-patched")]}
    with FakeKubeApi(routes) as fake:
        result = kube.deploy_inference_service(cfg, V4, model_version="4", api=fake.api())
    assert result == {"action": "promoted", "storage_uri": V4, "previous_storage_uri": V3,
                      "url": "http://marketsearch.marketsearch.example.com"}
    assert fake.calls() == [("GET", ONE), ("PATCH", ONE), ("GET", ONE), ("GET", ONE),
                            ("PATCH", ONE), ("GET", ONE)]
    canary = fake.requests[1]["body"]
    predictor = canary["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert kube.storage_uri_of(predictor) == V4
    assert canary["metadata"]["annotations"] == {kube.VERSION_ANNOTATION: "4"}
    # what the API server would hold after the merge patch still validates
    merged = json.loads((DATA / "kube" / "isvc-champion-ready.json").read_text())
    merged["spec"]["predictor"].update(predictor)
    assert crd_errors(merged) == []
    # promotion: the canary field goes (100% to the new revision), nothing else changes
    assert fake.requests[4]["body"] == {"spec": {"predictor": {"canaryTrafficPercent": None}}}
    only_the_namespaced_isvc_api(fake)


def test_rolls_back_when_the_canary_fails(cfg):
    routes = {("GET", ONE): [(200, "isvc-champion-ready"), (200, "isvc-canary-progressing"),
                             (200, "isvc-canary-failed")],
              ("PATCH", ONE): [(200, "isvc-canary-patched"), (200, "isvc-rolled-back")]}
    with FakeKubeApi(routes) as fake:
        with pytest.raises(kube.KServeDeployError) as err:
            kube.deploy_inference_service(cfg, V4, model_version="4", api=fake.api())
    message = str(err.value)
    assert f"canary of {V4} at 10% failed" in message
    assert "BlockedByFailedLoad" in message and "ModelLoadFailed" in message
    assert f"back to {V3}" in message
    assert fake.calls() == [("GET", ONE), ("PATCH", ONE), ("GET", ONE), ("GET", ONE),
                            ("PATCH", ONE)]
    rollback = fake.requests[-1]["body"]
    champion = json.loads((DATA / "kube" / "isvc-champion-ready.json").read_text())
    assert rollback["spec"]["predictor"] == dict(champion["spec"]["predictor"],
                                                 canaryTrafficPercent=None)
    assert kube.storage_uri_of(rollback["spec"]["predictor"]) == V3
    assert rollback["metadata"]["annotations"] == {kube.VERSION_ANNOTATION: "3"}
    only_the_namespaced_isvc_api(fake)


def test_rolls_back_when_the_canary_is_not_ready_in_time(cfg):
    cfg = cfg.model_copy(update={"kserve": cfg.kserve.model_copy(
        update={"ready_timeout_s": 0.2, "poll_interval_s": 0.02})})
    routes = {("GET", ONE): [(200, "isvc-champion-ready"), (200, "isvc-canary-progressing")],
              ("PATCH", ONE): [(200, "isvc-canary-patched"), (200, "isvc-rolled-back")]}
    with FakeKubeApi(routes) as fake:
        with pytest.raises(kube.KServeDeployError, match=r"not Ready within 0.2s .*RevisionMissing"):
            kube.deploy_inference_service(cfg, V4, model_version="4", api=fake.api())
    assert fake.calls()[:2] == [("GET", ONE), ("PATCH", ONE)]
    assert fake.calls()[-1] == ("PATCH", ONE)
    assert set(fake.calls()[2:-1]) == {("GET", ONE)} and len(fake.calls()) >= 5
    assert kube.storage_uri_of(fake.requests[-1]["body"]["spec"]["predictor"]) == V3
    only_the_namespaced_isvc_api(fake)


def test_no_canary_in_raw_deployment_mode(cfg):
    """canary_traffic_percent 0 (KServe RawDeployment has no traffic split): patched in place."""
    cfg = cfg.model_copy(update={"kserve": cfg.kserve.model_copy(
        update={"canary_traffic_percent": 0})})
    routes = {("GET", ONE): [(200, "isvc-champion-ready"), (200, "isvc-promoted-ready")],
              ("PATCH", ONE): [(200, "isvc-promoted-patched")]}
    with FakeKubeApi(routes) as fake:
        result = kube.deploy_inference_service(cfg, V4, model_version="4", api=fake.api())
    assert result["action"] == "replaced"
    assert fake.calls() == [("GET", ONE), ("PATCH", ONE), ("GET", ONE)]
    predictor = fake.requests[1]["body"]["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] is None and kube.storage_uri_of(predictor) == V4


def test_the_serving_champion_is_left_alone(cfg):
    with FakeKubeApi({("GET", ONE): [(200, "isvc-champion-ready")]}) as fake:
        result = kube.deploy_inference_service(cfg, V3, model_version="3", api=fake.api())
    assert result["action"] == "unchanged" and fake.calls() == [("GET", ONE)]


def test_a_missing_role_is_explained(cfg):
    with FakeKubeApi({("GET", ONE): [(403, "forbidden")]}) as fake:
        with pytest.raises(kube.KServeDeployError, match=r"HTTP 403 .*k8s/base/rbac.yaml"):
            kube.deploy_inference_service(cfg, V4, model_version="4", api=fake.api())
    assert fake.calls() == [("GET", ONE)]


def test_readiness_reads_kserve_status():
    load = lambda name: json.loads((DATA / "kube" / f"{name}.json").read_text())  # noqa: E731
    assert kube.is_ready(load("isvc-champion-ready"), 3)
    assert not kube.is_ready(load("isvc-canary-patched"), 4)       # status of generation 3
    assert kube.failure(load("isvc-canary-patched"), 4) is None
    assert not kube.is_ready(load("isvc-canary-progressing"), 4)
    assert kube.failure(load("isvc-canary-progressing"), 4) is None
    assert kube.is_ready(load("isvc-canary-ready"), 4)
    assert "BlockedByFailedLoad" in kube.failure(load("isvc-canary-failed"), 4)


# --- the deploy step (components/deploy.py) on a cluster -----------------------------------
@pytest.fixture
def run_dir(tmp_path, monkeypatch) -> Path:
    """A run directory whose SQLite MLflow this test owns. mlflow.set_tracking_uri exports
    MLFLOW_TRACKING_URI, which config reads first: set it here so the test's value is restored."""
    uri = f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    return tmp_path / "run"


def _registered_versions(cfg, tmp_path, n: int) -> None:
    import mlflow

    from marketsearch import tracking

    tracking.setup(cfg)
    client = mlflow.MlflowClient()
    client.create_registered_model(cfg.mlflow.registered_model)
    for _ in range(n):
        client.create_model_version(cfg.mlflow.registered_model, source=str(tmp_path))


def _promoted(version: str, champion: str):
    """evaluate's decision to promote ``version`` over ``champion``."""
    from marketsearch.records import Decision

    return Decision(promote=True, reason="beats the champion", challenger_score=0.9,
                    version=version, champion_version=champion)


def _bundle(tmp_path) -> Path:
    bundle = tmp_path / "bundle"
    (bundle / "index").mkdir(parents=True)
    (bundle / "manifest.json").write_text('{"labels": ["a", "b"]}')
    (bundle / "index" / "faiss.index").write_bytes(b"\0" * 64)
    checksums.write(bundle)
    return bundle


def _cluster_cfg(tmp_path, run_dir, **kserve):
    return load_config(base=tmp_path, overrides={"run_dir": str(run_dir), "kserve": {
        "enabled": True, "image": IMAGE, "ready_timeout_s": 5, "poll_interval_s": 0.01,
        **kserve}})


def _champion(cfg) -> str | None:
    from marketsearch import registry

    current = registry.champion(cfg)
    return str(current.version) if current else None


def _deploy_status(cfg, version: str) -> str | None:
    import mlflow

    return mlflow.MlflowClient().get_model_version(cfg.mlflow.registered_model,
                                                   version).tags.get("deploy.status")


def _keys(s3_endpoint, bucket) -> set[str]:
    import boto3

    listing = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=bucket)
    return {o["Key"] for o in listing.get("Contents", [])}


def test_deploy_step_uploads_the_bundle_and_creates_the_service(tmp_path, run_dir, s3_bucket,
                                                               s3_endpoint):
    from marketsearch.components.deploy import deploy

    cfg = _cluster_cfg(tmp_path, run_dir, model_uri_prefix=f"s3://{s3_bucket}/serving/marketsearch",
                       s3_endpoint_url=s3_endpoint)
    _registered_versions(cfg, tmp_path, 3)
    routes = {("GET", ONE): [(404, "isvc-not-found"), (200, "isvc-new-ready")],
              ("POST", ISVC_PATH): [(201, "isvc-created")], **LEASE_ROUTES}
    with FakeKubeApi(routes) as fake:
        result = deploy(cfg, _bundle(tmp_path), _promoted("3", champion="none"),
                        storage_uri="minio://mlpipeline/v2/artifacts/run/bundle", api=fake.api())
    uri = f"s3://{s3_bucket}/serving/marketsearch/3"
    assert result.version == "3"
    assert result.target == {"storage_uri": uri, "inference_service": "marketsearch/marketsearch",
                             "rollout": "created",
                             "url": "http://marketsearch.marketsearch.example.com"}
    assert _keys(s3_endpoint, s3_bucket) == {
        "serving/marketsearch/3/manifest.json", "serving/marketsearch/3/index/faiss.index",
        "serving/marketsearch/3/checksums.json"}
    # the Lease first and last; the service in between
    assert fake.calls() == [("POST", LEASES), ("GET", ONE), ("POST", ISVC_PATH), ("GET", ONE),
                            ("DELETE", LEASE)]
    lease = fake.requests[0]["body"]
    assert lease["metadata"]["name"] == "marketsearch-deploy"
    assert lease["spec"]["leaseDurationSeconds"] == int(cfg.kserve.deploy_lease_s)
    assert lease["spec"]["holderIdentity"]
    # released only if still ours: the resourceVersion it was created with
    assert fake.requests[-1]["body"]["preconditions"] == {"resourceVersion": "101"}
    assert kube.storage_uri_of(fake.requests[2]["body"]["spec"]["predictor"]) == uri
    assert _champion(cfg) == "3"
    assert not cfg.path(cfg.serving.model_dir).exists()      # no local copy on a cluster


def test_a_failed_rollout_never_moves_the_alias(tmp_path, run_dir, s3_bucket, s3_endpoint):
    from marketsearch import registry
    from marketsearch.components.deploy import deploy

    cfg = _cluster_cfg(tmp_path, run_dir, model_uri_prefix=f"s3://{s3_bucket}/serving/marketsearch",
                       s3_endpoint_url=s3_endpoint)
    _registered_versions(cfg, tmp_path, 4)
    registry.promote(cfg, "3", {})
    aliases_seen = []
    routes = {("GET", ONE): [(200, "isvc-champion-ready"), (200, "isvc-canary-failed")],
              ("PATCH", ONE): [(200, "isvc-canary-patched"), (200, "isvc-rolled-back")],
              **LEASE_ROUTES}
    with FakeKubeApi(routes, on_request=lambda r: aliases_seen.append(_champion(cfg))) as fake:
        with pytest.raises(kube.KServeDeployError, match="Rolled InferenceService"):
            deploy(cfg, _bundle(tmp_path), _promoted("4", champion="3"), api=fake.api())
    assert set(aliases_seen) == {"3"}                  # not even for a moment
    assert _champion(cfg) == "3"
    assert _deploy_status(cfg, "4") == "rolled_back"
    rollback = [r for r in fake.requests if r["method"] == "PATCH"][-1]
    assert re.search(r"/3$", kube.storage_uri_of(rollback["body"]["spec"]["predictor"]))
    assert fake.calls()[-1] == ("DELETE", LEASE)       # the Lease is given back all the same


def test_a_second_deploy_fails_while_one_holds_the_lease(tmp_path, run_dir, s3_bucket,
                                                        s3_endpoint):
    """Two deploys at once: the one that finds the Lease held changes nothing (no upload, no
    call on the InferenceService, no alias) and says who holds it."""
    from marketsearch import registry
    from marketsearch.components.deploy import deploy

    cfg = _cluster_cfg(tmp_path, run_dir, model_uri_prefix=f"s3://{s3_bucket}/serving/marketsearch",
                       s3_endpoint_url=s3_endpoint)
    _registered_versions(cfg, tmp_path, 4)
    registry.promote(cfg, "3", {})
    routes = {("POST", LEASES): [(409, "lease-exists")], ("GET", LEASE): [(200, "lease-held")]}
    with FakeKubeApi(routes) as fake:
        with pytest.raises(kube.DeployInProgress,
                           match=r"held by marketsearch-training-x7k2p-deploy-pod/7"):
            deploy(cfg, _bundle(tmp_path), _promoted("4", champion="3"), api=fake.api())
    assert fake.calls() == [("POST", LEASES), ("GET", LEASE)]
    assert _keys(s3_endpoint, s3_bucket) == set()
    assert _champion(cfg) == "3" and _deploy_status(cfg, "4") is None


def test_an_expired_lease_is_taken_over_by_compare_and_set(cfg):
    """A holder that died is replaced, carrying the resourceVersion read: if another deploy
    replaced it first, the API server answers 409 and this one gives up."""
    routes = {("POST", LEASES): [(409, "lease-exists")], ("GET", LEASE): [(200, "lease-expired")],
              ("PUT", LEASE): [(200, "lease-created")], ("DELETE", LEASE): [(200, "lease-deleted")]}
    with FakeKubeApi(routes) as fake:
        with kube.deploy_lease(cfg, fake.api().api_client, holder="me/1") as holder:
            assert holder == "me/1"
            assert fake.calls()[-1] == ("PUT", LEASE)
    put = fake.requests[2]["body"]
    assert put["metadata"]["resourceVersion"] == "56"          # what it read: compare-and-set
    assert put["spec"]["holderIdentity"] == "me/1"
    assert fake.requests[-1]["body"]["preconditions"] == {"resourceVersion": "101"}

    routes[("PUT", LEASE)] = [(409, "lease-modified")]
    with FakeKubeApi(routes) as fake:
        with pytest.raises(kube.DeployInProgress, match="took over the expired Lease"):
            with kube.deploy_lease(cfg, fake.api().api_client):
                pytest.fail("the block ran without the Lease")
    assert ("DELETE", LEASE) not in fake.calls()               # nothing of ours to give back


def test_a_bundle_changed_in_s3_is_not_rolled_out(tmp_path, run_dir, s3_bucket, s3_endpoint):
    """The bundle artifact's own s3:// URI (no model_uri_prefix): deploy reads every object
    back; one changed after the bundle was built stops it before the InferenceService."""
    import boto3

    from marketsearch.components.deploy import deploy

    cfg = _cluster_cfg(tmp_path, run_dir, s3_endpoint_url=s3_endpoint)
    _registered_versions(cfg, tmp_path, 3)
    bundle = _bundle(tmp_path)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for path in bundle.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), s3_bucket, f"v2/run-1/bundle/{path.relative_to(bundle)}")
    s3.put_object(Bucket=s3_bucket, Key="v2/run-1/bundle/index/faiss.index", Body=b"\1" * 64)
    with FakeKubeApi(LEASE_ROUTES) as fake:
        with pytest.raises(checksums.IntegrityError, match=r"index/faiss.index does not match"):
            deploy(cfg, bundle, _promoted("3", champion="none"),
                   storage_uri=f"s3://{s3_bucket}/v2/run-1/bundle", api=fake.api())
    assert fake.calls() == [("POST", LEASES), ("DELETE", LEASE)]
    assert _champion(cfg) is None
    # and one missing: named too
    s3.delete_object(Bucket=s3_bucket, Key="v2/run-1/bundle/index/faiss.index")
    with pytest.raises(checksums.IntegrityError, match=r"index/faiss.index is missing"):
        kube.verify_uploaded(cfg, f"s3://{s3_bucket}/v2/run-1/bundle")


def test_the_service_goes_back_when_the_alias_cannot_move(tmp_path, run_dir, s3_bucket,
                                                         s3_endpoint):
    """Someone moves the alias by hand while the rollout runs (outside any deploy's Lease):
    the alias is not taken from them, and the InferenceService goes back to version 3."""
    from marketsearch import registry
    from marketsearch.components.deploy import deploy

    cfg = _cluster_cfg(tmp_path, run_dir, model_uri_prefix=f"s3://{s3_bucket}/serving/marketsearch",
                       s3_endpoint_url=s3_endpoint, canary_traffic_percent=0)
    _registered_versions(cfg, tmp_path, 5)
    registry.promote(cfg, "3", {})

    def by_hand(request):
        if request["method"] == "PATCH" and len([r for r in fake.requests
                                                 if r["method"] == "PATCH"]) == 1:
            registry.promote(cfg, "5", {})

    routes = {("GET", ONE): [(200, "isvc-champion-ready"), (200, "isvc-promoted-ready"),
                             (200, "isvc-promoted-ready"), (200, "isvc-back-ready")],
              ("PATCH", ONE): [(200, "isvc-promoted-patched"), (200, "isvc-back-patched")],
              **LEASE_ROUTES}
    with FakeKubeApi(routes, on_request=by_hand) as fake:
        with pytest.raises(ValueError, match="the champion is now 5"):
            deploy(cfg, _bundle(tmp_path), _promoted("4", champion="3"), api=fake.api())
    patches = [r["body"] for r in fake.requests if r["method"] == "PATCH"]
    assert [kube.storage_uri_of(p["spec"]["predictor"]) for p in patches] == [
        f"s3://{s3_bucket}/serving/marketsearch/4", V3]
    assert patches[1]["metadata"]["annotations"] == {kube.VERSION_ANNOTATION: "3"}
    assert _champion(cfg) == "5"                    # the hand that moved it is respected
    assert _deploy_status(cfg, "4") == "rolled_back"
    assert fake.calls()[-1] == ("DELETE", LEASE)
