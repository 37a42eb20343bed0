"""Fixtures for the infrastructure checks: terraform in a throw-away copy of terraform/, and a
moto server (a real HTTP server in a subprocess) standing in for the AWS APIs.

Nothing is written into the repository: every ``terraform init``/``plan``/``apply`` runs in a
temporary copy, so ``.terraform/``, the lock file, plans and state stay out of the tree.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from marketsearch.serving.process import free_port

REPO = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = REPO / "terraform"
# The offline provider mirror of this machine kind (hashicorp/aws 5.100.0); elsewhere set
# MARKETSEARCH_TF_PLUGIN_DIR, or leave the directory absent to install from the registry.
TF_PLUGIN_DIR = Path(os.environ.get("MARKETSEARCH_TF_PLUGIN_DIR", "/opt/tf-plugins"))

# Every AWS API the configuration calls, pointed at moto by the test-only override file.
AWS_SERVICES = ("autoscaling", "cloudwatchlogs", "ec2", "ecr", "eks", "iam", "kms", "rds", "s3",
                "secretsmanager", "sts")


def terraform_binary() -> str:
    path = shutil.which("terraform")
    if path is None:
        pytest.skip("the terraform binary is not on PATH (install terraform >= 1.5 to run the "
                    "terraform checks)")
    return path


def _terraform_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "TF_VAR_", "TF_LOG"))}
    env.update({
        "TF_IN_AUTOMATION": "1",
        "TF_INPUT": "0",
        "CHECKPOINT_DISABLE": "1",
        # fake credentials, and never a real profile or credentials file
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    # A CLI config that does not exist only produces a warning on every command.
    cli_config = env.get("TF_CLI_CONFIG_FILE")
    if cli_config and not Path(cli_config).is_file():
        env.pop("TF_CLI_CONFIG_FILE")
    env.pop("TF_DATA_DIR", None)
    env.pop("TF_PLUGIN_CACHE_DIR", None)
    return env


@dataclass
class Terraform:
    """terraform in a private copy of terraform/ (``workdir``)."""

    binary: str
    workdir: Path
    env: dict[str, str] = field(default_factory=_terraform_env)

    def run(self, *args: str, timeout: float = 300, check: bool = True) \
            -> subprocess.CompletedProcess:
        cmd = [self.binary, *args]
        proc = subprocess.run(cmd, cwd=self.workdir, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(f"`terraform {' '.join(args)}` exited {proc.returncode}:\n"
                        f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}", pytrace=False)
        return proc

    def init(self) -> None:
        args = ["init", "-backend=false", "-input=false", "-no-color"]
        if TF_PLUGIN_DIR.is_dir():
            args.append(f"-plugin-dir={TF_PLUGIN_DIR}")
        self.run(*args, timeout=300)

    def show_json(self, *args: str) -> dict:
        return json.loads(self.run("show", "-json", *args, timeout=120).stdout)

    def point_at(self, endpoint: str) -> None:
        """Write the test-only provider override: every service at ``endpoint``, fake
        credentials, no credential/account/metadata look-ups, path-style S3."""
        endpoints = "\n".join(f'    {svc:<14} = "{endpoint}"' for svc in AWS_SERVICES)
        (self.workdir / "moto_override.tf").write_text(f"""\
# Written by tests/infra (never in the repository): the AWS provider against moto.
provider "aws" {{
  access_key                  = "testing"
  secret_key                  = "testing"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  s3_use_path_style           = true

  endpoints {{
{endpoints}
  }}
}}
""")


def copy_terraform(dest: Path) -> Path:
    """terraform/'s configuration (*.tf, *.tftpl; no state, lock file or .terraform) into
    ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in TERRAFORM_DIR.iterdir():
        if path.is_file() and path.suffix in {".tf", ".tftpl"}:
            shutil.copy2(path, dest / path.name)
    return dest


@pytest.fixture(scope="session")
def terraform_bin() -> str:
    return terraform_binary()


@pytest.fixture(scope="module")
def tf_initialised(terraform_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Terraform:
    """An initialised copy of terraform/ (``terraform init -backend=false``) for this module."""
    tf = Terraform(terraform_bin, copy_terraform(tmp_path_factory.mktemp("terraform")))
    tf.init()
    return tf


class MotoServer:
    """``moto_server`` in a subprocess on a free port, with the AWS managed IAM policies
    loaded (AmazonEKSClusterPolicy & co. are attached by the configuration)."""

    def __init__(self, log_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"moto-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update({"MOTO_IAM_LOAD_MANAGED_POLICIES": "true",
                    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull})
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited {self.proc.returncode}: "
                                   f"{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.url} within {timeout}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory: pytest.TempPathFactory):
    """A moto server shared by one test module (tests that create resources start their own)."""
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()
