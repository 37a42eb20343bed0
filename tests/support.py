"""Helpers shared by test packages: free ports and a real MLflow tracking server."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from marketsearch.serving.process import free_port, running


@contextlib.contextmanager
def mlflow_server(workdir: Path):
    """``mlflow server`` on a free loopback port (SQLite backend, proxied artifacts)."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
           "--artifacts-destination", str(workdir / "artifacts")]
    with running(cmd, f"http://127.0.0.1:{port}/health", workdir / "server.log", 120) as srv:
        yield srv.url
