#!/usr/bin/env bash
# demo.sh — what `make demo` runs: a confidential rack in QEMU, from one
# command, without KVM or confidential hardware (docs/qemu-tests.md, "The
# demo").
#
#   1. installs QEMU, swtpm and OVMF (scripts/deps.sh vm) and builds the
#      pinned AmdSev firmware the SEV-SNP emulator measures (cached in
#      out/firmware: ~7 min the first time, nothing after);
#   2. runs qemu-tests' TestDemo: builds the node and control-plane images
#      (reused when nothing changed), starts the provisioner in a network
#      namespace, boots the first node (TPM, UEFI HTTP boot) whose keyd
#      `verifier init` initialises, boots the second node (emulated
#      SEV-SNP, blank disk) that joins, unlocks its disk and meshes, and
#      runs `verifier cluster`, whose table it prints;
#   3. prints where the time went.
#
# While it runs, the provisioner's web UI is on http://127.0.0.1:8088/
# (PALISADE_DEMO_UI=host:port to move it; the token is printed).
#
# Ctrl-C stops it: the test process kills its QEMU, swtpm and provisioner
# and deletes its namespaces (qemu-tests/main_test.go); nothing is left.
# Needs root (network namespaces, taps): run as root or it re-runs itself
# under sudo.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
	echo "demo: network namespaces and taps need root; re-running under sudo"
	exec sudo -E env "PATH=$PATH" "$0" "$@"
fi
bold() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
t0=$(date +%s)
mark() { date +%s; }

bold "1/3 dependencies: QEMU, swtpm, OVMF; the pinned AmdSev firmware (cached after the first run)"
scripts/deps.sh vm
scripts/deps.sh firmware
fw=$(realpath "$(scripts/firmware.sh | tail -n 1)")
t1=$(mark)
echo "firmware: $fw"

bold "2/3 the rack: provisioner, first node (keyd, TPM), verifier init, second node (SEV-SNP, disk), mesh, verifier cluster"
log=out/demo/demo.log
mkdir -p out/demo
test_pid=
cleanup() {
	# The test process tears its VMs and namespaces down on SIGINT/SIGTERM
	# itself; wait for it, so the prompt comes back on a clean machine.
	if [ -n "$test_pid" ] && kill -0 "$test_pid" 2>/dev/null; then
		kill -INT "$test_pid" 2>/dev/null || true
		wait "$test_pid" 2>/dev/null || true
	fi
	echo "demo: interrupted; everything it started is stopped (log: $log)"
	exit 130
}
trap cleanup INT TERM
# The filter keeps the progress lines (the ranges come before the step
# rewrite, which would hide a range's end line from them), the verifier's table and the boot
# timelines; the whole output is in out/demo/demo.log.
ui=${PALISADE_DEMO_UI:-127.0.0.1:8088}
PALISADE_DEMO_UI="$ui" PALISADE_FIRMWARE="$fw" PALISADE_VM_TESTS=1 go test -count=1 -p 1 -timeout 25m -run '^TestDemo$' -v ./qemu-tests/ >"$log" 2>&1 &
test_pid=$!
tail -n +1 -f "$log" --pid "$test_pid" | sed -un \
	-e '/verifier cluster (exit/,/demo_test\.go:[0-9]*: demo /{/demo_test\.go:[0-9]*: demo /!p}' \
	-e 's/^ *demo_test\.go:[0-9]*: demo /  /p' \
	-e '/boot timeline/,/^---/{/^---/!p}' \
	-e '/^--- \(PASS\|FAIL\)/p' -e '/^\(ok\|FAIL\)[[:space:]]/p' || true
rc=0
wait "$test_pid" || rc=$?
test_pid=
t2=$(mark)
# A Ctrl-C reaches the test process directly (same process group); bash
# may run no trap then, so the test's own teardown line decides.
if grep -q '^qemu-tests: .*: tearing down' "$log"; then
	grep '^qemu-tests: removed' "$log" | sed 's/^/  /' || true
	echo "demo: interrupted after $((t2 - t0)) s; everything it started is stopped (log: $log)"
	exit 130
fi

bold "3/3 where the time went"
printf '  dependencies and firmware  %4d s\n' $((t1 - t0))
printf '  images, boots, attestation %4d s\n' $((t2 - t1))
printf '  total                      %4d s\n' $((t2 - t0))
grep -oE 'demo +[0-9.]+s: .*' "$log" | sed 's/^/    /' || true
if [ "$rc" != 0 ]; then
	echo "demo: FAILED (exit $rc); the full log is $log"
	exit "$rc"
fi
echo "demo: done; the full log is $log, boot timelines in out/qemu-tests/timeline/"
