"""k8s/: the base and both overlays render offline (`kubectl kustomize`), every object is valid
for Kubernetes (kubernetes-validate's schemas, strict: unknown fields fail) and the
InferenceService for KServe (the CRD schema in tests/infra/data), and the policies hold: no
credential outside the kind overlay's fake dev generator, resources/probes/non-root everywhere,
RBAC exactly as designed, IRSA on EKS, NetworkPolicies, pinned images, and the names that
scripts/kind/up.sh and config/kind.yaml rely on.
"""
from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from marketsearch.config import load_config

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
CRD = Path(__file__).resolve().parent / "data" / "kserve-inferenceservice-crd.yaml"
TARGETS = ["base", "overlays/kind", "overlays/eks"]
NAMESPACE = "marketsearch"
# scripts/kind/kind-config.yaml runs kindest/node v1.32; EKS supports 1.32.
K8S_VERSION = "1.32"
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}
SENSITIVE_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|_KEY_ID|BACKEND_STORE_URI|"
                           r"ARTIFACTS_DESTINATION|DATABASE_URL|DB_URL|TRACKING_URI")
FAKE_MARK = "kind-dev"          # every fake credential of the kind overlay says so

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None,
                                reason="kubectl is not installed: the k8s/ tests render with "
                                       "`kubectl kustomize` (no cluster needed)")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    out = {}
    for target in TARGETS:
        proc = subprocess.run(["kubectl", "kustomize", str(K8S / target)], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, f"kubectl kustomize k8s/{target}: {proc.stderr}"
        out[target] = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    return out


def objects(rendered, target: str, kind: str | None = None) -> list[dict]:
    return [o for o in rendered[target] if kind is None or o["kind"] == kind]


def one(rendered, target: str, kind: str, name: str) -> dict:
    found = [o for o in objects(rendered, target, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{target}: expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_specs(obj: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) of a workload or an InferenceService's predictor."""
    kind = obj["kind"]
    if kind == "InferenceService":
        return [("predictor", obj["spec"]["predictor"])]
    if kind == "Pod":
        return [("pod", obj["spec"])]
    if kind == "CronJob":
        return [("jobTemplate", obj["spec"]["jobTemplate"]["spec"]["template"]["spec"])]
    if kind in WORKLOADS:
        return [("template", obj["spec"]["template"]["spec"])]
    return []


def containers(obj: dict) -> list[tuple[dict, dict]]:
    """(pod spec, container) for every container and init container of ``obj``."""
    return [(spec, c) for _, spec in pod_specs(obj)
            for c in spec.get("containers", []) + spec.get("initContainers", [])]


def crd_schema() -> dict:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    return version["schema"]["openAPIV3Schema"]


# --- rendering and schemas -------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_renders_into_the_namespace(rendered, target):
    objs = rendered[target]
    ids = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(ids) == len(set(ids)), ids
    assert ("Namespace", NAMESPACE) in ids
    for obj in objs:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "marketsearch"


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_is_valid_kubernetes(rendered, target):
    import kubernetes_validate

    for obj in rendered[target]:
        if obj["apiVersion"].startswith("serving.kserve.io/"):
            continue                                   # a CRD: checked against KServe's schema
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{target} {obj['kind']}/{obj['metadata']['name']}: "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")


def test_the_crd_schema_is_a_valid_schema():
    import kubernetes_validate

    jsonschema.Draft7Validator.check_schema(crd_schema())
    kubernetes_validate.validate(yaml.safe_load(CRD.read_text()), K8S_VERSION, strict=True)


@pytest.mark.parametrize("target", ["base", "overlays/eks"])
def test_inference_service_is_valid_for_kserve(rendered, target):
    isvc = one(rendered, target, "InferenceService", "marketsearch")
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(crd_schema()).iter_errors(isvc)]
    assert errors == []


def test_the_crd_schema_rejects_what_kserve_rejects(rendered):
    """The trimmed schema is strict enough to catch the mistakes that matter."""
    validator = jsonschema.Draft7Validator(crd_schema())
    good = one(rendered, "base", "InferenceService", "marketsearch")

    def errors(mutate) -> list[str]:
        import copy
        bad = copy.deepcopy(good)
        mutate(bad)
        return [e.message for e in validator.iter_errors(bad)]

    predictor = lambda o: o["spec"]["predictor"]                       # noqa: E731
    container = lambda o: o["spec"]["predictor"]["containers"][0]      # noqa: E731
    assert any("readinesProbe" in m for m in errors(
        lambda o: container(o).update(readinesProbe=container(o).pop("readinessProbe"))))
    assert any("'name' is a required property" in m for m in errors(
        lambda o: container(o).pop("name")))
    assert any("is not of type 'integer'" in m for m in errors(
        lambda o: predictor(o).update(minReplicas="one")))
    assert any("'predictor' is a required property" in m for m in errors(
        lambda o: o["spec"].pop("predictor")))
    assert any("does not match" in m for m in errors(
        lambda o: container(o)["resources"]["limits"].update(memory="4 gigs")))
    assert any("'port' is a required property" in m for m in errors(
        lambda o: container(o)["livenessProbe"]["httpGet"].pop("port")))


# --- policy ----------------------------------------------------------------------------------
def test_credentials_only_in_the_kind_dev_generator(rendered):
    # No Secret object, and no `data`/`stringData` of one, is written anywhere under k8s/.
    for path in K8S.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict):
                assert doc.get("kind") != "Secret", f"{path}: a Secret literal"
                if path.name == "kustomization.yaml" and "secretGenerator" in doc:
                    assert path == K8S / "overlays" / "kind" / "kustomization.yaml", path
    # base and eks render no Secret at all: those are created out of band.
    for target in ("base", "overlays/eks"):
        assert objects(rendered, target, "Secret") == []
    # kind: every Secret comes from the generator, and its credentials are the fake dev ones.
    kustomization = yaml.safe_load((K8S / "overlays/kind/kustomization.yaml").read_text())
    generated = {g["name"] for g in kustomization["secretGenerator"]}
    for secret in objects(rendered, "overlays/kind", "Secret"):
        name = secret["metadata"]["name"]
        assert any(name == g or re.fullmatch(rf"{re.escape(g)}-[a-z0-9]{{10}}", name)
                   for g in generated), name
        assert "stringData" not in secret
        for key, value in secret.get("data", {}).items():
            text = base64.b64decode(value).decode()
            # a fake dev credential, or a location with no credential in it
            assert FAKE_MARK in text or re.fullmatch(r"(s3|https?)://[^@\s]+", text), \
                f"kind secret {name}.{key} is neither a fake dev value nor a plain location"


