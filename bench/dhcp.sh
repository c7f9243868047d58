#!/usr/bin/env bash
# DHCP DORA benchmark: perfdhcp against the provisioner's DHCP server, Kea
# (memfile, persist true) and dnsmasq, each writing its leases to disk, in two
# network namespaces joined by a veth pair (nothing touches the host's
# interfaces). Server pinned to CPU 0, perfdhcp to CPU 1. Prints DORA/s and
# `RATIO dhcp-dora-r<rate> provisioner/<peer> = N.NNx` lines.
#
# Usage: bench/dhcp.sh            (root; needs kea-admin kea-dhcp4-server dnsmasq-base)
# Env:   PERIOD (default 20 s), RATES (default "5000 7500"), CLIENTS (-R, default 20000),
#        REPEAT (default 2: each server runs this often per rate, interleaved with
#        the others, and its best run counts; the machine's other load varies),
#        KEEP=1 keeps the temp dir (server and perfdhcp logs) and prints its path.
set -euo pipefail

PERIOD=${PERIOD:-20}
RATES=${RATES:-"5000 7500"}
CLIENTS=${CLIENTS:-20000}
REPEAT=${REPEAT:-2}

if [[ $(id -u) != 0 ]]; then
	echo "bench/dhcp.sh: needs root (network namespaces)" >&2
	exit 1
fi
for bin in perfdhcp kea-dhcp4 dnsmasq taskset ip; do
	command -v "$bin" >/dev/null || { echo "bench/dhcp.sh: $bin not found (apt-get install kea-admin kea-dhcp4-server dnsmasq-base util-linux iproute2)" >&2; exit 1; }
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
T=$(mktemp -d /tmp/bench-dhcp.XXXXXX)
SRVNS=bdhcp-s-$$
CLINS=bdhcp-c-$$
SERVER_PID=

stop_server() {
	if [[ -n $SERVER_PID ]]; then
		kill "$SERVER_PID" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$SERVER_PID" 2>/dev/null || true
		wait "$SERVER_PID" 2>/dev/null || true
		SERVER_PID=
	fi
}
cleanup() {
	stop_server
	ip netns del "$SRVNS" 2>/dev/null || true
	ip netns del "$CLINS" 2>/dev/null || true
	if [[ ${KEEP:-} == 1 ]]; then echo "logs kept in $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT INT TERM

(cd "$ROOT" && go build -o "$T/dhcpserver" ./bench/dhcp/server)

# Both veth ends are created directly inside the namespaces.
ip netns add "$SRVNS"
ip netns add "$CLINS"
ip link add vsrv netns "$SRVNS" type veth peer name vcli netns "$CLINS"
ip -n "$SRVNS" addr add 10.77.0.1/16 dev vsrv
ip -n "$CLINS" addr add 10.77.0.2/16 dev vcli
for ns in "$SRVNS" "$CLINS"; do ip -n "$ns" link set lo up; done
ip -n "$SRVNS" link set vsrv up
ip -n "$CLINS" link set vcli up

# Servers are started with ip netns exec directly (not through a shell
# function) so that $! is the server's own PID and stop_server reaches it.
in_srv() { ip netns exec "$SRVNS" "$@"; }
# rcvbuf_errors: UDP datagrams the kernel dropped because a socket's receive
# buffer was full, in namespace $1 (perfdhcp's side shows when the client,
# not the server, is what overflows).
rcvbuf_errors() { ip netns exec "$1" awk '/^Udp:/ { getline; print $6; exit }' /proc/net/snmp; }

wait_port67() {
	for _ in $(seq 100); do
		if in_srv ss -Hlun 'sport = :67' | grep -q .; then return 0; fi
		kill -0 "$SERVER_PID" 2>/dev/null || { echo "server died:" >&2; cat "$1" >&2; return 1; }
		sleep 0.1
	done
	echo "server did not bind port 67" >&2
	cat "$1" >&2
	return 1
}

start_provisioner() {
	local d=$1
	ip netns exec "$SRVNS" taskset -c 0 "$T/dhcpserver" -iface vsrv -db "$d/leases.db" -cidr 10.77.0.0/16 \
		-start 10.77.1.0 -end 10.77.255.254 -lease 12h >"$d/server.log" 2>&1 &
	SERVER_PID=$!
	wait_port67 "$d/server.log"
}

start_kea() {
	local d=$1
	cat >"$d/kea.json" <<JSON
{"Dhcp4": {
  "interfaces-config": {"interfaces": ["vsrv"], "dhcp-socket-type": "udp"},
  "lease-database": {"type": "memfile", "persist": true, "name": "$d/kea-leases4.csv", "lfc-interval": 0},
  "valid-lifetime": 43200,
  "subnet4": [{"id": 1, "subnet": "10.77.0.0/16", "pools": [{"pool": "10.77.1.0 - 10.77.255.254"}]}],
  "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": "$d/kea.log"}], "severity": "WARN"}]
}}
JSON
	KEA_PIDFILE_DIR=$d KEA_LOCKFILE_DIR=$d ip netns exec "$SRVNS" taskset -c 0 kea-dhcp4 -c "$d/kea.json" >"$d/server.log" 2>&1 &
	SERVER_PID=$!
	wait_port67 "$d/server.log"
}

