import shutil
from pathlib import Path

import pytest

from marketsearch.config import load_config

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "gumtree_small"


@pytest.fixture
def data_copy(tmp_path) -> Path:
    """A writable copy of the small fixture, for tests that corrupt it."""
    dst = tmp_path / "data"
    shutil.copytree(FIXTURE, dst)
    return dst


def make_cfg(tmp_path: Path, data_dir: Path = FIXTURE, **sections):
    overrides = {"run_dir": str(tmp_path / "runs"), "data": {"local_dir": str(data_dir)}}
    for key, value in sections.items():
        overrides[key] = value
    return load_config(overrides=overrides)


@pytest.fixture
def cfg(tmp_path):
    return make_cfg(tmp_path)
