"""``marketsearch schedule`` against a KFP API over HTTP.

No KFP deployment exists here, so the test runs a small HTTP server that implements the KFP
v2beta1 REST endpoints the ``kfp.Client`` calls (healthz, experiments, recurring runs), with
the paths and JSON shapes of kfp_server_api, keeps their state and records every request. The
real ``kfp.Client`` talks to it. The package is the training pipeline compiled to YAML, the
stand-in for the monitoring pipeline (same shape: one parameter per config section).
"""
from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from marketsearch.config import Config, load_config
from marketsearch.schedule import (ScheduleError, _parameters, cmd_schedule, schedule,
                                   schedule_recurring_run)
from marketsearch.steps.kfp import config_from_parameters

API = "/apis/v2beta1"


class FakeKfp:
    """The KFP v2beta1 API's experiments and recurring runs, in memory; ``requests`` records
    (method, path, query, body) of every call in order, ``headers`` their headers."""

    def __init__(self):
        self.requests: list[tuple[str, str, dict, object]] = []
        self.headers: list[dict[str, str]] = []
        self.refuse_creates = False  # answer POST recurringruns with a 400, as KFP does a bad spec
        self.experiments: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        self.lock = threading.Lock()

    @staticmethod
    def _now() -> str:
        return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    @staticmethod
    def _matches(item: dict, flt: str | None) -> bool:
        if not flt:
            return True
        for p in json.loads(flt).get("predicates", []):
            op = p.get("operation")
            if op not in (1, "EQUALS"):
                raise ValueError(f"unsupported filter operation {op}")
            if item.get(p["key"]) != p.get("stringValue"):
                return False
        return True

    def handle(self, method: str, url: str, body, headers: dict[str, str]) -> tuple[int, dict]:
        parts = urlsplit(url)
        path, query = parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with self.lock:
            self.requests.append((method, path, query, body))
            self.headers.append({k.lower(): v for k, v in headers.items()})
            if method == "GET" and path == f"{API}/healthz":
                return 200, {"multi_user": False}
            if path == f"{API}/experiments":
                if method == "GET":
                    found = [e for e in self.experiments.values()
                             if self._matches(e, query.get("filter"))]
                    return 200, ({"experiments": found, "total_size": len(found)} if found else {})
                if method == "POST":
                    exp = dict(body, experiment_id=str(uuid.uuid4()), created_at=self._now(),
                               storage_state="AVAILABLE")
                    self.experiments[exp["experiment_id"]] = exp
                    return 200, exp
            if method == "POST" and path.startswith(f"{API}/experiments/") \
                    and path.endswith(":unarchive"):
                exp_id = path.rsplit("/", 1)[1].removesuffix(":unarchive")
                self.experiments[exp_id]["storage_state"] = "AVAILABLE"
                return 200, {}
            if path == f"{API}/recurringruns":
                if method == "GET":
                    found = [r for r in self.recurring_runs.values()
                             if r["experiment_id"] == query.get("experiment_id", r["experiment_id"])
                             and self._matches(r, query.get("filter"))]
                    page = {"recurringRuns": found, "total_size": len(found)}
                    return 200, (page if found else {})
                if method == "POST" and self.refuse_creates:
                    return 400, {"code": 3, "message": "invalid pipeline spec"}
                if method == "POST":
                    run = dict(body, recurring_run_id=str(uuid.uuid4()), created_at=self._now(),
                               updated_at=self._now(), status="ENABLED")
                    # the server echoes max_concurrency as an int64 string
                    run["max_concurrency"] = str(run.get("max_concurrency", "1"))
                    self.recurring_runs[run["recurring_run_id"]] = run
                    return 200, run
            if method == "DELETE" and path.startswith(f"{API}/recurringruns/"):
                run_id = path.rsplit("/", 1)[1]
                if self.recurring_runs.pop(run_id, None) is None:
                    return 404, {"code": 5, "message": f"recurring run {run_id} not found"}
                return 200, {}
            return 404, {"code": 5, "message": f"no route {method} {path} in the fake KFP API"}

    # helpers for the assertions
    def calls(self, method: str, path: str) -> list[tuple[int, tuple]]:
        return [(i, r) for i, r in enumerate(self.requests) if r[0] == method and r[1] == path]

    def unrouted(self) -> list[tuple]:
        known = ("/healthz", "/experiments", "/recurringruns")
        return [r for r in self.requests if not r[1].startswith(tuple(API + k for k in known))]


