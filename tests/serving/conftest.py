"""A bundle trained on the small fixture by the pipeline's own stage functions, and the model
server started on it as a real process."""
import base64
import json
from pathlib import Path

import pandas as pd
import pytest

from marketsearch.serving.process import model_server
from tests.support import FIXTURE, train_tiny_bundle

@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(config, clean data dir, bundle dir) of a tiny bundle trained on the fixture."""
    return train_tiny_bundle(tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="session")
def bundle_dir(trained) -> Path:
    return trained[2]


@pytest.fixture(scope="session")
def server(bundle_dir, tmp_path_factory):
    """``marketsearch serve`` on a free port, ready; the readiness polls are kept for a test."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with model_server(bundle_dir, log) as srv:
        yield srv


@pytest.fixture(scope="session")
def raw_listings() -> pd.DataFrame:
    """The fixture's raw listings with their photo ids, as a client would send them."""
    products = pd.read_csv(FIXTURE / "products.csv", dtype=str)
    images = pd.read_csv(FIXTURE / "images.csv", dtype=str)
    counts = images.groupby("product_id")["id"].agg(list)
    products["photo_ids"] = products["id"].map(counts)
    return products


def photo_b64(photo_id: str) -> str:
    return base64.b64encode((FIXTURE / "images" / f"{photo_id}.jpg").read_bytes()).decode()


def post(url: str, body, timeout: float = 30.0, raw: bytes | None = None,
         content_type: str = "application/json"):
    """POST JSON (or raw bytes) -> (status, parsed JSON body or text)."""
    import urllib.error
    import urllib.request

    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"content-type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, text = r.status, r.read()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text.decode(errors="replace")
