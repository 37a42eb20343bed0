"""One module per pipeline stage: the plain stage function and its KFP component."""
