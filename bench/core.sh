#!/usr/bin/env bash
# core.sh — verifications/s of a full verification per platform next to its
# crypto floor (the same signature verifications timed alone, same run), and
# their ratio. Goal: ≥ 0.50x with collateral cached.
set -euo pipefail
cd "$(dirname "$0")/.."
benchtime=${BENCHTIME:-2s}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
go test -run '^$' -bench '^Benchmark(Verify|Floor)$' -benchtime "$benchtime" \
	./internal/attest/tpm ./internal/attest/snp ./internal/attest/tdx | tee "$out"
echo
awk '
/^pkg:/ { n = split($2, p, "/"); plat = p[n] }
/^BenchmarkVerify/ { v[plat] = $3 }
/^BenchmarkFloor/  { f[plat] = $3 }
END {
	split("tpm snp tdx", order, " ")
	name["tpm"] = "tpm"; name["snp"] = "snp"; name["tdx"] = "tdx"
	printf "%-8s %14s %14s\n", "platform", "verify/s", "floor/s"
	for (i = 1; i <= 3; i++) { k = order[i]; if (v[k] && f[k]) printf "%-8s %14.0f %14.0f\n", k, 1e9 / v[k], 1e9 / f[k] }
	for (i = 1; i <= 3; i++) { k = order[i]; if (v[k] && f[k]) printf "RATIO verify-%s verify/floor = %.2fx\n", k, f[k] / v[k] }
}' "$out"
