#!/usr/bin/env bash
# keyd.sh — keyd admissions/s of emulated SEV-SNP nodes on loopback next to
# the SNP crypto floor (internal/attest/snp BenchmarkFloor, same run), and
# p50/p99/total of 1,000- and 10,000-node join storms.
# Goals (issue 8): ≥ 0.50x of the floor; p99 < 100 ms at the 1,000-node
# storm's rate; 10,000 nodes in ≤ 60 s with no failure.
# Note: nodes and keyd share this machine's cores; every admission runs two
# verifications (keyd verifies the node, the node verifies keyd) and two
# report signatures, so keyd's ceiling here is about half the floor.
set -euo pipefail
cd "$(dirname "$0")/.."
benchtime=${BENCHTIME:-3s}
storms=${STORMS:-'^BenchmarkStorm$'}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
go test -run '^$' -bench '^BenchmarkFloor$' -benchtime "$benchtime" ./internal/attest/snp 2>/dev/null | grep -E '^(pkg|Benchmark)' | tee -a "$out"
go test -run '^$' -bench '^BenchmarkAdmitSNP$' -benchtime "$benchtime" ./keyd 2>/dev/null | grep -E '^(pkg|Benchmark)' | tee -a "$out"
go test -run '^$' -bench "$storms" -benchtime 1x -timeout 30m ./keyd 2>/dev/null | grep -E '^Benchmark' | tee -a "$out"
echo
awk '
/^BenchmarkFloor/    { floor = $3 }
/^BenchmarkAdmitSNP/ { admit = $3 }
/^BenchmarkStorm/ {
	line = $1; for (i = 2; i <= NF; i++) if ($(i+1) ~ /ms|total-s|admissions|failures/) printf ""
	print "storm " $0
}
END {
	if (floor && admit) {
		printf "keyd admissions/s (snp): %.0f   snp floor verifications/s: %.0f\n", 1e9 / admit, 1e9 / floor
		printf "RATIO keyd-admissions-snp keyd/floor = %.2fx\n", floor / admit
	}
}' "$out"
