# The recurring drift check on a KFP deployment (src/marketsearch/schedule.py):
#   make schedule CONFIG=config/kind.yaml KFP_HOST=http://localhost:8888
# compiles pipelines/monitoring.py for CONFIG and (re)creates the recurring run
# monitoring.recurring_run_name in the experiment monitoring.experiment, on monitoring.cron
# (KFP's six-field cron, seconds first; default 03:00 daily). Scheduling again replaces it.
# The KFP API: KFP_HOST (here or in the environment), else monitoring.kfp_host; a bearer
# token, where the endpoint wants one, from KFP_TOKEN.
MONITORING_PACKAGE = build/pipelines/$(notdir $(basename $(CONFIG)))-monitoring.yaml

.PHONY: compile-monitoring schedule

compile-monitoring:
	$(BIN)/marketsearch compile --pipeline monitoring --config $(CONFIG) --output $(MONITORING_PACKAGE)

schedule: compile-monitoring
	$(if $(KFP_HOST),KFP_HOST=$(KFP_HOST) )$(BIN)/marketsearch schedule --config $(CONFIG) --package $(MONITORING_PACKAGE)
