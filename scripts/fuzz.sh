#!/usr/bin/env bash
# fuzz.sh [FUZZTIME] — run every Fuzz target of the module for FUZZTIME each
# (default 60s). Exits non-zero if any target finds a crash; the failing input
# is left under the package's testdata/fuzz for `go test` to replay.
#
# Go 1.26's fuzz coordinator can fail a target with a bare "context deadline
# exceeded" when -fuzztime ends while a worker is busy (go.dev/issue/75804,
# fixed in Go 1.27): no input is written and nothing is found. Such a run is
# retried once; a second one is reported as "flaked", after the target's
# seeds and testdata corpus are replayed with plain
# `go test`, which must pass. Any failure that wrote an input, or any other
# error, fails the run.
set -uo pipefail
cd "$(dirname "$0")/.."
fuzztime=${1:-60s}
pass=0 fail=0 flaked=0 failed=() flakes=()
log=$(mktemp /tmp/fuzz.XXXXXX)
trap 'rm -f "$log"' EXIT
if ! listing=$(go test -list '^Fuzz' ./... 2>&1); then
	echo "$listing" | grep -v '^ok\|^?\|^Fuzz'
	echo "fuzz: could not list the fuzz targets (a package does not build)"
	exit 1
fi

# deadline_only: the run failed with the coordinator's bare deadline error
# and wrote no failing input.
deadline_only() {
	grep -q '^    context deadline exceeded$' "$log" && ! grep -q 'Failing input written' "$log"
}

while read -r pkg target; do
	echo "=== FUZZ $pkg $target ($fuzztime)"
	for attempt in 1 2; do
		outcome=fail
		if go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" >"$log" 2>&1; then
			outcome=pass
			break
		fi
		deadline_only || break
		echo "    attempt $attempt: Go's fuzz coordinator reported a bare deadline (go.dev/issue/75804), no input written"
		outcome=flake
	done
	if [ "$outcome" = flake ]; then
		# Replay the seeds and testdata corpus.
		if go test -run "^${target}\$" "$pkg" >"$log" 2>&1; then
			echo "    flaked twice; its corpus replays clean"
		else
			outcome=fail
		fi
	fi
	case $outcome in
	pass) tail -n 2 "$log" | sed 's/^/    /'; pass=$((pass + 1)) ;;
	flake) flaked=$((flaked + 1)) flakes+=("$pkg.$target") ;;
	*) cat "$log"; fail=$((fail + 1)) failed+=("$pkg.$target") ;;
	esac
done < <(echo "$listing" | awk '/^Fuzz/ {t[n++]=$1} /^ok/ {for (i=0;i<n;i++) print $2, t[i]; n=0}')
echo "fuzz: $pass passed, $fail failed, $flaked flaked (Go coordinator deadline, corpus clean)"
[ "$flaked" -eq 0 ] || printf 'flaked: %s\n' "${flakes[@]}"
[ "$fail" -eq 0 ] || { printf 'crashed: %s\n' "${failed[@]}"; exit 1; }
