#!/usr/bin/env bash
# bench/boot.sh — make bench-boot: one measured TPM boot over TFTP and one over
# HTTP in QEMU (TCG), then the phase table of each and the share of the boot
# spent in Palisade's own phases (init, attest, unlock, mesh) against the
# whole boot, as RATIO lines.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh vm
dir=out/qemu-tests/timeline
rm -rf "$dir"
PALISADE_VM_TESTS=1 PALISADE_TIMELINE_DIR="$PWD/$dir" go test -count=1 -p 1 -timeout 20m \
	-run 'TestTPM/(tftp|http)$' ./qemu-tests/ >/tmp/palisade-bench-boot.log 2>&1 ||
	{ tail -50 /tmp/palisade-bench-boot.log; exit 1; }
go run ./bench/boot "$dir"/*.json
