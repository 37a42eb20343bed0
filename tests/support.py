"""Helpers shared by test packages: free ports, a real MLflow tracking server, and a tiny
bundle trained by the pipeline's own stage functions."""
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


FIXTURE = Path(__file__).resolve().parent / "fixtures" / "gumtree_small"
# Small and fast: a bundle in ~20 s on two cores (its accuracy is not the point).
TINY = {
    "clean": {"image_size": 32, "thumbnail_size": 48},
    "image_model": {"epochs": 2, "batch_size": 32, "input_size": 64},
    "text_model": {"epochs": 3, "max_len": 48, "word2vec": {"epochs": 2}},
    "fusion": {"epochs": 3},
    # two heads: the averaged path; character n-grams: the head reads its own text ridge
    "price": {"epochs": 3, "hidden": 16, "heads": 2, "text_char_terms": 500},
}


def tiny_config(run_dir: Path, **sections):
    from marketsearch.config import load_config

    return load_config(overrides={"run_dir": str(run_dir), "data": {"local_dir": str(FIXTURE)},
                                  **TINY, **sections})


def train_tiny_bundle(tmp: Path, out_name: str = "bundle"):
    """(config, clean data dir, bundle dir): ingest -> validate -> clean -> train image, text,
    fusion -> build_index, the stage functions the pipeline runs, on the 52-listing fixture."""
    from marketsearch.components.build_index import build_index
    from marketsearch.components.clean import clean
    from marketsearch.components.ingest import ingest
    from marketsearch.components.train_fusion import train_fusion
    from marketsearch.components.train_image import train_image
    from marketsearch.components.train_text import train_text
    from marketsearch.components.validate import validate

    cfg = tiny_config(tmp / "runs")
    data = clean(cfg, validate(cfg, ingest(cfg)))
    data.save(tmp / "clean")
    image = train_image(cfg, data, tmp / "image")
    text = train_text(cfg, data, tmp / "text")
    fused = train_fusion(cfg, data, image, text, tmp / "fused")
    build_index(cfg, data, fused, tmp / out_name)
    return cfg, tmp / "clean", tmp / out_name


def run_stage(name: str, cfg, **artifacts):
    """A stage's generated KFP wrapper as its KFP task runs it: the config values the stage
    reads, then its artifacts (``dsl.Dataset(name=..., uri=path)`` and the like)."""
    from marketsearch.steps import all_steps
    from marketsearch.steps.config_view import values_for
    from marketsearch.steps.runner import run_step

    step = all_steps()[name]
    return run_step(step.module, name, {**values_for(cfg, step.reads), **artifacts})
