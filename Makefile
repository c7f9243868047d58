# Palisade — see README.md. Every target installs what it needs.
SHELL := /bin/bash
GO ?= go
FUZZTIME ?= 60s
export CGO_ENABLED := 1

.PHONY: all build test test-unit test-fuzz test-vm bench bench-keyd bench-provisioner bench-mesh bench-boot fuzz image firmware demo deps clean help

all: build

help:
	@echo "make demo        boot a small confidential rack in QEMU (see README)"
	@echo "make test        every test tier: unit (with real Rekor and Kubernetes servers), fuzz (5 s each), VM"
	@echo "make test-unit   unit and integration tests only"
	@echo "make test-vm     VM tier (QEMU under TCG)"
	@echo "make fuzz        every fuzz target for FUZZTIME (default 60s)"
	@echo "make bench       attestation verify/s vs the crypto floor, as RATIO lines"
	@echo "make bench-keyd  keyd admissions/s vs the floor, join storms"
	@echo "make bench-provisioner  DHCP/TFTP/HTTP against kea, dnsmasq, tftpd-hpa, atftpd, nginx"
	@echo "make bench-boot  boot phases of measured QEMU boots, Palisade's share of the boot"
	@echo "make build       build every command into bin/"
	@echo "make image       build the reproducible UKI and its manifest (PROFILE=production|debug),"
	@echo "                 with OVMF built from source and the SEV-SNP/TDX launch values (FIRMWARE=0: TPM only)"
	@echo "make firmware    build OVMF for SEV-SNP and TDX from the pinned edk2 source"

deps:
	@scripts/deps.sh unit

build: deps
	$(GO) build ./...
	@mkdir -p bin && for m in $$($(GO) list -f '{{if eq .Name "main"}}{{.ImportPath}}{{end}}' ./... | grep -v -e /tools/ -e /bench/); do \
		$(GO) build -trimpath -o bin/ $$m || exit 1; done

test: deps
	@echo "== vet"; $(GO) vet ./...
	@echo "== real servers for the integration tests (built once, cached in out/tools/bin)"
	@start=$$(date +%s); scripts/rekor.sh >/dev/null && echo "rekor stack ready in $$(( $$(date +%s) - start )) s"
	@start=$$(date +%s); scripts/k8s.sh >/dev/null && echo "kube-apiserver, kube-controller-manager, etcd ready in $$(( $$(date +%s) - start )) s"
	@echo "== vet of keyd with Kubernetes support (-tags kube)"; $(GO) vet -tags kube ./keyd/cmd/keyd
	@echo "== unit tier (with the Rekor stack and the Kubernetes servers)"
	@PALISADE_REKOR_BIN=$(CURDIR)/out/tools/bin PALISADE_K8S_BIN=$(CURDIR)/out/tools/bin $(MAKE) --no-print-directory test-unit
	@echo "== fuzz tier (5 s per target; make fuzz runs longer)"; scripts/fuzz.sh 5s
	@echo "== VM tier"; $(MAKE) --no-print-directory test-vm

test-unit: deps
	@set -o pipefail; $(GO) test -json -count=1 -timeout 20m ./... | $(GO) run ./tools/testsum

test-vm:
	@scripts/vm-tier.sh

fuzz: deps
	scripts/fuzz.sh $(FUZZTIME)

bench: deps
	bench/core.sh

bench-keyd: deps
	bench/keyd.sh

bench-mesh: deps
	bench/mesh.sh

# Boot phases of measured TPM boots in QEMU, and Palisade's share of the boot.
bench-boot: deps
	bench/boot.sh

# DHCP vs kea and dnsmasq, TFTP vs tftpd-hpa and atftpd, HTTP vs nginx, and a
# 1000-client PXE boot storm.
bench-provisioner: deps
	@scripts/deps.sh bench
	bench/dhcp.sh
	bench/tftp.sh
	bench/http.sh
	bench/storm.sh

# OVMF AmdSev and IntelTdx from Debian's pinned edk2 source, cached in out/firmware.
firmware:
	@scripts/deps.sh firmware
	@scripts/firmware.sh

image:
	@scripts/deps.sh image
	@if [ "$(FIRMWARE)" != 0 ]; then scripts/deps.sh firmware; fi
	@FIRMWARE=$(if $(filter 0,$(FIRMWARE)),,$(or $(FIRMWARE),1)) scripts/image.sh $(or $(PROFILE),production)

demo: deps
	@scripts/demo.sh

clean:
	rm -rf bin out
