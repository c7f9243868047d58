#!/usr/bin/env bash
# deps.sh TIER… — install what a tier needs, idempotently: apt packages only
# when one is missing (apt-get update once, then install), Go modules always
# (a no-op when cached). Tiers: unit, image, firmware, bench, vm, demo.
set -euo pipefail
cd "$(dirname "$0")/.."

# unit: the go-tpm-tools TPM simulator is cgo + OpenSSL; the provisioner UI test
# drives chromium; keyd's etcd store is tested against a real etcd (3.4).
# strace: the HTTP boot sendfile test; systemd-boot-efi, systemd (systemd-measure),
# binutils (objcopy), cpio: the UKI layout and PCR11 cross-check tests.
# cryptsetup-bin, e2fsprogs: attestd's state-disk tests run the real
# cryptsetup (luksFormat, luksDump, config, isLuks) and mkfs.ext4 on image files.
# mariadb-server: Trillian's storage under the Rekor stack (scripts/rekor.sh).
pkgs=(gcc libssl-dev chromium etcd-server iproute2 strace systemd-boot-efi systemd binutils cpio cryptsetup-bin e2fsprogs)
for tier in "$@"; do
	case "$tier" in
	unit) pkgs+=(mariadb-server) ;;
	image) pkgs+=(systemd-boot-efi systemd binutils kmod cpio dpkg apt) ;;
	firmware) pkgs+=(build-essential uuid-dev acpica-tools nasm python3 python3-distutils dpkg-dev) ;;
	bench) pkgs+=(kea-admin kea-dhcp4-server dnsmasq-base tftpd-hpa nginx wrk util-linux curl iperf3 wireguard-tools) ;;
	vm | demo) pkgs+=(qemu-system-x86 ovmf swtpm swtpm-tools tpm2-tools iproute2 dnsmasq) ;;
	*) echo "deps.sh: unknown tier $tier (want unit, image, firmware, bench, vm or demo)" >&2; exit 2 ;;
	esac
done

missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "deps: installing ${missing[*]}"
	sudo_=""
	[ "$(id -u)" -eq 0 ] || sudo_=sudo
	$sudo_ apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
go mod download