@pytest.mark.parametrize("target", TARGETS)
def test_sensitive_environment_comes_from_secrets(rendered, target):
    for obj in rendered[target]:
        for _, c in containers(obj):
            for env in c.get("env", []):
                value = env.get("value", "")
                assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", value), \
                    f"{obj['metadata']['name']}/{c['name']}: {env['name']} has a password in it"
                if SENSITIVE_ENV.search(env["name"]) and env["name"] != "MLFLOW_S3_ENDPOINT_URL":
                    assert "secretKeyRef" in env.get("valueFrom", {}), \
                        f"{obj['metadata']['name']}/{c['name']}: {env['name']} is not from a Secret"
    mlflow = one(rendered, target, "Deployment", "mlflow")
    env = {e["name"]: e for e in mlflow["spec"]["template"]["spec"]["containers"][0]["env"]}
    for name, key in (("MLFLOW_BACKEND_STORE_URI", "backend-store-uri"),
                      ("MLFLOW_ARTIFACTS_DESTINATION", "artifacts-destination")):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"].startswith("mlflow-backend") and ref["key"] == key


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_is_bounded_probed_and_non_root(rendered, target):
    seen = 0
    for obj in rendered[target]:
        long_running = obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "InferenceService")
        for spec, c in containers(obj):
            seen += 1
            where = f"{target} {obj['kind']}/{obj['metadata']['name']}/{c['name']}"
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part, {})), f"{where}: {part}"
            pod_sc, sc = spec.get("securityContext", {}), c.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("privileged"), where
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            if long_running:
                assert c.get("readinessProbe") and c.get("livenessProbe"), where
    assert seen >= 1


@pytest.mark.parametrize("target", TARGETS)
def test_images_are_pinned(rendered, target):
    for obj in rendered[target]:
        for _, c in containers(obj):
            image = c["image"]
            name = image.split("@", 1)[0].rsplit("/", 1)[-1]
            assert "@sha256:" in image or (":" in name and not name.endswith(":latest")), image