@pytest.fixture
def kfp_api():
    """(base URL, FakeKfp) of the fake KFP API on a free loopback port."""
    fake = FakeKfp()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            status, payload = fake.handle(self.command, self.path, body, dict(self.headers))
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PATCH = _serve

        def log_message(self, *args):  # keep pytest output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", fake
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _no_ambient_kfp(monkeypatch, tmp_path):
    """No host or token from the machine running the tests, and no kfp context file."""
    import kfp

    for var in ("KFP_HOST", "KFP_TOKEN", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))


def _compile(cfg: Config, out: Path) -> Path:
    from kfp import compiler

    from marketsearch.pipelines.training import build_training_pipeline

    compiler.Compiler().compile(build_training_pipeline(cfg), str(out))
    return out


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The training pipeline compiled to YAML: the stand-in for the monitoring package."""
    tmp = tmp_path_factory.mktemp("package")
    return _compile(load_config(overrides={"run_dir": str(tmp / "runs")}), tmp / "pipeline.yaml")


def _cfg(tmp_path: Path, **monitoring) -> Config:
    return load_config(overrides={"run_dir": str(tmp_path / "runs"), "monitoring": monitoring})


def test_schedule_creates_the_recurring_run_from_the_config(kfp_api, package, tmp_path, caplog):
    url, fake = kfp_api
    cfg = _cfg(tmp_path, kfp_host=url, cron="0 30 2 * * *")
    run_id = schedule(cfg, package)
    # the stand-in package is scheduled, with a warning that it is not the monitoring pipeline
    assert ("scheduling pipeline 'marketsearch-training', not 'marketsearch-monitoring'"
            in caplog.text)

    assert run_id in fake.recurring_runs
    assert fake.unrouted() == []
    [(_, (_, _, _, exp_body))] = fake.calls("POST", f"{API}/experiments")
    assert exp_body["display_name"] == "marketsearch-monitoring"
    [experiment_id] = fake.experiments
    [(_, (_, _, _, body))] = fake.calls("POST", f"{API}/recurringruns")
    assert body["display_name"] == "marketsearch-drift-check"
    assert body["experiment_id"] == experiment_id
    assert body["trigger"] == {"cron_schedule": {"cron": "0 30 2 * * *"}}
    assert str(body["max_concurrency"]) == "1"
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert "service_account" not in body  # KFP's default runner
    # the whole pipeline spec of the package, as compiled
    assert body["pipeline_spec"] == yaml.safe_load(package.read_text())
    assert body["pipeline_spec"]["pipelineInfo"]["name"] == "marketsearch-training"
    # and the loaded config as the run's parameters, one per section
    params = body["runtime_config"]["parameters"]
    assert set(params) == set(_parameters(body["pipeline_spec"]))
    assert config_from_parameters(params) == cfg
    # before anything was created, the experiment and the recurring run were looked up by name
    i_find_exp = fake.calls("GET", f"{API}/experiments")[0][0]
    [(i_create_exp, _)] = fake.calls("POST", f"{API}/experiments")
    [(i_find_run, (_, _, query, _))] = fake.calls("GET", f"{API}/recurringruns")
    [(i_create_run, _)] = fake.calls("POST", f"{API}/recurringruns")
    assert i_find_exp < i_create_exp < i_find_run < i_create_run
    assert query["experiment_id"] == experiment_id
    # no token in the environment: no Authorization header
    assert not any("authorization" in h for h in fake.headers)
    assert json.loads(query["filter"])["predicates"][0]["stringValue"] == "marketsearch-drift-check"


def test_the_monitoring_pipeline_is_scheduled_as_is(kfp_api, tmp_path, caplog):
    """The real package: pipelines/monitoring.py compiled as `make schedule` compiles it."""
    from kfp import compiler

    from marketsearch.pipelines import monitoring

    url, fake = kfp_api
    cfg = _cfg(tmp_path, kfp_host=url)
    package = tmp_path / "local-monitoring.yaml"
    compiler.Compiler().compile(monitoring.build_monitoring_pipeline(cfg), str(package))
    run_id = schedule(cfg, package)
    body = fake.recurring_runs[run_id]
    assert body["pipeline_spec"]["pipelineInfo"]["name"] == "marketsearch-monitoring"
    assert body["pipeline_spec"] == yaml.safe_load(package.read_text())
    assert config_from_parameters(body["runtime_config"]["parameters"]) == cfg
    assert "not 'marketsearch-monitoring'" not in caplog.text


def test_default_cron_is_kfps_six_field_daily_form():
    cron = Config().monitoring.cron
    assert cron == "0 0 3 * * *" and len(cron.split()) == 6  # 03:00:00 every day
    with pytest.raises(ValueError, match="6 fields, seconds first"):
        Config.model_validate({"monitoring": {"cron": "0 3 * * *"}})  # 5-field unix cron
    assert Config.model_validate({"monitoring": {"cron": "@daily"}}).monitoring.cron == "@daily"


def test_scheduling_again_replaces_the_recurring_run(kfp_api, package, tmp_path):
    url, fake = kfp_api
    cfg = _cfg(tmp_path, kfp_host=url)
    first = schedule(cfg, package)
    experiment_id = next(iter(fake.experiments))
    # an unrelated recurring run in the same experiment must survive
    fake.recurring_runs["other"] = {"recurring_run_id": "other", "display_name": "something-else",
                                    "experiment_id": experiment_id}
    second = schedule(cfg, package)

    assert second != first
    assert set(fake.recurring_runs) == {second, "other"}
    assert len(fake.experiments) == 1  # reused, not created again
    assert len(fake.calls("POST", f"{API}/experiments")) == 1
    [(i_delete, _)] = fake.calls("DELETE", f"{API}/recurringruns/{first}")
    creates = [i for i, _ in fake.calls("POST", f"{API}/recurringruns")]
    # the new schedule exists before the old one goes
    assert len(creates) == 2 and creates[0] < creates[1] < i_delete
    assert fake.calls("DELETE", f"{API}/recurringruns/other") == []
    assert fake.recurring_runs[second]["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"


def test_host_from_env_and_argument_and_settings_reach_the_api(kfp_api, package, tmp_path,
                                                                monkeypatch):
    url, fake = kfp_api
    monkeypatch.setenv("KFP_HOST", url)
    monkeypatch.setenv("KFP_TOKEN", "t0ken")
    cfg = _cfg(tmp_path, max_concurrency=3, catchup=True, service_account="monitoring-runner",
               experiment="drift", recurring_run_name="nightly", pipeline_root="s3://b/root")
    done = schedule_recurring_run(cfg, package)
    assert done.host == url and done.experiment == "drift" and done.experiment_created
    body = fake.recurring_runs[done.recurring_run_id]
    assert body["display_name"] == "nightly" and body["max_concurrency"] == "3"
    assert body["no_catchup"] is False and body["service_account"] == "monitoring-runner"
    assert body["runtime_config"]["pipeline_root"] == "s3://b/root"
    [(i_create, _)] = fake.calls("POST", f"{API}/recurringruns")
    assert fake.headers[i_create].get("authorization") == "Bearer t0ken"
    # an explicit host wins over a bad env var
    monkeypatch.setenv("KFP_HOST", "http://127.0.0.1:9")
    again = schedule_recurring_run(cfg, package, host=url)
    assert again.replaced == [done.recurring_run_id] and not again.experiment_created


def test_an_archived_experiment_is_unarchived(kfp_api, package, tmp_path):
    url, fake = kfp_api
    fake.experiments["e1"] = {"experiment_id": "e1", "display_name": "marketsearch-monitoring",
                              "storage_state": "ARCHIVED"}
    done = schedule_recurring_run(_cfg(tmp_path, kfp_host=url), package)
    assert done.experiment_id == "e1"
    assert fake.calls("POST", f"{API}/experiments/e1:unarchive")
    assert fake.experiments["e1"]["storage_state"] == "AVAILABLE"


def test_a_cluster_package_sends_its_platform_spec(kfp_api, tmp_path):
    """A package compiled for Kubernetes carries a second YAML document (the platform spec);
    the API gets both."""
    url, fake = kfp_api
    cfg = load_config(overrides={"run_dir": str(tmp_path / "runs"), "monitoring": {"kfp_host": url},
                                 "kfp": {"kubernetes": True, "image_tag": "abc123"}})
    package = _compile(cfg, tmp_path / "cluster.yaml")
    run_id = schedule(cfg, package)
    spec = fake.recurring_runs[run_id]["pipeline_spec"]
    docs = list(yaml.safe_load_all(package.read_text()))
    assert len(docs) == 2
    assert spec == {"pipeline_spec": docs[0], "platform_spec": docs[1]}


def test_no_host_is_a_clear_error(kfp_api, package, tmp_path, capsys):
    url, fake = kfp_api
    cfg = _cfg(tmp_path)
    with pytest.raises(ScheduleError, match="no KFP host.*--host.*KFP_HOST.*monitoring.kfp_host"):
        schedule(cfg, package)
    assert cmd_schedule(cfg, package) == 2
    err = capsys.readouterr().err
    assert "no KFP host" in err and "KFP_HOST" in err
    assert fake.requests == []


def test_bad_package_or_parameters_fail_before_anything_is_deleted(kfp_api, package, tmp_path):
    url, fake = kfp_api
    cfg = _cfg(tmp_path, kfp_host=url)
    with pytest.raises(ScheduleError, match="not found"):
        schedule(cfg, tmp_path / "missing.yaml")
    (tmp_path / "notes.yaml").write_text("just: text\n")
    with pytest.raises(ScheduleError, match="not a compiled KFP pipeline"):
        schedule(cfg, tmp_path / "notes.yaml")
    spec = yaml.safe_load(package.read_text())
    spec["root"]["inputDefinitions"]["parameters"] = {"other": {"parameterType": "STRING"}}
    (tmp_path / "noparam.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ScheduleError, match="lacks the config parameter"):
        schedule(cfg, tmp_path / "noparam.yaml")
    assert fake.requests == []


def test_a_refused_schedule_leaves_the_old_one_running(kfp_api, package, tmp_path):
    from kfp_server_api import ApiException

    url, fake = kfp_api
    cfg = _cfg(tmp_path, kfp_host=url)
    first = schedule(cfg, package)
    fake.refuse_creates = True
    with pytest.raises(ApiException):
        schedule(cfg, package)
    assert set(fake.recurring_runs) == {first}
    assert [r for r in fake.requests if r[0] == "DELETE"] == []


def test_unreachable_host_is_a_clear_error(package, tmp_path, capsys):
    from marketsearch.serving.process import free_port

    cfg = _cfg(tmp_path, kfp_host=f"http://127.0.0.1:{free_port()}")
    assert cmd_schedule(cfg, package) == 2
    assert "cannot reach the KFP API at http://127.0.0.1:" in capsys.readouterr().err


def test_cmd_schedule_prints_what_it_did(kfp_api, package, tmp_path, capsys):
    url, fake = kfp_api
    cfg = _cfg(tmp_path, kfp_host=url)
    assert cmd_schedule(cfg, package) == 0
    assert cmd_schedule(cfg, package, host=url) == 0
    out = capsys.readouterr().out
    assert len(fake.calls("POST", f"{API}/recurringruns")) == 2
    assert "created experiment 'marketsearch-monitoring'" in out
    assert "existing experiment 'marketsearch-monitoring'" in out
    assert "deleted the previous recurring run 'marketsearch-drift-check'" in out
    assert "cron '0 0 3 * * *'" in out and str(package) in out
    assert len(fake.recurring_runs) == 1  # the second replaced the first
