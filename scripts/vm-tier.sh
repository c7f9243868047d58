#!/usr/bin/env bash
# vm-tier.sh — the VM test tier: packages with tests gated by PALISADE_VM_TESTS.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d qemu-tests ]; then
	echo "VM tier: no VM tests exist yet; the QEMU harness ([harness], issue 6) adds them."
	exit 0
fi
scripts/deps.sh vm
PALISADE_VM_TESTS=1 go test -json -count=1 -p 1 -timeout 30m ./qemu-tests/... | go run ./tools/testsum
