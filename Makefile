# dps-batch — run "make" for the list of targets.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BIN := bin/dps-batch

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this list of targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

.PHONY: build
build: ## Build the static binary into bin/dps-batch (CGO_ENABLED=0)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/dps-batch

.PHONY: test
test: fmt-check vet ## gofmt check + go vet + go test -race (the CI test command)
	$(GO) test -race -count=1 ./...

.PHONY: fmt-check
fmt-check: ## Fail if any Go file is not gofmt-formatted
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

.PHONY: vet
vet: ## go vet ./...
	$(GO) vet ./...

.PHONY: lint
lint: fmt-check vet ## Static checks (gofmt, go vet)

.PHONY: demo
demo: ## Run the end-to-end demo: fleet, simulator, provisioning, report
	$(GO) run ./cmd/dps-batch demo

.PHONY: report-demo
report-demo: ## Demo run, then its HTML report (demo-out/report-demo/demo-report.html) checked in Chromium; screenshot to docs/report.png
	rm -rf demo-out/report-demo
	$(GO) run ./cmd/dps-batch demo --dir demo-out/report-demo
	REPORT_HTML=$(CURDIR)/demo-out/report-demo/demo-report.html REPORT_SCREENSHOT=$(CURDIR)/docs/report.png \
		$(GO) test -count=1 -v -run TestHTMLReportInBrowser ./report

.PHONY: golden
golden: ## Rewrite golden files (help text, reports) after an intended change
	$(GO) test ./report ./cmd/dps-batch -run Golden -update

.PHONY: bench
bench: build ## Benchmarks (bench/README.md): vs curl and a bare loop, cost, quota, resume, rate, 1M-device HTML report; ~7 min, writes bench/RESULTS.md
	$(GO) run ./bench -bin $(BIN) -go $(GO) $(BENCHFLAGS)

.PHONY: chaos
chaos: ## Long crash loop, fault soak, hostile-server and durability tests (DPSBATCH_CHAOS_LONG=1), ~15 min
	DPSBATCH_CHAOS_LONG=1 $(GO) test -race -count=1 -timeout 90m -v \
		-run 'CrashLoop|FaultSoak|Hostile|Durab|PowerLoss' ./cmd/dps-batch ./batch ./ledger

FUZZTIME ?= 30s

.PHONY: fuzz
fuzz: ## Run every fuzz target (go test -list '^Fuzz') for FUZZTIME each (default 30s)
	@set -e; for pkg in $$($(GO) list ./...); do \
		for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$t for $(FUZZTIME)"; \
			$(GO) test $$pkg -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME); \
		done; \
	done

.PHONY: install
install: ## go install ./cmd/dps-batch (puts dps-batch on your PATH, in $(shell go env GOPATH)/bin)
	CGO_ENABLED=0 $(GO) install -trimpath -ldflags '$(LDFLAGS)' ./cmd/dps-batch

CROSS := windows/amd64 darwin/arm64 linux/arm64 linux/amd64

.PHONY: cross
cross: ## Cross-compile the static binary for windows/amd64, darwin/arm64, linux/arm64 and linux/amd64 into bin/
	@set -e; for t in $(CROSS); do \
		os=$${t%/*}; arch=$${t#*/}; ext=; [ $$os = windows ] && ext=.exe; \
		echo "== $$os/$$arch"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/dps-batch-$$os-$$arch$$ext ./cmd/dps-batch; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build ./...; \
	done

.PHONY: clean
clean: ## Remove build output
	rm -rf bin
