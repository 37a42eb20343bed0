import pytest
from pydantic import ValidationError

from marketsearch.config import Config, load_config, parse_override


def test_defaults_load_and_paths_resolve(tmp_path):
    cfg = load_config(base=tmp_path)
    assert cfg.run_dir == str(tmp_path / "runs")
    assert cfg.database_url == f"sqlite:///{tmp_path / 'runs' / 'marketsearch.db'}"
    assert cfg.image_model.embedding_dim == 256 and cfg.text_model.embedding_dim == 256


def test_overrides_and_json_round_trip():
    cfg = load_config(overrides=["image_model.epochs=3", "data.limit=100", "index.type=hnsw"])
    assert (cfg.image_model.epochs, cfg.data.limit, cfg.index.type) == (3, 100, "hnsw")
    assert Config.from_json(cfg.to_json()) == cfg
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}


def test_bad_config_is_refused_with_the_field_named():
    with pytest.raises(ValidationError, match="imgae_model"):
        load_config(overrides={"imgae_model": {"epochs": 1}})
    with pytest.raises(ValidationError, match="backbone"):
        load_config(overrides=["image_model.backbone=vgg"])
    with pytest.raises(ValidationError, match="sum to 1"):
        load_config(overrides={"clean": {"split": {"train": 0.9, "val": 0.1, "test": 0.1}}})
    with pytest.raises(ValueError, match="section.key=value"):
        parse_override("no-equals-sign")


def test_env_overrides_secrets_not_in_config(monkeypatch):
    monkeypatch.setenv("MARKETSEARCH_DB_URL", "postgresql://u@h/db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    cfg = load_config()
    assert cfg.database_url == "postgresql://u@h/db" and cfg.tracking_uri == "http://mlflow:5000"
