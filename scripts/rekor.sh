#!/usr/bin/env bash
# Build the real Rekor stack the manifest transparency-log integration test
# (images/rekortest) runs against: rekor-server, Trillian's log server, log
# signer and createtree, plus links to Debian's MariaDB (Trillian's storage).
#   scripts/rekor.sh            binaries in out/tools/bin/ (cached: a rebuild
#                               happens only when a version, this script or the
#                               Go toolchain changed)
#   scripts/rekor.sh --rebuild  ignore the stamp (Go's build cache still applies)
# Prints the binary directory last; run the test with
#   PALISADE_REKOR_BIN=$(scripts/rekor.sh | tail -1) go test ./images/rekortest/
# `go install pkg@version` builds each tool with its own module's go.mod, so the
# servers' dependency graph stays out of the project's go.mod.
# Cold: about 11 min on 2 cores; warm: < 1 s. Needs mariadb-server
# (scripts/deps.sh unit).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

REKOR_VERSION=v1.5.4
TRILLIAN_VERSION=v1.7.3
bin=$root/out/tools/bin

rebuild=0
[ "${1:-}" = --rebuild ] && rebuild=1

tools=(rekor-server trillian_log_server trillian_log_signer createtree)
stamp=$( { echo "$REKOR_VERSION $TRILLIAN_VERSION"; cat "$0"; go version; } | sha256sum | cut -d' ' -f1)
have_all() {
	for t in "${tools[@]}" mariadbd mariadb-install-db mariadb; do [ -x "$bin/$t" ] || return 1; done
	[ -f "$bin/trillian-storage.sql" ]
}
if [ $rebuild = 0 ] && [ -f "$bin/.rekor-stamp" ] && [ "$(cat "$bin/.rekor-stamp")" = "$stamp" ] && have_all; then
	echo "$bin"
	exit 0
fi

# MariaDB comes from Debian; the test runs its own mariadbd on a temporary
# datadir, never the system service.
for t in mariadbd mariadb-install-db mariadb; do
	p=$(PATH=$PATH:/usr/sbin:/sbin command -v "$t" || true)
	[ -n "$p" ] || { echo "rekor: $t missing (scripts/deps.sh unit installs mariadb-server)" >&2; exit 1; }
done

mkdir -p "$bin"
rm -f "$bin/.rekor-stamp"
start=$SECONDS
export GOBIN=$bin CGO_ENABLED=0 GOFLAGS=-trimpath
echo "rekor: building rekor-server $REKOR_VERSION" >&2
go install "github.com/sigstore/rekor/cmd/rekor-server@$REKOR_VERSION"
echo "rekor: building trillian $TRILLIAN_VERSION (log server, log signer, createtree)" >&2
go install "github.com/google/trillian/cmd/trillian_log_server@$TRILLIAN_VERSION" \
	"github.com/google/trillian/cmd/trillian_log_signer@$TRILLIAN_VERSION" \
	"github.com/google/trillian/cmd/createtree@$TRILLIAN_VERSION"

# Trillian's MySQL schema, from the module go install just fetched.
modcache=$(go env GOMODCACHE)
install -m 0644 "$modcache/github.com/google/trillian@$TRILLIAN_VERSION/storage/mysql/schema/storage.sql" \
	"$bin/trillian-storage.sql"
for t in mariadbd mariadb-install-db mariadb; do
	ln -sf "$(PATH=$PATH:/usr/sbin:/sbin command -v "$t")" "$bin/$t"
done
have_all
echo "$stamp" >"$bin/.rekor-stamp"
echo "rekor: built in $((SECONDS - start)) s" >&2
echo "$bin"
