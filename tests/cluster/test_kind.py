"""The cluster path end to end on kind (`make kind-up`, then `make kind-test`): the fixture
listings uploaded to the cluster's MinIO, the training pipeline compiled with config/kind.yaml
(a tiny sample, one epoch) and run on KFP, then the InferenceService answering a V1 request.

Needs a Docker engine, kind, and the cluster of `make kind-up` (context kind-marketsearch);
without them the whole module is skipped with the reason (`pytest -rs` prints it).

Endpoints (each optional; without it the test port-forwards the service itself when nothing
listens on the default port):
  KFP_HOST               KFP API/UI          default http://localhost:8888 (svc/ml-pipeline-ui)
  MARKETSEARCH_ISVC_URL  the predictor       default http://localhost:8081 (svc/<isvc>-predictor)
  MARKETSEARCH_MINIO_URL MinIO's S3 API      default http://localhost:9000 (svc/minio)
  MARKETSEARCH_NAMESPACE (marketsearch), MARKETSEARCH_ISVC (marketsearch), KIND_CLUSTER
  (marketsearch), KIND_RUN_TIMEOUT (seconds for the pipeline run, 3600).
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER = os.environ.get("KIND_CLUSTER", "marketsearch")
CONTEXT = f"kind-{CLUSTER}"
NAMESPACE = os.environ.get("MARKETSEARCH_NAMESPACE", "marketsearch")
ISVC = os.environ.get("MARKETSEARCH_ISVC", "marketsearch")
KFP_NAMESPACE = "kubeflow"
FIXTURE = REPO / "tests" / "fixtures" / "gumtree_small"
RUN_TIMEOUT = int(os.environ.get("KIND_RUN_TIMEOUT", "3600"))


def _run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _why_no_cluster() -> str | None:
    """Why this machine cannot run the kind tests, or None when it can."""
    if shutil.which("docker") is None:
        return "no docker CLI: the kind tests need a Docker engine (then make kind-up)"
    try:
        if _run(["docker", "info"]).returncode != 0:
            return "no Docker engine ('docker info' failed): kind needs one; run make kind-up where Docker runs"
    except (OSError, subprocess.TimeoutExpired):
        return "no Docker engine ('docker info' did not answer)"
    if shutil.which("kind") is None:
        return "kind is not installed (https://kind.sigs.k8s.io); then make kind-up"
    if shutil.which("kubectl") is None:
        return "kubectl is not installed"
    try:
        clusters = _run(["kind", "get", "clusters"]).stdout.split()
        if CLUSTER not in clusters:
            return f"no kind cluster named {CLUSTER}: run make kind-up"
        if _run(["kubectl", "--context", CONTEXT, "get", "--raw", "/readyz"]).returncode != 0:
            return f"the cluster context {CONTEXT} is not reachable: run make kind-up"
    except (OSError, subprocess.TimeoutExpired):
        return f"the cluster context {CONTEXT} did not answer"
    return None


_REASON = _why_no_cluster()
if _REASON:
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = pytest.mark.cluster


# --- helpers ------------------------------------------------------------------------------------
def kubectl(*args: str, namespace: str | None = NAMESPACE, timeout: float = 120) -> str:
    cmd = ["kubectl", "--context", CONTEXT] + (["-n", namespace] if namespace else []) + list(args)
    proc = _run(cmd, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stderr}"
    return proc.stdout


def _listening(port: int) -> bool:
    with contextlib.closing(socket.socket()) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def endpoint(env: str, default: str, namespace: str, service: str, remote_port: int):
    """The URL in $env; else ``default`` when something listens there; else a port-forward to
    ``service`` on the default's port, for the duration of the block."""
    if os.environ.get(env):
        yield os.environ[env].rstrip("/")
        return
    port = urllib.parse.urlparse(default).port
    if _listening(port):
        yield default
        return
    proc = subprocess.Popen(["kubectl", "--context", CONTEXT, "-n", namespace, "port-forward",
                             service, f"{port}:{remote_port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while not _listening(port):
            if proc.poll() is not None or time.time() > deadline:
                out = proc.stdout.read() if proc.poll() is not None else ""
                pytest.fail(f"kubectl port-forward {service} {port}:{remote_port} failed: {out}")
            time.sleep(0.5)
        yield default
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def secret_values(name: str) -> dict[str, str]:
    data = json.loads(kubectl("get", "secret", name, "-o", "json"))["data"]
    return {key: base64.b64decode(value).decode() for key, value in data.items()}


def env_from_secrets(cfg, *names: str) -> dict[str, str]:
    """The values the pipeline's pods get for these env vars (kfp.secret_env), read from the
    overlay's secrets in the marketsearch namespace."""
    out: dict[str, str] = {}
    for secret, key_to_env in cfg.kfp.secret_refs().items():
        wanted = {key: env for key, env in key_to_env.items() if env in names}
        if wanted:
            values = secret_values(secret)
            out.update({env: values[key] for key, env in wanted.items()})
    assert set(out) == set(names), f"config/kind.yaml's kfp.secret_env lacks {set(names) - set(out)}"
    return out


def http_json(url: str, body: dict | None = None, timeout: float = 60) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cfg():
    from marketsearch.config import load_config

    config = load_config(REPO / "config" / "kind.yaml")
    assert config.data.source == "s3" and config.data.limit and config.image_model.epochs == 1
    return config


@pytest.fixture(scope="module")
def fixture_in_minio(cfg):
    """tests/fixtures/gumtree_small uploaded where config/kind.yaml's data.s3_uri points."""
    from marketsearch.sources import parse_s3_uri
    import boto3

    creds = env_from_secrets(cfg, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    bucket, prefix = parse_s3_uri(cfg.data.s3_uri)
    prefix = prefix.strip("/")
    with endpoint("MARKETSEARCH_MINIO_URL", "http://localhost:9000", NAMESPACE, "svc/minio",
                  9000) as url:
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"])
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)
        files = [p for p in FIXTURE.rglob("*") if p.is_file() and p.suffix in (".csv", ".jpg")]
        for path in files:
            key = f"{prefix}/{path.relative_to(FIXTURE).as_posix()}".lstrip("/")
            s3.upload_file(str(path), bucket, key)
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0)
        assert listed >= len(files), (listed, len(files))
    return cfg.data.s3_uri


# --- the test -------------------------------------------------------------------------------------
def test_pipeline_runs_on_kfp_and_the_inference_service_answers(cfg, fixture_in_minio, tmp_path):
    import kfp
    from kfp import compiler

    from marketsearch.pipelines.training import build_training_pipeline

    # 1. compile with config/kind.yaml: the kind-loaded images, MinIO, secrets as env vars
    package = tmp_path / "kind-training.yaml"
    compiler.Compiler().compile(build_training_pipeline(cfg), str(package))

    # 2. run it on KFP and wait for the end
    with endpoint("KFP_HOST", "http://localhost:8888", KFP_NAMESPACE, "svc/ml-pipeline-ui",
                  80) as host:
        client = kfp.Client(host=host)
        run = client.create_run_from_pipeline_package(
            str(package), arguments={}, run_name=f"kind-test-{int(time.time())}",
            experiment_name="marketsearch-kind-test", enable_caching=False)
        result = client.wait_for_run_completion(run.run_id, timeout=RUN_TIMEOUT, sleep_duration=10)
        state = str(result.state)
        if state != "SUCCEEDED":
            tasks = getattr(getattr(result, "run_details", None), "task_details", None) or []
            failed = [(t.display_name, t.state, getattr(t, "error", None)) for t in tasks
                      if str(t.state) not in ("SUCCEEDED", "SKIPPED")]
            pytest.fail(f"pipeline run {run.run_id} ended {state}: {result.error}\n{failed}")

    # 3. the InferenceService (the deployed champion) answers a V1 request
    kubectl("wait", "--for=condition=Ready", f"inferenceservice/{ISVC}", "--timeout=900s",
            timeout=960)
    with endpoint("MARKETSEARCH_ISVC_URL", "http://localhost:8081", NAMESPACE,
                  f"svc/{ISVC}-predictor", 80) as url:
        deadline = time.time() + 300
        while True:
            try:
                status, _ = http_json(f"{url}/v2/health/ready", timeout=10)
            except OSError:
                status = None
            if status == 200:
                break
            assert time.time() < deadline, f"{url}/v2/health/ready never answered 200 ({status})"
            time.sleep(5)
        status, body = http_json(f"{url}/v1/models/{cfg.serving.model_name}:predict",
                                 {"instances": [{"product_name": "mountain bike", "k": 3}]})
    assert status == 200, body
    (prediction,) = body["predictions"]
    assert isinstance(prediction["category"], str) and prediction["category"]
    scores = prediction["scores"]
    assert prediction["category"] in scores
    assert abs(sum(scores.values()) - 1.0) < 1e-3
    neighbors = prediction["neighbors"]
    assert 1 <= len(neighbors) <= 3
    assert all(n["product_id"] and isinstance(n["score"], float) for n in neighbors)
