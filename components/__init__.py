"""The pipeline's stages, one module each: a pure function over typed records, declared with
``marketsearch.steps.step`` (which generates its KFP component). ``marketsearch.steps.all_steps``
imports the modules listed here; a task imports only its own stage's module."""
STAGE_MODULES = ("run", "ingest", "shard", "featurize", "validate", "clean", "train_image", "train_text", "train_fusion",
                 "build_index", "evaluate", "deploy", "drift_check")
