#!/usr/bin/env bash
# Boot storm: $CLIENTS simulated UEFI machines (bench/storm) do broadcast DHCP
# DORA against `provisioner serve` and then fetch their boot file, half over
# TFTP (blksize 1468, windowsize 16) and half over UEFI HTTP boot, all
# arriving at once (or spread over $SPREAD). The provisioner runs in one
# network namespace, the machines in another, joined by a veth pair; nothing
# touches the host's interfaces. Prints a table and
#   STORM clients=N failures=N p50=… p99=… total=…
# where p50/p99 are DISCOVER → last byte of the file per machine.
#
# The image is $SIZE_MIB MiB of random bytes (default 16: 1000 machines then
# move 16 GiB, ~40 s on 2 cores; a real UKI is 30–60 MiB, SIZE_MIB=32 takes
# about twice as long).
#
# All simulated machines share one source address (10.78.0.2), so the TFTP
# per-client limit (tftp.max_per_client, default 8 per address) is raised to
# the client count here; real machines each fetch from their own lease.
#
# Usage: bench/storm.sh   (root; needs iproute2)
# Env:   CLIENTS (1000), SIZE_MIB (16), SPREAD (0 = all at once, e.g. 10s),
#        HTTP_EVERY (2: every 2nd machine boots over HTTP; 0 = all TFTP),
#        KEEP=1 keeps the temp dir (logs, per-machine JSON) and prints its path.
set -euo pipefail

CLIENTS=${CLIENTS:-1000}
SIZE_MIB=${SIZE_MIB:-16}
SPREAD=${SPREAD:-0}
HTTP_EVERY=${HTTP_EVERY:-2}

if [[ $(id -u) != 0 ]]; then
	echo "bench/storm.sh: needs root (network namespaces)" >&2
	exit 1
fi
command -v ip >/dev/null || { echo "bench/storm.sh: ip not found (apt-get install iproute2)" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
T=$(mktemp -d /tmp/bench-storm.XXXXXX)
SRVNS=bstorm-s-$$
CLINS=bstorm-c-$$
SERVER_PID=

cleanup() {
	if [[ -n $SERVER_PID ]]; then
		kill "$SERVER_PID" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$SERVER_PID" 2>/dev/null || true
		wait "$SERVER_PID" 2>/dev/null || true
	fi
	ip netns del "$SRVNS" 2>/dev/null || true
	ip netns del "$CLINS" 2>/dev/null || true
	if [[ ${KEEP:-} == 1 ]]; then echo "logs kept in $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT INT TERM

(cd "$ROOT" && go build -o "$T/provisioner" ./provisioner/cmd/provisioner && go build -o "$T/storm" ./bench/storm)

ip netns add "$SRVNS"
ip netns add "$CLINS"
ip link add vsrv netns "$SRVNS" type veth peer name vcli netns "$CLINS"
ip -n "$SRVNS" addr add 10.78.0.1/16 dev vsrv
ip -n "$CLINS" addr add 10.78.0.2/16 dev vcli
for ns in "$SRVNS" "$CLINS"; do ip -n "$ns" link set lo up; done
ip -n "$SRVNS" link set vsrv up
ip -n "$CLINS" link set vcli up

mkdir -p "$T/data/images"
head -c $((SIZE_MIB << 20)) /dev/urandom >"$T/data/images/uki.efi"
head -c 32 /dev/urandom | base64 >"$T/admin.token"
chmod 600 "$T/admin.token"
cat >"$T/provisioner.json" <<JSON
{
  "version": 1,
  "data_dir": "$T/data",
  "api": {"listen": "10.78.0.1:8081", "admin_token_file": "$T/admin.token"},
  "dhcp": {
    "mode": "authoritative",
    "interfaces": ["vsrv"],
    "lease_db": "$T/data/leases.db",
    "subnets": [{"cidr": "10.78.0.0/16", "range_start": "10.78.1.0", "range_end": "10.78.255.254", "lease_time": "12h"}]
  },
  "tftp": {"listen": "10.78.0.1:69", "max_per_client": $((CLIENTS + 8)), "max_transfers": $((CLIENTS + 8))},
  "http": {"listen": "10.78.0.1:8080"},
  "boot": {"default_profile": "worker"},
  "accept": [{"name": "storm", "mac_prefix": "02:53"}],
  "profiles": [{"name": "worker", "image": "uki.efi", "platform": "tpm", "role": "worker"}],
  "log": {"level": "warn"}
}
JSON

ip netns exec "$SRVNS" "$T/provisioner" serve --config "$T/provisioner.json" >"$T/server.log" 2>&1 &
SERVER_PID=$!
for i in $(seq 100); do
	if ip netns exec "$SRVNS" ss -Hlun 'sport = :67' | grep -q . &&
		ip netns exec "$SRVNS" ss -Hltn 'sport = :8080' | grep -q .; then break; fi
	kill -0 "$SERVER_PID" 2>/dev/null || { echo "provisioner died:" >&2; cat "$T/server.log" >&2; exit 1; }
	[[ $i == 100 ]] && { echo "provisioner did not start:" >&2; cat "$T/server.log" >&2; exit 1; }
	sleep 0.1
done

rc=0
ip netns exec "$CLINS" "$T/storm" -iface vcli -clients "$CLIENTS" -http-every "$HTTP_EVERY" -spread "$SPREAD" \
	-image "$T/data/images/uki.efi" -json "$T/machines.json" || rc=$?

# The inventory's view: how many machines reached "booting". Fewer than the
# successful machines means transfers were attributed to the wrong machine:
# the inventory attributes by offer order (first come, first served), since
# the DHCP server does not tell it which address each machine leased.
booting=$(ip netns exec "$CLINS" curl -fsS -H "Authorization: Bearer $(cat "$T/admin.token")" \
	"http://10.78.0.1:8081/api/v1/machines?state=booting" 2>/dev/null | grep -o '"mac"' | wc -l || true)
echo "inventory: $booting machines booting"
exit "$rc"
