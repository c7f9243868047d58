#!/usr/bin/env bash
# bench/mesh.sh — meshd's control-plane numbers, in one run:
#   * time from a revocation in keyd's peer set to the revoked node's removal
#     from every peer (host test: three wireguard-go nodes in network
#     namespaces; needs root), goal ≤ 1 s, limit 5 s;
#   * time for a 1,000-peer set to converge after a change (one peer
#     revoked, one admitted), apply only.
# Not yet here: iperf3 over the meshd-managed tunnel vs hand-configured
# wireguard-go vs plain veth (docs/meshd.md, "Not yet").
set -euo pipefail
cd "$(dirname "$0")/.."

echo "# 1,000-peer convergence (diff + configure, in-memory device)"
go test -run '^$' -bench '^BenchmarkConverge1000$' -benchtime 50x ./meshd | grep -E '^Benchmark'

if [ "$(id -u)" != 0 ]; then
	echo "# revocation cut-off: skipped (needs root for network namespaces)"
	exit 0
fi
echo "# revocation cut-off (3 wireguard-go nodes in network namespaces)"
out=$(go test -count=1 -run '^TestHostMesh$' -v ./meshd)
line=$(grep -o 'revocation → removed from both peers in [^ ]*' <<<"$out" || true)
if [ -z "$line" ]; then
	echo "$out" >&2
	exit 1
fi
echo "$line"
d=${line##* }
# RATIO against the 1 s goal (lower is better).
python3 -c "
import re,sys
d='$d'; m=re.fullmatch(r'([0-9.]+)(ns|µs|us|ms|s)', d)
f={'ns':1e-9,'µs':1e-6,'us':1e-6,'ms':1e-3,'s':1}[m.group(2)]
print('RATIO revocation-cutoff %s/1s = %.3fx' % (d, float(m.group(1))*f))"
