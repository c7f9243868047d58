#!/usr/bin/env bash
# vm-tier.sh — the VM test tier (qemu-tests/): real measured boots in QEMU
# under TCG with OVMF + swtpm, and emulated SEV-SNP / TDX guests.
# It installs QEMU, swtpm and OVMF, builds the pinned AmdSev / IntelTdx
# firmware the CVM emulator measures (cached in out/firmware, ~7 min cold),
# then runs the tests with PALISADE_VM_TESTS=1, one package at a time (each
# test keeps at most two VMs running), then the firmware/kernel cross-checks
# and the two-clone reproducibility check of the UKI.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh vm
scripts/deps.sh firmware
start=$(date +%s)
fw=$(realpath "$(scripts/firmware.sh | tail -n 1)")
echo "VM tier: firmware ready in $(( $(date +%s) - start )) s: $fw"
PALISADE_FIRMWARE="$fw" PALISADE_VM_TESTS=1 go test -json -count=1 -p 1 -timeout 40m ./qemu-tests/... | go run ./tools/testsum
# The golden cross-checks against independent implementations need the
# built firmware and the pinned kernel (in out/image/cache after the image
# builds above): here they must run, never skip.
echo "VM tier: cross-checks on the built firmware and the pinned kernel"
PALISADE_CROSSCHECK=1 go test -json -count=1 -run 'CrossChecked|LoadFirmware|LoadBuilt' ./internal/cvm/... | go run ./tools/testsum
echo "VM tier: reproducibility (two fresh clones build the same UKI)"
scripts/image-repro.sh production
