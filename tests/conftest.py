"""Shared test fixtures: the small Gumtree fixture, a throw-away Postgres, a moto S3 server.

Real services, no mocks: ``postgres_url`` runs a Postgres cluster of its own (initdb +
pg_ctl on a free port, as the ``postgres`` OS user when the tests run as root) and
``s3_endpoint`` a moto S3 server over HTTP on 127.0.0.1.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from marketsearch.serving.process import free_port

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PG_USER = "postgres"
PG_PASSWORD = "ms-test-secret"

# --- isolation -----------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _restore_mlflow_tracking_uri():
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which the config reads before its
    own value: put it back after every test, so one test's (stopped) server never leaks into
    the next."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


# --- data ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    """tests/fixtures/gumtree_small: 52 listings (4 per root category) and their 65 photos."""
    path = FIXTURES / "gumtree_small"
    assert (path / "products.csv").is_file(), \
        f"{path} is missing; run python tests/fixtures/make_fixture.py"
    return path

@pytest.fixture
def tmp_run_dir(tmp_path: Path) -> Path:
    """An empty run directory for one test (config ``run_dir``)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return run_dir

# --- Postgres --------------------------------------------------------------------------------
def _pg_binaries() -> dict[str, str] | None:
    found = {name: shutil.which(name) for name in ("initdb", "pg_ctl", "postgres")}
    if all(found.values()):
        return found
    # Debian keeps them off PATH under /usr/lib/postgresql/<version>/bin
    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if all((bindir / name).exists() for name in found):
            return {name: str(bindir / name) for name in found}
    return None

class _PgCluster:
    def __init__(self, binaries: dict[str, str]):
        self.bin = binaries
        self.as_root = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix="marketsearch-pg-"))
        self.data = self.base / "data"
        self.socket_dir = self.base / "sock"
        self.socket_dir.mkdir()
        self.log = self.base / "postgres.log"
        self.port = free_port()
        if self.as_root:
            user = pwd.getpwnam(PG_USER)
            for path in (self.base, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
            os.chmod(self.base, 0o700)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = list(args)
        if self.as_root:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}):\n"
                               f"{proc.stdout}\n{proc.stderr}\n{log[-3000:]}")
        return proc

    def start(self) -> str:
        pwfile = self.base / "pw"
        pwfile.write_text(PG_PASSWORD + "\n")
        if self.as_root:
            user = pwd.getpwnam(PG_USER)
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        self._run(self.bin["initdb"], "-D", str(self.data), "-U", PG_USER, "-E", "UTF8",
                  "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256",
                  f"--pwfile={pwfile}", "--no-sync")
        pwfile.unlink()
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=50 -c shared_buffers=32MB")
        self._run(self.bin["pg_ctl"], "-D", str(self.data), "-o", options,
                  "-l", str(self.log), "-w", "-t", "60", "start")
        return f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(self.bin["pg_ctl"], "-D", str(self.data), "-m", "immediate", "-w",
                      "stop", check=False)
        shutil.rmtree(self.base, ignore_errors=True)

@pytest.fixture(scope="session")
def postgres_url():
    """URL (postgresql://postgres:<password>@127.0.0.1:<port>/postgres) of a throw-away
    Postgres cluster that lives for the test session. Tests that need an empty database
    of their own use ``postgres_db_url``."""
    binaries = _pg_binaries()
    if binaries is None:
        pytest.skip("Postgres server binaries (initdb, pg_ctl, postgres) are not installed")
    cluster = _PgCluster(binaries)
    try:
        yield cluster.start()
    finally:
        cluster.stop()

@pytest.fixture
def postgres_db_url(postgres_url: str):
    """A fresh, empty database on the session's Postgres cluster; dropped after the test."""
    import psycopg2

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(postgres_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

# --- S3 (moto server over HTTP) -----------------------------------------------------------
@pytest.fixture(scope="session")
def s3_endpoint():
    """http://127.0.0.1:<port> of a moto S3 server (a real HTTP server in this process's
    threads). Fake AWS credentials and region are set in the environment meanwhile."""
    from moto.server import ThreadedMotoServer

    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        # never pick up a real profile or credentials file
        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    patch.delenv("AWS_PROFILE", raising=False)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        patch.undo()

@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new empty bucket on the moto server (unique name per test)."""
    import boto3

    name = f"ms-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name
