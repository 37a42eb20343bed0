"""The KFP DAGs and their compilation."""
