#!/usr/bin/env bash
# tftp.sh — a 30 MiB file to 1, 10 and 50 concurrent TFTP clients at blksize
# 1468, lockstep and with windowsize 16, from the provisioner's TFTP server,
# tftpd-hpa (lockstep only: it ignores windowsize) and atftpd 0.8 (RFC 7440),
# all on loopback, measured interleaved in the same run (lockstep speed
# depends on CPU wake-up latency, which drifts). Servers are pinned to CPU 0,
# the load generator (bench/tftp, the same Go client for every server) to
# CPU 1. Prints a table of aggregate MB/s (median of $REPS runs) and RATIO lines.
#
# Needs: tftpd-hpa (in.tftpd) installed; atftpd is fetched with
# `apt-get download atftpd` and unpacked with dpkg -x (it conflicts with
# tftpd-hpa as a package), or taken from $ATFTPD.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
SIZE_MIB=${SIZE_MIB:-30}
CLIENTS=${CLIENTS:-"1 10 50"}

work=$(mktemp -d /tmp/bench-tftp.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

command -v in.tftpd >/dev/null || { echo "tftp.sh: in.tftpd missing: apt-get install -y tftpd-hpa" >&2; exit 1; }
atftpd=${ATFTPD:-}
if [[ -z $atftpd ]]; then
	(cd "$work" && apt-get download atftpd >/dev/null 2>&1 && dpkg -x atftpd_*.deb atftpd-root) ||
		{ echo "tftp.sh: cannot fetch atftpd (apt-get download atftpd)" >&2; exit 1; }
	atftpd=$work/atftpd-root/usr/sbin/atftpd
fi

go build -o "$work/tftpbench" ./bench/tftp
mkdir -p "$work/root"
head -c $((SIZE_MIB << 20)) /dev/urandom >"$work/root/f"
chmod -R a+rX "$work"
size=$((SIZE_MIB << 20))

# Pinning prefixes as arrays, not a shell function: "$!" must be the
# server's own PID (taskset execs it) so cleanup stops the server itself.
cpu0=() cpu1=()
if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then cpu0=(taskset -c 0) cpu1=(taskset -c 1); fi

"${cpu0[@]}" "$work/tftpbench" serve -root "$work/root" -listen 127.0.0.1:6969 >"$work/provisioner.log" 2>&1 & pids+=($!)
"${cpu0[@]}" in.tftpd -L -u root -a 127.0.0.1:6970 -s "$work/root" >"$work/tftpd-hpa.log" 2>&1 & pids+=($!)
"${cpu0[@]}" "$atftpd" --daemon --no-fork --user root --group root --port 6971 --bind-address 127.0.0.1 \
	--logfile /dev/null --maxthread 200 "$work/root" >"$work/atftpd.log" 2>&1 & pids+=($!)
sleep 1

declare -A port=([provisioner]=6969 [tftpd-hpa]=6970 [atftpd]=6971)
declare -A mbps
for c in $CLIENTS; do
	for w in 0 16; do
		declare -A runs=()
		for ((r = 0; r < REPS; r++)); do
			for s in provisioner tftpd-hpa atftpd; do
				line=$("${cpu1[@]}" "$work/tftpbench" load -server 127.0.0.1:${port[$s]} -file f -clients "$c" \
					-blksize 1468 -window "$w" -size "$size")
				v=${line##*MBps=}
				runs[$s]="${runs[$s]:-} $v"
			done
		done
		for s in provisioner tftpd-hpa atftpd; do
			mbps[$s,$c,$w]=$(tr ' ' '\n' <<<"${runs[$s]}" | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
		done
		unset runs
	done
done

printf '\n%-26s %12s %12s %12s   (aggregate MB/s, median of %d)\n' scenario provisioner tftpd-hpa atftpd "$REPS"
for c in $CLIENTS; do
	for w in 0 16; do
		label="${c} client(s), $([[ $w == 0 ]] && echo lockstep || echo "windowsize $w")"
		printf '%-26s %12s %12s %12s\n' "$label" "${mbps[provisioner,$c,$w]}" "${mbps[tftpd-hpa,$c,$w]}" "${mbps[atftpd,$c,$w]}"
	done
done
echo
ratio() { awk -v a="$2" -v b="$3" -v m="$1" 'BEGIN { printf "RATIO %s = %.2fx\n", m, a / b }'; }
last=${CLIENTS##* }
ratio "tftp-1client provisioner/tftpd-hpa" "${mbps[provisioner,1,0]}" "${mbps[tftpd-hpa,1,0]}"
ratio "tftp-${last}clients provisioner/tftpd-hpa" "${mbps[provisioner,$last,0]}" "${mbps[tftpd-hpa,$last,0]}"
ratio "tftp-ws16-${last}clients provisioner/atftpd" "${mbps[provisioner,$last,16]}" "${mbps[atftpd,$last,16]}"
ratio "tftp-ws16 provisioner-ws16/tftpd-hpa" "${mbps[provisioner,1,16]}" "${mbps[tftpd-hpa,1,0]}"
