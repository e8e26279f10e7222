# stega events — the two commands that matter on a bare Debian machine:
#   make run    install what is missing, start a local broker, build (release) and start
#               every api and worker in the background
#   make test   install what is missing, start a throw-away broker, run every test
export PATH := $(PATH):/opt/swift/usr/bin
SWIFT ?= swift

.PHONY: deps build release test bench fuzz run run-cluster stop status logs secrets compose-smoke clean

deps:            ## apt packages and Python test clients, when missing
	@scripts/deps.sh

build: deps      ## debug build, tests included
	$(SWIFT) build --build-tests

release: deps    ## release build of the executables
	$(SWIFT) build -c release

test: build      ## throw-away RabbitMQ + swift test + end-to-end tests
	@scripts/test.sh

FUZZ_SECONDS ?= 60
fuzz: deps       ## each libFuzzer target for FUZZ_SECONDS (scripts/fuzz.sh; make test runs each for 10 s)
	@FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

BASELINE_DIR := .build-bench
BASELINES := $(BASELINE_DIR)/publisher $(BASELINE_DIR)/consumer $(BASELINE_DIR)/fill $(BASELINE_DIR)/pace

$(BASELINE_DIR)/publisher: bench/baseline/publisher.c
	@mkdir -p $(BASELINE_DIR)
	cc -O2 -Wall -o $@ $< -lmicrohttpd -lrabbitmq -lpthread
$(BASELINE_DIR)/pace: bench/tools/pace.c
	@mkdir -p $(BASELINE_DIR)
	cc -O2 -Wall -o $@ $< -lpthread
$(BASELINE_DIR)/%: bench/baseline/%.c
	@mkdir -p $(BASELINE_DIR)
	cc -O2 -Wall -o $@ $< -lrabbitmq

bench: release   ## figures beside their baselines (bench/run.py), table in bench/results/latest.md
	@scripts/deps.sh --bench
	@$(MAKE) --no-print-directory $(BASELINES)
	@python3 bench/run.py

run: release     ## local broker (unless STEGA_AMQP_URL is set) + every service in the background
	@scripts/run.sh start

run-cluster: release  ## PostgreSQL + 3-node RabbitMQ cluster + two replicas of every api and worker + boundary
	@scripts/run.sh start-cluster

stop:            ## stop what make run or make run-cluster started
	@scripts/run.sh stop

status:          ## what make run started, and whether it is ready
	@scripts/run.sh status

logs:            ## tail the worker logs
	@tail -n 50 -F run/logs/*-worker.log

secrets:         ## random secrets for compose.yaml in ./secrets (kept if there)
	@scripts/secrets.sh

compose-smoke:   ## build the image and run compose.yaml for real with podman (scripts/compose-smoke.sh)
	@scripts/compose-smoke.sh

clean:
	rm -rf .build run
