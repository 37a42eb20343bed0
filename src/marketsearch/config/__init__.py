"""Typed configuration: YAML on disk, validated by pydantic, with embedded defaults.

Every knob the pipeline has lives here; stages receive the whole config (as JSON, so that the
compiled KFP pipeline carries it as an editable parameter) and read only their own section.
Paths may use ``{run_dir}``; relative paths are resolved against the working directory when
the config is loaded, so components that run in other processes see absolute paths.

The sections live in modules of their own, by what they configure:

    base.py        ``_Section``, the base of every section (unknown keys are errors)
    data.py        data, validate, clean (with its split)
    models.py      image_model, text_model, fusion, price, evaluate, index
    platform.py    mlflow, serving, kfp (``KFP_STAGES``, ``KFP_STAGE_KINDS``), kserve
    monitoring.py  drift, monitoring
    __init__.py    ``Config`` (every section), ``load_config`` and its overrides
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from pydantic import ConfigDict, Field

from .base import _Section
from .data import CleanConfig, DataConfig, SplitConfig, ValidateConfig
from .models import (EvaluateConfig, FusionConfig, ImageModelConfig, IndexConfig, PriceConfig,
                     SmallCnnConfig, TextModelConfig, Word2VecConfig)
from .monitoring import DriftConfig, MonitoringConfig
from .platform import (KFP_STAGE_KINDS, KFP_STAGES, KfpConfig, KfpResources, KServeConfig,
                       MlflowConfig, ServingConfig)

# src/marketsearch/config/__init__.py: the repository is three folders up.
REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG = REPO_ROOT / "config" / "local.yaml"

__all__ = [
    "DEFAULT_CONFIG", "KFP_STAGES", "KFP_STAGE_KINDS", "REPO_ROOT", "CleanConfig", "Config",
    "DataConfig", "DriftConfig", "EvaluateConfig", "FusionConfig", "ImageModelConfig",
    "IndexConfig", "KServeConfig", "KfpConfig", "KfpResources", "MlflowConfig",
    "MonitoringConfig", "PriceConfig", "ServingConfig", "SmallCnnConfig", "SplitConfig",
    "TextModelConfig", "ValidateConfig", "Word2VecConfig", "config_digest", "load_config",
    "parse_override",
]


class Config(_Section):
    run_dir: str = "runs"
    seed: int = 42
    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    clean: CleanConfig = CleanConfig()
    image_model: ImageModelConfig = ImageModelConfig()
    text_model: TextModelConfig = TextModelConfig()
    fusion: FusionConfig = FusionConfig()
    price: PriceConfig = PriceConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    index: IndexConfig = IndexConfig()
    mlflow: MlflowConfig = MlflowConfig()
    serving: ServingConfig = ServingConfig()
    kfp: KfpConfig = KfpConfig()
    kserve: KServeConfig = KServeConfig()
    drift: DriftConfig = DriftConfig()
    monitoring: MonitoringConfig = MonitoringConfig()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    # --- derived values -------------------------------------------------------------
    def path(self, template: str) -> Path:
        return Path(template.format(run_dir=self.run_dir))

    @property
    def database_url(self) -> str:
        return os.environ.get(self.clean.database_url_env) or self.clean.database_url.format(
            run_dir=self.run_dir)

    @property
    def tracking_uri(self) -> str:
        return os.environ.get(self.mlflow.tracking_uri_env) or self.mlflow.tracking_uri.format(
            run_dir=self.run_dir)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls.model_validate_json(text)

    def resolved(self, base: Path | None = None) -> "Config":
        """A copy whose local paths are absolute (relative ones taken against ``base``)."""
        base = Path(base or os.getcwd())
        data = self.model_dump(by_alias=True)
        data["run_dir"] = str((base / self.run_dir).resolve())
        local_dir = Path(self.data.local_dir)
        if not local_dir.is_absolute():
            data["data"]["local_dir"] = str((base / local_dir).resolve())
        data["data"]["extra_local_dirs"] = [str((base / d).resolve())
                                            for d in self.data.extra_local_dirs]
        return Config.model_validate(data)


def _deep_update(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """``a.b.c=value`` -> {"a": {"b": {"c": value}}}; the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw)
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                base: Path | None = None) -> Config:
    """Load YAML config (default ``config/local.yaml``), apply overrides, resolve paths."""
    path = Path(path) if path else DEFAULT_CONFIG
    data: dict = {}
    if path.exists():
        data = yaml.safe_load(path.read_text()) or {}
    elif path != DEFAULT_CONFIG:
        raise FileNotFoundError(f"config file {path} not found")
    if isinstance(overrides, dict):
        data = _deep_update(data, overrides)
    else:
        for item in overrides or []:
            data = _deep_update(data, parse_override(item))
    return Config.model_validate(data).resolved(base)


def config_digest(cfg: Config) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(cfg.model_dump(by_alias=True), sort_keys=True).encode()).hexdigest()[:12]
