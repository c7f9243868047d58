#!/usr/bin/env bash
# keyd.sh — keyd's admissions per keyd core next to each platform's crypto
# floor (internal/attest/<platform> BenchmarkFloor, same run), and the
# 1,000- and 10,000-node SEV-SNP join storms (p50, p99, total, failures).
#
# Goals (issue 8): ≥ 0.50x of the floor; p99 < 100 ms at the 1,000-node
# storm's rate; 10,000 nodes in ≤ 60 s with no failure.
#
# What is counted: keyd runs in the benchmark process, the emulated nodes in
# a child process (keyd/bench_test.go), so keyd's CPU time per admission is
# that process's getrusage over the timed admissions. keyd attests itself on
# an emulated SEV-SNP machine whose firmware signature (real hardware signs
# on the AMD secure processor) runs in keyd's process: it is measured apart
# (emulated-fw-ms/op) and left out of the ratio, which is
#     floor CPU per verification / keyd CPU per admission (without the fw).
# Both sides are CPU time, not wall time: this machine's two cores are shared
# (nodes, other work), and wall-clock ns/op would mix that in. The floor's
# CPU per op is (CPU of a run of N+1 ops − CPU of a run of 1 op) / N.
#
# Storms (SEV-SNP, emulated nodes in the child process):
#   open loop   1,000 nodes arriving at KEYD_STORM_RATE per second (a comma
#               list, default 50,100: 1,000 nodes in 20 s and in 10 s); a
#               node's latency is its completion minus its scheduled
#               start, so queueing behind keyd counts.
#               The p99 goal is judged here.
#   closed loop 1,000 and 10,000 nodes, KEYD_BENCH_WORKERS (default 16)
#               nodes in flight, each starting the next when admitted: the
#               total-time goal is judged here; its latencies are those of
#               a saturated keyd and are printed for completeness only.
# The nodes' own crypto (emulated firmware signature, verification of keyd,
# TLS) runs on the same two cores: node-cpu is the node process's CPU per
# admission, so the reader can see keyd's share of the wall time. The
# machine's load average is printed with every section.
#
# Env: ADMISSIONS (default 300), FLOOR_OPS (default 300), STORMS (bench
# regexp, default all storms), KEYD_BENCH_WORKERS, KEYD_STORM_RATE.
set -euo pipefail
cd "$(dirname "$0")/.."
admissions=${ADMISSIONS:-300}
floor_ops=${FLOOR_OPS:-300}
storms=${STORMS:-'^BenchmarkStorm(Open)?$'}
load() { echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

go test -c -o "$tmp/keyd.test" ./keyd
for p in snp tdx tpm; do
	go test -c -o "$tmp/$p.test" "./internal/attest/$p"
done

# cpu BIN ARGS…: user+system seconds of one run (output to $tmp/out).
cpu() {
	/usr/bin/time -f '%U %S' -o "$tmp/time" "$@" >"$tmp/out" 2>&1 || { cat "$tmp/out" >&2; return 1; }
	awk '{ print $1 + $2 }' "$tmp/time"
}

load
declare -A floor_ms
for p in snp tdx tpm; do
	dir="./internal/attest/$p"
	one=$( (cd "$dir" && cpu "$tmp/$p.test" -test.run '^$' -test.bench '^BenchmarkFloor$' -test.benchtime 1x) )
	many=$( (cd "$dir" && cpu "$tmp/$p.test" -test.run '^$' -test.bench '^BenchmarkFloor$' -test.benchtime "${floor_ops}x") )
	wall=$(awk '/^BenchmarkFloor/ { print $3 / 1e6 }' "$tmp/out")
	floor_ms[$p]=$(awk -v a="$one" -v b="$many" -v n="$floor_ops" 'BEGIN { printf "%.4f", (b - a) * 1000 / n }')
	printf 'floor %-4s %8.3f ms CPU per verification (%8.3f ms wall)\n' "$p" "${floor_ms[$p]}" "$wall"
done

echo
load
"$tmp/keyd.test" -test.run '^$' -test.bench '^BenchmarkAdmit(SNP|TDX|TPM)$' -test.benchtime "${admissions}x" -test.timeout 30m 2>/dev/null |
	grep -E '^Benchmark' | tee "$tmp/admit"
echo
for p in snp tdx tpm; do
	name=$(echo "$p" | tr a-z A-Z)
	awk -v p="$p" -v floor="${floor_ms[$p]}" -v name="BenchmarkAdmit$name" '
	$1 ~ "^" name "(-[0-9]+)?$" {
		for (i = 3; i < NF; i++) m[$(i+1)] = $i
		cpu = m["keyd-cpu-ms/op"]; fw = m["emulated-fw-ms/op"]
		if (cpu - fw <= 0) exit
		printf "keyd %s: %.3f ms keyd CPU per admission (verification %.3f, other keyd work %.3f) + %.3f ms emulated firmware; %.0f admissions/s per keyd core; floor %.0f verifications/s per core; nodes %.3f ms CPU per admission; load %.2f\n", \
			p, cpu - fw, m["verify-cpu-ms/op"], m["keyd-overhead-ms/op"], fw, 1000 / (cpu - fw), 1000 / floor, m["node-cpu-ms/op"], m["load-1m"]
		printf "RATIO keyd-admissions-%s keyd/floor = %.2fx\n", p, floor / (cpu - fw)
	}' "$tmp/admit"
done

echo
load
"$tmp/keyd.test" -test.run '^$' -test.bench "$storms" -test.benchtime 1x -test.timeout 60m 2>/dev/null |
	grep -E '^Benchmark' | tee "$tmp/storm"
awk '
/^BenchmarkStorm/ {
	for (i = 3; i < NF; i++) m[$(i+1)] = $i
	name = $1; sub(/-[0-9]+$/, "", name)
	kind = name ~ /^BenchmarkStormOpen/ ? "open" : "closed"
	n = split(name, parts, "/"); desc = ""
	for (j = 2; j <= n; j++) desc = desc " " parts[j]
	printf "STORM %s%s p50=%.1fms p99=%.1fms total=%.1fs failures=%d admissions/s=%.1f keyd-cpu=%.3fms/admission (emulated fw %.3f) node-cpu=%.3fms/admission admissions/commit=%.1f load=%.2f\n", \
		kind, desc, m["p50-ms"], m["p99-ms"], m["total-s"], m["failures"], m["admissions/s"], m["keyd-cpu-ms/op"] - m["emulated-fw-ms/op"], m["emulated-fw-ms/op"], m["node-cpu-ms/op"], m["admissions/commit"], m["load-1m"]
}' "$tmp/storm"
