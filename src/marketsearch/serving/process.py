"""Start ``marketsearch serve`` as a separate process and wait until it is ready.

Used by the tests and the benchmarks, which talk to the server over real HTTP.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    url: str
    proc: subprocess.Popen
    log_path: Path
    # (seconds since start, GET /v2/health/ready status) for every poll until ready; status 0
    # means the port did not answer yet.
    readiness: list[tuple[float, int]] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@contextlib.contextmanager
def running(cmd: list[str], ready_url: str, log_path: str | Path, timeout: float = 180.0,
            env: dict | None = None):
    """Run ``cmd`` (its output to ``log_path``) until the block ends; yields a ServerProcess
    once GET ``ready_url`` answers 200, polling every 50 ms and recording each answer."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env or dict(os.environ))
    base = ready_url.split("/", 3)
    server = ServerProcess("/".join(base[:3]), proc, log_path)
    start = time.monotonic()
    try:
        while True:
            status = _status(ready_url)
            server.readiness.append((round(time.monotonic() - start, 3), status))
            if status == 200:
                break
            if proc.poll() is not None or time.monotonic() - start > timeout:
                raise RuntimeError(f"{cmd[0]} did not become ready:\n{server.log()[-4000:]}")
            time.sleep(0.05)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        out.close()


@contextlib.contextmanager
def model_server(model_dir: str | Path, log_path: str | Path, port: int | None = None,
                 extra_args: list[str] | None = None, timeout: float = 180.0):
    """Run ``marketsearch serve --model model_dir`` on a free loopback port until the block
    ends; yields a ServerProcess once ``/v2/health/ready`` answers 200."""
    port = port or free_port()
    exe = Path(sys.executable).with_name("marketsearch")
    cmd = [str(exe), "serve", "--model", str(model_dir), "--port", str(port), *(extra_args or [])]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with running(cmd, f"http://127.0.0.1:{port}/v2/health/ready", log_path, timeout, env) as srv:
        yield srv
