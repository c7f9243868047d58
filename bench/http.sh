#!/usr/bin/env bash
# http.sh — the same 30 MiB file to 1 and 50 parallel HTTP clients (wrk,
# keep-alive, repeated GETs for $DURATION) from the provisioner's HTTP boot
# handler and from nginx with sendfile, both on loopback, interleaved in one
# run, servers pinned to CPU 0 and wrk to CPU 1. Prints MB/s (median of
# $REPS) and RATIO lines.
#
# Needs: nginx and wrk (Debian packages), taskset (util-linux).
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
SIZE_MIB=${SIZE_MIB:-30}
DURATION=${DURATION:-5s}

for t in nginx wrk; do
	command -v $t >/dev/null || { echo "http.sh: $t missing: apt-get install -y $t" >&2; exit 1; }
done
work=$(mktemp -d /tmp/bench-http.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

go build -o "$work/httpbench" ./bench/http
mkdir -p "$work/root" "$work/nginx"
head -c $((SIZE_MIB << 20)) /dev/urandom >"$work/root/f.efi"
chmod -R a+rX "$work"
cat >"$work/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
master_process off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
	access_log off;
	sendfile on;
	tcp_nopush on;
	keepalive_requests 100000;
	client_body_temp_path $work/nginx/body;
	proxy_temp_path $work/nginx/proxy;
	fastcgi_temp_path $work/nginx/fastcgi;
	uwsgi_temp_path $work/nginx/uwsgi;
	scgi_temp_path $work/nginx/scgi;
	types { application/efi efi; }
	server {
		listen 127.0.0.1:8082;
		root $work/root;
	}
}
CONF

# Pinning prefixes as arrays, not a shell function: "$!" must be the
# server's own PID (taskset execs it) so cleanup stops the server itself.
cpu0=() cpu1=()
if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then cpu0=(taskset -c 0) cpu1=(taskset -c 1); fi
"${cpu0[@]}" "$work/httpbench" -root "$work/root" -listen 127.0.0.1:8081 >"$work/provisioner.log" 2>&1 & pids+=($!)
"${cpu0[@]}" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" >"$work/nginx.log" 2>&1 & pids+=($!)
sleep 1
for p in 8081 8082; do
	curl -fsS -o /dev/null "http://127.0.0.1:$p/f.efi" || { echo "http.sh: server on $p not serving" >&2; exit 1; }
done

declare -A port=([provisioner]=8081 [nginx]=8082)
declare -A mbps
# wrk prints "Transfer/sec: 812.34MB" (binary units); convert to MB/s (1e6).
tomb() { awk '/Transfer\/sec/ { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[A-Za-z]+/, "", v);
	m = (u == "GB") ? 1073741824 : (u == "MB") ? 1048576 : (u == "KB") ? 1024 : 1; printf "%.1f\n", v * m / 1e6 }'; }
for c in 1 50; do
	declare -A runs=()
	for ((r = 0; r < REPS; r++)); do
		for s in provisioner nginx; do
			v=$("${cpu1[@]}" wrk -t1 -c"$c" -d"$DURATION" "http://127.0.0.1:${port[$s]}/f.efi" | tomb)
			runs[$s]="${runs[$s]:-} $v"
		done
	done
	for s in provisioner nginx; do
		mbps[$s,$c]=$(tr ' ' '\n' <<<"${runs[$s]}" | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
	done
	unset runs
done
printf '\n%-14s %12s %12s   (MB/s, median of %d)\n' clients provisioner nginx "$REPS"
for c in 1 50; do printf '%-14s %12s %12s\n' "$c" "${mbps[provisioner,$c]}" "${mbps[nginx,$c]}"; done
echo
ratio() { awk -v a="$2" -v b="$3" -v m="$1" 'BEGIN { printf "RATIO %s = %.2fx\n", m, a / b }'; }
ratio "http-1client provisioner/nginx" "${mbps[provisioner,1]}" "${mbps[nginx,1]}"
ratio "http-50clients provisioner/nginx" "${mbps[provisioner,50]}" "${mbps[nginx,50]}"
