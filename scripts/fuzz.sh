#!/usr/bin/env bash
# fuzz.sh [FUZZTIME] — run every Fuzz target of the module for FUZZTIME each
# (default 60s). Exits non-zero if any target finds a crash; the failing input
# is left under the package's testdata/fuzz for `go test` to replay.
set -uo pipefail
cd "$(dirname "$0")/.."
fuzztime=${1:-60s}
pass=0 fail=0 failed=()
if ! listing=$(go test -list '^Fuzz' ./... 2>&1); then
	echo "$listing" | grep -v '^ok\|^?\|^Fuzz'
	echo "fuzz: could not list the fuzz targets (a package does not build)"
	exit 1
fi
while read -r pkg target; do
	echo "=== FUZZ $pkg $target ($fuzztime)"
	if go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" >"/tmp/fuzz.$$.log" 2>&1; then
		tail -n 2 "/tmp/fuzz.$$.log" | sed 's/^/    /'
		pass=$((pass + 1))
	else
		cat "/tmp/fuzz.$$.log"
		fail=$((fail + 1)) failed+=("$pkg.$target")
	fi
done < <(echo "$listing" | awk '/^Fuzz/ {t[n++]=$1} /^ok/ {for (i=0;i<n;i++) print $2, t[i]; n=0}')
rm -f "/tmp/fuzz.$$.log"
echo "fuzz: $pass passed, $fail failed"
[ "$fail" -eq 0 ] || { printf 'crashed: %s\n' "${failed[@]}"; exit 1; }
