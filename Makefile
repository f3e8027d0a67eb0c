# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

# No telemetry and no network from Prefect; the demo's Prefect runs are kept with the rest of
# its state, so `prefect server start` with the same PREFECT_HOME shows them (README, "Look at it").
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME ?= $(CURDIR)/.freshrec/prefect
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
export GX_ANALYTICS_ENABLED := false

.PHONY: install demo test backtest backtest-weekly servers deploy serve clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

demo: $(INSTALLED)
	$(BIN)/freshrec demo

# Tests keep Prefect's files out of the demo's state; each test makes its own freshrec home.
# pytest-xdist spreads the test files over the machine's cores (TEST_WORKERS=0: one process);
# a file's tests stay in one worker, so its module-scoped servers and champions are built once.
# Files go out in the order tests/conftest.py sorts them (end-to-end first), not by test count.
TEST_WORKERS ?= auto
test: $(INSTALLED)
	mkdir -p .pytest_cache/prefect-home
	PREFECT_HOME=$(CURDIR)/.pytest_cache/prefect-home $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The Online Retail backtest (about 16 minutes on 2 cores, with every peer); its state stays out of the demo's.
backtest: $(INSTALLED)
	FRESHREC_HOME=$(CURDIR)/.freshrec-backtest $(BIN)/freshrec backtest --source online-retail --period month \
		--data $(CURDIR)/../shared/data/online_retail.csv.gz --out benchmarks/results/backtest_online_retail.json

# The same, week by week (47 test weeks): never, weekly retraining and the triggered policy, every peer.
backtest-weekly: $(INSTALLED)
	FRESHREC_HOME=$(CURDIR)/.freshrec-backtest-weekly $(BIN)/freshrec backtest --source online-retail --period week \
		--policy never --policy retrain --policy triggered \
		--data $(CURDIR)/../shared/data/online_retail.csv.gz --out benchmarks/results/backtest_online_retail_weekly.json

# A Prefect server (UI on 4200) and an MLflow tracking server (UI on 5000) on loopback, state
# under .freshrec/servers/; runs in the foreground, Ctrl-C stops both. Then `make deploy` in
# another shell. MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://USER:PASSWORD@HOST/DB in the
# environment puts MLflow's database on PostgreSQL instead of SQLite (it stays out of argv). MLFLOW_AUTH=1 runs MLflow's basic-auth app: export
# MLFLOW_AUTH_ADMIN_PASSWORD and the flows' MLFLOW_TRACKING_USERNAME/_PASSWORD first (docs/scaling.md).
PREFECT_PORT ?= 4200
MLFLOW_PORT ?= 5000
servers: $(INSTALLED)
	$(BIN)/freshrec servers --prefect-port $(PREFECT_PORT) --mlflow-port $(MLFLOW_PORT) \
		$(if $(MLFLOW_AUTH),--mlflow-auth)

# Deploys every flow of prefect.yaml to the servers of `make servers`, then starts a process
# worker in the foreground (it runs the scheduled and triggered flow runs; Ctrl-C stops it).
# The worker's flows keep their state in FRESHREC_HOME (default .freshrec/deployed/: landing/ is
# where batch files go) and track to the MLflow server.
deploy: $(INSTALLED)
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api $(BIN)/prefect work-pool create freshrec-process --type process --overwrite
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api $(BIN)/prefect --no-prompt deploy --all
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api MLFLOW_TRACKING_URI=http://127.0.0.1:$(MLFLOW_PORT) \
		FRESHREC_HOME=$${FRESHREC_HOME:-$(CURDIR)/.freshrec/deployed} PATH=$(CURDIR)/$(BIN):$$PATH \
		$(BIN)/prefect worker start --pool freshrec-process

# The recommendation service on http://127.0.0.1:$(SERVE_PORT): the champion of the settings'
# MLflow store (after `make demo`, the demo's; with `make servers`, set
# MLFLOW_TRACKING_URI=http://127.0.0.1:$(MLFLOW_PORT)), swapped when the alias moves; Ctrl-C stops it.
SERVE_PORT ?= 8000
serve: $(INSTALLED)
	$(BIN)/freshrec serve --port $(SERVE_PORT)

clean:
	rm -rf $(VENV) .freshrec .freshrec-backtest .freshrec-backtest-weekly .pytest_cache
