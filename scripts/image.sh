#!/usr/bin/env bash
# Build Palisade's measured image reproducibly (docs/images.md).
#   scripts/image.sh [production|debug]      outputs in out/image/<profile>/
# Environment: SOURCE_DATE_EPOCH (default: the last commit's time),
# MANIFEST_PUB (PEM public key compiled into the image), REKOR_KEY (the Rekor
# log's PEM key compiled into the image), ROOTS (directory
# with roots.json pinned into the image), MANIFEST_WITHOUT_LOG_PROOF=1, VERSION,
# FIRMWARE (a directory from scripts/firmware.sh: SEV-SNP references are then
# computed; `make image` builds or reuses it, FIRMWARE=0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-production}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
# A fixed Go environment: no VCS stamps, no cgo, no path of this checkout.
export CGO_ENABLED=0 GOFLAGS=-mod=readonly GOTOOLCHAIN=local LC_ALL=C TZ=UTC
for t in apt-get dpkg depmod objcopy go; do
	command -v "$t" >/dev/null || { echo "image: $t missing (scripts/deps.sh)" >&2; exit 1; }
done
[ -f /usr/lib/systemd/boot/efi/linuxx64.efi.stub ] || { echo "image: systemd-stub missing: apt-get install systemd-boot-efi" >&2; exit 1; }
mkdir -p out/image
go build -trimpath -buildvcs=false -o out/image/images ./images/cmd/images
args=(--profile "$profile" --version "${VERSION:-dev}" --out out/image --cache out/image/cache)
[ -n "${MANIFEST_PUB:-}" ] && args+=(--manifest-key "$MANIFEST_PUB")
[ -n "${ROOTS:-}" ] && args+=(--roots "$ROOTS")
[ -n "${REKOR_KEY:-}" ] && args+=(--rekor-key "$REKOR_KEY")
[ "${MANIFEST_WITHOUT_LOG_PROOF:-}" = 1 ] && args+=(--manifest-without-log-proof)
if [ "${FIRMWARE:-}" = 1 ]; then
	FIRMWARE=$(scripts/firmware.sh | tail -n 1)
fi
[ -n "${FIRMWARE:-}" ] && args+=(--firmware "$FIRMWARE")
start=$(date +%s)
out/image/images build "${args[@]}"
echo "image: $profile built in $(( $(date +%s) - start )) s: $(sha256sum out/image/$profile/palisade.efi)"
