"""The pipeline's stages, one module each: a pure function over typed records, declared with
``marketsearch.steps.step`` (which generates its KFP component). Importing this package
registers every stage."""
from marketsearch.components import (build_index, clean, deploy, drift_check, evaluate,  # noqa: F401
                                     ingest, run, train_fusion, train_image, train_text, validate)
