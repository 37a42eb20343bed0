"""Each stage is given only the config it reads.

A stage names what it reads (``reads``: section names such as ``image_model``, or the shared
top-level keys ``seed`` and ``run_dir``). The pipeline passes exactly those values as the
task's inputs (a section as JSON text), so KFP's cache key of a task changes only when something it reads changes:
editing ``drift.alpha`` leaves every training task's inputs as they were. Inside the task the
values become a ``Config`` in which every section the stage did not name raises
``StageConfigError`` when touched, so a stage that starts reading a new section fails loudly
in its first test instead of silently using a default.
"""
from __future__ import annotations

import json

from marketsearch.config import Config

# Everything a stage may name: the config's sections (by their YAML names) and shared keys.
TOP_LEVEL_KEYS = ("run_dir", "seed")
# Every stage reads these: where MLflow is (its child run) and the run directory paths use.
COMMON_READS = ("mlflow", "run_dir")


class StageConfigError(AttributeError):
    """A stage touched config it did not declare in its ``reads``."""


def config_names() -> list[str]:
    """The YAML names of every section and top-level key, in the config's own order."""
    return [f.alias or name for name, f in Config.model_fields.items()]


def _attribute(name: str) -> str:
    for attr, f in Config.model_fields.items():
        if (f.alias or attr) == name:
            return attr
    raise KeyError(f"no config section or key {name!r}; known: {config_names()}")


def check_reads(stage: str, reads) -> tuple[str, ...]:
    unknown = [r for r in reads if r not in config_names()]
    if unknown:
        raise ValueError(f"stage {stage}: reads unknown config {unknown}; known: {config_names()}")
    return tuple(dict.fromkeys((*reads, *COMMON_READS)))


def values_for(cfg: Config, reads) -> dict:
    """The task inputs of ``reads``: a section as its JSON text (KFP parameters cannot hold the
    None a section may contain, and text keeps ints ints), a top-level key as itself."""
    data = cfg.model_dump(mode="json", by_alias=True)
    return {name: data[name] if name in TOP_LEVEL_KEYS else json.dumps(data[name], sort_keys=True)
            for name in reads}


class _Absent:
    """Stands for a section the stage did not declare; any use raises StageConfigError."""

    def __init__(self, stage: str, name: str):
        object.__setattr__(self, "_why", f"stage {stage} reads config {name!r}, which is not in "
                                         f"its `reads`; add it there (marketsearch.steps)")

    def _fail(self, *_args, **_kwargs):
        raise StageConfigError(object.__getattribute__(self, "_why"))

    def __getattr__(self, _name):
        self._fail()

    __str__ = __format__ = __int__ = __index__ = __float__ = __bool__ = __iter__ = _fail
    __eq__ = __lt__ = __gt__ = __add__ = __radd__ = __truediv__ = __rtruediv__ = _fail
    __hash__ = None


def config_from(values: dict, stage: str) -> Config:
    """A Config of ``values`` (from ``values_for``) in which everything else is absent."""
    cfg = Config.model_validate({k: v if k in TOP_LEVEL_KEYS else json.loads(v)
                                 for k, v in values.items()})
    for name in config_names():
        if name not in values:
            object.__setattr__(cfg, _attribute(name), _Absent(stage, name))
    return cfg
