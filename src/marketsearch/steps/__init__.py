"""Stages as typed steps.

A stage is a pure function ``stage(cfg, **input_records, ...) -> Record``. The ``@step``
decorator records what it reads from the config, which records it takes and which it
returns; from that one declaration ``marketsearch.steps.kfp`` generates the stage's KFP
component (one generated wrapper per stage, none written by hand), and
``marketsearch.steps.runner`` is what that wrapper runs inside the task: it loads the input
records from the input artifacts, opens the stage's MLflow child run, logs the stage's config
as params, calls the function, saves the returned record into the output artifact, and logs
the record's metrics, headline and report (MLflow, the KFP UI, the terminal).

The decorated function is returned unchanged, so tests and the CLI call it directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from marketsearch.steps.config_view import check_reads

# The KFP output views a step may ask for: the record's report as HTML or Markdown, its
# metrics as KFP Metrics, its confusion matrix as ClassificationMetrics.
VIEWS = ("HTML", "Markdown", "Metrics", "ClassificationMetrics")


@dataclass(frozen=True)
class Step:
    name: str
    module: str
    func: Callable
    reads: tuple[str, ...]
    inputs: dict                   # input artifact (= function parameter) -> record type, or
                                   # [record type]: a list of them (a fan-out's dsl.Collected)
    output: tuple | None           # (artifact name, record type) or None
    views: dict                    # extra output artifact -> one of VIEWS
    params: dict                   # plain inputs (not config) -> KFP type annotation
    returns: Callable | None       # result -> the task's output (dsl.If conditions, fingerprints)
    cached: bool                   # may KFP reuse an earlier result of the same inputs?
    out_dir: bool                  # the function writes into the output artifact's directory
    uris: dict = field(default_factory=dict)   # function parameter -> input artifact's URI
    returns_type: str = "bool"     # the task output's type
    tracked: bool = True           # has an MLflow child run (all but the run's own open/close)


STEPS: dict[str, Step] = {}


def step(*, reads=(), inputs=None, output=None, views=None, params=None, returns=None,
         cached=True, out_dir=False, uris=None, returns_type="bool", tracked=True):
    """Declare a stage (see the module docstring). ``cached=False`` for a stage whose work is
    not a function of its inputs alone: it reads the outside world or acts on it."""
    bad = [v for v in (views or {}).values() if v not in VIEWS]
    if bad:
        raise ValueError(f"unknown view(s) {bad}; one of {VIEWS}")

    def register(func):
        STEPS[func.__name__] = Step(
            func.__name__, func.__module__, func, check_reads(func.__name__, reads),
            dict(inputs or {}), output, dict(views or {}), dict(params or {}), returns, cached,
            out_dir, dict(uris or {}), returns_type, tracked)
        return func

    return register


def all_steps() -> dict[str, Step]:
    """Every stage's Step (importing the stage modules registers them)."""
    import importlib

    from marketsearch.components import STAGE_MODULES

    for name in STAGE_MODULES:
        importlib.import_module(f"marketsearch.components.{name}")
    return STEPS