def test_overlays_point_our_images_at_their_registries(rendered):
    kind_cfg = load_config(REPO / "config" / "kind.yaml").kfp
    expected = {"overlays/kind": {kind_cfg.image(kind_cfg.serving_image),
                                  kind_cfg.image(kind_cfg.base_image)},
                "overlays/eks": {"123456789012.dkr.ecr.eu-west-2.amazonaws.com/marketsearch/serving:0.1.0",
                                 "123456789012.dkr.ecr.eu-west-2.amazonaws.com/marketsearch/base:0.1.0"},
                "base": {"marketsearch/serving:0.1.0", "marketsearch/base:0.1.0"}}
    for target, ours in expected.items():
        images = {c["image"] for o in rendered[target] for _, c in containers(o)}
        mine = {i for i in images if "marketsearch" in i}
        assert mine <= ours and mine, (target, images)
    # kind-loaded images are never pulled
    for obj in rendered["overlays/kind"]:
        for _, c in containers(obj):
            if c["image"].startswith("kind.local/"):
                assert c["imagePullPolicy"] == "IfNotPresent", c["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_rbac_is_exactly_the_deploy_step(rendered, target):
    assert objects(rendered, target, "ClusterRole") == []
    assert objects(rendered, target, "ClusterRoleBinding") == []
    (role,) = objects(rendered, target, "Role")
    isvc, lease = role["rules"]
    assert isvc["apiGroups"] == ["serving.kserve.io"]
    assert isvc["resources"] == ["inferenceservices"]
    assert sorted(isvc["verbs"]) == sorted(["get", "list", "watch", "create", "patch", "update"])
    # the deploy Lease (marketsearch.kube.lease): no list, watch or patch
    assert (lease["apiGroups"], lease["resources"]) == (["coordination.k8s.io"], ["leases"])
    assert sorted(lease["verbs"]) == ["create", "delete", "get", "update"]
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}       # no resourceNames games
    (binding,) = objects(rendered, target, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert {(s["kind"], s["namespace"], s["name"]) for s in binding["subjects"]} == {
        ("ServiceAccount", NAMESPACE, "pipeline-runner"),
        ("ServiceAccount", "kubeflow", "pipeline-runner")}            # KFP standalone's pods


@pytest.mark.parametrize("target", TARGETS)
def test_service_accounts_and_irsa(rendered, target):
    accounts = {o["metadata"]["name"]: o for o in objects(rendered, target, "ServiceAccount")}
    assert set(accounts) == {"pipeline-runner", "model-server", "mlflow"}
    assert accounts["model-server"].get("automountServiceAccountToken") is False
    for name, sa in accounts.items():
        arn = (sa["metadata"].get("annotations") or {}).get("eks.amazonaws.com/role-arn")
        if target == "overlays/eks":
            workload = "pipeline" if name == "pipeline-runner" else name
            assert arn == f"arn:aws:iam::123456789012:role/marketsearch-irsa-{workload}", name
        else:
            assert arn is None, (target, name)
    if target == "overlays/kind":   # KServe's storage initializer finds MinIO through this
        assert accounts["model-server"]["secrets"] == [{"name": "s3-credentials"}]
        s3 = one(rendered, target, "Secret", "s3-credentials")
        assert s3["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"].startswith("minio.")


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies(rendered, target):
    policies = {o["metadata"]["name"]: o["spec"] for o in objects(rendered, target, "NetworkPolicy")}
    deny = policies["default-deny-ingress"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"]
    assert not deny.get("ingress")
    predictor = policies["allow-predictor-from-ingress"]
    assert predictor["podSelector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": "marketsearch"}
    (rule,) = predictor["ingress"]
    (source,) = rule["from"]
    (expr,) = source["namespaceSelector"]["matchExpressions"]
    assert expr["key"] == "kubernetes.io/metadata.name" and \
        set(expr["values"]) == {"istio-system", "knative-serving", "kserve"}
    assert 8080 in {p["port"] for p in rule["ports"]}
    mlflow = policies["allow-mlflow-from-pipelines"]
    assert mlflow["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow"}
    (rule,) = mlflow["ingress"]
    assert {"podSelector": {}} in rule["from"] and rule["ports"] == [{"protocol": "TCP", "port": 5000}]
    # every Service's pods are let in on their port by some policy (the rest stays denied)
    for svc in objects(rendered, target, "Service"):
        selector = svc["spec"]["selector"]
        allowed = [p for p in policies.values() if p.get("ingress")
                   and p["podSelector"].get("matchLabels", {}).items() <= selector.items()]
        assert allowed, f"{target}: nothing lets traffic in to Service {svc['metadata']['name']}"


def test_inference_service_shape(rendered):
    base = one(rendered, "base", "InferenceService", "marketsearch")["spec"]["predictor"]
    eks = one(rendered, "overlays/eks", "InferenceService", "marketsearch")["spec"]["predictor"]
    for predictor in (base, eks):
        (c,) = predictor["containers"]
        assert c["name"] == "kserve-container"
        assert c["command"] == ["marketsearch", "serve"]
        assert c["args"] == ["--model", "/mnt/models", "--port", "8080"]
        assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
        assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
        assert predictor["serviceAccountName"] == "model-server"
        assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
        uri = {e["name"]: e.get("value") for e in c["env"]}["STORAGE_URI"]
        assert uri.startswith("s3://") and uri.endswith("/champion")
    assert "canaryTrafficPercent" not in base
    assert eks["canaryTrafficPercent"] == 10
    assert "marketsearch-artifacts-123456789012-eu-west-2" in \
        {e["name"]: e.get("value") for e in eks["containers"][0]["env"]}["STORAGE_URI"]
    # kind: no InferenceService in the overlay (the pipeline's deploy step creates it)
    assert objects(rendered, "overlays/kind", "InferenceService") == []


def test_kind_overlay_has_what_up_sh_and_config_kind_expect(rendered):
    """config/kind.yaml's stages read their secrets (kfp.secret_env: a key of kfp.secret_name,
    or <secret>/<key>; scripts/kind/up.sh copies those secrets into `kubeflow`) and reach
    MinIO, MLflow and Postgres by these names."""
    cfg = load_config(REPO / "config" / "kind.yaml")
    for env, ref in cfg.kfp.secret_env.items():
        name, key = ref.split("/", 1) if "/" in ref else (cfg.kfp.secret_name, ref)
        secret = one(rendered, "overlays/kind", "Secret", name)
        assert key in secret["data"], f"{env}: secret {name} has no key {key}"
    for kind, name in (("Service", "minio"), ("Service", "mlflow"), ("Service", "postgres"),
                       ("Deployment", "minio"), ("Deployment", "mlflow"), ("Deployment", "postgres"),
                       ("Job", "minio-buckets")):
        one(rendered, "overlays/kind", kind, name)
    assert cfg.data.s3_endpoint_url == "http://minio.marketsearch.svc.cluster.local:9000"
    assert cfg.mlflow.tracking_uri == "http://mlflow.marketsearch.svc.cluster.local:5000"
    job = one(rendered, "overlays/kind", "Job", "minio-buckets")
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert cfg.data.s3_uri.removeprefix("s3://").split("/")[0] in env["BUCKETS"].split()
    if cfg.kserve.model_uri_prefix:
        assert cfg.kserve.model_uri_prefix.removeprefix("s3://").split("/")[0] in env["BUCKETS"].split()


def test_make_k8s_render_writes_both_overlays(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(["make", "-s", "k8s-render", f"K8S_OUT={tmp_path}"], cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    for overlay in ("kind", "eks"):
        docs = [d for d in yaml.safe_load_all((tmp_path / f"{overlay}.yaml").read_text()) if d]
        assert any(d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow" for d in docs)
    live = subprocess.run(["make", "-s", "k8s-render-eks-live", f"K8S_OUT={tmp_path}",
                           "EKS_ACCOUNT_ID=210987654321", "EKS_REGION=us-east-1", "EKS_TAG=abc1234"],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert live.returncode == 0, live.stderr
    text = (tmp_path / "eks-live.yaml").read_text()
    assert "123456789012" not in text and "eu-west-2" not in text
    assert "arn:aws:iam::210987654321:role/marketsearch-irsa-model-server" in text
    assert "210987654321.dkr.ecr.us-east-1.amazonaws.com/marketsearch/serving:abc1234" in text


def test_checkov_passes_on_k8s():
    """checkov's Kubernetes checks over every kustomization (base and overlays rendered):
    no failed check; the skips are annotations beside the code, each with its reason."""
    import json
    import os

    checkov = REPO / ".venv-tools" / "bin" / "checkov"
    if not checkov.exists():
        pytest.skip("checkov is not installed (make tools-checkov creates .venv-tools)")
    proc = subprocess.run([str(checkov), "-d", str(K8S), "--framework", "kustomize", "--compact",
                           "-o", "json"], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, BC_SKIP_MAPPING="TRUE"))
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [(c["check_id"], c["resource"]) for r in reports
              for c in r["results"]["failed_checks"]]
    assert failed == [] and proc.returncode == 0, failed or proc.stderr[-2000:]
    skipped = [c for r in reports for c in r["results"]["skipped_checks"]]
    assert all(c["check_result"].get("suppress_comment") for c in skipped), skipped
    # and it scanned something: the base and every overlay, their Deployments among them
    passed = [c for r in reports for c in r["results"]["passed_checks"]]
    scanned = {c["resource"].split(":Deployment.")[0] for c in passed if ":Deployment." in c["resource"]}
    assert scanned >= {"base", "overlay:overlays/eks", "overlay:overlays/kind"}, scanned
    assert len(passed) > 100, len(passed)


def test_deploy_step_builds_what_the_eks_overlay_has(rendered):
    """With config/eks.yaml's images and the replica counts of the overlay, the deploy step's
    builder makes the eks overlay's predictor (its STORAGE_URI and canary field aside)."""
    from marketsearch.kube import build_inference_service, storage_uri_of

    isvc = one(rendered, "overlays/eks", "InferenceService", "marketsearch")
    overlay = {k: v for k, v in isvc["spec"]["predictor"].items() if k != "canaryTrafficPercent"}
    cfg = load_config(REPO / "config" / "eks.yaml", overrides={"kserve": {
        "min_replicas": overlay["minReplicas"], "max_replicas": overlay["maxReplicas"]}})
    built = build_inference_service(cfg, storage_uri_of(overlay))
    assert built["spec"]["predictor"] == overlay