start_dnsmasq() {
	local d=$1
	ip netns exec "$SRVNS" taskset -c 0 dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 --interface=vsrv \
		--bind-interfaces --dhcp-range=10.77.1.0,10.77.255.254,255.255.0.0,12h \
		--dhcp-leasefile="$d/dnsmasq.leases" --dhcp-lease-max=100000 --no-ping --quiet-dhcp \
		--pid-file="$d/dnsmasq.pid" --log-facility="$d/dnsmasq.log" >"$d/server.log" 2>&1 &
	SERVER_PID=$!
	wait_port67 "$d/server.log"
}

# leases_on_disk counts what each server wrote, read after it stopped.
leases_on_disk() {
	local name=$1 d=$2
	case $name in
	provisioner) "$T/dhcpserver" -count-db "$d/leases.db" ;;
	kea) tail -n +2 "$d/kea-leases4.csv" | cut -d, -f1 | sort -u | wc -l ;;
	dnsmasq) wc -l <"$d/dnsmasq.leases" ;;
	esac
}

declare -A RATE_OF DISK_OF
for rate in $RATES; do
	for rep in $(seq "$REPEAT"); do
		for name in provisioner kea dnsmasq; do
			d="$T/$name-$rate-$rep"
			mkdir -p "$d"
			"start_$name" "$d"
			# perfdhcp acts as a relay (giaddr = 10.77.0.2, unicast to the
			# server). It exits 3 when exchanges are still in flight at the
			# end, which is not a failure.
			rc=0
			cli0=$(rcvbuf_errors "$CLINS")
			srv0=$(rcvbuf_errors "$SRVNS")
			ip netns exec "$CLINS" taskset -c 1 perfdhcp -4 -r "$rate" -R "$CLIENTS" -p "$PERIOD" -l vcli 10.77.0.1 \
				>"$d/perfdhcp.log" 2>&1 || rc=$?
			cliov=$(($(rcvbuf_errors "$CLINS") - cli0))
			srvov=$(($(rcvbuf_errors "$SRVNS") - srv0))
			stop_server
			if [[ $rc != 0 && $rc != 3 ]]; then
				echo "perfdhcp against $name at -r $rate failed (exit $rc):" >&2
				cat "$d/perfdhcp.log" >&2
				exit 1
			fi
			r=$(awk '/^Rate:/ {print $2; exit}' "$d/perfdhcp.log")
			r=${r:-0}
			disk=$(leases_on_disk "$name" "$d")
			drops=$(awk '/^drops ratio:/ {printf "%s%s", sep, $3; sep="/"}' "$d/perfdhcp.log")
			printf '%-12s -r %-5s run %d %10.1f DORA/s  %7s leases on disk  drops DO/RA %s%%  rcvbuf overflows server %s client %s\n' \
				"$name" "$rate" "$rep" "$r" "$disk" "$drops" "$srvov" "$cliov" >&2
			if awk -v a="$r" -v b="${RATE_OF[$name,$rate]:-0}" 'BEGIN { exit !(a >= b) }'; then
				RATE_OF[$name,$rate]=$r
				DISK_OF[$name,$rate]=$disk
			fi
		done
	done
done

echo
printf '%-10s %14s %14s %14s\n' "offered/s" "provisioner" "kea" "dnsmasq"
for rate in $RATES; do
	printf '%-10s %14.1f %14.1f %14.1f\n' "$rate" "${RATE_OF[provisioner,$rate]}" "${RATE_OF[kea,$rate]}" "${RATE_OF[dnsmasq,$rate]}"
done
echo "(DORA/s = perfdhcp 4-way exchanges per second; -R $CLIENTS -p $PERIOD; leases persisted by all three)"
echo
for rate in $RATES; do
	for peer in kea dnsmasq; do
		awk -v a="${RATE_OF[provisioner,$rate]}" -v b="${RATE_OF[$peer,$rate]}" -v r="$rate" -v p="$peer" \
			'BEGIN { if (b > 0) printf "RATIO dhcp-dora-r%s provisioner/%s = %.2fx\n", r, p, a / b; else printf "RATIO dhcp-dora-r%s provisioner/%s = inf (peer 0)\n", r, p }'
	done
done
