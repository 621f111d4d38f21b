# graduate — the front door. `make` prints this help.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY ?= python3
VENV := .venv
export GRADUATE_VAR_DIR ?= $(CURDIR)/var
KAFKA := deploy/local/kafka/kafka.sh
TRITON := deploy/local/triton/triton.sh
REGISTRY := deploy/local/apicurio/apicurio.sh
# Flink's Kafka connector and Confluent Avro format for the consumer guide's Flink SQL test (~/.m2)
FLINK_JARS := org.apache.flink:flink-sql-connector-kafka:5.0.0-2.2 org.apache.flink:flink-sql-avro-confluent-registry:2.2.0

TASK ?= banking77

.PHONY: browser tools upstream validators help venv up run down status logs topics test test-unit test-integration test-e2e test-reliability demo bench clean

help: ## show this help
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  \033[36mmake %-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.stamp: pyproject.toml requirements.lock
	@command -v uv >/dev/null || $(PY) -m pip install -q uv
	@test -x $(VENV)/bin/python || uv venv -q -p $(PY) $(VENV)
	uv pip sync -q -p $(VENV)/bin/python requirements.lock
	uv pip install -q -p $(VENV)/bin/python --no-deps -e .
	@touch $@

venv: $(VENV)/.stamp ## create .venv with every pinned package (uv; cached outside the clone)

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

browser: node_modules/.package-lock.json ## Chromium (Debian) + playwright-core (npm) for the browser test
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "WARNING: chromium not installed: tests/e2e/test_review_browser.py will skip"

validators: venv ## kubeconform (+ Kubernetes/KEDA/Prometheus-operator schemas), composecheck, promtool, in ~/.cache/graduate/tools
	bash deploy/local/validators.sh

tools: ## kcat (Debian), Apicurio Registry (Maven Central), pyspark + pyflink (.venv-readers) for the topic-reader tests
	@command -v kcat >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null; } \
	  || { echo "ERROR: kcat could not be installed (apt-get install kcat)"; exit 1; }
	bash $(REGISTRY) fetch
	@test -x .venv-readers/bin/python || uv venv -q -p $(PY) .venv-readers
	uv pip sync -q -p .venv-readers/bin/python tests/readers/requirements.txt
	@for a in $(FLINK_JARS); do mvn -q -B dependency:get -Dartifact=$$a -Dtransitive=false >/dev/null \
	  || { echo "ERROR: mvn could not fetch $$a"; exit 1; }; done

upstream: ## the LiteLLM proxy (PyPI, its own .venv-upstream: its pins conflict with ours), the third-party upstream of the router tests
	@command -v uv >/dev/null || $(PY) -m pip install -q uv
	@test -x .venv-upstream/bin/python || uv venv -q -p $(PY) .venv-upstream
	uv pip sync -q -p .venv-upstream/bin/python tests/upstream/requirements.txt

up: venv ## start Kafka and Triton on 127.0.0.1 and ensure the topics; registry mode (GRADUATE_SCHEMA_REGISTRY_URL set): Apicurio too, schemas registered
	bash $(KAFKA) start
	bash $(TRITON) start
	@if [ -n "$$GRADUATE_SCHEMA_REGISTRY_URL" ]; then bash $(REGISTRY) start; fi
	$(VENV)/bin/graduate topics ensure

run: venv ## the whole product in the foreground (Kafka, Triton, router, review page, workers, trainer); Ctrl-C stops it
	$(VENV)/bin/graduate up

down: ## stop everything `make up`, the demo or the tests started
	-bash deploy/local/stop-services.sh
	-bash $(TRITON) stop
	-bash $(REGISTRY) stop
	-bash $(KAFKA) stop

status: ## what is running
	-bash $(KAFKA) status
	-bash $(TRITON) status
	-bash $(REGISTRY) status

logs: ## tail the Kafka and Triton logs
	-bash $(KAFKA) logs
	-bash $(TRITON) logs

topics: venv ## show the topics and their policies
	$(VENV)/bin/graduate topics list

test: venv browser tools upstream validators ## set up, start Kafka + Triton, run unit + integration + e2e tests, stop everything
	bash deploy/local/run-tests.sh tests

test-unit: venv validators ## unit tests only (no services)
	$(VENV)/bin/python -m pytest -q tests/unit

test-reliability: venv ## the fault-injection suite against real services
	bash deploy/local/run-tests.sh tests/reliability

demo: venv ## the graduation loop run by the product (demo-report/facts.json); TASK=banking77|hwu64|restaurant8k
	TASK=$(TASK) bash deploy/local/demo.sh

bench: venv ## run the benchmarks (bench/results/*.json, bench/RESULTS.md; results not re-measured marked STALE); starts, and stops, only the services not already running
	bash deploy/local/run-bench.sh

clean: down ## stop and delete local state (var/)
	rm -rf var
