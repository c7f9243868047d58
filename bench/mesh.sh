#!/usr/bin/env bash
# bench/mesh.sh — meshd's numbers, in one run (docs/meshd.md, "Host test and
# benchmark"):
#   * 1,000-peer convergence: diff + configure on an in-memory device
#     (BenchmarkConverge1000), and on a real wireguard-go device over UAPI
#     (one peer revoked and one admitted per change; goal 1 s);
#   * revocation → cut-off: with a fake keyd (TestHostMesh, the earlier
#     number) and with a real keyd (TestHostMeshKeyd: owner-signed revoke
#     over aTLS until every peer removed the node), limit 5 s, goal 1 s;
#   * iperf3 TCP throughput over the meshd-managed wireguard-go tunnel vs the
#     same wireguard-go binary configured by hand with wg(8) vs the plain veth
#     under both (bench/mesh; goal meshd/hand-wg ≥ 0.95x).
# Needs root (network namespaces, /dev/net/tun) for all but the first line.
# Installs wireguard-go (the version go.mod pins) into out/bin, and iperf3 and
# wg (wireguard-tools) with scripts/deps.sh bench when missing.
# Env: DURATION (5s per iperf3 run), ROUNDS (3 runs per path, median).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

echo "# 1,000-peer convergence (diff + configure, in-memory device)"
go test -run '^$' -bench '^BenchmarkConverge1000$' -benchtime 50x ./meshd | grep -E '^Benchmark'

if [ "$(id -u)" != 0 ]; then
	echo "# revocation cut-off and throughput: skipped (need root for network namespaces)"
	exit 0
fi

# ratio DURATION LIMIT_SECONDS: DURATION (Go syntax) as a fraction of the limit.
ratio() {
	python3 -c "
import re,sys
d,lim=sys.argv[1],float(sys.argv[2]); m=re.fullmatch(r'([0-9.]+)(ns|µs|us|ms|s)', d)
f={'ns':1e-9,'µs':1e-6,'us':1e-6,'ms':1e-3,'s':1}[m.group(2)]
print('%.3f' % (float(m.group(1))*f/lim))" "$1" "$2"
}

echo "# revocation cut-off, fake keyd (3 wireguard-go nodes in network namespaces)"
out=$(go test -count=1 -run '^TestHostMesh$' -v ./meshd)
line=$(grep -o 'revocation → removed from both peers in [^ ]*' <<<"$out" || true)
if [ -z "$line" ]; then
	echo "$out" >&2
	exit 1
fi
echo "$line"
d=${line##* }
echo "RATIO revocation-cutoff $d/1s = $(ratio "$d" 1)x"

echo "# revocation cut-off, real keyd (SEV-SNP emulated admission over aTLS, meshd.Run per node)"
out=$(go test -count=1 -run '^TestHostMeshKeyd$' -v ./meshd)
line=$(grep -o 'revocation → cut off on every peer in [^ ]*' <<<"$out" || true)
if [ -z "$line" ]; then
	echo "$out" >&2
	exit 1
fi
echo "$line"
grep -o -e 'keyd stopped in [^ ]*' -e 'followers resumed [^ ]* after keyd restarted' <<<"$out" | sed 's/^/# /'
d=${line##* }
echo "RATIO revocation-cutoff meshd/limit-5s = $(ratio "$d" 5)x"
echo "RATIO revocation-cutoff meshd/goal-1s = $(ratio "$d" 1)x"

if ! command -v iperf3 >/dev/null || ! command -v wg >/dev/null; then
	scripts/deps.sh bench
fi
# wireguard-go at the version go.mod pins (@latest may be refused by the
# proxy); its binary is named wireguard.
wgver=$(go list -m -f '{{.Version}}' golang.zx2c4.com/wireguard)
mkdir -p out/bin
GOBIN="$ROOT/out/bin" go install "golang.zx2c4.com/wireguard@$wgver"
go build -o out/bin/bench-mesh ./bench/mesh
echo "# throughput and convergence on wireguard-go $wgver"
out/bin/bench-mesh -wireguard "$ROOT/out/bin/wireguard" -duration "${DURATION:-5s}" -rounds "${ROUNDS:-3}"
