"""The @step declarations, the generated KFP wrappers, the per-stage config and the terminal."""
import inspect
import json

import pytest

from marketsearch.config import load_config
from marketsearch.steps import all_steps
from marketsearch.steps.config_view import StageConfigError, config_from, values_for
from marketsearch.steps.kfp import config_from_parameters, pipeline_parameters, wrapper_source


def test_every_stage_function_takes_what_its_step_declares():
    for name, step in all_steps().items():
        params = list(inspect.signature(step.func).parameters)
        assert params[0] == "cfg", name
        for declared in (*step.inputs, *step.params, *step.uris, *(["out_dir"] if step.out_dir else [])):
            assert declared in params, (name, declared)


def test_a_generated_wrapper_has_only_the_stages_config_inputs_and_outputs():
    step = all_steps()["train_image"]
    source = wrapper_source(step)
    header = source.splitlines()[0]
    for expected in ("image_model: str", "seed: int", "mlflow: str", "run_dir: str",
                     "clean_data: dsl.Input[List[dsl.Dataset]]", "plan: dsl.Input[dsl.Dataset]",
                     "model: dsl.Output[dsl.Model]",
                     "curves: dsl.Output[dsl.HTML]"):
        assert expected in header
    assert "drift" not in header and "pipeline_run" not in header and "validate" not in header
    assert "run_step('marketsearch.components.train_image', 'train_image', args)" in source
    assert "-> bool" in wrapper_source(all_steps()["evaluate"]).splitlines()[0]


def test_a_stage_reading_config_it_did_not_declare_fails_naming_both(tmp_path):
    cfg = load_config(overrides={"run_dir": str(tmp_path)})
    view = config_from(values_for(cfg, all_steps()["train_text"].reads), "train_text")
    assert view.text_model == cfg.text_model and view.seed == cfg.seed
    assert view.tracking_uri == cfg.tracking_uri          # mlflow and run_dir: every stage's
    with pytest.raises(StageConfigError, match="stage train_text reads config 'drift'"):
        view.drift.alpha  # noqa: B018
    with pytest.raises(StageConfigError, match="'clean'"):
        view.database_url  # noqa: B018


def test_the_pipeline_parameters_are_the_config(tmp_path):
    cfg = load_config(overrides={"run_dir": str(tmp_path), "data": {"limit": None}})
    params = pipeline_parameters(cfg)
    assert json.loads(params["data"])["limit"] is None     # None survives as JSON text
    assert config_from_parameters(params) == cfg


def test_the_terminal_shows_what_matters_and_the_log_keeps_everything(tmp_path, capfd):
    import sys

    from marketsearch import console

    log = tmp_path / "run.log"
    with console.quiet(log):
        print("    [KFP Executor 2026 INFO]: Got executor_input: {\"config\": \"...\"}")
        print("    I0000 port.cc:153] oneDNN custom operations are on")
        print("    [marketsearch] clean: done in 6 s: 52 listings")
        print("    clean: photos:  50%|##  | 1/2\r    clean: photos: 100%|####| 2/2 [00:01]")
        print("12:00:00.1 - INFO - Task train-image cache hit (key=abc); skipping execution.")
        sys.stdout.flush()
    shown = capfd.readouterr().err
    assert "[marketsearch] clean: done in 6 s: 52 listings" in shown
    assert "clean: photos: 100%" in shown and "50%" not in shown
    assert "[marketsearch] train_image: reused (cache hit" in shown
    assert "executor_input" not in shown and "oneDNN" not in shown
    written = log.read_text()
    assert "executor_input" in written and "oneDNN" in written and "cache hit" in written


def test_a_run_leaves_print_as_it_found_it_whatever_kfp_local_swapped(tmp_path, capsys):
    """kfp.local swaps builtins.print for an indenting one while a task runs; two tasks at once
    can leave one of those in place (the run summary came out indented). run_locally puts the
    real print back."""
    import builtins

    from marketsearch.local_run import run_locally

    cfg = load_config(overrides={"run_dir": str(tmp_path)})
    real = builtins.print

    def racy_pipeline():          # what the race leaves behind: the print a task swapped in
        builtins.print = lambda *args, **kwargs: real("    ", *args, **kwargs)

    try:
        run_locally(cfg, lambda _: racy_pipeline, "racy")
        assert builtins.print is real
        print("summary")
        assert capsys.readouterr().out == "summary\n"
    finally:
        builtins.print = real
