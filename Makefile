# Palisade — see README.md. Every target installs what it needs.
SHELL := /bin/bash
GO ?= go
FUZZTIME ?= 60s
export CGO_ENABLED := 1

.PHONY: all build test test-unit test-fuzz test-vm bench fuzz image demo deps clean help

all: build

help:
	@echo "make demo        boot a small confidential rack in QEMU (see README)"
	@echo "make test        every test tier: unit, fuzz (10 s each), VM"
	@echo "make test-unit   unit and integration tests only"
	@echo "make test-vm     VM tier (QEMU under TCG)"
	@echo "make fuzz        every fuzz target for FUZZTIME (default 60s)"
	@echo "make bench       benchmarks, printing RATIO lines"
	@echo "make build       build every command into bin/"
	@echo "make image       build the reproducible UKI and its manifest (PROFILE=production|debug)"

deps:
	@scripts/deps.sh unit

build: deps
	$(GO) build ./...
	@mkdir -p bin && for m in $$($(GO) list -f '{{if eq .Name "main"}}{{.ImportPath}}{{end}}' ./... | grep -v -e /tools/ -e /bench/); do \
		$(GO) build -trimpath -o bin/ $$m || exit 1; done

test: deps
	@echo "== vet"; $(GO) vet ./...
	@echo "== unit tier"; $(MAKE) --no-print-directory test-unit
	@echo "== fuzz tier (10 s per target)"; scripts/fuzz.sh 10s
	@echo "== VM tier"; $(MAKE) --no-print-directory test-vm

test-unit: deps
	@set -o pipefail; $(GO) test -json -count=1 -timeout 20m ./... | $(GO) run ./tools/testsum

test-vm:
	@scripts/vm-tier.sh

fuzz: deps
	scripts/fuzz.sh $(FUZZTIME)

bench: deps
	bench/core.sh

image:
	@scripts/deps.sh image
	@scripts/image.sh $(or $(PROFILE),production)

demo: deps
	@scripts/demo.sh

clean:
	rm -rf bin out
